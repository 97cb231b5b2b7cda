"""The recorder process the emulator wrapper forks: libvirt's monitor, qmprr's channel, QEMU.

It runs detached (its own session, init's child), holds libvirt's listening
monitor socket and one end of QEMU's socketpair, and lives as long as QEMU's
monitor: QEMU exiting ends it. Its stdio goes to ``UUID-START.log`` beside
the recording, never to libvirt's QEMU log. SIGTERM stops it (libvirt then
sees the monitor end and kills the VM as crashed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from typing import Any

from ..channel import Channel
from ..errors import QmprrError
from ..recording import RecordWriter, Redactor, SyncPolicy, header_for_greeting, relevant_env
from ..server import QmpServer
from ..session import Policy

GREETING_TIMEOUT = 120.0  # a loaded host may take long to bring QEMU's main loop up


def _only_fds(keep: set[int]) -> None:
    """Close every inherited fd but *keep* (QEMU's fds belong to QEMU)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _redirect_stdio(log_path: str) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)


def _status_xml(name: str | None) -> str | None:
    """libvirt's status XML of the running domain, where readable (it holds the domain XML)."""
    if name is None:
        return None
    from .emulator import STATUS_XML

    try:
        with open(STATUS_XML.format(name=name), encoding="utf-8") as f:
            return f.read(4 * 1024 * 1024)
    except (OSError, UnicodeDecodeError):
        return None


def run_recorder(
    listen_fd: int, qemu_sock: socket.socket, paths: dict[str, str], config: dict[str, Any],
    argv: list[str], name: str | None, uuid: str | None, qemu_pid: int | None = None,
    given: list[str] | None = None,
) -> int:
    """Serve libvirt on *listen_fd* and record, until QEMU's monitor (*qemu_sock*) ends.

    *argv* (the header's, for replay) leaves out libvirt's monitor and per-run master key;
    *given*, libvirt's command line as it came, goes into a note.
    """
    _only_fds({0, 1, 2, listen_fd, qemu_sock.fileno()})
    _redirect_stdio(paths["log"])
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return asyncio.run(_record(listen_fd, qemu_sock, paths, config, argv, name, uuid, qemu_pid,
                                   given))
    except Exception as exc:  # noqa: BLE001 - the recorder's log is where this goes
        print(f"qmprr: recorder failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1


async def _record(
    listen_fd: int, qemu_sock: socket.socket, paths: dict[str, str], config: dict[str, Any],
    argv: list[str], name: str | None, uuid: str | None, qemu_pid: int | None,
    given: list[str] | None = None,
) -> int:
    labels = {"libvirt_domain": name or "", "recorder_pid": str(os.getpid())}
    if uuid:
        labels["libvirt_uuid"] = uuid
    sync = SyncPolicy(config.get("sync", "batch"))

    def make_log(greeting: dict[str, Any]) -> RecordWriter:
        header = header_for_greeting(
            greeting,
            qemu_argv=argv, qemu_env=relevant_env(), domain_xml=_status_xml(name), labels=labels,
            qemu_pid=qemu_pid,
        )
        return RecordWriter.create(paths["record"], header, sync=sync, redactor=Redactor())

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reader, writer = await asyncio.open_unix_connection(sock=qemu_sock, limit=256 * 1024)
    channel = await Channel.open(reader, writer, make_log, greeting_timeout=GREETING_TIMEOUT)
    if given is not None and given != argv:
        channel.note("libvirt's QEMU command line as it came; the header's qemu_argv leaves out libvirt's"
                     " monitor chardev and -mon (a replay brings its own) and an unused per-run master key",
                     {"argv": given})
    policy = Policy.build(deny=list(config.get("deny", [])), allow=list(config.get("allow", [])))
    server = QmpServer(channel, policy=policy)
    try:
        await server.serve_listener(socket.socket(fileno=listen_fd), label=f"inherited socket fd {listen_fd}",
                                    pass_fds=True)
        if config.get("debug", True):
            try:
                await server.listen(paths["debug"], "debug")
            except QmprrError as exc:  # recording libvirt matters more than the debug socket
                channel.note(f"no debug socket: {exc}")
                print(f"qmprr: no debug socket: {exc}", file=sys.stderr, flush=True)
        print(f"qmprr: recording {name} to {paths['record']}", file=sys.stderr, flush=True)
        done = asyncio.ensure_future(channel.wait_closed())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([done, stopped], return_when=asyncio.FIRST_COMPLETED)
        for task in (done, stopped):
            task.cancel()
        if stop.is_set():
            channel.note("qmprr's recorder was told to stop (SIGTERM): libvirt will see its monitor end")
        return 0
    finally:
        channel.refuse_new_commands("qmprr's recorder is stopping")
        await server.close()
        await channel.close()
        channel.log.close()
