"""Run inside the namespaces ``unshare`` made: lock the host down, then exec QEMU.

``python3 -I -S sandbox_init.py [--rw DIR]... -- PROGRAM ARGS...``. Standard
library only (it runs with ``-I -S``, before anything of qmprr is importable).

1. each ``--rw`` folder is bind-mounted onto itself (it stays writable);
2. every other mount point, folder or file, is remounted read-only
   (``MS_REMOUNT|MS_BIND|MS_RDONLY``, keeping its nosuid/nodev/noexec flags,
   which a user namespace cannot drop), and /dev is replaced by a tmpfs with
   only null, zero, full, random, urandom (and kvm): device nodes stay
   writable on a read-only mount;
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
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC = 32, 4096, 8192, 16384
#: The only device nodes a sandboxed QEMU sees (KVM where the host has it: replay may use -accel kvm).
DEV_NODES = ("null", "zero", "full", "random", "urandom", "kvm")
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
ST_TO_MS = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
            os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME}
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PR_SET_PDEATHSIG, SIGKILL = 1, 9
EXIT_SANDBOX = 125


class SandboxFailure(Exception):
    pass


_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, flags: int, fstype: str | None = None, data: str | None = None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                   data.encode() if data else None) != 0:
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


def _private_dev(stage_in: str) -> None:
    """Replace /dev by a tmpfs holding only harmless device nodes (and /dev/kvm where present).

    A read-only mount does not stop writing to a device node (``/dev/kmsg``, a
    disk): the host's /dev must not be reachable at all. The new /dev is built
    in a folder under *stage_in* (nodes bind-mounted from the host's), then moved.
    """
    stage = os.path.join(stage_in, ".qmprr-dev")
    os.makedirs(stage, exist_ok=True)
    _mount("tmpfs", stage, MS_NOSUID | MS_NOEXEC, "tmpfs", "mode=0755,size=1m")
    for name in DEV_NODES:
        host = "/dev/" + name
        if not os.path.exists(host):
            continue
        target = os.path.join(stage, name)
        with open(target, "w"):
            pass
        _mount(host, target, MS_BIND)
    os.mkdir(os.path.join(stage, "shm"), 0o1777)
    for link, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                     ("stderr", "/proc/self/fd/2")):
        os.symlink(to, os.path.join(stage, link))
    _mount(stage, "/dev", MS_MOVE)
    os.rmdir(stage)
    _mount("tmpfs", "/dev/shm", MS_NOSUID | MS_NODEV | MS_NOEXEC, "tmpfs", "mode=1777,size=64m")
    _mount("none", "/dev", MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC)  # nothing new appears in it


def lock_down(writable: list[str]) -> None:
    """Steps 1-4 of the module docstring."""
    writable = [os.path.realpath(d) for d in writable]
    for folder in writable:
        _mount(folder, folder, MS_BIND | MS_REC)
    for point in _mount_points():
        # Files are mount points too (container runtimes bind /etc/hosts, /etc/resolv.conf).
        if _under(point, writable) or not os.path.lexists(point):
            continue
        try:
            kept = os.statvfs(point).f_flag
        except OSError:
            continue  # a mount point we cannot reach is one QEMU cannot reach either
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        flags |= sum(ms for st, ms in ST_TO_MS.items() if kept & st)
        _mount("none", point, flags)
    if writable:
        _private_dev(writable[0])
    else:
        raise SandboxFailure("no writable folder to build a private /dev in")
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
