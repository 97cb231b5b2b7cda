"""Replay reports: a summary for people, and a JSON file with every step."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, TextIO

from ..errors import QmprrError
from ..recording.redact import scrub, scrub_text
from ..files import replace_file
from .. import results
from .compare import Difference
from .engine import ReplayReport

CONTEXT_STEPS = 3


def summary(report: ReplayReport, out: TextIO | ScrubbingWriter) -> None:
    """Counts, warnings, and the first divergence with its differences and context."""
    n = len(report.steps)
    print(
        f"replayed {report.recording} against {report.target}: {n} step(s), "
        f"{report.count('matched')} matched, {report.count('diverged')} diverged, "
        f"{report.count('skipped')} skipped, {report.count('refused')} refused, "
        f"{report.count('interrupted')} interrupted"
        + (f", {report.count('prelude')} prelude (before --from-segment: replayed for QEMU's state, not compared)"
           if report.count("prelude") else ""),
        file=out,
    )
    if report.scratch_images:
        print(f"scratch images (blank, made for this replay): {', '.join(report.scratch_images)}", file=out)
    for warning in report.warnings:
        print(f"warning: {warning}", file=out)
    for step in report.steps:
        if step.status in ("skipped", "matched") and step.reason:
            print(f"{step.status}: seq {step.seq} {step.command} ({step.src}): {step.reason}", file=out)
    first = report.first_divergence
    if report.error:
        print(f"could not replay: {report.error}", file=out)
    elif first is None and report.replayed == 0:
        print("nothing replayed: every step was skipped (see --only-src, --until, --secret)", file=out)
        return
    elif first is None:
        print("reproduced: no divergence", file=out)
        return
    if first is None:
        return
    print(f"\nfirst divergence at step {first.index + 1}, recorded seq {first.seq}: {first.command} from {first.src}", file=out)
    if first.reason:
        print(f"  {first.status}: {first.reason}", file=out)
    for diff in first.differences:
        print(f"  {diff}", file=out)
    print("context:", file=out)
    at = report.steps.index(first)
    for step in report.steps[max(0, at - CONTEXT_STEPS) : at + 1]:
        mark = ">>" if step is first else "  "
        print(f"  {mark} seq {step.seq:>6} {step.src:<12} {step.command:<28} {step.status}", file=out)
    later = [s for s in report.steps[at + 1 :] if s.status in ("diverged", "refused")]
    if later:
        print(f"(and {len(later)} more divergent step(s); see --report)", file=out)


#: The statuses counted in the JSON form (``prelude`` steps are not).
COUNTED = ("matched", "diverged", "skipped", "refused", "interrupted")

results.derived(Difference, text=lambda d: d.describe(width=None))  # whole values, unlike the summary
results.derived(ReplayReport, reproduced=lambda r: r.reproduced, counts=lambda r: {k: r.count(k) for k in COUNTED})


def to_json(report: ReplayReport) -> dict[str, Any]:
    """The whole report as a JSON-ready dict (:func:`qmprr.results.structure` reads it back)."""
    out: dict[str, Any] = results.unstructure(report)
    return out


class ScrubbingWriter:
    """A text stream that takes *values* (replay's ``--secret`` values) out of what it writes."""

    def __init__(self, out: TextIO, values: Iterable[str]) -> None:
        self.out, self.values = out, tuple(values)

    def write(self, text: str) -> int:
        return self.out.write(scrub_text(text, self.values))

    def flush(self) -> None:
        self.out.flush()


def write_json(report: ReplayReport, path: str, *, secrets: Iterable[str] = ()) -> None:
    """Write the report to *path* (mode 0600, replaced once complete; never through a link)."""
    data = scrub(json.loads(json.dumps(to_json(report), default=repr)), secrets)
    try:
        with replace_file(path, option="--report") as f:
            f.write(json.dumps(data, indent=2).encode() + b"\n")
    except OSError as exc:
        raise QmprrError(f"--report {path}: cannot write the report: {exc.strerror}") from None
