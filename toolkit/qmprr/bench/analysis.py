"""``qmprr bench analysis``: the analyses at scale, against jq, in one run.

Builds a synthetic recording (a management client's commands and replies
with realistic latencies, errors, block-job and lifecycle events, a debug
client injecting HMP commands, transactions that it waits for), then prints:
``stats`` wall time and peak memory (a child process, goals <= 3 s and
<= 200 MB for 1,000,000 records), ``show --command ... --json``
throughput, and the same selection made by ``jq`` over the same file.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

from .. import __version__, codec
from ..recording import chain

#: The command the show/jq comparison selects (about 1 command in 6).
SELECTED = "query-block"

_ROUTINE = [  # (command, arguments, share, error class or None, error share)
    ("query-status", None, 30, None, 0.0),
    ("query-block", None, 20, None, 0.0),
    ("qom-get", {"path": "/machine", "property": "type"}, 15, "GenericError", 0.02),
    ("query-cpus-fast", None, 10, None, 0.0),
    ("query-block-jobs", None, 8, None, 0.0),
    ("blockdev-add", {"driver": "null-co", "node-name": "n0"}, 5, "GenericError", 0.3),
    ("device_add", {"driver": "usb-kbd", "id": "kbd0"}, 4, "DeviceNotFound", 0.1),
    ("qmp-unknown-command", None, 1, "CommandNotFound", 1.0),
]
_WEIGHTS = [r[2] for r in _ROUTINE]
_EVENTS = ["JOB_STATUS_CHANGE", "BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "RTC_CHANGE", "BALLOON_CHANGE"]


class _Gen:
    """Record dicts in on-disk order with controlled times."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seq = 0
        self.t = 0.0
        self.wire = 0
        self.tx = 0

    def rec(self, kind: str, gap: float = 0.0, **fields: Any) -> dict[str, Any]:
        self.t = round(self.t + gap, 6)
        d = {"seq": self.seq, "t": self.t, "kind": kind, **fields}
        self.seq += 1
        return d

    def gap(self) -> float:
        return self.rng.expovariate(1 / 0.00005)  # ~50 µs between a reply and the next command

    def exchange(self, src: str, role: str, name: str, args: Any, error: str | None,
                 tx: int | None = None, events: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
        wire_id = f"qmprr-{self.wire}"
        self.wire += 1
        msg: dict[str, Any] = {"execute": name, "id": wire_id}
        if args is not None:
            msg = {"execute": name, "arguments": args, "id": wire_id}
        extra = {"tx": tx} if tx is not None else {}
        cmd = self.rec("command", self.gap(), src=src, role=role, msg=msg, client_id=self.wire, **extra)
        yield cmd
        latency = self.rng.lognormvariate(-7.5, 0.8)  # median ~0.55 ms, long tail
        for event in events:  # QEMU sends some events before the reply
            yield self.rec("event", latency / 2, msg={"event": event, "data": {},
                                                       "timestamp": {"seconds": 1_700_000_000 + int(self.t),
                                                                     "microseconds": 0}})
        if error is not None:
            reply = {"error": {"class": error, "desc": f"synthetic {error}"}, "id": wire_id}
        else:
            reply = {"return": {}, "id": wire_id}
        yield self.rec("reply", latency / (2 if events else 1), cmd=cmd["seq"], msg=reply)

    def transaction(self) -> Iterator[dict[str, Any]]:
        self.tx += 1
        tx = self.tx
        yield self.rec("tx", self.gap(), action="begin", tx=tx, label="dump", owner="primary-1")
        yield from self.exchange("primary-1", "primary", "stop", None, None, tx, ("STOP",))
        yield self.rec("fd", 0.0002, src="debug-1", placeholder="fd:0")  # debug-1 arrives and waits
        yield from self.exchange("primary-1", "primary", "dump-guest-memory",
                                 {"paging": False, "protocol": "file:guest.dump"}, None, tx, ("DUMP_COMPLETED",))
        yield from self.exchange("primary-1", "primary", "cont", None, None, tx, ("RESUME",))
        yield self.rec("tx", 0.0001, action="end", tx=tx, label="dump", owner="primary-1")
        yield from self.exchange("debug-1", "debug", "human-monitor-command",
                                 {"command-line": "info registers"}, None)

    def records(self) -> Iterator[dict[str, Any]]:
        yield {"seq": 0, "t": 0.0, "kind": "header", "format": "qmprr/1", "started": "2026-01-01T00:00:00.000000+00:00",
               "started_epoch": 1767225600.0, "host": "bench", "qmprr_version": __version__,
               "qemu_version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "bench"}}
        self.seq = 1
        yield self.rec("greeting", 0.0002, msg={"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                                                    "package": "bench"}, "capabilities": ["oob"]}})
        yield from self.exchange("qmprr", "internal", "qmp_capabilities", None, None)
        for name, role in (("primary-1", "primary"), ("debug-1", "debug")):
            yield self.rec("client", 0.001, action="connect", name=name, role=role, peer="pid 1 uid 0 (bench)")
            yield self.rec("local", 0.0005, src=name, role=role, msg={"execute": "qmp_capabilities", "id": 1},
                           reply={"return": {}, "id": 1})
        yield self.rec("taint", 0.0001, reason="custom-monitor", client="debug-1")
        rng = self.rng
        while True:
            r = rng.random()
            if r < 0.002:
                yield from self.transaction()
            elif r < 0.01:
                yield from self.exchange("debug-1", "debug", "human-monitor-command",
                                         {"command-line": "info registers"}, None)
            elif r < 0.1:
                yield self.rec("event", self.gap(), msg={"event": rng.choice(_EVENTS), "data": {"id": "job0"},
                                                         "timestamp": {"seconds": 1_700_000_000 + int(self.t),
                                                                       "microseconds": 0}})
            else:
                name, args, _, err, share = rng.choices(_ROUTINE, _WEIGHTS)[0]
                yield from self.exchange("primary-1", "primary", name, args,
                                         err if err and rng.random() < share else None)


def write_records(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
    """Write record dicts (header first, each with its seq and t) as a valid, hash-chained recording."""
    prev = chain.GENESIS
    with open(path, "wb") as f:
        for d in records:
            line, prev = chain.seal(codec.dumps(d), prev)
            f.write(line)


def write_recording(path: str | os.PathLike[str], records: int, seed: int = 7) -> None:
    """Write a synthetic recording of exactly *records* records (header included) to *path*."""
    write_records(path, itertools.islice(_Gen(seed).records(), records))


_STATS_CHILD = """
import resource, sys, time
import orjson
from qmprr.analysis.stats import compute
start = time.perf_counter()
jobs = 0
if sys.argv[1] == "stats":
    stats = compute(sys.argv[2])
    orjson.dumps(stats)
self, children = (resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(time.perf_counter() - start, self, children, jobs)
"""


def _stats_child(mode: str, path: str) -> tuple[float, float, float, float, int]:
    """(seconds inside the child, its whole wall time, its peak RSS and its workers' (MiB), workers)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _STATS_CHILD, mode, path], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), time.perf_counter() - start, int(out[1]) / 1024, int(out[2]) / 1024, int(out[3])


def _count_lines(argv: list[str]) -> tuple[int, float]:
    """Run *argv*, count the lines it prints; (lines, wall seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    lines = 0
    while chunk := proc.stdout.read(1 << 20):
        lines += chunk.count(b"\n")
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.wait() != 0:
        raise RuntimeError(f"{argv[0]} failed: {err.strip()}")
    return lines, time.perf_counter() - start


#: jq's way to the same selection: a selected command's seq is remembered until the next command
#: (the channel is serialized: a reply comes before the next command). A jq object keyed by seq
#: would be exact for any log, but jq 1.6 slows down quadratically as keys are deleted.
JQ_SELECT = (
    "foreach inputs as $r (null;"
    ' if $r.kind == "command" then (if $r.msg.execute == $name then $r.seq else null end) else . end;'
    ' if ($r.kind == "command" and $r.msg.execute == $name) or ($r.kind == "reply" and $r.cmd == .)'
    " then $r else empty end)"
)


def run(records: int = 1_000_000, folder: str | None = None) -> None:
    """Run the benchmark and print its figures."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = os.path.join(tmp, "bench.jsonl")
        start = time.perf_counter()
        write_recording(path, records)
        size = os.path.getsize(path)
        print(f"qmprr bench analysis: {records:,} records, {size / 2**20:.1f} MiB "
              f"(written in {time.perf_counter() - start:.1f} s) in {tmp}")

        _, base_wall, base_rss, _, _ = _stats_child("import", path)
        inside, wall, rss, worker_rss, jobs = _stats_child("stats", path)
        total = rss + jobs * worker_rss
        print(f"\nstats (a child process; {jobs} forked worker(s)" if jobs > 1 else "\nstats (a child process",
              "each streaming a segment)" if jobs > 1 else "DuckDB over the views)")
        print(f"  wall time: {inside:.2f} s computing ({wall:.2f} s for the whole process, "
              f"{base_wall:.2f} s of it starting Python and importing)   goal <= 3 s")
        print(f"  peak memory: {total:.1f} MiB max RSS in all ({rss:.1f} MiB the process"
              + (f" + {jobs} x {worker_rss:.1f} MiB its workers" if jobs > 1 else "")
              + f"; {base_rss:.1f} MiB after imports alone)   goal <= 200 MB")
        print(f"  throughput: {records / inside:,.0f} records/s, {size / inside / 2**20:.0f} MiB/s")

        show = [sys.executable, "-m", "qmprr.cli", "show", path, "--command", SELECTED, "--json"]
        print(f"\nselecting '{SELECTED}' commands and their replies as JSON Lines")
        n_show, t_show = _count_lines(show)
        print(f"  qmprr show --command {SELECTED} --json: {n_show:,} lines in {t_show:.2f} s, "
              f"{records / t_show:,.0f} records/s scanned (hash chain checked)")
        n_plain, t_plain = _count_lines([*show, "--kind", "command"])
        jq = shutil.which("jq")
        if jq is None:
            print("  jq: not installed (apt-get install jq); no comparison")
            return
        n_jq_plain, t_jq_plain = _count_lines(
            [jq, "-c", "--arg", "name", SELECTED,
             'select(.kind == "command" and .msg.execute == $name)', path])
        n_jq, t_jq = _count_lines([jq, "-c", "-n", "--arg", "name", SELECTED, JQ_SELECT, path])
        print(f"  jq -n 'foreach inputs ...' (the same selection): {n_jq:,} lines in {t_jq:.2f} s, "
              f"{records / t_jq:,.0f} records/s   qmprr/jq speed: {t_jq / t_show:.1f}x"
              f"{'' if n_jq == n_show else '   COUNTS DIFFER'}")
        print(f"  commands only: qmprr show ... --kind command {n_plain:,} lines in {t_plain:.2f} s; "
              f"jq select(...) {n_jq_plain:,} lines in {t_jq_plain:.2f} s   qmprr/jq speed: "
              f"{t_jq_plain / t_plain:.1f}x{'' if n_jq_plain == n_plain else '   COUNTS DIFFER'}")
        # Issue 13's goal: the kind filter alone, where show prints the recording's own lines.
        n_ev, t_ev = _count_lines([sys.executable, "-m", "qmprr.cli", "show", path, "--kind", "event",
                                   "--json"])
        n_jq_ev, t_jq_ev = _count_lines([jq, "-c", 'select(.kind=="event")', path])
        print(f"  events only: qmprr show --kind event --json {n_ev:,} lines in {t_ev:.2f} s; "
              f"jq -c 'select(.kind==\"event\")' {n_jq_ev:,} lines in {t_jq_ev:.2f} s   qmprr/jq speed: "
              f"{t_jq_ev / t_ev:.1f}x   goal >= 3x{'' if n_jq_ev == n_ev else '   COUNTS DIFFER'}")
