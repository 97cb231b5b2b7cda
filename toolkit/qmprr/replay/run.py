"""``qmprr replay``: choose the target, replay, report."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import tempfile
from typing import Any

import attrs

from ..errors import QmprrError
from ..files import display_name
from ..launch import LaunchedQemu
from ..recording import Redactor
from ..sandbox import Sandbox, SandboxError, probe
from .engine import ReplayOptions, ReplayReport, replay
from .normalize import package_warning
from .report import ScrubbingWriter, summary, write_json
from .script import load_script
from ..qemu_channel import work_folder
from .targets import TargetError, fake_target, log_factory, qemu_argv, qemu_target, socket_target


@attrs.define
class RunOptions:
    """Everything ``qmprr replay`` takes beyond the engine's options."""

    target: str = "qemu"  # qemu | fake | socket:PATH
    qemu: str | None = None
    argv_file: str | None = None
    domain: str | None = None  # domain XML to build the QEMU command line from
    ignore_unsupported: bool = False  # --domain: drop unsupported parts of the XML with a warning
    workdir: str | None = None  # None: a fresh temporary folder
    keep_workdir: bool = False
    sandbox: bool = True  # run QEMU in qmprr.sandbox (off only with --allow-unsafe)
    checks: bool = True  # safety checks (off only with --allow-unsafe; alone, to test the sandbox)
    record: str | None = None
    report: str | None = None
    progress: bool = False
    scratch_images: bool = False  # blank images for every described one (else only for missing ones)


#: What ``--allow-unsafe`` prints on stderr (replay, and minimize once for all its tries).
UNSAFE_WARNING = "qmprr: --allow-unsafe: no sandbox and no checks: the recording's commands run on this host as recorded"


async def run_replay(path: str, run: RunOptions, options: ReplayOptions) -> ReplayReport:
    """Replay the recording at *path*; print the summary; return the report.

    A QEMU target runs in a work folder (``--workdir``, else a fresh temporary
    one, removed afterwards unless ``--keep-workdir``), where the recording's
    relative paths resolve, inside :mod:`qmprr.sandbox` unless ``--allow-unsafe``.
    """
    if run.workdir and not os.path.isdir(run.workdir):
        raise TargetError(f"--workdir {run.workdir}: not a folder")
    for option, out in (("--report", run.report), ("--record", run.record)):
        if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise QmprrError(f"{option} {out}: its folder does not exist")
    script = load_script(path)
    if not script.exchanges:
        raise QmprrError(f"{path}: the recording has no commands to replay")
    if options.allow_unsafe:
        print(UNSAFE_WARNING, file=sys.stderr)
    with contextlib.ExitStack() as stack:
        record = run.record
        if record is None:
            record = os.path.join(stack.enter_context(tempfile.TemporaryDirectory()), "replay.jsonl")
        elif os.path.exists(record):
            raise QmprrError(f"{record}: file exists; recordings are never overwritten")
        # --secret values never reach the replay's own recording, report or summary.
        redactor = Redactor().with_values(options.secrets.values())
        make_log = log_factory(record, None, {"replay-of": display_name(os.path.basename(path))}, redactor)
        report = ReplayReport(recording=path, target=run.target)
        policy = options.policy(checks=run.checks)
        exit_signal = None
        if run.target == "fake":
            policy = options.policy(checks=False)  # the fake runs nothing
            target = fake_target(script, make_log)
        elif run.target == "qemu":
            workdir = run.workdir or stack.enter_context(work_folder("qmprr-replay-", keep=run.keep_workdir))
            options = _scratch(script, workdir, options, report, always=run.scratch_images)
            sandbox = None
            if run.sandbox and not options.allow_unsafe:
                try:
                    probe()
                except SandboxError as exc:
                    raise TargetError(f"cannot sandbox QEMU: {exc}; --allow-unsafe replays without a sandbox") from None
                sandbox = Sandbox((workdir, *options.path_map.allowed_roots()))
            policy = options.policy(checks=run.checks, roots=(os.path.realpath(workdir),), network=sandbox is not None)
            env: dict[str, str] = {"TMPDIR": workdir}
            if run.domain is not None:
                from ..domain import build_launch

                spec = build_launch(run.domain, ignore_unsupported=run.ignore_unsupported)
                report.warnings += list(spec.warnings)
                script.header = attrs.evolve(script.header, qemu_argv=spec.argv) if script.header else None
                env.update(spec.env)
            argv = qemu_argv(
                script,
                qemu=run.qemu,
                argv_file=run.argv_file,
                path_map=options.path_map,
                checks=policy.checks and run.domain is None,  # domain XML is the user's own
                workdir=workdir,
            )
            recorded = script.header.qemu_argv[0] if script.header and script.header.qemu_argv else None
            if recorded and os.sep in recorded and run.argv_file is None and run.qemu is None and recorded != argv[0]:
                report.warnings.append(f"the recorded program {recorded!r} is replaced by the local {argv[0]!r}")
            make_log = log_factory(record, argv, {"replay-of": display_name(os.path.basename(path))}, redactor)
            launched: list[LaunchedQemu] = []
            target = qemu_target(argv, make_log, workdir, env, sandbox=sandbox, started=launched.append)
            exit_signal = functools.partial(_exit_signal, launched)
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
                await replay(script, channel, options, report, tick, policy=policy, exit_signal=exit_signal)
        if run.record:
            report.warnings.append(f"the replay was recorded to {run.record}")
    secrets = tuple(options.secrets.values())
    summary(report, ScrubbingWriter(sys.stdout, secrets) if secrets else sys.stdout)
    if run.report:
        write_json(report, run.report, secrets=secrets)
    return report


def _scratch(script: Any, workdir: str, options: ReplayOptions, report: ReplayReport, *, always: bool) -> ReplayOptions:
    """Blank images for the recorded ones missing here (all, with --scratch-images); the options with their paths mapped."""
    from .safety import PathMap
    from .scratch import prepare

    scratch = prepare(script, workdir, options.path_map, always=always)
    report.scratch_images = scratch.created
    report.warnings += scratch.problems
    if not scratch.pairs:
        return options
    return attrs.evolve(options, path_map=PathMap(options.path_map.pairs + tuple(scratch.pairs)))


async def _exit_signal(launched: list[LaunchedQemu]) -> int | None:
    """The signal that ended the launched QEMU (waiting a little for it to end), or None."""
    if not launched:
        return None
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(launched[0].process.wait(), 2.0)
    code = launched[0].process.returncode
    return -code if code is not None and code < 0 else None


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
