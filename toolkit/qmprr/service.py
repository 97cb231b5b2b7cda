"""The recording proxy as a running service: ``qmprr launch`` and ``qmprr proxy``.

Wires a :class:`~qmprr.channel.Channel` (to a QEMU we start, or one already
running) to a :class:`~qmprr.server.QmpServer` and a recording, and runs until
QEMU exits or we are told to stop (SIGINT/SIGTERM). On a signal, ``launch``
asks QEMU to ``quit`` (logged, role ``internal``); if that cannot go through
the channel (the log cannot be written, QEMU does not answer) or QEMU lingers,
it sends SIGTERM, then SIGKILL. ``proxy`` just closes the connection and
leaves QEMU running.

If ``launch`` itself is killed, QEMU dies with it (see :mod:`qmprr.launch`),
unless ``keep_vm``: then QEMU's monitor listens at a path kept in the header
(``monitor_socket``), and ``proxy --reattach OLD`` connects to it and starts a
new recording whose header names OLD's last record (``previous``).
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

from . import address, images
from .channel import INTERNAL_SRC, Channel, ChannelError
from .errors import QmprrError, RecordingError
from .image_watch import ImageWatcher, qemu_folder
from .launch import LaunchedQemu, start_qemu
from .recording import RecordLog, RecordWriter, Redactor, SyncPolicy, header_for_greeting, relevant_env
from .recording.segment import SegmentEnd, segment_end
from .recording import sets
from .recording.chain import SealKey
from .recording.rotate import Rotation, SegmentedWriter
from .server import Limits, QmpServer, SocketPathError, check_socket_path
from .session import Policy

QUIT_TIMEOUT = 10.0  # for quit through the channel, then for QEMU to exit after it
TERM_GRACE = 10.0  # after SIGTERM, before SIGKILL


@attrs.frozen
class ServiceOptions:
    """What both ``launch`` and ``proxy`` take."""

    record: str
    socket: str | None  # the primary socket's path; None with socket_fd
    debug_socket: str | None = None
    sync: SyncPolicy = SyncPolicy.BATCH
    policy: Policy = attrs.field(factory=Policy)
    tx_idle_timeout: float = 30.0
    labels: dict[str, str] = attrs.field(factory=dict)
    redactor: Redactor = attrs.field(factory=Redactor)
    quiet: bool = False
    seal_key: SealKey | None = None  # key the recording's chain (``--seal-key``)
    limits: Limits = attrs.field(factory=Limits)  # per-client bounds (output, message size, clients)
    #: An inherited listening socket for primary clients (``--socket-fd``), instead of a path;
    #: its clients may pass fds (SCM_RIGHTS, see :mod:`qmprr.fdpass`).
    socket_fd: int | None = None
    #: ``tcp:`` sockets may bind a non-loopback address (``--listen-any``; QMP over TCP is unauthenticated).
    listen_any: bool = False
    #: Record a segment set (``--rotate-size``, ``--rotate-age``, ``--compress``, ``--keep``, ``--keep-age``).
    rotation: Rotation | None = None

    @property
    def segmented(self) -> bool:
        return self.rotation is not None and self.rotation.enabled

    def first_file(self, segment: int = 1) -> str:
        """The file the recording starts in: ``--record`` itself, or its set's first segment."""
        if not self.segmented:
            return self.record
        parsed = sets.parse(self.record)
        if parsed is not None:
            return self.record
        stem = sets.stem_of(self.record)
        return os.path.join(os.path.dirname(stem), sets.segment_name(os.path.basename(stem), segment))


def _log_factory(
    options: ServiceOptions,
    argv: list[str] | None,
    env: dict[str, str] | None = None,
    domain_xml: str | None = None,
    first_seq: int = 0,
    t_offset: float = 0.0,
    **header_fields: Any,
) -> Callable[[dict[str, Any]], RecordLog]:
    def make_log(greeting: dict[str, Any]) -> RecordLog:
        header = header_for_greeting(
            greeting,
            qemu_argv=argv,
            qemu_env={**relevant_env(), **(env or {})} if argv is not None else None,
            domain_xml=domain_xml,
            labels=options.labels,
            **header_fields,
        )
        if options.segmented:
            assert options.rotation is not None
            parsed = sets.parse(options.record)
            return SegmentedWriter(
                sets.stem_of(options.record), header, options.rotation, sync=options.sync,
                redactor=options.redactor, seal_key=options.seal_key,
                first_segment=parsed[1] if parsed else (header.segment or 1), first_seq=first_seq, t_offset=t_offset,
            )
        return RecordWriter.create(
            options.record, header, sync=options.sync, redactor=options.redactor, seal_key=options.seal_key,
            first_seq=first_seq, t_offset=t_offset,
        )

    return make_log


def _argv_images(argv: list[str], options: ServiceOptions) -> list[dict[str, Any]] | None:
    """The images *argv* names (as the header keeps it, redacted), described; None when there are none."""
    from .recording.redact import REDACTED, redact_argv

    logged = redact_argv(argv)[0] if options.redactor.builtin else argv
    return images.describe_all([o for o in images.opened_in_argv(logged) if REDACTED not in o[0]]) or None


def _check_record_path(path: str, options: ServiceOptions | None = None, segment: int = 1) -> None:
    if options is not None:
        path = options.first_file(segment)
    if os.path.exists(path) or os.path.exists(path + sets.ZST):
        raise RecordingError(f"{path}: file exists; recordings are never overwritten, choose another name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RecordingError(f"{path}: folder {folder} does not exist")


def _say(options: ServiceOptions, text: str) -> None:
    if not options.quiet:
        print(f"qmprr: {text}", file=sys.stderr, flush=True)


def _check_socket_paths(options: ServiceOptions, monitor: str | None = None) -> None:
    """Fail before QEMU starts when a socket path cannot be served."""
    paths = [p for p in (options.socket, options.debug_socket) if p]
    if len(set(paths)) != len(paths):
        raise SocketPathError("--socket and --debug-socket must be different paths")
    if monitor is not None and os.path.abspath(monitor) in map(os.path.abspath, paths):
        raise SocketPathError(f"{monitor}: QEMU's monitor socket must differ from --socket and --debug-socket")
    for path in paths:
        if isinstance(address.parse(path), address.TcpAddress):
            address.check_listen(path, listen_any=options.listen_any)
        else:
            check_socket_path(path)


def default_monitor_socket(record: str) -> str:
    """Where ``launch --keep-vm`` puts QEMU's monitor by default: beside the recording."""
    root, ext = os.path.splitext(record)
    return (root if ext == ".jsonl" else record) + ".monitor.sock"


def _remove_if_stale(path: str | None) -> None:
    """Remove a socket file nobody listens on any more (QEMU's monitor after it exited)."""
    if path is not None:
        with contextlib.suppress(QmprrError, OSError):
            check_socket_path(path)


async def _serve(channel: Channel, options: ServiceOptions, *qemu_pids: int | None) -> QmpServer:
    """Serve the clients; *qemu_pids* may be QEMU's (the first that is names the folder where relative
    image names are read: the socket's peer, else the pid a reattached recording names)."""
    folder = next((f for f in map(qemu_folder, qemu_pids) if f is not None), None)
    server = QmpServer(ImageWatcher(channel, folder), policy=options.policy, limits=options.limits)
    if options.socket_fd is not None:
        from .fdpass import inherited_listener

        listener = inherited_listener(options.socket_fd)
        await server.serve_listener(listener, label=f"inherited socket fd {options.socket_fd}", pass_fds=True)
    try:
        if options.socket is not None:
            await server.listen(options.socket, "primary", listen_any=options.listen_any)
        if options.debug_socket:
            await server.listen(options.debug_socket, "debug", listen_any=options.listen_any)
    except BaseException:
        await server.close()
        raise
    where = f"primary socket {options.socket}" if options.socket else f"primary socket fd {options.socket_fd}"
    if options.debug_socket:
        where += f", debug socket {options.debug_socket}"
    _say(options, f"recording to {channel.log.path}; {where}")
    return server


ROTATE_TICK = 0.5  # seconds between looks at --rotate-age


def _start_rotation(channel: Channel) -> asyncio.Task[None] | None:
    """For a segment set: SIGHUP rotates, and a periodic look rotates by age when nothing is written."""
    log = channel.log
    if not isinstance(log, SegmentedWriter):
        return None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, log.request_rotate)

    async def tick() -> None:
        while not log.closed:
            await asyncio.sleep(ROTATE_TICK)
            try:
                log.rotate_if_due()
            except RecordingError as exc:
                with contextlib.suppress(QmprrError, OSError):
                    channel.note(f"rotation failed: {exc}")

    return asyncio.ensure_future(tick())


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
    keep_vm: bool = False,
    monitor_socket: str | None = None,
) -> int:
    """Start QEMU from *argv* (with *env* added), record and serve until it exits.

    Returns QEMU's exit status. *domain_xml*, when QEMU was built from one,
    goes into the recording's header with the argv. With *keep_vm*, QEMU
    outlives a killed qmprr and its monitor listens at *monitor_socket*
    (default: beside the recording), recorded in the header.
    """
    _check_record_path(options.record, options)
    monitor = (monitor_socket or default_monitor_socket(options.record)) if keep_vm else None
    _check_socket_paths(options, monitor)
    stop = _stop_event()
    qemu = await start_qemu(argv, env, keep_vm=keep_vm, monitor_path=monitor)
    fields: dict[str, Any] = {"qemu_pid": qemu.process.pid, "images": _argv_images(argv, options)}
    if monitor is not None:
        fields["monitor_socket"] = os.path.abspath(monitor)
    reader, writer = await asyncio.open_unix_connection(sock=qemu.monitor)
    try:
        channel = await Channel.open(
            reader,
            writer,
            _log_factory(options, argv, env, domain_xml, **fields),
            tx_idle_timeout=options.tx_idle_timeout,
        )
    except QmprrError as exc:
        error = await qemu.fail_startup(exc)
        _remove_if_stale(monitor)
        raise error from None
    server = None
    rotation = _start_rotation(channel)
    try:
        server = await _serve(channel, options, qemu.process.pid)
        if monitor is not None:
            _say(options, f"QEMU (pid {qemu.process.pid}) survives qmprr's death: its monitor is {monitor}"
                 f" ('qmprr proxy --reattach {options.record}' takes it back)")
        await _first(qemu.process.wait(), stop.wait())
        if qemu.process.returncode is None:
            await _quit(channel, qemu, options)
        status = await qemu.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.wait_closed(), 5.0)
        return status
    finally:
        if qemu.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                qemu.process.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(qemu.process.wait(), 5.0)
        if rotation is not None:
            rotation.cancel()
        if server is not None:
            await server.close()
        await channel.close()
        channel.log.close()
        if qemu.process.returncode is not None:
            _remove_if_stale(monitor)


async def _quit(channel: Channel, qemu: LaunchedQemu, options: ServiceOptions) -> None:
    """Ask QEMU to quit through the channel (so it is logged); then SIGTERM, then SIGKILL.

    The signals are for a QEMU that did not get the ``quit`` (the log cannot
    be written, the channel is closed or wedged) or does not exit after it.
    """
    channel.abort_all_transactions("qmprr is stopping")
    try:
        await asyncio.wait_for(
            channel.execute({"execute": "quit"}, src=INTERNAL_SRC, role="internal"), QUIT_TIMEOUT
        )
    except TimeoutError:
        why = f"QEMU did not answer 'quit' within {QUIT_TIMEOUT:g} s"
    except QmprrError as exc:  # ChannelError, or the log failing (RecordingError)
        why = f"'quit' could not go through the channel ({exc})"
    else:
        if await _exited(qemu, QUIT_TIMEOUT):
            return
        why = f"QEMU did not exit within {QUIT_TIMEOUT:g} s of 'quit'"
    for sig, grace in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, None)):
        if qemu.process.returncode is not None:
            return
        _say(options, f"{why}: sending QEMU {sig.name}")
        with contextlib.suppress(QmprrError, OSError):
            channel.note(f"qmprr is stopping: {why}: sending QEMU {sig.name}")
        with contextlib.suppress(ProcessLookupError):
            qemu.process.send_signal(sig)
        if grace is not None and await _exited(qemu, grace):
            return
        why = f"QEMU did not exit within {TERM_GRACE:g} s of SIGTERM"


async def _exited(qemu: LaunchedQemu, timeout: float) -> bool:
    try:
        await asyncio.wait_for(qemu.process.wait(), timeout)
    except TimeoutError:
        return False
    return True


def _reattach_fields(previous: str, options: ServiceOptions) -> tuple[SegmentEnd, dict[str, Any]]:
    """Where *previous* ends, and the header fields of the segment continuing it."""
    end = segment_end(previous)
    segment = (end.header.segment or 1) + 1
    fields: dict[str, Any] = {**end.continuation(options.first_file(segment)),
                              "first_seq": end.final_seq + 1, "t_offset": end.final_t}
    for name in ("qemu_pid", "monitor_socket"):
        value = getattr(end.header, name)
        if value is not None:
            fields[name] = value
    return end, fields


def _reattach_hint(end: SegmentEnd) -> str:
    """Why a reattach could not talk to QEMU's monitor, as far as we can tell."""
    pid = end.header.qemu_pid
    if pid is not None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f" (QEMU, pid {pid} in {end.path}, is no longer running)"
        except PermissionError:
            pass
    return " (QEMU's monitor serves one client at a time: is another one connected to it?)"


async def run_proxy(upstream: str | None, options: ServiceOptions, *, reattach: str | None = None) -> int:
    """Attach to a running QEMU's QMP socket; record and serve until it goes or we stop.

    With *reattach* (a recording made by ``launch --keep-vm``, or a segment
    continuing one), connect to the monitor its header names (unless
    *upstream* is given) and start a new segment whose header names it.
    """
    fields: dict[str, Any] = {}
    end = None
    if reattach is not None:
        end, fields = _reattach_fields(reattach, options)
    _check_record_path(options.record, options, fields.get("segment", 1))
    if reattach is not None:
        if upstream is None:
            upstream = fields.get("monitor_socket")
        if upstream is None:
            raise QmprrError(
                f"{reattach}: its header names no monitor socket (QEMU was not launched with --keep-vm);"
                " give --upstream QEMU_QMP_SOCKET"
            )
    if upstream is None:
        raise QmprrError("give --upstream QEMU_QMP_SOCKET or --reattach RECORDING")
    _check_socket_paths(options, upstream)
    stop = _stop_event()
    try:
        channel = await Channel.open_unix(
            upstream, _log_factory(options, None, **fields), tx_idle_timeout=options.tx_idle_timeout
        )
    except ChannelError as exc:
        if end is None:
            raise
        raise ChannelError(f"{exc}{_reattach_hint(end)}") from None
    server = None
    rotation = _start_rotation(channel)
    try:
        if end is not None:
            torn = f", ignoring a torn last line of {end.torn_bytes} bytes" if end.torn_bytes else ""
            text = (f"reattached to QEMU's monitor {upstream}: continues {reattach} after its seq "
                    f"{end.final_seq}{torn}; what QEMU said while no recorder was attached is not recorded")
            channel.note(text, fields["previous"])
            _say(options, text)
        server = await _serve(channel, options, channel.peer_pid, fields.get("qemu_pid"))
        await _first(channel.wait_closed(), stop.wait())
        return 0
    finally:
        channel.refuse_new_commands("qmprr is stopping")
        if rotation is not None:
            rotation.cancel()
        if server is not None:
            await server.close()
        await channel.close()
        channel.log.close()
        if channel.closed_reason == "eof" and reattach is not None:
            _remove_if_stale(upstream)
