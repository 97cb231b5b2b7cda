"""libvirt's per-VM QEMU log (``/var/log/libvirt/qemu/NAME.log``).

libvirt appends one block per start of the domain::

    2026-11-26 11:27:25.038+0000: starting up libvirt version: 9.0.0, ..., hostname: vm
    LC_ALL=C \\
    PATH=/usr/local/sbin:... \\
    /usr/bin/qemu-system-x86_64 \\
    -name guest=qmprr-demo,debug-threads=on \\
    -chardev socket,id=charmonitor,fd=24,server=on,wait=off \\
    -mon chardev=charmonitor,id=monitor,mode=control \\
    ...
    -msg timestamp=on
    2026-11-26 11:27:25.038+0000: Domain id=1 is tainted: high-privileges
    (QEMU's own stderr)
    2026-11-26 11:27:31.978+0000: shutting down, reason=destroyed

The command is shell-quoted (``'{"qom-type":...}'``), one argument per line
ended by `` \\``; older libvirt wrote it on one line. Each block becomes a
:class:`QemuRun`: environment, argv, taint lines, when it started and ended.
"""

from __future__ import annotations

import datetime
import os
import re
import shlex

import attrs

from ..files import open_regular
from .writer import LogImportError

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)([+-]\d{4}|Z)?: (.*)$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_TAINT = re.compile(r"^Domain id=(-?\d+) is tainted: (\S+)")
_SHUTDOWN = re.compile(r"^shutting down, reason=(\S+)")


def parse_stamp(date: str, zone: str | None) -> float:
    """A libvirt log timestamp (``2026-11-26 11:27:25.038`` and ``+0000``) as epoch seconds."""
    zone = zone or "+0000"
    if zone == "Z":
        zone = "+0000"
    try:
        when = datetime.datetime.strptime(f"{date}{zone}", "%Y-%m-%d %H:%M:%S.%f%z")
    except ValueError:
        raise ValueError(f"not a libvirt timestamp: {date}{zone}") from None
    return when.timestamp()


@attrs.define
class QemuTaint:
    reason: str
    at: float
    stamp: str  # as logged
    line: int
    domain_id: int | None = None


@attrs.define
class QemuRun:
    """One start of the domain: what libvirt logged before and after QEMU ran."""

    started: float
    stamp: str
    line: int
    argv: list[str] = attrs.Factory(list)
    env: dict[str, str] = attrs.Factory(dict)
    taints: list[QemuTaint] = attrs.Factory(list)
    ended: float | None = None
    end_reason: str | None = None
    banner: str = ""  # "libvirt version: ..., qemu version: ..., hostname: ..."

    @property
    def guest_name(self) -> str | None:
        """The VM's name from ``-name guest=NAME,...`` (or ``-name NAME``)."""
        for i, arg in enumerate(self.argv[:-1]):
            if arg == "-name":
                value = self.argv[i + 1]
                for part in _split_opts(value):
                    if part.startswith("guest="):
                        return part[len("guest=") :]
                first = _split_opts(value)[0]
                return first if "=" not in first else None
        return None

    def replay_argv(self) -> tuple[list[str], list[str]]:
        """The argv without the monitor libvirt talked through, and what was taken out.

        A replay gives QEMU its own monitor (qmprr's private socketpair), and
        libvirt's was an inherited fd (``-chardev socket,...,fd=24``) or a path
        that no longer exists: every ``-mon`` with ``mode=control`` goes, with
        the ``-chardev`` it names; so does ``-qmp`` (older libvirt). libvirt's
        ``-sandbox`` goes too: replay runs QEMU under its own seccomp sandbox.
        """
        argv = self.argv
        monitors: set[str] = set()
        for i, arg in enumerate(argv[:-1]):
            if arg == "-mon":
                opts = _split_opts(argv[i + 1])
                if "mode=control" in opts:
                    monitors.update(o[len("chardev=") :] for o in opts if o.startswith("chardev="))
        kept: list[str] = []
        removed: list[str] = []
        i = 0
        while i < len(argv):
            arg = argv[i]
            value = argv[i + 1] if i + 1 < len(argv) else None
            drop = False
            if value is not None and arg == "-mon" and "mode=control" in _split_opts(value):
                drop = True
            elif value is not None and arg == "-chardev" and _chardev_id(value) in monitors:
                drop = True
            elif value is not None and arg in ("-qmp", "-sandbox"):
                drop = True  # -sandbox: replay sets QEMU's seccomp sandbox itself (and refuses a recorded one)
            if drop:
                removed += [arg, value]  # type: ignore[list-item]  # drop implies value is not None
                i += 2
                continue
            kept.append(arg)
            i += 1
        return kept, removed


def _split_opts(value: str) -> list[str]:
    """QEMU's comma-separated options (``,,`` is an escaped comma)."""
    parts = re.split(r"(?<!,),(?!,)", value)
    return [p.replace(",,", ",") for p in parts]


def _chardev_id(value: str) -> str | None:
    if value.startswith("{"):
        m = re.search(r'"id"\s*:\s*"([^"]*)"', value)
        return m.group(1) if m else None
    for part in _split_opts(value):
        if part.startswith("id="):
            return part[3:]
    return None


@attrs.define
class QemuLog:
    """The runs in one QEMU log file, oldest first."""

    path: str
    runs: list[QemuRun] = attrs.Factory(list)
    problems: list[tuple[int, str]] = attrs.Factory(list)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def run_for(self, at: float) -> QemuRun | None:
        """The run that was going on at *at* (the last one started before it, if not yet ended)."""
        best = None
        for run in self.runs:
            if run.started <= at + 0.5:  # "starting up" is logged before QEMU runs, in ms
                best = run
        if best is not None and best.ended is not None and best.ended < at:
            return None
        return best


def read_qemu_log(path: str) -> QemuLog:
    """Parse a libvirt QEMU log; lines it cannot read are listed in ``problems``."""
    try:
        with open_regular(path) as f:  # a FIFO or a device would block or never end
            data = f.read()
    except OSError as exc:
        raise LogImportError(f"{path}: cannot read the QEMU log: {exc.strerror}") from None
    text = data.decode("utf-8", errors="replace")
    log = QemuLog(path=path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.rstrip("\r") for line in lines]
    i = 0
    run: QemuRun | None = None
    while i < len(lines):
        line = lines[i]
        number = i + 1
        i += 1
        m = _STAMP.match(line)
        if m is None:
            continue  # QEMU's own stderr, and anything else
        date, zone, rest = m.groups()
        try:
            at = parse_stamp(date, zone)
        except ValueError:
            continue
        stamp = date + (zone or "")
        if rest.startswith("starting up"):
            run = QemuRun(started=at, stamp=stamp, line=number, banner=rest[len("starting up") :].strip())
            log.runs.append(run)
            block = []
            while i < len(lines):
                nxt = lines[i]
                if _STAMP.match(nxt):
                    break
                i += 1
                stripped = nxt.rstrip()
                if stripped.endswith("\\"):
                    block.append(stripped[:-1])
                else:
                    block.append(stripped)
                    break
            _fill_command(run, " ".join(block), number + 1, log)
            continue
        if run is None:
            continue
        t = _TAINT.match(rest)
        if t is not None:
            run.taints.append(QemuTaint(t.group(2), at, stamp, number, int(t.group(1))))
            continue
        s = _SHUTDOWN.match(rest)
        if s is not None:
            run.ended, run.end_reason = at, s.group(1)
    return log


def _fill_command(run: QemuRun, text: str, line: int, log: QemuLog) -> None:
    try:
        words = shlex.split(text)
    except ValueError as exc:
        log.problems.append((line, f"cannot split the QEMU command line ({exc}); no argv from this run"))
        return
    while words and _ENV.match(words[0]):
        key, _, value = words.pop(0).partition("=")
        run.env[key] = value
    run.argv = words
