"""Starting QEMU with a private QMP monitor, owned by the process that starts it.

The monitor is one end of a socketpair handed to QEMU as
``-chardev socket,fd=N -mon chardev=...,mode=control``: it has no path, so no
other program can reach it, and the user's own argv is left as it is.
QEMU's stderr is relayed to ours as it comes, and its last lines are kept
for the error message when QEMU fails at start-up.

QEMU dies with its owner: the child sets ``PR_SET_PDEATHSIG`` (SIGKILL)
between fork and exec, then checks that its parent is still the one that
forked it (the owner may have died before the prctl took effect). The signal
survives the exec of QEMU (not a set-uid binary) and fires when the *thread*
that started QEMU ends: the event loop's thread. SIGKILL, not SIGTERM: with
its owner gone nobody is left to escalate a SIGTERM that a busy QEMU does not
act on, and a QEMU left without its monitor is what this guards against.

``keep_vm`` (``qmprr launch --keep-vm``) is the other choice: no death signal,
and the monitor is a listening UNIX socket at a path (bound by us, mode 0600,
passed to QEMU as ``fd=N,server=on,wait=off`` the way libvirt does it), so a
new recorder can connect after this one died (``qmprr proxy --reattach``).

Options that would take QEMU away from its owner are refused before it starts
(:func:`ownership_refusal`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import attrs

from .errors import QmprrError
from .sandbox import Sandbox, SandboxError

MONITOR_ID = "qmprr-monitor"


class LaunchError(QmprrError):
    """QEMU could not be started, or exited during start-up."""


@attrs.define(eq=False)
class LaunchedQemu:
    """A QEMU process and our end of its private monitor."""

    process: asyncio.subprocess.Process
    monitor: socket.socket
    argv: list[str]  # as the user gave it
    stderr_tail: collections.deque[str] = attrs.field(factory=lambda: collections.deque(maxlen=20))
    relay: asyncio.Task[None] | None = None

    async def fail_startup(self, cause: QmprrError) -> QmprrError:
        """Stop a QEMU whose monitor could not be opened; the error to report.

        QEMU's own message when it exited by itself, else *cause*.
        """
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 0.5)
        exited = self.process.returncode is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.wait()
        return self.startup_failure() if exited else cause

    def startup_failure(self) -> LaunchError:
        """The error to report when QEMU ended before it was usable."""
        status = self.process.returncode
        lines = [line.strip() for line in self.stderr_tail if line.strip()]
        # QEMU prefixes its errors with its program name; hints follow unprefixed.
        prefix = os.path.basename(self.argv[0]) + ":"
        own = [line for line in lines if line.startswith(prefix)]
        last = own[-1] if own else (lines[-1] if lines else "")
        detail = f": {last}" if last else ""
        return LaunchError(f"QEMU exited at start-up with status {status}{detail}")

    async def wait(self) -> int:
        """Wait for QEMU to exit; its status as a shell reports it (128+N for signal N)."""
        code = await self.process.wait()
        if self.relay is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.relay, 2.0)
        return 128 - code if code < 0 else code


def monitor_args(fd: int, *, listening: bool = False) -> list[str]:
    """The options that give QEMU a QMP monitor on socket *fd* (connected, or *listening*)."""
    server = ",server=on,wait=off" if listening else ""
    return ["-chardev", f"socket,id={MONITOR_ID},fd={fd}{server}", "-mon", f"chardev={MONITOR_ID},mode=control"]


#: QEMU options that take QEMU away from the process that started it, and why.
_TAKES_QEMU_AWAY = {
    "daemonize": "-daemonize forks QEMU into a daemon that outlives its starter: qmprr would see QEMU "
    "exit at once and leave the daemon running unmonitored; drop -daemonize (qmprr already runs "
    "QEMU in its own session, detached from the terminal)",
}
#: Options that only break the death signal (fine with keep_vm).
_CLEARS_DEATH_SIGNAL = {
    "runas": "-runas changes QEMU's user, which clears its parent-death signal: QEMU would outlive "
    "a killed qmprr; run qmprr as that user instead, or use --keep-vm",
}


def ownership_refusal(argv: list[str], *, die_with_parent: bool = True) -> str | None:
    """Why *argv* would escape the process that starts it, or None.

    QEMU accepts ``-opt`` and ``--opt``. ``-pidfile``, ``-chroot``, stdio
    monitors and extra ``-qmp`` sockets leave QEMU a child of its starter and
    are not refused.
    """
    refused = dict(_TAKES_QEMU_AWAY)
    if die_with_parent:
        refused.update(_CLEARS_DEATH_SIGNAL)
    for word in argv[1:]:
        if word.startswith("-"):
            why = refused.get(word[2:] if word.startswith("--") else word[1:])
            if why is not None:
                return why
    return None


_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Any:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def die_with_parent_hook(parent: int | None = None, exit_code: int = 125) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child die (SIGKILL) when its parent does.

    If the parent is already gone when the child gets there (it is not
    *parent*, by default the caller), the child exits with *exit_code* before
    it execs anything. The libc function is looked up here, in the parent:
    the child only calls it (nothing to import or allocate after the fork).
    """
    prctl = _prctl()
    expected = os.getpid() if parent is None else parent

    def hook() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != expected:
            os._exit(exit_code)

    return hook


async def start_qemu(
    argv: list[str],
    env: dict[str, str] | None = None,
    *,
    keep_vm: bool = False,
    monitor_path: str | None = None,
    sandbox: Sandbox | None = None,
    cwd: str | None = None,
) -> LaunchedQemu:
    """Start ``argv`` (QEMU binary first) with a private QMP monitor.

    *env* adds variables to qmprr's own environment for QEMU. By default QEMU
    dies with the thread that started it; with *keep_vm* it survives, and its
    monitor listens at *monitor_path* (required then) for whoever comes next.
    *cwd* is the folder it runs in; with *sandbox*, QEMU runs inside it
    (:mod:`qmprr.sandbox`).
    """
    if not argv:
        raise LaunchError("no QEMU command line given (put it after '--')")
    if keep_vm and monitor_path is None:
        raise LaunchError("keep_vm needs a monitor socket path")
    why = ownership_refusal(argv, die_with_parent=not keep_vm)
    if why is not None:
        raise LaunchError(why)
    binary = shutil.which(argv[0])
    if binary is None:
        raise LaunchError(
            f"QEMU binary {argv[0]!r} not found: install it (Debian: apt-get install qemu-system-x86)"
            " or give its full path"
        )
    ours, theirs = _monitor_sockets(monitor_path if keep_vm else None)
    args = [*argv[1:], *monitor_args(theirs.fileno(), listening=keep_vm)]
    try:
        command = sandbox.command(binary, args, die_with_parent=not keep_vm) if sandbox is not None else [binary, *args]
    except SandboxError as exc:
        ours.close()
        theirs.close()
        raise LaunchError(f"cannot sandbox QEMU: {exc}") from None
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            pass_fds=(theirs.fileno(),),
            cwd=cwd,
            preexec_fn=None if keep_vm else die_with_parent_hook(),
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env} if env else None,
            # Its own process group: Ctrl-C or 'kill %1' reaches qmprr, which quits
            # QEMU through the (logged) channel instead of QEMU dying on the signal.
            start_new_session=True,
        )
    except OSError as exc:
        ours.close()
        if keep_vm:
            with contextlib.suppress(OSError):
                os.unlink(monitor_path)  # type: ignore[arg-type]  # a path whenever keep_vm
        raise LaunchError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    finally:
        theirs.close()
    if keep_vm:
        await _connect_monitor(process, ours, monitor_path)  # type: ignore[arg-type]  # a path whenever keep_vm
    launched = LaunchedQemu(process=process, monitor=ours, argv=list(argv))
    launched.relay = asyncio.create_task(_relay_stderr(process, launched.stderr_tail))
    return launched


def _monitor_sockets(path: str | None) -> tuple[socket.socket, socket.socket]:
    """(ours, QEMU's): a socketpair, or with *path* a listening socket there and ours unconnected."""
    if path is None:
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    from .server import bind_unix

    theirs = bind_unix(path)
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), theirs


async def _connect_monitor(process: asyncio.subprocess.Process, ours: socket.socket, path: str) -> None:
    """Connect to the listening monitor QEMU now holds (we wait in its backlog until it accepts)."""
    ours.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(ours, path)
    except OSError as exc:
        ours.close()
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise LaunchError(f"cannot connect to QEMU's monitor {path}: {exc.strerror or exc}") from None


async def _relay_stderr(process: asyncio.subprocess.Process, tail: collections.deque[str]) -> None:
    """Copy QEMU's stderr to ours as it comes; keep its last lines (any length)."""
    assert process.stderr is not None
    pending = b""
    while chunk := await process.stderr.read(65536):
        sys.stderr.write(chunk.decode("utf-8", "replace"))
        sys.stderr.flush()
        *lines, pending = (pending + chunk).split(b"\n")
        tail.extend(line.decode("utf-8", "replace")[:4096] for line in lines)
        pending = pending[-4096:]
    if pending:
        tail.append(pending.decode("utf-8", "replace"))
