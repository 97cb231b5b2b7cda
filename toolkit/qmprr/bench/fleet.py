"""``qmprr bench fleet``: SQL over a synthetic fleet against jq and per-file ``stats``.

Writes --recordings synthetic recordings (the mix of ``bench analysis``:
clients, events, errors, transactions; spread over hosts and days) of
--records records in all, then times, in one run, the same question --
per-command count, error replies, p50 and p99 latency over the whole fleet:

* ``qmprr query`` over the JSONL files (a child process: wall time, peak RSS);
* ``qmprr export --format parquet`` (records/s, dataset size against the JSONL);
* ``qmprr query --dataset`` over that export;
* a ``jq`` pipeline over the JSONL (the baseline for the ratios);
* the pre-DuckDB ``qmprr stats`` run per file (``--baseline-src``: a qmprr source
  tree, e.g. ``git archive`` of an older commit; its per-file counts are summed,
  its percentiles cannot be combined across files).

The answers are compared: the counts and the percentiles from jq and DuckDB
(nearest rank, the same rounding) must be identical.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .analysis import _Gen, write_records

SQL = ("SELECT command, count(*) AS n, count(*) FILTER (WHERE result = 'error') AS errors, "
       "round(quantile_disc(latency_ms, 0.5), 3) AS p50, round(quantile_disc(latency_ms, 0.99), 3) AS p99 "
       "FROM commands GROUP BY command ORDER BY command")

#: Stage 1 (one jq over all files): a command or reply as a small array keyed by file and seq.
JQ_PICK = r"""
if .kind == "command" then ["c", "\(input_filename):\(.seq)", (.msg.execute // .msg["exec-oob"] // "?"), .t]
elif .kind == "reply" then ["r", "\(input_filename):\(.cmd)", .t, (if .msg.error then 1 else 0 end)]
else empty end
"""
#: Stage 2: join replies to commands, then per command: count, errors, nearest-rank p50/p99
#: (the value at rank ceil(n q), as DuckDB's quantile_disc), latency rounded to microseconds.
JQ_AGG = r"""
reduce inputs as $x ({};
  if $x[0] == "c" then .[$x[1]] = [$x[2], $x[3], null, 0]
  elif has($x[1]) then .[$x[1]][2] = $x[2] | .[$x[1]][3] = $x[3]
  else . end)
| [.[]] | group_by(.[0])[]
| ([.[] | select(.[2] != null) | (.[2] - .[1]) * 1000 * 1000 | round / 1000] | sort) as $l
| ($l | length) as $m
| def rank($q): if $m > 0 then $l[(($m * $q) | ceil) - 1] else null end;
  [.[0][0], length, (map(.[3]) | add), rank(0.5), rank(0.99)]
| @tsv
"""

_BASELINE = """
import sys, collections
from qmprr.analysis.stats import compute
counts = collections.Counter(); errors = collections.Counter()
for path in sys.argv[1:]:
    for name, c in compute(path)["commands"].items():
        counts[name] += c["count"]; errors[name] += sum(c["errors"].values())
for name in sorted(counts):
    print(name, counts[name], errors[name], sep="\\t")
"""


def write_fleet(folder: Path, recordings: int, records: int, hosts: int = 8) -> int:
    """*recordings* files of *records* records in all, under host-N/ folders; bytes written."""
    per = max(20, records // recordings)
    size = 0
    for i in range(recordings):
        gen = _Gen(seed=1000 + i)
        it = gen.records()
        header = next(it)
        header["host"] = f"host-{i % hosts}"
        header["started_epoch"] = 1767225600.0 + 86400 * (i % 7) + i
        header["started"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime(header["started_epoch"]))
        path = folder / header["host"] / f"vm-{i:05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_records(path, itertools.chain([header], itertools.islice(it, per - 1)))
        size += path.stat().st_size
    return size


def _run_measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[str, float, float]:
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        proc = subprocess.Popen(argv, stdout=out_f, stderr=err_f, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out_f.seek(0)
        err_f.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{argv[0]} failed: {err_f.read().decode().strip()[:500]}")
        return out_f.read().decode(), wall, usage.ru_maxrss / 1024


def _in_process(data: str, ds: str) -> tuple[float, float]:
    """Seconds for the question in this process (views opened, SQL run), JSONL then Parquet (best of 3)."""
    from ..analysis.query.engine import open_dataset, open_recordings

    start = time.perf_counter()
    open_recordings([data]).con.execute(SQL).fetchall()
    t_jsonl = time.perf_counter() - start
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        open_dataset(ds).con.execute(SQL).fetchall()
        best = min(best, time.perf_counter() - start)
    return t_jsonl, best


def _rows(tsv: str) -> list[tuple[Any, ...]]:
    rows = []
    for line in tsv.strip().splitlines():
        name, *rest = line.split("\t")
        rows.append((name, *[None if v in ("", "null") else float(v) for v in rest]))
    return rows


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(recordings: int = 200, records: int = 1_000_000, folder: str | None = None,
        baseline_src: str | None = None) -> dict[str, Any]:
    qmprr = [sys.executable, "-m", "qmprr.cli"]
    tmp = Path(tempfile.mkdtemp(prefix="qmprr-bench-fleet-", dir=folder))
    results: dict[str, Any] = {"recordings": recordings, "records": records}
    try:
        data = tmp / "fleet"
        start = time.perf_counter()
        size = write_fleet(data, recordings, records)
        print(f"qmprr bench fleet: {recordings:,} recordings, {records:,} records, {size / 2**20:.1f} MiB JSONL "
              f"(written in {time.perf_counter() - start:.1f} s) in {tmp}")
        results["jsonl_bytes"] = size

        out, t_q, rss_q = _run_measured([*qmprr, "query", "--format", "csv", SQL, str(data)])
        duck = [(r[0], *[None if v == "" else float(v) for v in r[1:]])
                for r in (line.split(",") for line in out.strip().splitlines()[1:])]
        print(f"\nqmprr query over JSONL: {t_q:.2f} s, peak RSS {rss_q:.0f} MiB   goal <= 1024 MiB")

        ds = tmp / "ds"
        _, t_e, rss_e = _run_measured([*qmprr, "export", "--format", "parquet", str(data), "-o", str(ds)])
        ds_size = _du(ds)
        print(f"qmprr export --format parquet: {t_e:.2f} s, {records / t_e:,.0f} records/s, peak RSS "
              f"{rss_e:.0f} MiB; dataset {ds_size / 2**20:.1f} MiB = JSONL / {size / ds_size:.1f}")

        _, t_0, _ = _run_measured([*qmprr, "query", "--dataset", str(ds), "--format", "csv", "SELECT 1"])
        print(f"qmprr query --dataset 'SELECT 1' (start-up: Python, imports, opening the dataset): {t_0:.3f} s")
        out, t_p, rss_p = _run_measured([*qmprr, "query", "--dataset", str(ds), "--format", "csv", SQL])
        duck_p = [(r[0], *[None if v == "" else float(v) for v in r[1:]])
                  for r in (line.split(",") for line in out.strip().splitlines()[1:])]
        print(f"qmprr query --dataset (Parquet): {t_p:.3f} s, peak RSS {rss_p:.0f} MiB")

        results.update(startup_s=t_0, query_jsonl_s=t_q, query_jsonl_rss_mib=rss_q, export_s=t_e, export_rss_mib=rss_e,
                       dataset_bytes=ds_size, query_parquet_s=t_p, query_parquet_rss_mib=rss_p)
        # In a child: a fork inherits the parent's peak RSS, so the parent stays small.
        out, _, _ = _run_measured([sys.executable, "-c", "import sys; from qmprr.bench.fleet import _in_process; "
                                   "print(*_in_process(sys.argv[1], sys.argv[2]))", str(data), str(ds)])
        t_qi, t_pi = map(float, out.split())
        print(f"in one process (no start-up): query over JSONL {t_qi:.2f} s, over Parquet {t_pi:.3f} s")
        results.update(query_jsonl_engine_s=t_qi, query_parquet_engine_s=t_pi)
        files = sorted(str(p) for p in data.rglob("*.jsonl"))
        if shutil.which("jq"):
            script = tmp / "pipeline.sh"
            script.write_text('jq -c "$PICK" "$@" | jq -n -r "$AGG"\n')
            env = {**os.environ, "PICK": JQ_PICK, "AGG": JQ_AGG}
            out, t_j, rss_j = _run_measured(["bash", str(script), *files], env=env)
            jq_rows = _rows(out)
            same = jq_rows == duck == duck_p
            print(f"jq pipeline: {t_j:.2f} s, peak RSS {rss_j:.0f} MiB; answers identical: {same}")
            print(f"  ratio jq / query JSONL: {t_j / t_q:.1f}x   goal >= 10x")
            print(f"  ratio jq / query Parquet: {t_j / t_p:.1f}x   goal >= 100x "
                  f"({t_j / t_pi:.0f}x for the engine alone; {t_j / t_qi:.1f}x over JSONL)")
            results.update(jq_s=t_j, jq_rss_mib=rss_j, identical=same)
            if not same:
                for a, b in zip(jq_rows, duck):
                    if a != b:
                        print(f"  differ: jq {a} duckdb {b}")
        else:
            print("jq: not installed (apt-get install jq); no ratios")
        if baseline_src:
            env = {**os.environ, "PYTHONPATH": str(Path(baseline_src) / "toolkit")}
            out, t_s, rss_s = _run_measured([sys.executable, "-c", _BASELINE, *files], env=env)
            base = {r[0]: (r[1], r[2]) for r in _rows(out)}
            mine = {r[0]: (r[1], r[2]) for r in duck}
            print(f"pre-DuckDB qmprr stats per file ({baseline_src}, one process for all files): {t_s:.2f} s, "
                  f"peak RSS {rss_s:.0f} MiB; counts and errors identical: {base == mine}")
            print(f"  ratio stats-per-file / query JSONL: {t_s / t_q:.1f}x")
            results.update(stats_per_file_s=t_s, stats_identical=base == mine)
        print("\nper command (query over JSONL):")
        for row in duck:
            print("  " + "  ".join(str(v) for v in row))
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
