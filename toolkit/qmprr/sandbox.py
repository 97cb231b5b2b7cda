"""A sandbox for a QEMU that runs untrusted input (a replayed recording).

Two walls, each enough for the attacks it covers:

* QEMU's own seccomp filter, :data:`SECCOMP`: spawning a program (an ``exec:``
  migration, a tap ``script=``), changing privileges, obsolete and
  resource-control system calls kill QEMU with SIGSYS;
* namespaces made by ``unshare`` (util-linux): a private mount namespace in
  which every host mount is read-only except the work folder and the
  ``--map-path`` roots (:mod:`qmprr.sandbox_init` remounts them), and a network
  namespace with only loopback.

``unshare`` rather than bubblewrap: it is in util-linux, on every Linux
machine and in the image already; it execs in place (no extra process between
qmprr and QEMU, so QEMU's pid, exit status and parent-death signal are
qmprr's to see), and keeps inherited fds, such as the monitor socketpair.
bubblewrap would hide the host instead of making it read-only, but needs a
package and a setuid or user-namespace setup of its own.

As root, ``unshare --mount --net``; otherwise an unprivileged user namespace
(``--user --map-root-user``) first. :func:`probe` says why neither works.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys

import attrs

#: The seccomp sandbox QEMU is started with.
SECCOMP = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
#: How QEMU's seccomp filter kills it.
SECCOMP_SIGNAL = signal.SIGSYS
_INIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_init.py")


class SandboxError(Exception):
    """The sandbox cannot be made on this machine."""


def _absolute(dirs: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(os.path.abspath(d) for d in dirs)


@attrs.frozen
class Sandbox:
    """Where a sandboxed QEMU may write: *writable* folders (made absolute)."""

    writable: tuple[str, ...] = attrs.field(converter=_absolute)

    def command(self, program: str, args: list[str], *, die_with_parent: bool = True) -> list[str]:
        """The command line that runs ``program args`` (a QEMU) inside the sandbox.

        With *die_with_parent* QEMU dies with this process, even where entering
        the user namespace cleared the parent-death signal set before the exec.
        """
        parent = ["--parent", str(os.getpid())] if die_with_parent else []
        return [*_unshare(), _interpreter(), "-I", "-S", _INIT,
                *(a for d in self.writable for a in ("--rw", d)), *parent, "--", program, *args,
                "-sandbox", SECCOMP]


def _unshare() -> list[str]:
    binary = shutil.which("unshare")
    if binary is None:
        raise SandboxError("'unshare' (util-linux) is not installed")
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return [binary, *user, "--mount", "--net", "--propagation", "private"]


def probe() -> None:
    """Raise :class:`SandboxError` saying why the sandbox cannot be made here; else nothing."""
    _interpreter()


@functools.cache
def _interpreter() -> str:
    """A Python that runs inside the namespaces: ours, else the system's (ours may not be reachable there)."""
    candidates = [sys.executable] + [p for p in ("/usr/bin/python3",) if os.path.exists(p) and p != sys.executable]
    detail = ""
    for python in candidates:
        try:
            done = subprocess.run([*_unshare(), python, "-I", "-S", "-c", ""], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxError(f"unshare: {exc}") from None
        if done.returncode == 0:
            return python
        detail = (done.stderr.strip().splitlines() or [f"status {done.returncode}"])[-1]
    hint = "" if os.geteuid() == 0 else " (unprivileged user namespaces may be disabled: kernel.unprivileged_userns_clone)"
    raise SandboxError(f"cannot make the namespaces: {detail}{hint}")
