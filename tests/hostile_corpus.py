"""A corpus of hostile recordings, and the figures of replaying it (run it: ``python tests/hostile_corpus.py``).

Each case is a recording (written by qmprr's own writer, so its hash chain
is valid) whose QEMU command line or commands try to run a host program,
write outside the replay's folders, or reach the host's network. Its marker
says whether the attack got through:

* ``created``: a file under the case's ``outside`` folder that must not appear;
* ``modified``: a file there (made beforehand) that must keep its content;
* ``connect``: a TCP listener on the host's loopback that must see no connection.

Every replay runs from a ``caller`` folder, which must stay empty (relative
paths resolve in the work folder, never in the caller's).

Figures: for each case, a replay as ``qmprr replay --target qemu`` (checks and
sandbox), one with the checks off and the sandbox on (the sandbox alone), and,
for the figures only, one with ``--allow-unsafe`` (no defence) to show the
attack is live.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent))

from replay_support import QEMU_NONE, Step, event, write_recording  # noqa: E402

Marker = Literal["created", "modified", "connect"]
UNTOUCHED = b"untouched\n"
QEMU_PC = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "16", "-nodefaults", "-display", "none", "-S"]


@attrs.frozen
class Case:
    """One attack. *build* gets the marker (a path, or ``host:port``) and the case folder; returns (argv, steps)."""

    name: str
    marker: Marker
    build: Callable[[str, Path], tuple[list[str], list[Step]]]
    sandbox_can_stop: bool = True  # False: the attack is not a write outside the folders, a spawn or the network
    live: bool = True  # the attack works with no defence (--allow-unsafe); False: QEMU 7.2 here refuses it anyway


def _hmp(line: str) -> Step:
    return Step("human-monitor-command", {"command-line": line}, reply={"return": ""})


def _script(folder: Path, marker: str) -> str:
    """An executable shell script that creates *marker*."""
    path = folder / "evil.sh"
    path.write_text(f"#!/bin/sh\ntouch '{marker}'\n")
    path.chmod(0o755)
    return str(path)


def _argv(*extra: str, base: list[str] = QEMU_NONE) -> Callable[[str, Path], tuple[list[str], list[Step]]]:
    """A case whose recorded command line carries the attack (``{m}`` is the marker)."""
    return lambda m, _f: ([*base, *(e.format(m=m) for e in extra)], [Step("query-status", reply={"return": {}})])


def _steps(*steps: Step, base: list[str] = QEMU_NONE) -> Callable[[str, Path], tuple[list[str], list[Step]]]:
    """A case whose recorded commands carry the attack (``{m}`` in string arguments is the marker)."""

    def fill(node: Any, m: str) -> Any:
        if isinstance(node, str):
            return node.format(m=m)
        if isinstance(node, dict):
            return {k: fill(v, m) for k, v in node.items()}
        return node

    return lambda m, _f: (list(base), [attrs.evolve(s, arguments=fill(s.arguments, m)) for s in steps])


def _qemu_io_write(m: str, f: Path, option: str) -> tuple[list[str], list[Step]]:
    return [*QEMU_NONE, "-drive", option.format(m=m)], [_hmp('qemu-io d0 "write -P 0x41 0 512"')]


def _argv0(m: str, f: Path) -> tuple[list[str], list[Step]]:
    fake = f / "bin" / "qemu-system-x86_64"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch '{m}'\nexec qemu-system-x86_64 \"$@\"\n")
    fake.chmod(0o755)
    return [str(fake), *QEMU_NONE[1:]], [Step("query-status", reply={"return": {}})]


def _tap_script(m: str, f: Path) -> tuple[list[str], list[Step]]:
    return [*QEMU_NONE, "-netdev", f"tap,id=n0,ifname=qmprrtap0,script={_script(f, m)},downscript=no"], [Step("query-status", reply={"return": {}})]


def _readconfig(m: str, f: Path) -> tuple[list[str], list[Step]]:
    conf = f / "evil.cfg"
    conf.write_text(f'[chardev "c0"]\n  backend = "file"\n  path = "{m}"\n')
    return [*QEMU_NONE, "-readconfig", str(conf)], [Step("query-status", reply={"return": {}})]


def _up(m: str) -> str:
    """*m* (absolute) as a relative path climbing out of any work folder."""
    return "../" * 12 + m.lstrip("/")


def _steps_up(*steps: Step) -> Callable[[str, Path], tuple[list[str], list[Step]]]:
    inner = _steps(*steps)
    return lambda m, f: inner(_up(m), f)


def _argv_up(*extra: str) -> Callable[[str, Path], tuple[list[str], list[Step]]]:
    inner = _argv(*extra)
    return lambda m, f: inner(_up(m), f)


def _relative(m: str, f: Path) -> tuple[list[str], list[Step]]:
    return [*QEMU_NONE, "-serial", "file:caller-marker"], [Step("query-status", reply={"return": {}})]


CASES: tuple[Case, ...] = (
    # -- the command line -------------------------------------------------------------------------
    Case("incoming-exec-comment", "created", _argv("-incoming", "exec:touch {m} # a=b")),
    Case("incoming-exec", "created", _argv("-incoming", "exec:touch {m}")),
    Case("argv0-by-basename", "created", _argv0),
    Case("qmp-tcp", "connect", _argv("-qmp", "tcp:{m}")),
    Case("monitor-tcp", "connect", _argv("-monitor", "tcp:{m}")),
    Case("serial-tcp", "connect", _argv("-serial", "tcp:{m}")),
    Case("chardev-socket-host", "connect", lambda m, f: _argv(
        "-chardev", f"socket,id=c0,host={m.rpartition(':')[0]},port={m.rpartition(':')[2]}")(m, f)),
    Case("serial-file-equals", "created", _argv("-serial", "file:{m}=y")),
    Case("serial-file", "created", _argv("-serial", "file:{m}")),
    Case("monitor-pipe", "modified", _argv("-monitor", "pipe:{m}")),
    Case("D-logfile", "created", _argv("-d", "guest_errors", "-D", "{m}")),
    Case("D-relative-escape", "created", _argv_up("-d", "guest_errors", "-D", "{m}")),
    Case("trace-file", "created", _argv("-trace", "enable=qmp_*,file={m}")),
    # issue 18's serial=a,,,file=: QEMU opens the file, then refuses 'serial' for if=none; a string
    # option it keeps (throttling.group) lets the write happen
    Case("drive-serial-commas", "created", _argv("-drive", "serial=a,,,file={m},if=none,id=d1"), sandbox_can_stop=False, live=False),
    Case("drive-commas", "modified", lambda m, f: _qemu_io_write(m, f, "if=none,id=d0,format=raw,throttling.group=a,,,file={m}")),
    Case("drive-file", "modified", lambda m, f: _qemu_io_write(m, f, "file={m},if=none,id=d0,format=raw")),
    Case("drive-json-filename", "modified", lambda m, f: _qemu_io_write(m, f, 'if=none,id=d0,format=raw,file=json:{{"file.filename":"{m}"}}')),
    Case("chardev-file", "created", _argv("-chardev", "file,id=c0,path={m}")),
    Case("object-memory-backend-file", "created", _argv("-object", "memory-backend-file,id=m0,size=1M,mem-path={m}")),
    Case("netdev-tap-script", "created", _tap_script, live=False),
    Case("netdev-user-smb", "created", _argv("-netdev", "user,id=n0,smb={m}"), sandbox_can_stop=False, live=False),
    Case("add-fd", "created", _argv("-add-fd", "fd=2,set=1"), sandbox_can_stop=False, live=False),
    Case("daemonize-pidfile", "created", _argv("-daemonize", "-pidfile", "{m}"), live=False),
    Case("pidfile", "created", _argv("-pidfile", "{m}")),
    Case("writeconfig", "created", _argv("-writeconfig", "{m}"), live=False),
    Case("readconfig", "created", _readconfig),
    Case("plugin", "created", _argv("-plugin", "{m}.so"), sandbox_can_stop=False, live=False),
    Case("bios-path", "created", _argv("-L", "{m}.d", "-bios", "{m}.bin"), sandbox_can_stop=False, live=False),
    Case("relative-in-caller-folder", "created", _relative, live=False),
    # -- the commands -----------------------------------------------------------------------------
    Case("qmp-migrate-exec", "created", _steps(Step("migrate", {"uri": "exec:touch {m}"}))),
    Case("hmp-migrate-exec", "created", _steps(_hmp("migrate exec:touch${{IFS}}{m}"))),
    Case("hmp-migrate-d-quoted", "created", _steps(_hmp('migrate -d"exec:touch {m}"'))),
    Case("hmp-migrate-incoming-exec", "created", _steps(_hmp("migrate_incoming exec:touch${{IFS}}{m}"), base=[*QEMU_NONE, "-incoming", "defer"])),
    Case("qmp-migrate-tcp", "connect", _steps(  # the MIGRATION event makes replay wait for the connection
        Step("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}),
        Step("migrate", {"uri": "tcp:{m}"}, after=[event("MIGRATION", {"status": "active"})]))),
    Case("hmp-logfile", "created", _steps(_hmp("log guest_errors"), _hmp("logfile {m}"))),
    Case("hmp-logfile-relative-escape", "created", _steps_up(_hmp("log guest_errors"), _hmp("logfile {m}"))),
    Case("hmp-drive-add-commas", "modified", _steps(
        _hmp("drive_add 0 if=none,id=d0,format=raw,throttling.group=a,,,file={m}"), _hmp('qemu-io d0 "write -P 0x41 0 512"'))),
    Case("hmp-chardev-add-file", "created", _steps(_hmp("chardev-add file,id=c1,path={m}"))),
    Case("hmp-pmemsave", "created", _steps(_hmp('pmemsave 0 16 "{m}"'))),
    Case("qmp-pmemsave", "created", _steps(Step("pmemsave", {"val": 0, "size": 16, "filename": "{m}"}))),
    Case("qmp-screendump", "created", _steps(Step("screendump", {"filename": "{m}"}), base=[*QEMU_PC, "-vga", "std"])),
    Case("qmp-dump-guest-memory", "created", _steps(Step("dump-guest-memory", {"paging": False, "protocol": "file:{m}"}), base=QEMU_PC)),
    Case("hmp-dump-guest-memory", "created", _steps(_hmp("dump-guest-memory {m}"), base=QEMU_PC)),
    Case("qmp-blockdev-create-file", "created", _steps(
        Step("blockdev-create", {"job-id": "j0", "options": {"driver": "file", "filename": "{m}", "size": 512}}))),
    Case("qmp-blockdev-create-relative-escape", "created", _steps_up(
        Step("blockdev-create", {"job-id": "j0", "options": {"driver": "file", "filename": "{m}", "size": 512}}))),
    Case("qmp-blockdev-add-json", "modified", _steps(
        Step("blockdev-add", {"driver": "raw", "node-name": "d0", "file": {"driver": "file", "filename": "{m}"}}),
        _hmp('qemu-io d0 "write -P 0x41 0 512"'))),
    Case("qmp-chardev-add-file", "created", _steps(
        Step("chardev-add", {"id": "c1", "backend": {"type": "file", "data": {"out": "{m}"}}}))),
    Case("qmp-chardev-add-tcp", "connect", lambda m, f: _steps(Step("chardev-add", {"id": "c1", "backend": {
        "type": "socket", "data": {"server": False, "addr": {"type": "inet", "data": {
            "host": m.rpartition(":")[0], "port": m.rpartition(":")[2]}}}}}))(m, f)),
    Case("qmp-object-add-memory-file", "created", _steps(
        Step("object-add", {"qom-type": "memory-backend-file", "id": "m0", "size": 1048576, "mem-path": "{m}"}))),
    Case("hmp-object-add-memory-file", "created", _steps(_hmp("object_add memory-backend-file,id=m0,size=1M,mem-path={m}"))),
    Case("hmp-in-qmp-migrate", "created", _steps(Step("human-monitor-command", {"command-line": "migrate  \"exec:touch {m}\""}))),
    Case("qmp-netdev-add-tap-script", "created", lambda m, f: _steps(
        Step("netdev_add", {"type": "tap", "id": "n1", "ifname": "qmprrtap1", "script": _script(f, m), "downscript": "no"}))(m, f)),
    Case("getfd", "created", _steps(Step("getfd", {"fdname": "{m}"})), sandbox_can_stop=False, live=False),
)


@attrs.define
class Prepared:
    """A case made ready: its recording, its marker, the folders to watch."""

    case: Case
    recording: Path
    marker: str
    caller: Path
    folder: Path
    listener: socket.socket | None = None
    connected: list[bool] = attrs.Factory(list)

    def got_through(self) -> bool:
        if any(self.caller.iterdir()):
            return True
        if self.case.marker == "connect":
            return bool(self.connected)
        path = Path(self.marker) if self.case.name != "relative-in-caller-folder" else self.caller / "caller-marker"
        if self.case.marker == "modified":
            return not path.exists() or path.read_bytes() != UNTOUCHED
        return path.exists()

    def reset(self) -> None:
        self.connected.clear()
        for child in self.caller.iterdir():
            child.unlink()
        marker = Path(self.marker) if self.case.marker != "connect" else None
        if marker is not None:
            for extra in marker.parent.glob(marker.name + "*"):
                extra.unlink()
            if self.case.marker == "modified":
                marker.write_bytes(UNTOUCHED)


def prepare(case: Case, root: Path) -> Prepared:
    """Write *case*'s recording under *root*/NAME (folders ``outside`` and ``caller``, the marker's place)."""
    folder = root / case.name
    (folder / "outside").mkdir(parents=True)
    (folder / "caller").mkdir()
    listener = None
    if case.marker == "connect":
        listener = socket.create_server(("127.0.0.1", 0))
        marker = f"127.0.0.1:{listener.getsockname()[1]}"
    else:
        marker = str(folder / "outside" / ("serial" if case.name == "serial-file-equals" else "marker"))
    argv, steps = case.build(marker, folder)
    if case.name == "serial-file-equals":
        marker += "=y"
    prepared = Prepared(case, write_recording(folder / "hostile.jsonl", steps, argv=argv), marker, folder / "caller", folder, listener)
    if listener is not None:
        threading.Thread(target=_accept, args=(listener, prepared.connected), daemon=True).start()
    prepared.reset()
    return prepared


def _accept(listener: socket.socket, connected: list[bool]) -> None:
    with contextlib.suppress(OSError):
        while True:
            conn, _ = listener.accept()
            connected.append(True)
            conn.close()


Mode = Literal["default", "sandbox-only", "unsafe"]
#: Cases whose unguarded run would leave a QEMU behind (it detaches from qmprr).
DETACHES = frozenset({"daemonize-pidfile"})


def replay(prepared: Prepared, mode: Mode) -> tuple[int, str]:
    """Replay *prepared* from its caller folder; (exit status, what it printed)."""
    from qmprr.cli import main

    prepared.reset()
    out = io.StringIO()
    # The replay's relative paths are the caller's: its folder, for this call only (QEMU gets its own).
    with contextlib.chdir(prepared.caller), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        if mode == "sandbox-only":
            status = _replay_sandbox_only(prepared)
        else:
            extra = ["--allow-unsafe"] if mode == "unsafe" else []
            status = main(["replay", str(prepared.recording), "--target", "qemu", "--keep-going",
                           "--event-timeout", "1", *extra])
    return status, out.getvalue()


def _replay_sandbox_only(prepared: Prepared) -> int:
    """The replay with the checks off and the sandbox on: what the sandbox alone stops."""
    from qmprr.errors import QmprrError
    from qmprr.replay.engine import ReplayOptions
    from qmprr.replay.run import RunOptions, run_replay

    try:
        report = asyncio.run(run_replay(
            str(prepared.recording), RunOptions(target="qemu", checks=False),
            ReplayOptions(keep_going=True, event_timeout=1.0)))
    except QmprrError as exc:
        print(f"qmprr: {exc}")
        return 2
    return 0 if report.reproduced else 1


def refused_by_checks(status: int, output: str) -> bool:
    """Whether replay's checks (not the sandbox) refused it, saying so."""
    if "refusing the recorded QEMU command line" in output or "is replaced by the local" in output:
        return True
    return re.search(r"^\s*refused: (?!refused by QEMU's sandbox)", output, re.M) is not None


def figures(root: Path, cases: tuple[Case, ...] = CASES, live: bool = True) -> dict[str, int]:
    """Replay every case in every mode; print a line per case; return the counts."""
    counts = {"attempts": 0, "live without defences": 0, "refused by the checks": 0,
              "stopped by the sandbox alone (of the live ones)": 0, "got through": 0}
    for case in cases:
        prepared = prepare(case, root)
        counts["attempts"] += 1
        is_live = None
        if live and case.name not in DETACHES:
            replay(prepared, "unsafe")
            is_live = prepared.got_through()
            counts["live without defences"] += is_live
        status, output = replay(prepared, "default")
        through = prepared.got_through()
        refused = refused_by_checks(status, output) and not through
        counts["got through"] += through
        counts["refused by the checks"] += refused
        replay(prepared, "sandbox-only")
        sandbox_stopped = not prepared.got_through()
        counts["stopped by the sandbox alone (of the live ones)"] += bool(is_live) and sandbox_stopped
        verdict = "GOT THROUGH" if through else "refused by the checks" if refused else "contained"
        print(f"{case.name:<40} live={'?' if is_live is None else 'yes' if is_live else 'no':<4} {verdict:<22}"
              f" sandbox alone: {'stopped' if sandbox_stopped else 'NOT STOPPED'}")
    return counts


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qmprr-hostile-") as tmp:
        yield Path(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-live", action="store_true", help="skip the --allow-unsafe runs (no attack is run unguarded)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="only this case (repeatable)")
    args = parser.parse_args()
    cases = tuple(c for c in CASES if not args.only or c.name in args.only)
    with _folder() as root:
        counts = figures(root, cases, live=not args.no_live)
    for key, value in counts.items():
        print(f"{key}: {value}")
    return 0 if counts["got through"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
