"""Starting QEMU with a private QMP monitor.

The monitor is one end of a socketpair handed to QEMU as
``-chardev socket,fd=N -mon chardev=...,mode=control``: it has no path, so no
other program can reach it, and the user's own argv is left as it is.
QEMU's stderr is relayed to ours as it comes, and its last lines are kept
for the error message when QEMU fails at start-up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import socket
import sys

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


def monitor_args(fd: int) -> list[str]:
    """The options that give QEMU a QMP monitor on the connected socket *fd*."""
    return ["-chardev", f"socket,id={MONITOR_ID},fd={fd}", "-mon", f"chardev={MONITOR_ID},mode=control"]


async def start_qemu(
    argv: list[str], env: dict[str, str] | None = None, *, sandbox: Sandbox | None = None, cwd: str | None = None
) -> LaunchedQemu:
    """Start ``argv`` (QEMU binary first) with a private QMP monitor.

    *env* adds variables to qmprr's own environment for QEMU; *cwd* is the
    folder it runs in; with *sandbox*, QEMU runs inside it (:mod:`qmprr.sandbox`).
    """
    if not argv:
        raise LaunchError("no QEMU command line given (put it after '--')")
    binary = shutil.which(argv[0])
    if binary is None:
        raise LaunchError(
            f"QEMU binary {argv[0]!r} not found: install it (Debian: apt-get install qemu-system-x86)"
            " or give its full path"
        )
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    args = [*argv[1:], *monitor_args(theirs.fileno())]
    try:
        command = sandbox.command(binary, args) if sandbox is not None else [binary, *args]
    except SandboxError as exc:
        ours.close()
        theirs.close()
        raise LaunchError(f"cannot sandbox QEMU: {exc}") from None
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            pass_fds=(theirs.fileno(),),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env} if env else None,
            # Its own process group: Ctrl-C or 'kill %1' reaches qmprr, which quits
            # QEMU through the (logged) channel instead of QEMU dying on the signal.
            start_new_session=True,
        )
    except OSError as exc:
        ours.close()
        raise LaunchError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    finally:
        theirs.close()
    launched = LaunchedQemu(process=process, monitor=ours, argv=list(argv))
    launched.relay = asyncio.create_task(_relay_stderr(process, launched.stderr_tail))
    return launched


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
