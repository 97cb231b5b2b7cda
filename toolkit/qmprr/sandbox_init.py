"""Run inside the namespaces ``unshare`` made: lock the host down, then exec QEMU.

``python3 -I -S sandbox_init.py [--rw DIR]... -- PROGRAM ARGS...``. Standard
library only (it runs with ``-I -S``, before anything of qmprr is importable).

1. each ``--rw`` folder is bind-mounted onto itself (it stays writable);
2. every other mount point is remounted read-only (``MS_REMOUNT|MS_BIND|MS_RDONLY``,
   keeping its nosuid/nodev/noexec flags, which a user namespace cannot drop);
3. the loopback interface of the fresh network namespace is brought up;
4. the current folder is entered again (so that it is the writable bind mount);
5. with ``--parent PID``, the parent-death signal is set again (SIGKILL) and
   the parent checked: entering a user namespace clears the one the launcher set;
6. PROGRAM is exec'd in place (same pid; open fds such as the monitor survive).

Any failure is one line ``qmprr-sandbox: ...`` on stderr and exit status 125:
QEMU never runs half-sandboxed.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
ST_TO_MS = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
            os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME}
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PR_SET_PDEATHSIG, SIGKILL = 1, 9
EXIT_SANDBOX = 125


class SandboxFailure(Exception):
    pass


_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, flags: int) -> None:
    if _libc.mount(source.encode(), target.encode(), None, ctypes.c_ulong(flags), None) != 0:
        err = ctypes.get_errno()
        raise SandboxFailure(f"mount {target}: {os.strerror(err)}")


def _mount_points() -> list[str]:
    """Mount points of this namespace, outermost first (octal escapes of mountinfo decoded)."""
    points = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            raw = line.split(b" ")[4]
            points.append(raw.decode("unicode_escape").encode("latin-1").decode("utf-8", "replace"))
    return points


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def lock_down(writable: list[str]) -> None:
    """Steps 1-4 of the module docstring."""
    writable = [os.path.realpath(d) for d in writable]
    for folder in writable:
        _mount(folder, folder, MS_BIND | MS_REC)
    for point in _mount_points():
        if _under(point, writable) or not os.path.isdir(point):
            continue
        try:
            kept = os.statvfs(point).f_flag
        except OSError:
            continue  # a mount point we cannot reach is one QEMU cannot reach either
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        flags |= sum(ms for st, ms in ST_TO_MS.items() if kept & st)
        _mount("none", point, flags)
    cwd = os.getcwd()
    os.chdir(cwd)  # the cwd was taken on the old mount: step onto the bind mount over it
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        current = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", current | IFF_UP))


def die_with(parent: int) -> None:
    """Step 5: die when *parent* does (and now, if it already has)."""
    if _libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0:
        raise SandboxFailure(f"prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:
        raise SandboxFailure("the process that started QEMU is gone")


def main(argv: list[str]) -> int:
    writable = []
    parent = None
    while argv and argv[0] in ("--rw", "--parent") and len(argv) > 1:
        if argv[0] == "--rw":
            writable.append(argv[1])
        else:
            parent = int(argv[1])
        argv = argv[2:]
    if not argv or argv[0] != "--" or len(argv) < 2:
        print("qmprr-sandbox: usage: sandbox_init.py [--rw DIR]... [--parent PID] -- PROGRAM ARGS...", file=sys.stderr)
        return EXIT_SANDBOX
    program = argv[1:]
    try:
        lock_down(writable)
        if parent is not None:
            die_with(parent)
        os.execv(program[0], program)
    except (SandboxFailure, OSError) as exc:
        print(f"qmprr-sandbox: {exc}", file=sys.stderr)
        return EXIT_SANDBOX


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
