"""The recording proxy as a running service: ``qmprr launch`` and ``qmprr proxy``.

Wires a :class:`~qmprr.channel.Channel` (to a QEMU we start, or one already
running) to a :class:`~qmprr.server.QmpServer` and a recording, and runs until
QEMU exits or we are told to stop (SIGINT/SIGTERM). On a signal, ``launch``
asks QEMU to ``quit`` (logged, role ``internal``) and kills it after a timeout;
``proxy`` just closes the connection and leaves QEMU running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import attrs

from .channel import INTERNAL_SRC, Channel, ChannelError
from .errors import QmprrError, RecordingError
from .launch import LaunchedQemu, start_qemu
from .recording import RecordWriter, Redactor, SyncPolicy, new_header, relevant_env
from .recording.chain import SealKey
from .server import QmpServer, SocketPathError, check_socket_path
from .session import Policy

QUIT_TIMEOUT = 10.0


@attrs.frozen
class ServiceOptions:
    """What both ``launch`` and ``proxy`` take."""

    record: str
    socket: str
    debug_socket: str | None = None
    sync: SyncPolicy = SyncPolicy.BATCH
    policy: Policy = attrs.field(factory=Policy)
    tx_idle_timeout: float = 30.0
    labels: dict[str, str] = attrs.field(factory=dict)
    redactor: Redactor = attrs.field(factory=Redactor)
    quiet: bool = False
    seal_key: SealKey | None = None  # key the recording's chain (``--seal-key``)


def _log_factory(
    options: ServiceOptions,
    argv: list[str] | None,
    env: dict[str, str] | None = None,
    domain_xml: str | None = None,
) -> Callable[[dict[str, Any]], RecordWriter]:
    def make_log(greeting: dict[str, Any]) -> RecordWriter:
        version = greeting.get("QMP", {}).get("version")
        header = new_header(
            qemu_version=version if isinstance(version, dict) else None,
            qemu_argv=argv,
            qemu_env={**relevant_env(), **(env or {})} if argv is not None else None,
            domain_xml=domain_xml,
            labels=options.labels,
        )
        return RecordWriter.create(
            options.record, header, sync=options.sync, redactor=options.redactor, seal_key=options.seal_key
        )

    return make_log


def _check_record_path(path: str) -> None:
    if os.path.exists(path):
        raise RecordingError(f"{path}: file exists; recordings are never overwritten, choose another name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RecordingError(f"{path}: folder {folder} does not exist")


def _say(options: ServiceOptions, text: str) -> None:
    if not options.quiet:
        print(f"qmprr: {text}", file=sys.stderr, flush=True)


def _check_socket_paths(options: ServiceOptions) -> None:
    """Fail before QEMU starts when a socket path cannot be served."""
    paths = [options.socket] + ([options.debug_socket] if options.debug_socket else [])
    if len(set(paths)) != len(paths):
        raise SocketPathError("--socket and --debug-socket must be different paths")
    for path in paths:
        check_socket_path(path)


async def _serve(channel: Channel, options: ServiceOptions) -> QmpServer:
    server = QmpServer(channel, policy=options.policy)
    try:
        await server.listen(options.socket, "primary")
        if options.debug_socket:
            await server.listen(options.debug_socket, "debug")
    except BaseException:
        await server.close()
        raise
    where = f"primary socket {options.socket}"
    if options.debug_socket:
        where += f", debug socket {options.debug_socket}"
    _say(options, f"recording to {options.record}; {where}")
    return server


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


async def run_launch(
    argv: list[str],
    options: ServiceOptions,
    *,
    env: dict[str, str] | None = None,
    domain_xml: str | None = None,
) -> int:
    """Start QEMU from *argv* (with *env* added), record and serve until it exits.

    Returns QEMU's exit status. *domain_xml*, when QEMU was built from one,
    goes into the recording's header with the argv.
    """
    _check_record_path(options.record)
    _check_socket_paths(options)
    stop = _stop_event()
    qemu = await start_qemu(argv, env)
    reader, writer = await asyncio.open_unix_connection(sock=qemu.monitor)
    try:
        channel = await Channel.open(
            reader,
            writer,
            _log_factory(options, argv, env, domain_xml),
            tx_idle_timeout=options.tx_idle_timeout,
        )
    except QmprrError as exc:
        raise await qemu.fail_startup(exc) from None
    server = None
    try:
        server = await _serve(channel, options)
        await _first(qemu.process.wait(), stop.wait())
        if qemu.process.returncode is None:
            await _quit(channel, qemu)
        status = await qemu.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.wait_closed(), 5.0)
        return status
    finally:
        if qemu.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                qemu.process.kill()
        if server is not None:
            await server.close()
        await channel.close()
        channel.log.close()


async def _quit(channel: Channel, qemu: LaunchedQemu) -> None:
    """Ask QEMU to quit through the channel (so it is logged); kill it if it lingers."""
    channel.abort_all_transactions("qmprr is stopping")
    with contextlib.suppress(ChannelError, TimeoutError):
        await asyncio.wait_for(
            channel.execute({"execute": "quit"}, src=INTERNAL_SRC, role="internal"), QUIT_TIMEOUT
        )
    try:
        await asyncio.wait_for(qemu.process.wait(), QUIT_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            qemu.process.kill()


async def run_proxy(upstream: str, options: ServiceOptions) -> int:
    """Attach to a running QEMU's QMP socket; record and serve until it goes or we stop."""
    _check_record_path(options.record)
    _check_socket_paths(options)
    stop = _stop_event()
    channel = await Channel.open_unix(
        upstream, _log_factory(options, None), tx_idle_timeout=options.tx_idle_timeout
    )
    server = None
    try:
        server = await _serve(channel, options)
        await _first(channel.wait_closed(), stop.wait())
        return 0
    finally:
        channel.refuse_new_commands("qmprr is stopping")
        if server is not None:
            await server.close()
        await channel.close()
        channel.log.close()
