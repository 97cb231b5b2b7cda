"""``qmprr inject``: one command to a QMP socket, its reply printed.

The command is a JSON message, a name with qmp-shell's ``key=value``
arguments and ``-j`` JSON arguments (:mod:`qmprr.kvargs`), or an HMP line.
``--pass-fd FILE`` first hands QEMU an open file, as virsh and libvirt do:
``getfd`` with ``--fdname NAME`` (the command then says ``fd:NAME`` or
``NAME``; QEMU keeps the name until ``closefd``, across reconnections), or
``add-fd`` with ``--fdset ID`` (the command then says ``/dev/fdset/ID``;
QEMU drops a set nothing uses when the last monitor client leaves, so on
QEMU's own socket use it in the same inject). The fd goes with the
``getfd``/``add-fd`` message (SCM_RIGHTS), so it needs a UNIX socket, and
through qmprr a primary socket served with ``--socket-fd``: qmprr's
``--socket PATH`` and debug sockets do not pass fds on.
"""

from __future__ import annotations

import json
import os
import sys
from typing import IO, Any

import attrs

from . import address, codec, kvargs
from .client import ClientError, QmpClient, ReplyTimeout

EXIT_OK, EXIT_ERROR_REPLY = 0, 1

#: QEMU's answer to getfd/add-fd when no fd came with the message.
NO_FD_DESC = "No file descriptor supplied via SCM_RIGHTS"

#: ``--fd-mode``: how ``--pass-fd FILE`` is opened, as the shell's <, <>, >, >>.
FD_MODES = {
    "r": os.O_RDONLY,
    "rw": os.O_RDWR,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
}


@attrs.frozen
class PassFd:
    """``--pass-fd FILE`` with ``--fdname NAME`` (getfd) or ``--fdset ID`` (add-fd)."""

    path: str
    fdname: str | None = None
    fdset: int | None = None
    mode: str = "rw"

    def command(self) -> dict[str, Any]:
        if self.fdname is not None:
            return {"execute": "getfd", "arguments": {"fdname": self.fdname}}
        return {"execute": "add-fd", "arguments": {"fdset-id": self.fdset}}

    def open(self) -> int:
        """The open file (non-blocking while opening: a FIFO with nobody at the other end never hangs)."""
        try:
            fd = os.open(self.path, FD_MODES[self.mode] | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK, 0o600)
        except OSError as exc:
            raise kvargs.ArgumentsError(f"--pass-fd {self.path}: cannot open: {exc.strerror or exc}") from None
        os.set_blocking(fd, True)  # QEMU gets the file as the shell's redirections would give it
        return fd


@attrs.frozen
class InjectOptions:
    socket: str
    msg: dict[str, Any] | None  # None: only --pass-fd's getfd/add-fd
    hmp: bool = False
    json: bool = False
    timeout: float = 30.0
    cancel_on_timeout: bool = False
    pass_fd: PassFd | None = None


def build_message(
    command: str | None, pairs: list[str], json_arguments: str | None, hmp: str | None, pass_fd: PassFd | None
) -> dict[str, Any] | None:
    """The message to send after any --pass-fd; ArgumentsError (exit 2) for a wrong command line."""
    if hmp is not None:
        if command is not None or pairs or json_arguments is not None:
            raise kvargs.ArgumentsError("give either a command (JSON, or a name with arguments) or --hmp, not both")
        return {"execute": "human-monitor-command", "arguments": {"command-line": hmp}}
    msg = kvargs.build_command(command, pairs, json_arguments)
    if msg is None and pass_fd is None:
        raise kvargs.ArgumentsError("give a command: 'JSON', a command name [KEY=VALUE ...], or --hmp 'TEXT'")
    return msg


def pass_fd_option(
    socket: str, path: str | None, fdname: str | None, fdset: int | None, mode: str = "rw"
) -> PassFd | None:
    """``--pass-fd`` and its companions, checked before anything is sent (ArgumentsError: exit 2)."""
    if path is None:
        if fdname is not None or fdset is not None:
            raise kvargs.ArgumentsError("--fdname and --fdset go with --pass-fd FILE")
        return None
    if (fdname is None) == (fdset is None):
        raise kvargs.ArgumentsError("--pass-fd FILE needs --fdname NAME (getfd) or --fdset ID (add-fd), one of them")
    if isinstance(address.parse(socket), address.TcpAddress):
        raise kvargs.ArgumentsError(f"--pass-fd needs a UNIX socket: fds cannot be passed over TCP ({socket})")
    return PassFd(path, fdname=fdname, fdset=fdset, mode=mode)


def _timed_out(options: InjectOptions) -> ClientError:
    if options.cancel_on_timeout:  # leaving withdraws it, if it is still queued
        return ClientError(
            f"no reply within {options.timeout:g} s; timed out: withdrawn if it had not reached"
            " QEMU (see the recording: a command record from this client means it had)"
        )
    return ClientError(
        f"no reply within {options.timeout:g} s: the command may still run (it is queued behind"
        " other commands, or in flight in QEMU); its reply will be in the recording"
        " (--cancel-on-timeout withdraws a queued one instead)"
    )


def _error_line(reply: dict[str, Any], passed: bool) -> str:
    err = reply["error"]
    line = f"qmprr: error reply {err.get('class')}: {err.get('desc')}"
    if passed and err.get("desc") == NO_FD_DESC:
        line += ("; the fd did not reach QEMU: through qmprr, fds pass only on a primary socket served"
                 " with --socket-fd (not on --socket PATH or a debug socket)")
    return line


def run(options: InjectOptions, out: IO[str] | None = None) -> int:
    """Send the command (after --pass-fd's), print the reply; 0 a return, 1 an error reply."""
    out = out or sys.stdout
    fd = options.pass_fd.open() if options.pass_fd is not None else None
    try:
        with QmpClient(options.socket, timeout=options.timeout) as client:
            if not options.cancel_on_timeout:
                client.detach()  # if we time out and leave, qmprr still runs the command
            try:
                if options.pass_fd is not None and fd is not None:
                    reply = client.execute_msg(options.pass_fd.command(), fds=[fd])
                    os.close(fd)  # QEMU (or qmprr) has its own copy now
                    fd = None
                    if "error" not in reply:
                        _say_passed(options.pass_fd, reply)
                    if "error" in reply or options.msg is None:
                        return _print(options, reply, passed=True, out=out)
                assert options.msg is not None
                reply = client.execute_msg(options.msg)
            except ReplyTimeout:
                raise _timed_out(options) from None
    finally:
        if fd is not None:
            os.close(fd)
    return _print(options, reply, passed=False, out=out)


def _say_passed(pass_fd: PassFd, reply: dict[str, Any]) -> None:
    if pass_fd.fdname is not None:
        print(f"qmprr: passed {pass_fd.path} as fd name {pass_fd.fdname!r}", file=sys.stderr)
    else:
        got = reply.get("return") or {}
        print(f"qmprr: passed {pass_fd.path} into fdset {got.get('fdset-id', pass_fd.fdset)}"
              f" (/dev/fdset/{got.get('fdset-id', pass_fd.fdset)})", file=sys.stderr)


def _print(options: InjectOptions, reply: dict[str, Any], *, passed: bool, out: IO[str]) -> int:
    reply.pop("id", None)
    if options.json:
        print(codec.dumps(reply).decode(), file=out)
    elif options.hmp and isinstance(reply.get("return"), str):
        out.write(reply["return"])
    else:
        print(json.dumps(reply.get("return", reply), indent=2, ensure_ascii=False), file=out)
    if "error" in reply:
        print(_error_line(reply, passed), file=sys.stderr)
        return EXIT_ERROR_REPLY
    return EXIT_OK
