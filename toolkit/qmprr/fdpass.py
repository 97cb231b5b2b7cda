"""Clients that pass file descriptors with their commands (SCM_RIGHTS).

libvirt sends an fd with ``getfd``/``add-fd`` (``virsh dump``, ``save``,
some disk set-ups). asyncio's stream transports drop ancillary data, so a
connection that may carry fds is read here with ``recvmsg`` and relayed to
the :class:`~qmprr.server.QmpServer` over a socketpair; the fds it brought
wait in the connection's queue and go to QEMU with the next command that
connection forwards (:class:`FdBackend`), which the log records as ``fd``
records (what the fd was, from ``fstat``: type, mode, size of a regular file;
never its number or content). qmprr closes its copies once QEMU has them.

Refused with an error reply to the command: more fds than QEMU's socket
chardev accepts with one message (:data:`QEMU_MAX_FDS`), or fds the kernel
had to truncate. fds that no command claimed are closed when the client
leaves, and a note says how many.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import socket
import stat
from collections.abc import Callable, Coroutine
from typing import Any

from .errors import QmprrError
from .server import describe_peer

#: QEMU's socket chardev keeps at most this many fds from one message (``TCP_MAX_FDS``).
QEMU_MAX_FDS = 16
_READ = 256 * 1024
_READ_FDS = 64  # read more than QEMU takes, to refuse the excess rather than lose it silently


class FdPassError(QmprrError):
    """File descriptors a client sent cannot go to QEMU with its command."""


def fd_stat(fd: int) -> dict[str, Any]:
    """What an fd is, for the log: type, permission bits, and the size of a regular file."""
    st = os.fstat(fd)
    mode = st.st_mode
    kinds = ((stat.S_ISREG, "file"), (stat.S_ISFIFO, "pipe"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISDIR, "dir"))
    kind = next((name for test, name in kinds if test(mode)), "other")
    info: dict[str, Any] = {"type": kind, "mode": f"{stat.S_IMODE(mode):04o}"}
    if kind == "file":
        info["size"] = st.st_size
    return info


class FdQueue:
    """fds one client sent, not yet claimed by a command."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.truncated = False

    def take(self) -> tuple[list[int], bool]:
        fds, truncated = self.fds, self.truncated
        self.fds, self.truncated = [], False
        return fds, truncated

    def close(self) -> int:
        fds, _ = self.take()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        return len(fds)


_CLIENT_FDS: contextvars.ContextVar[FdQueue | None] = contextvars.ContextVar("qmprr_client_fds", default=None)


class FdBackend:
    """The channel, with each forwarded command carrying the fds its client sent before it.

    Everything else is the channel's (attribute access is delegated).
    """

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    async def execute(self, msg: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        queue = _CLIENT_FDS.get()
        fds, truncated = queue.take() if queue is not None else ([], False)
        if not fds and not truncated:
            return await self._channel.execute(msg, **kwargs)  # type: ignore[no-any-return]
        try:
            if truncated:
                raise FdPassError("qmprr: the file descriptors sent with this command were truncated by the"
                                  " kernel (too many in one message): none passed on; send at most"
                                  f" {QEMU_MAX_FDS}")
            if len(fds) > QEMU_MAX_FDS:
                raise FdPassError(f"qmprr: {len(fds)} file descriptors sent with this command; QEMU takes at"
                                  f" most {QEMU_MAX_FDS} with one command: none passed on")
            info = [fd_stat(fd) for fd in fds]
            return await self._channel.execute(msg, fds=fds, fd_info=info, **kwargs)  # type: ignore[no-any-return]
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _recv_fds(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> tuple[bytes, list[int], int]:
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(sock, _READ, _READ_FDS)
            return data, fds, flags
        except (BlockingIOError, InterruptedError):
            pass
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(sock.fileno(), _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Coroutine[Any, Any, None]]


class FdServing:
    """Accepts clients on a listening UNIX socket and serves each through *server* with fd passing."""

    def __init__(self, server: Any, listener: socket.socket, role: str = "primary") -> None:
        self.server = server
        self.listener = listener
        self.role = role
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.listener.setblocking(False)
        self._accepting = asyncio.create_task(self._accept_loop(), name="qmprr-fd-accept")

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        where = self.server.add_socket(f"inherited socket fd {self.listener.fileno()}", self.role)
        while True:
            conn, _ = await loop.sock_accept(self.listener)
            if not self.server.admit(where, conn.send, lambda c=conn: describe_peer(c)):
                conn.close()  # over --max-clients, as on the server's own sockets
                continue
            task = asyncio.create_task(self._client(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _task: where.left())

    async def _client(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        queue = FdQueue()
        peer = describe_peer(conn)
        serve: Serve = getattr(self.server, "serve", None) or self.server._serve
        reader, writer = await asyncio.open_unix_connection(sock=theirs)

        async def up() -> None:  # client -> server, fds into the queue first
            try:
                while True:
                    data, fds, flags = await _recv_fds(loop, conn)
                    if fds or flags & socket.MSG_CTRUNC:
                        queue.fds.extend(fds)
                        queue.truncated |= bool(flags & socket.MSG_CTRUNC)
                    if not data:
                        break
                    await loop.sock_sendall(ours, data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    ours.shutdown(socket.SHUT_WR)

        async def down() -> None:  # server -> client
            try:
                while data := await loop.sock_recv(ours, _READ):
                    await loop.sock_sendall(conn, data)
            except OSError:
                pass

        if peer is not None:
            with contextlib.suppress(QmprrError):
                self.server.channel.note(f"a {self.role} client connected on the inherited socket: {peer}",
                                         {"peer": peer})
        context = contextvars.copy_context()
        context.run(_CLIENT_FDS.set, queue)
        served = asyncio.create_task(serve(reader, writer, self.role), context=context)
        pumps = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        try:
            await served
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pumps[1], 2.0)
        finally:
            for task in (*pumps, served):
                task.cancel()
            left = queue.close()
            if left:
                with contextlib.suppress(QmprrError):
                    self.server.channel.note(f"{left} file descriptor(s) a client sent with no command were closed")
            for sock in (conn, ours):
                sock.close()
            writer.close()

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        self.listener.close()


def inherited_listener(fd: int) -> socket.socket:
    """The listening UNIX stream socket at *fd* (``--socket-fd``); :class:`FdPassError` if it is not one."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise FdPassError(f"--socket-fd {fd}: not an open socket ({exc.strerror or exc})") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise FdPassError(f"--socket-fd {fd}: not a listening UNIX stream socket")
    return sock
