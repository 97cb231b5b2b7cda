"""Where a replay goes: a QEMU we start, a QEMU someone started, or the fake.

Each target yields an open :class:`~qmprr.channel.Channel` whose log is the
replay's own recording (``--record OUT``, or a temporary file).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..channel import Channel
from ..errors import QmprrError
from ..fake import FakeQemu
from ..launch import LaunchedQemu, LaunchError
from ..qemu_channel import qemu_channel
from ..recording import RecordWriter, Redactor, header_for_greeting
from ..sandbox import SECCOMP_SIGNAL, Sandbox
from .safety import PathMap, argv_refusal, resolve_qemu
from .script import Script


class TargetError(QmprrError):
    """The replay target cannot be started or reached."""


LogFactory = Callable[[dict[str, Any]], RecordWriter]


def log_factory(
    path: str,
    argv: list[str] | None,
    labels: dict[str, str],
    redactor: Redactor | None = None,
    *,
    link: dict[str, Any] | None = None,
) -> LogFactory:
    """A log for the target's channel; *link* makes it the next segment of a set.

    *link* holds the header's ``recording``, ``segment`` and ``previous``, and
    the writer's ``first_seq`` and ``t_offset`` (see :mod:`qmprr.recording.rotate`).
    """
    link = dict(link or {})
    first_seq, t_offset = link.pop("first_seq", 0), link.pop("t_offset", 0.0)

    def make(greeting: dict[str, Any]) -> RecordWriter:
        header = header_for_greeting(greeting, qemu_argv=argv, labels=labels, **link)
        return RecordWriter.create(path, header, redactor=redactor, first_seq=first_seq, t_offset=t_offset)

    return make


def qemu_argv(
    script: Script,
    *,
    qemu: str | None,
    argv_file: str | None,
    path_map: PathMap,
    checks: bool = True,
    workdir: str | None = None,
) -> list[str]:
    """The QEMU command line to replay with: recorded or from a file, the local QEMU first, paths mapped.

    A recorded command line is untrusted: its program is replaced by the local
    QEMU of the same name (:func:`~qmprr.replay.safety.resolve_qemu`) and, with
    *checks* (unless the user gave the whole line with ``--argv-file``), its
    options must stay within the work folder and the mapped roots.
    """
    if argv_file is not None:
        try:
            with open(argv_file) as f:
                text = f.read()
        except OSError as exc:
            raise TargetError(f"{argv_file}: cannot read: {exc.strerror}") from None
        argv = [line for line in text.splitlines() if line.strip()]
    elif script.header is not None and script.header.qemu_argv:
        argv = drop_recorded_sandbox(list(script.header.qemu_argv))
    else:
        raise TargetError(
            "the recording has no QEMU command line (made with 'qmprr proxy'?):"
            " give one with --argv-file, or replay into a running QEMU with --target socket:PATH"
        )
    if not argv:
        raise TargetError(f"{argv_file}: no QEMU command line in it")
    if path_map.pairs:
        argv = [path_map.rewrite(a) for a in argv]
    if argv_file is not None:
        program = qemu if qemu is not None else argv[0]
        found = shutil.which(program)
        if found is None:
            raise TargetError(f"QEMU binary {program!r} not found: install qemu-system-x86 or use --qemu BINARY")
        return [found, *argv[1:]]
    try:
        program = resolve_qemu(argv[0], qemu) if checks or qemu is not None else shutil.which(argv[0]) or argv[0]
    except ValueError as exc:
        raise TargetError(f"refusing the recorded QEMU command line: {exc}") from None
    except LookupError as exc:
        raise TargetError(str(exc.args[0])) from None
    if checks:
        roots = path_map.allowed_roots() + ([os.path.abspath(workdir)] if workdir else [])
        problem = argv_refusal(argv[1:], roots)
        if problem:
            raise TargetError(f"refusing the recorded QEMU command line: {problem} (--allow-unsafe to run it anyway)")
    return [program, *argv[1:]]


def drop_recorded_sandbox(argv: list[str]) -> list[str]:
    """*argv* without its ``-sandbox`` options: replay sets QEMU's sandbox itself.

    libvirt starts QEMU with one (``-sandbox on,obsolete=deny,...``); a hostile
    recording could carry ``-sandbox off``. Either way the replay's own applies.
    """
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-sandbox", "--sandbox"):
            skip = True
        else:
            out.append(arg)
    return out


@contextlib.asynccontextmanager
async def qemu_target(
    argv: list[str],
    make_log: LogFactory,
    workdir: str | None,
    env: dict[str, str] | None = None,
    *,
    sandbox: Sandbox | None = None,
    started: Callable[[LaunchedQemu], None] | None = None,
) -> AsyncIterator[Channel]:
    """Start QEMU from *argv* (in *workdir*, with *env* added, in *sandbox*) with a private monitor; yield the channel.

    *started* is told the launched QEMU (to watch how it ends).
    """
    launched: list[LaunchedQemu] = []

    def on_start(qemu: LaunchedQemu) -> None:
        launched.append(qemu)
        if started is not None:
            started(qemu)

    async with contextlib.AsyncExitStack() as stack:
        try:
            _, channel = await stack.enter_async_context(
                qemu_channel(argv, make_log, workdir=workdir, env=env, sandbox=sandbox, started=on_start))
        except QmprrError as exc:
            if not launched and isinstance(exc, LaunchError):
                raise TargetError(str(exc)) from None
            if launched and launched[0].process.returncode == -SECCOMP_SIGNAL:
                raise TargetError(
                    "QEMU was killed at start-up by its sandbox (SIGSYS): the command line made a forbidden"
                    " system call, such as running a program"
                ) from None
            raise
        yield channel


@contextlib.asynccontextmanager
async def socket_target(path: str, make_log: LogFactory) -> AsyncIterator[Channel]:
    """A QEMU someone else started, listening on QMP socket *path*."""
    channel = await Channel.open_unix(path, make_log)
    try:
        yield channel
    finally:
        await channel.close()
        channel.log.close()


@contextlib.asynccontextmanager
async def fake_target(script: Script, make_log: LogFactory) -> AsyncIterator[Channel]:
    """The fake QEMU serving *script* (ordered: skipped steps are allowed), in process, over a socketpair."""
    fake = FakeQemu(script, mode="ordered", internal=True)
    ours, theirs = socket.socketpair()
    fake_reader, fake_writer = await asyncio.open_unix_connection(sock=theirs)
    serving = asyncio.create_task(fake.handle(fake_reader, fake_writer))
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    channel = await Channel.open(reader, writer, make_log)
    try:
        yield channel
    finally:
        await channel.close()
        channel.log.close()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
