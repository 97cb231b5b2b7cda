"""Clients that pass file descriptors with their commands (SCM_RIGHTS).

libvirt sends an fd with ``getfd``/``add-fd`` (``virsh dump``, ``save``,
some disk set-ups). asyncio's transports drop ancillary data, so the serve
loop reads a connection that may carry fds with ``recvmsg``
(:meth:`~qmprr.server.QmpServer.serve_listener` with ``pass_fds``); the fds
it brought wait in the connection's :class:`FdQueue` and go to QEMU with the
next command that connection forwards (:func:`claim_fds`), which the log
records as ``fd`` records (what the fd was, from ``fstat``: type, mode, size
of a regular file; never its number or content). qmprr closes its copies
once QEMU has them.

Refused with an error reply to the command: more fds than QEMU's socket
chardev accepts with one message (:data:`QEMU_MAX_FDS`), or fds the kernel
had to truncate. fds that no command claimed are closed when the client
leaves, and a note says how many.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from typing import Any

from .errors import QmprrError

#: QEMU's socket chardev keeps at most this many fds from one message (``TCP_MAX_FDS``).
QEMU_MAX_FDS = 16
READ_FDS = 64  # read more than QEMU takes, to refuse the excess rather than lose it silently


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


def claim_fds(queue: FdQueue) -> tuple[list[int], dict[str, Any]]:
    """The fds waiting in *queue*, for the command about to be forwarded, and its ``submit`` options.

    Raises :class:`FdPassError` (the fds closed) when the kernel truncated them
    or there are more than QEMU takes with one command.
    """
    fds, truncated = queue.take()
    if not fds and not truncated:
        return [], {}
    try:
        if truncated:
            raise FdPassError("qmprr: the file descriptors sent with this command were truncated by the"
                              " kernel (too many in one message): none passed on; send at most"
                              f" {QEMU_MAX_FDS}")
        if len(fds) > QEMU_MAX_FDS:
            raise FdPassError(f"qmprr: {len(fds)} file descriptors sent with this command; QEMU takes at"
                              f" most {QEMU_MAX_FDS} with one command: none passed on")
        info = [fd_stat(fd) for fd in fds]
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return fds, {"fds": fds, "fd_info": info}


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
