"""``qmprr replay``: choose the target, replay, report."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Any

import attrs

from ..errors import QmprrError
from .engine import ReplayOptions, ReplayReport, replay
from .normalize import package_warning
from ..recording import Redactor
from .report import ScrubbingWriter, summary, write_json
from .script import load_script
from .targets import TargetError, fake_target, log_factory, qemu_argv, qemu_target, socket_target


@attrs.define
class RunOptions:
    """Everything ``qmprr replay`` takes beyond the engine's options."""

    target: str = "qemu"  # qemu | fake | socket:PATH
    qemu: str | None = None
    argv_file: str | None = None
    domain: str | None = None  # domain XML to build the QEMU command line from
    workdir: str | None = None
    record: str | None = None
    report: str | None = None
    progress: bool = False


async def run_replay(path: str, run: RunOptions, options: ReplayOptions) -> ReplayReport:
    """Replay the recording at *path*; print the summary; return the report."""
    if run.workdir and not os.path.isdir(run.workdir):
        raise TargetError(f"--workdir {run.workdir}: not a folder")
    for option, out in (("--report", run.report), ("--record", run.record)):
        if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise QmprrError(f"{option} {out}: its folder does not exist")
    script = load_script(path)
    if not script.exchanges:
        raise QmprrError(f"{path}: the recording has no commands to replay")
    with contextlib.ExitStack() as stack:
        record = run.record
        if record is None:
            record = os.path.join(stack.enter_context(tempfile.TemporaryDirectory()), "replay.jsonl")
        elif os.path.exists(record):
            raise QmprrError(f"{record}: file exists; recordings are never overwritten")
        # --secret values never reach the replay's own recording, report or summary.
        redactor = Redactor().with_values(options.secrets.values())
        make_log = log_factory(record, None, {"replay-of": os.path.basename(path)}, redactor)
        report = ReplayReport(recording=path, target=run.target)
        if run.target == "fake":
            options.real_target = False
            target = fake_target(script, make_log)
        elif run.target == "qemu":
            env: dict[str, str] = {}
            if run.domain is not None:
                from ..domain import build_launch

                spec = build_launch(run.domain)
                script.header = attrs.evolve(script.header, qemu_argv=spec.argv) if script.header else None
                env = spec.env
            argv = qemu_argv(
                script,
                qemu=run.qemu,
                argv_file=run.argv_file,
                path_map=options.path_map,
                allow_unsafe=options.allow_unsafe or run.domain is not None,
                workdir=run.workdir,
            )
            make_log = log_factory(record, argv, {"replay-of": os.path.basename(path)}, redactor)
            target = qemu_target(argv, make_log, run.workdir, env)
        elif run.target.startswith("socket:"):
            target = socket_target(run.target[len("socket:") :], make_log)
        else:
            raise TargetError(f"unknown target {run.target!r}: use qemu, fake or socket:PATH")
        async with target as channel:
            warning = package_warning(
                script.greeting.get("QMP", {}).get("version"), channel.greeting.get("QMP", {}).get("version")
            )
            if warning:
                report.warnings.append(warning)
            with _progress(run.progress, len(script.exchanges)) as tick:
                await replay(script, channel, options, report, tick)
        if run.record:
            report.warnings.append(f"the replay was recorded to {run.record}")
    secrets = tuple(options.secrets.values())
    summary(report, ScrubbingWriter(sys.stdout, secrets) if secrets else sys.stdout)
    if run.report:
        write_json(report, run.report, secrets=secrets)
    return report


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Any:
    """A progress bar on a terminal for long replays (rich), else nothing."""
    if not enabled or total < 50:
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("replaying", total=total)
        yield lambda done, _total: bar.update(task, completed=done)
