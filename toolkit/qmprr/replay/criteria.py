"""What "still failing" means for ``qmprr minimize``: a replay report (and the replay's log) in, yes or no.

By default the original's first divergence (:func:`signature`: command, status,
each difference's kind, path and values); else an error class among the
replies, an event the target sent, or a user's predicate program given the
report as JSON on stdin (exit 0 = still failing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
from typing import Any

import attrs

from ..errors import QmprrError, RecordingError
from ..recording import Event, RecordingReader
from .compare import short
from .engine import ReplayReport
from .report import to_json

PREDICATE_TIMEOUT = 60.0


class MinimizeError(QmprrError):
    """The recording cannot be minimized (bad input, the target cannot run it)."""


Signature = tuple[Any, ...]


@attrs.define
class Criterion:
    """What "still failing" means; all that are given must hold. None given: the original's first divergence."""

    error_class: str | None = None
    event: str | None = None
    predicate: str | None = None  # a command line: the report as JSON on stdin, exit 0 = still failing
    signature: Signature | None = None  # the default's: set from the original's replay

    @property
    def default(self) -> bool:
        return self.error_class is None and self.event is None and self.predicate is None

    def describe(self) -> str:
        if self.default:
            if not self.signature:
                return "the first divergence"
            command, status, diffs = self.signature
            return f"first divergence: {command} {status}" + (f" ({diffs[0][0]} {diffs[0][1]})" if diffs else "")
        parts = [f"error class {self.error_class}" if self.error_class else "",
                 f"event {self.event}" if self.event else "",
                 f"predicate {self.predicate}" if self.predicate else ""]
        return ", ".join(p for p in parts if p)

    async def holds(self, report: ReplayReport, replay_log: str | None) -> bool:
        if report.error is not None:
            return False
        if self.default:
            return self.signature is not None and signature(report) == self.signature
        if self.error_class is not None and not any(
            isinstance(s.actual_reply, dict) and isinstance(s.actual_reply.get("error"), dict)
            and s.actual_reply["error"].get("class") == self.error_class for s in report.steps
        ):
            return False
        if self.event is not None and not (replay_log and _has_event(replay_log, self.event)):
            return False
        return self.predicate is None or await _predicate(self.predicate, report)


def signature(report: ReplayReport) -> Signature | None:
    """The first divergence as compared between tries: command, status, each difference's kind, path and values."""
    first = report.first_divergence
    if first is None:
        return None
    diffs = tuple((d.what, d.path, short(d.recorded, 200), short(d.actual, 200)) for d in first.differences)
    return (first.command, first.status, diffs)


def _has_event(path: str, name: str) -> bool:
    with contextlib.suppress(RecordingError, OSError), RecordingReader(path, errors="skip", one_file=True) as r:
        return any(isinstance(rec, Event) and rec.msg.get("event") == name for rec in r)
    return False


async def _predicate(command: str, report: ReplayReport) -> bool:
    data = json.dumps(to_json(report), default=repr).encode()
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise MinimizeError(f"--predicate {command}: {exc}") from None
    if not argv:
        raise MinimizeError("--predicate: an empty command")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        raise MinimizeError(f"--predicate {command}: cannot run: {exc.strerror or exc}") from None
    try:
        async with asyncio.timeout(PREDICATE_TIMEOUT):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await proc.communicate(data)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False
    return proc.returncode == 0
