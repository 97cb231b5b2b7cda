"""``qmprr bench log``: recording write and read+verify throughput, and segment sets.

Segment sets: write throughput rotating (and compressing), the zstd ratio, and
verify of one segment, of a 10-segment set (one process, then all CPUs) and
of the compressed set, each against an orjson.loads loop in the same run.

Writes a synthetic recording (a realistic mix of commands, replies and
events) under each sync policy, then reads and verifies the large one and
compares with plain JSON-lines loops over the same file in the same run.
The reader's peak memory is measured in a child process, next to a child that
only imports qmprr, so the difference is what reading costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import orjson

from ..recording import Command, Event, Record, RecordWriter, Reply, SyncPolicy, new_header, sets, verify
from ..recording.rotate import Rotation, SegmentedWriter
from ..recording.model import Msg


def synthetic_records(n: int) -> Iterator[Record]:
    """About *n* records after the header: command, reply, and an event every 10th round."""
    i = 0
    made = 0
    while made < n:
        wire_id = f"qmprr-{i}"
        cmd = Command(
            src=f"client-{i % 4}",
            role="primary",
            msg=Msg({"execute": "qom-get", "arguments": {"path": "/machine", "property": "type"}, "id": wire_id}),
            client_id=i,
        )
        yield cmd
        made += 1
        if made < n:
            yield Reply(cmd=cmd.seq, msg=Msg({"return": "none-machine", "id": wire_id}))
            made += 1
        if i % 10 == 9 and made < n:
            yield Event(
                msg=Msg({"event": "STOP", "data": {}, "timestamp": {"seconds": 1700000000 + i, "microseconds": 1234}})
            )
            made += 1
        i += 1


def write_recording(path: str, n: int, sync: SyncPolicy) -> float:
    """Write *n* synthetic records to *path*; return the seconds it took."""
    start = time.perf_counter()
    with RecordWriter.create(path, sync=sync, overwrite=True) as writer:
        for record in synthetic_records(n):  # lazily: a reply is made after its command has its seq
            writer.append(record)
    return time.perf_counter() - start


_CHILD = """
import resource, sys, time
mode, path = sys.argv[1], sys.argv[2]
import qmprr.recording
if mode == "verify":
    report = qmprr.recording.verify(path)
    assert report.ok, report.problems[:3]
print(max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
"""


def peak_rss_kib(mode: str, path: str) -> int:
    """Peak RSS (KiB) of a child that imports qmprr and, for ``verify``, verifies *path*."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, path], check=True, capture_output=True, text=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def _loop_seconds(path: str, loads: Callable[[bytes], object]) -> float:
    """Seconds for a plain decode loop over *path* (one file, or every file of a set)."""
    start = time.perf_counter()
    for file in sets.resolve(path):
        with sets.open_bytes(file) as f:
            for line in f:
                loads(line)
    return time.perf_counter() - start


def _cpu_loop_seconds(path: str) -> float:
    """CPU seconds of the orjson.loads loop over *path* (what a busy machine does not change much)."""
    start = _cpu_seconds()
    _loop_seconds(path, orjson.loads)
    return _cpu_seconds() - start


def write_set(folder: str, n: int, rotation: Rotation) -> float:
    """Write *n* synthetic records as a segment set under *folder*; the seconds it took."""
    start = time.perf_counter()
    with SegmentedWriter(os.path.join(folder, "set"), new_header(), rotation, sync=SyncPolicy.NONE) as writer:
        for record in synthetic_records(n):
            writer.append(record)
    return time.perf_counter() - start


def _segments(records: int, size: int, tmp: str) -> list[str]:
    """Rotation and compression: write rates, ratio, and verify of a set against the orjson loop (the goals' lines)."""
    print("\nsegment sets (10 segments)")
    seg = max(size // 10, 4096)
    plain, packed = os.path.join(tmp, "plain"), os.path.join(tmp, "packed")
    os.mkdir(plain)
    os.mkdir(packed)
    t_rot = write_set(plain, records, Rotation(size=seg))
    t_zst = write_set(packed, records, Rotation(size=seg, compress="zstd"))  # the wait for the compressor included
    files = sets.resolve(plain)
    zfiles = sets.resolve(packed)
    print(f"  write, rotating every {seg / 2**20:.1f} MiB:        {records / t_rot:>12,.0f} records/s "
          f"({len(files)} segments)")
    print(f"  write, rotating + zstd in the background: {records / t_zst:>12,.0f} records/s")
    raw = sum(os.path.getsize(f) for f in files)
    packed_size = sum(os.path.getsize(f) for f in zfiles)
    print(f"  compression ratio (zstd level 3): {raw / packed_size:.1f}x ({raw / 2**20:.1f} MiB -> {packed_size / 2**20:.1f} MiB)")
    n = records + len(files)
    t_loop = _loop_seconds(plain, orjson.loads)
    one = files[1]  # the first one would stand for the whole set
    ratios: dict[str, float] = {}
    for label, path, jobs in (("one segment", one, None), ("set, 1 process", plain, 1),
                              ("set, all CPUs", plain, None), ("compressed set, all CPUs", packed, None)):
        count = n if path != one else sum(1 for _ in open(one, "rb"))
        loop = t_loop if path != one else _loop_seconds(path, orjson.loads)
        start = time.perf_counter()
        report = verify(path, jobs=jobs)
        secs = time.perf_counter() - start
        if not report.ok:
            raise SystemExit(f"verify found problems in the benchmark set: {report.problems[:3]}")
        print(f"  verify {label:<26} {count / secs:>12,.0f} records/s  {loop / secs:5.2f}x the orjson loop"
              f" ({count / loop:,.0f}/s)")
        ratios[label] = loop / secs
    peak = peak_rss_kib("verify", plain) / 1024
    print(f"  verify peak memory, set, all CPUs: {peak:.1f} MiB")
    cpus = len(os.sched_getaffinity(0))
    return [f"verify a {len(files)}-segment set, {cpus} CPUs: {ratios['set, all CPUs']:.2f}x (1 process:"
            f" {ratios['set, 1 process']:.2f}x, zstd: {ratios['compressed set, all CPUs']:.2f}x)   goal >= 1.0x",
            f"verify peak memory (set): {peak:.0f} MiB   goal <= 100 MB"]


def run(records: int = 1_000_000, always_records: int = 2_000, folder: str | None = None) -> None:
    """Run the benchmark and print its figures."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        print(f"qmprr bench log: {records:,} records (sync=always: {always_records:,}), in {tmp}; {_load()}")
        goals: list[str] = []
        print("\nwrite throughput")
        big = os.path.join(tmp, "big.jsonl")
        rates = {}
        for policy, n, path in (
            (SyncPolicy.NONE, records, os.path.join(tmp, "none.jsonl")),
            (SyncPolicy.BATCH, records, big),
            (SyncPolicy.ALWAYS, always_records, os.path.join(tmp, "always.jsonl")),
        ):
            seconds = write_recording(path, n, policy)
            rates[policy] = n / seconds
            print(f"  sync={policy.value:<6} {n:>10,} records {seconds:8.2f} s {rates[policy]:>12,.0f} records/s")
            if path != big:
                os.remove(path)
        size = os.path.getsize(big)
        print(f"  (file: {size / 2**20:.1f} MiB, {size / (records + 1):.0f} bytes/record)")
        print(f"  ratio batch/none: {rates[SyncPolicy.BATCH] / rates[SyncPolicy.NONE]:.2f}  "
              f"always/none: {rates[SyncPolicy.ALWAYS] / rates[SyncPolicy.NONE]:.4f}")

        print("\nread throughput over the same file (one segment)")
        t_json = _loop_seconds(big, json.loads)
        t_orjson = _loop_seconds(big, orjson.loads)
        t_one = _verify_seconds(big, 1)
        t_verify = _verify_seconds(big, None)
        n = records + 1
        cpus = len(os.sched_getaffinity(0))
        for label, secs in (
            ("json.loads loop (baseline)", t_json),
            ("orjson.loads loop", t_orjson),
            ("verify, 1 process", t_one),
            (f"verify, {cpus} CPUs (split)", t_verify),
        ):
            print(f"  {label:<28} {secs:8.2f} s {n / secs:>12,.0f} records/s  {t_json / secs:5.2f}x baseline"
                  f"  {t_orjson / secs:5.2f}x orjson")
        cpu_loop = _cpu_loop_seconds(big)
        print(f"  CPU time per record: orjson loop {cpu_loop / n * 1e6:.2f} us, verify {_CPU[big, 1] / n * 1e6:.2f} us"
              f" (1 process), {_CPU[big, None] / n * 1e6:.2f} us (split, all processes)")
        goals.append(f"verify one segment ({records:,} records), {cpus} CPUs: {t_orjson / t_verify:.2f}x the orjson"
                     f" loop (1 process: {t_orjson / t_one:.2f}x; by CPU time: {cpu_loop / _CPU[big, 1]:.2f}x)"
                     "   goal >= 0.6x")

        print("\nreader peak memory (child process, max RSS)")
        base = peak_rss_kib("import", big)
        peak = peak_rss_kib("verify", big)
        print(f"  import only: {base / 1024:.1f} MiB   read + verify {records:,} records: "
              f"{peak / 1024:.1f} MiB   difference: {(peak - base) / 1024:.1f} MiB")
        os.remove(big)
        goals += _segments(records, size, tmp)
        print(f"\nissue 13's goals, each against the orjson.loads loop in this run ({_load()} at the end)")
        for line in goals:
            print(f"  {line}")


def _verify_seconds(path: str, jobs: int | None) -> float:
    start, cpu = time.perf_counter(), _cpu_seconds()
    report = verify(path, jobs=jobs)
    secs = time.perf_counter() - start
    if not report.ok:
        raise SystemExit(f"verify found problems in the benchmark file: {report.problems[:3]}")
    _CPU[path, jobs] = _cpu_seconds() - cpu
    return secs


#: CPU seconds (this process and its reaped workers) of each verify run, by (path, jobs).
_CPU: dict[tuple[str, int | None], float] = {}


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (5 min: {five:.2f}) on {len(os.sched_getaffinity(0))} CPUs"
