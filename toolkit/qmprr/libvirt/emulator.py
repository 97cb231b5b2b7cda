"""``qmprr-libvirt-emulator``: the ``<emulator>`` of a libvirt domain, recording its monitor.

libvirt runs the emulator with QEMU's argv. For a domain start that argv
holds ``-chardev socket,id=charmonitor,fd=N,server=on,wait=off``: N is the
listening monitor socket libvirt bound and will connect to. The wrapper then

1. forks a recorder (fork, ``setsid``, fork again, so it is nobody's child
   but init's) that keeps fd N, closes every other inherited fd, and serves
   libvirt on N through qmprr's channel (fds libvirt passes with ``getfd``/
   ``add-fd`` included), with a debug socket beside the recording;
2. ``exec``\\s the real QEMU in its own process (the pid libvirt tracks) with
   that chardev replaced by ``-chardev socket,id=charmonitor,fd=M``, one end
   of a socketpair whose other end the recorder holds: ``-mon
   chardev=charmonitor`` stays as libvirt wrote it.

Anything else (capability probes with ``-machine none`` and their own
``-qmp unix:...``, ``-version``) is passed straight to QEMU by ``exec``:
libvirt learns exactly what it would without the wrapper.

One line on stderr (libvirt's QEMU log, ``/var/log/libvirt/qemu/NAME.log``)
says where the recording and the debug socket are, or why the VM is not
recorded: a recording that cannot be made never stops a VM from starting
(QEMU then gets libvirt's fd itself), unless ``--strict`` (or ``strict =
true``). The recorder's own messages go to ``UUID-START.log`` beside the
recording. If the recorder dies, libvirt sees its monitor end, treats the VM
as crashed and kills QEMU (docs/libvirt.md).

With ``--record-probes`` (or ``record_probes = true``) a capability probe
is recorded too, in ``FOLDER/probes/``: the wrapper binds the probe's
``-qmp unix:PATH`` itself and QEMU gets a private monitor in its place.

Wrapper options (a generated script may put them before ``--``):
``--strict``, ``--record-probes``, ``--config PATH``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
import time
from typing import Any, NoReturn

from . import config as configuration

MONITOR_ID = "charmonitor"
STATUS_XML = "/run/libvirt/qemu/{name}.xml"
RUN_FOLDER = "/run/qmprr"  # debug sockets whose path beside the recording would be too long


def _say(text: str) -> None:
    """One line into libvirt's QEMU log."""
    try:
        os.write(2, f"qmprr-libvirt-emulator: {text}\n".encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def _own_options(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """The wrapper's own leading options (up to ``--``), and QEMU's argv after them."""
    opts: dict[str, Any] = {}
    if "--" not in args or not args or not args[0].startswith("--") or args[0] not in ("--strict", "--record-probes", "--config", "--"):
        return opts, args
    i = 0
    while i < len(args) and args[i] != "--":
        if args[i] == "--strict":
            opts["strict"] = True
        elif args[i] == "--record-probes":
            opts["record_probes"] = True
        elif args[i] == "--config" and i + 1 < len(args):
            opts["config"] = args[i + 1]
            i += 1
        else:
            break
        i += 1
    if i < len(args) and args[i] == "--":
        return opts, args[i + 1:]
    return {}, args


def _option(args: list[str], name: str) -> list[tuple[int, str]]:
    """(index of the value, value) of every ``-NAME VALUE`` (or ``--NAME``)."""
    return [(i + 1, args[i + 1]) for i in range(len(args) - 1) if args[i] in (f"-{name}", f"--{name}")]


def identity(args: list[str]) -> tuple[str | None, str | None]:
    """The domain's name (``-name guest=NAME,...``) and UUID (``-uuid``) from libvirt's argv."""
    from ..qemuopts import parse

    name = uuid = None
    for _, value in _option(args, "name"):
        for item in parse(value, implied=True):
            if item.key in (None, "guest"):
                name = item.value
    for _, value in _option(args, "uuid"):
        uuid = value
    return name, uuid


def monitor_fd(args: list[str]) -> tuple[int, int] | None:
    """(argv index, fd) of libvirt's ``-chardev socket,id=charmonitor,fd=N,server=on``, or None."""
    from ..qemuopts import parse

    for index, value in _option(args, "chardev"):
        items = parse(value, implied=True)
        keys = {i.key: i.value for i in items}
        if items and items[0].key is None and items[0].value == "socket" and keys.get("id") == MONITOR_ID:
            fd = keys.get("fd", "")
            if fd.isdigit() and keys.get("server") in ("on", "yes", "true"):
                return index, int(fd)
    return None


def replayable_argv(args: list[str], index: int) -> list[str]:
    """libvirt's argv without what only that run had: its monitor (the chardev at *index* and the
    ``-mon`` on it; a replay brings its own), ``-sandbox`` (a replay sets its own) and the
    per-run master key object when nothing uses it."""
    from ..qemuopts import parse

    drop = {index - 1, index}
    for i, _ in _option(args, "sandbox"):
        drop |= {i - 1, i}
    for i, value in _option(args, "mon"):
        if any(item.key == "chardev" and item.value == MONITOR_ID for item in parse(value, implied=True)):
            drop |= {i - 1, i}
    for i, value in _option(args, "object"):
        if '"id":"masterKey0"' in value.replace(" ", "") or "id=masterKey0" in value:
            others = [a for j, a in enumerate(args) if j != i and "masterKey0" in a]
            if not others:
                drop |= {i - 1, i}
    return [a for j, a in enumerate(args) if j not in drop]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in text)[:200] or "_"


def recording_paths(folder: str, name: str, uuid: str | None) -> dict[str, str]:
    """FOLDER/NAME/UUID-START.{jsonl,debug.sock,log}; the folder is made (0700) and tried."""
    start = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = os.path.join(folder, _safe(name))
    os.makedirs(base, mode=0o700, exist_ok=True)
    stem = os.path.join(base, f"{_safe(uuid or 'no-uuid')}-{start}")
    n = 1
    while os.path.exists(stem + ".jsonl"):
        n += 1
        stem = os.path.join(base, f"{_safe(uuid or 'no-uuid')}-{start}-{n}")
    probe = f"{stem}.probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # can we write here at all?
    os.close(fd)
    os.unlink(probe)
    paths = {"record": stem + ".jsonl", "debug": stem + ".debug.sock", "log": stem + ".log"}
    if len(paths["debug"].encode()) > 107:  # a UNIX socket path's limit: a short one under /run
        run = os.path.join(RUN_FOLDER, _safe(name)[:40])
        os.makedirs(run, mode=0o700, exist_ok=True)
        paths["debug"] = os.path.join(run, f"{_safe(uuid or 'no-uuid')[:8]}-{start}.sock")
    return paths


def _exec(qemu: str, args: list[str]) -> NoReturn:
    try:
        os.execv(qemu, [qemu, *args])
    except OSError as exc:
        _say(f"cannot run QEMU {qemu}: {exc.strerror or exc}")
        os._exit(127)


def probe_qmp(args: list[str]) -> tuple[int, str] | None:
    """(argv index, path) of a capability probe's ``-qmp unix:PATH,server=on,wait=off``, or None."""
    from ..qemuopts import parse

    for index, value in _option(args, "qmp"):
        if value.startswith("unix:"):
            items = parse(value[len("unix:"):], implied=True)
            keys = {i.key: i.value for i in items}
            if items and items[0].key is None and keys.get("server") in ("on", "yes", "true"):
                return index, items[0].value
    return None


def _bind_probe(path: str) -> int:
    """Listen at the probe's monitor path ourselves (libvirt connects there after -daemonize)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(4)
    except OSError:
        sock.close()
        raise
    return sock.detach()


def _why(exc: OSError) -> str:
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else (exc.strerror or str(exc))


def main(argv: list[str] | None = None) -> NoReturn:
    opts, args = _own_options(list(sys.argv[1:] if argv is None else argv))
    try:
        config = configuration.load(opts.get("config"))
    except configuration.ConfigError as exc:
        if opts.get("strict"):
            _say(f"{exc}; not starting (--strict)")
            os._exit(1)
        _say(f"{exc}; using the defaults")
        config = {}
    strict = bool(opts.get("strict") or config.get("strict"))
    monitor = monitor_fd(args)
    name, uuid = identity(args) if monitor is not None else (None, None)
    qemu = configuration.real_qemu(config, name)
    if os.path.realpath(qemu) == os.path.realpath(sys.argv[0]):
        _say(f"the real QEMU {qemu} is this wrapper itself: set 'qemu' in {opts.get('config') or configuration.config_path()}")
        os._exit(127)
    probe = None
    if monitor is None and (opts.get("record_probes") or config.get("record_probes")):
        probe = probe_qmp(args)
    if monitor is None and probe is None:
        _exec(qemu, args)  # a capability probe, -version, ...: QEMU as it is
    what = f"domain {name}" if probe is None else "capability probe"
    fd = -1
    try:
        if probe is not None:
            fd = _bind_probe(probe[1])
            index = probe[0]
            paths = recording_paths(str(config.get("folder", configuration.DEFAULT_FOLDER)), "probes",
                                    os.path.basename(qemu))
        else:
            assert monitor is not None
            index, fd = monitor
            paths = recording_paths(str(config.get("folder", configuration.DEFAULT_FOLDER)), name or "unnamed", uuid)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        qemu_pid = os.getpid()  # after the exec, QEMU's
        child = os.fork()
    except OSError as exc:
        if probe is not None and fd >= 0:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe[1])
        if strict and probe is None:
            _say(f"cannot record {what}: {_why(exc)}; not starting (strict)")
            os._exit(1)
        _say(f"not recording {what}: {_why(exc)}; QEMU gets libvirt's monitor directly")
        _exec(qemu, args)
    if child == 0:
        status = 1
        try:
            theirs.close()
            os.setsid()
            if os.fork() == 0:
                from .recorder import run_recorder

                replay = replayable_argv(args, index) if probe is None else args[:index - 1] + args[index + 1:]
                status = run_recorder(fd, ours, paths, config, [qemu, *replay], name, uuid,
                                      qemu_pid, given=[qemu, *args])
            else:
                status = 0
        finally:
            os._exit(status)
    os.waitpid(child, 0)
    ours.close()
    os.close(fd)
    theirs.set_inheritable(True)
    args = list(args)
    if probe is None:
        args[index] = f"socket,id={MONITOR_ID},fd={theirs.fileno()}"
    else:
        args[index - 1:index + 1] = ["-chardev", f"socket,id=qmprr-probe,fd={theirs.fileno()}",
                                     "-mon", "chardev=qmprr-probe,mode=control"]
    debug = f"; debug socket {paths['debug']}" if config.get("debug", True) else ""
    _say(f"recording {what} to {paths['record']}{debug}")
    _exec(qemu, args)


if __name__ == "__main__":
    main()
