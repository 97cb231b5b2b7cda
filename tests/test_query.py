"""``qmprr query`` / ``export --format parquet``: answers checked against figures counted
here from ``read_records`` (never against DuckDB itself), over torn, tampered, compressed
and older-format recordings, and the exported dataset read back by pyarrow."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

import pytest
import zstandard
from qmprr.cli import main
from qmprr.analysis.query.engine import open_dataset, open_recordings
from qmprr.analysis.query.files import CATALOG_NAME
from qmprr.analysis.query.parquet import export_parquet
from qmprr.analysis.query.schema import SCHEMA_VERSION
from qmprr.bench.analysis import write_recording, write_records
from qmprr.recording import read_records

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"


def dicts(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def newer_and_older(folder: Path, n: int = 3_000, seed: int = 5) -> tuple[Path, Path]:
    """The same session twice: with fields added since (``queued``, ``input_sha256``) and without."""
    base = folder / "base.jsonl.tmp"
    write_recording(base, n, seed=seed)
    recs = dicts(base)
    base.unlink()
    for r in recs:
        r.pop("h", None)
    newer = []
    for i, r in enumerate(recs):
        r = dict(r)
        if r["kind"] == "command" and i % 7 == 0:
            r["queued"] = round(r["t"] - 0.002, 6)
        if r["kind"] == "local" and r.get("msg") is None:
            r["input_sha256"], r["input_len"] = "ab" * 32, 5
        newer.append(r)
    older = [{k: v for k, v in r.items() if k not in ("queued", "input_sha256", "input_len")} for r in recs]
    new_p, old_p = folder / "new.jsonl", folder / "old.jsonl"
    write_records(new_p, newer)
    write_records(old_p, older)
    return new_p, old_p


def count_commands(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """Per command name: (count, error replies), from the typed records."""
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for path in paths:
        names = {}
        for rec in read_records(path, errors="skip"):
            if rec.kind == "command":
                name = rec.msg.get("execute", rec.msg.get("exec-oob"))
                names[rec.seq] = name
                counts[name][0] += 1
            elif rec.kind == "reply" and "error" in rec.msg and rec.cmd in names:
                counts[names[rec.cmd]][1] += 1
    return {k: (a, b) for k, (a, b) in counts.items()}


SQL_COMMANDS = ("SELECT command, count(*), count(*) FILTER (WHERE result = 'error') FROM commands "
                "GROUP BY command ORDER BY command")


def answer(opened: Any, sql: str = SQL_COMMANDS) -> dict[str, tuple[int, int]]:
    return {name: (n, e) for name, n, e in opened.con.execute(sql).fetchall()}


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    folder = tmp_path / "fleet" / "host-a"
    folder.mkdir(parents=True)
    new, old = newer_and_older(folder)
    for name in ("lifecycle.jsonl", "errors.jsonl", "inject-during-transaction.jsonl"):
        (folder / name).write_bytes((RECORDINGS / name).read_bytes())
    sub = tmp_path / "fleet" / "host-b" / "deep"
    sub.mkdir(parents=True)
    write_recording(sub / "b.jsonl", 2_000, seed=9)
    return tmp_path / "fleet"


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith((".jsonl", ".jsonl.zst")))


def test_commands_match_the_records_counted_here(fleet: Path) -> None:
    files = all_files(fleet)
    opened = open_recordings([str(fleet)])
    assert answer(opened) == count_commands(files)
    rows = dict(opened.con.execute("SELECT file, records FROM sessions").fetchall())
    assert rows == {str(p): sum(1 for _ in read_records(p)) for p in files}
    # every row names its file; every view has rows from each recording that has them
    (n,), = opened.con.execute("SELECT count(*) FROM records WHERE file IS NULL").fetchall()
    assert n == 0
    events = collections.Counter(r.msg.get("event") for p in files for r in read_records(p) if r.kind == "event")
    assert dict(opened.con.execute("SELECT event, count(*) FROM events GROUP BY event").fetchall()) == events


def test_latency_and_transactions_match(fleet: Path) -> None:
    path = fleet / "host-a" / "inject-during-transaction.jsonl"
    recs = list(read_records(path))
    t_of = {r.seq: r.t for r in recs if r.kind == "command"}
    latencies = sorted(round((r.t - t_of[r.cmd]) * 1000, 6) for r in recs if r.kind == "reply")
    opened = open_recordings([str(path)])
    got = sorted(round(x, 6) for (x,) in opened.con.execute("SELECT latency_ms FROM commands").fetchall())
    assert got == latencies
    begins = [r for r in recs if r.kind == "tx" and r.action == "begin"]
    ends = {r.tx: r.t for r in recs if r.kind == "tx" and r.action == "end"}
    rows = opened.con.execute("SELECT tx, held_s, status FROM transactions").fetchall()
    assert rows == [(b.tx, pytest.approx(ends[b.tx] - b.t), "end") for b in begins]
    (tainted,), = opened.con.execute("SELECT tainted FROM sessions").fetchall()
    assert tainted is any(r.kind == "taint" for r in recs)


def test_two_format_versions_query_the_same(tmp_path: Path) -> None:
    new, old = newer_and_older(tmp_path)
    o_new, o_old = open_recordings([str(new)]), open_recordings([str(old)])
    assert answer(o_new) == answer(o_old) == count_commands([old])
    queued = sum(1 for r in dicts(new) if "queued" in r)
    assert queued > 0
    assert o_new.con.execute("SELECT count(queued_ms) FROM commands").fetchone()[0] == queued
    assert o_old.con.execute("SELECT count(queued_ms) FROM commands").fetchone()[0] == 0
    hashed = sum(1 for r in dicts(new) if "input_sha256" in r)
    assert o_new.con.execute("SELECT count(input_sha256) FROM locals").fetchone()[0] == hashed
    assert o_old.con.execute("SELECT count(*) FROM locals").fetchone()[0] == \
        sum(1 for r in dicts(old) if r["kind"] == "local")


def test_torn_last_line_is_skipped_and_said(tmp_path: Path) -> None:
    path = tmp_path / "torn.jsonl"
    path.write_bytes((RECORDINGS / "errors.jsonl").read_bytes() + b'{"seq":35,"t":0.5,"kind":"comm')
    opened = open_recordings([str(path)])
    expected = count_commands([RECORDINGS / "errors.jsonl"])
    assert answer(opened) == expected
    assert opened.con.execute("SELECT torn, records FROM sessions").fetchall() == [
        (True, sum(1 for _ in read_records(RECORDINGS / "errors.jsonl")))]


def test_zstd_recording(tmp_path: Path) -> None:
    plain = RECORDINGS / "block.jsonl"
    z = tmp_path / "block.jsonl.zst"
    z.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    assert answer(open_recordings([str(z)])) == count_commands([plain])


def tamper(path: Path) -> None:
    """Change one reply's text in place, same length, keeping the mtime: only the chain shows it."""
    data = path.read_bytes()
    i = data.index(b'"return":{}')
    st = os.stat(path)
    path.write_bytes(data[:i] + b'"return":[]' + data[i + len(b'"return":{}'):])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_verified_leaves_out_a_tampered_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    write_recording(good, 1_000, seed=1)
    write_recording(bad, 1_000, seed=2)
    sql = "SELECT count(*) FROM commands"
    assert main(["query", "--verified", "--format", "csv", sql, str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    both = sum(v[0] for v in count_commands([good, bad]).values())
    assert out.splitlines()[1] == str(both) and err == ""
    catalog = json.loads((tmp_path / CATALOG_NAME).read_text())
    assert {Path(p).name for p, e in catalog["verified"].items() if e["ok"]} == {"good.jsonl", "bad.jsonl"}
    tamper(bad)
    assert main(["query", "--verified", "--format", "csv", sql, str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1] == str(sum(v[0] for v in count_commands([good]).values()))
    assert "left out (does not verify)" in err and "bad.jsonl" in err and len(err.splitlines()) == 1
    # without --verified the tampered file is read (the chain is not checked)
    assert main(["query", "--format", "csv", sql, str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == str(both)


def test_verified_keeps_a_torn_recording(tmp_path: Path) -> None:
    path = tmp_path / "torn.jsonl"
    path.write_bytes((RECORDINGS / "errors.jsonl").read_bytes() + b'{"seq":35')
    opened = open_recordings([str(tmp_path)], only_verified=True)
    assert not opened.excluded and answer(opened) == count_commands([RECORDINGS / "errors.jsonl"])


def test_export_parquet_dataset(fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    out = tmp_path / "ds"
    files = all_files(fleet)
    later = files.pop()  # exported in the second run
    hidden = later.rename(later.with_suffix(".later"))
    assert main(["export", "--format", "parquet", str(fleet), "-o", str(out)]) == 0
    assert f"{len(files):,} recordings exported" in capsys.readouterr().out
    hidden.rename(later)
    assert main(["export", "--format", "parquet", str(fleet), "-o", str(out)]) == 0
    assert "1 recordings exported" in capsys.readouterr().out
    assert main(["export", "--format", "parquet", str(fleet), "-o", str(out)]) == 0
    assert f"0 recordings exported ({0:,} records), {len(files) + 1:,} already there" in capsys.readouterr().out
    files.append(later)
    meta = json.loads((out / "_qmprr_dataset.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION and len(meta["exported"]) == len(files)
    # Hive partitions date=/host=, zstd, the schema version in every file
    parts = sorted(p.relative_to(out / "records").parts[:2] for p in (out / "records").rglob("*.parquet"))
    hosts = {r.host for p in files for r in read_records(p) if r.kind == "header"}
    assert {h for _, h in parts} == {f"host={h}" for h in hosts} and all(d.startswith("date=") for d, _ in parts)
    one = next((out / "commands").rglob("*.parquet"))
    md = pq.ParquetFile(one).metadata
    assert md.row_group(0).column(0).compression == "ZSTD"
    assert md.metadata[b"qmprr_schema_version"] == str(SCHEMA_VERSION).encode()
    # the second reader: pyarrow, counts against the records counted here
    records = ds.dataset(out / "records", format="parquet", partitioning="hive")
    assert records.count_rows() == sum(1 for p in files for _ in read_records(p))
    cmds = ds.dataset(out / "commands", format="parquet", partitioning="hive").to_table()
    assert {"file", "command", "latency_ms", "error_class", "date", "host"} <= set(cmds.schema.names)
    counted = count_commands(files)
    assert collections.Counter(cmds.column("command").to_pylist()) == {k: v[0] for k, v in counted.items()}
    # the same views over the dataset: the same answers
    assert answer(open_dataset(str(out))) == counted == answer(open_recordings([str(fleet)]))
    assert main(["query", "--dataset", str(out), "--format", "json", "SELECT count(*) AS n FROM sessions"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": len(files)}


def test_export_reports_a_changed_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = tmp_path / "in" / "r.jsonl"
    rec.parent.mkdir()
    write_recording(rec, 500)
    assert main(["export", "--format", "parquet", str(rec.parent), "-o", str(tmp_path / "ds")]) == 0
    capsys.readouterr()
    with open(rec, "ab") as f:
        f.write(b'{"seq":')
    assert main(["export", "--format", "parquet", str(rec.parent), "-o", str(tmp_path / "ds")]) == 0
    out, err = capsys.readouterr()
    assert "changed since it was exported" in err and "0 recordings exported" in out


def test_cli_formats_explain_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(RECORDINGS / "errors.jsonl")
    counted = count_commands([RECORDINGS / "errors.jsonl"])
    sql = "SELECT command, count(*) AS n FROM commands GROUP BY command ORDER BY command"
    assert main(["query", "--format", "json", sql, path]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {r["command"]: r["n"] for r in rows} == {k: v[0] for k, v in counted.items()}
    assert main(["query", "--format", "markdown", sql, path]) == 0
    assert capsys.readouterr().out.startswith("| command | n |\n|---|---|\n")
    assert main(["query", sql, path]) == 0
    assert "query-status" in capsys.readouterr().out
    assert main(["query", "--explain", sql, path]) == 0
    out = capsys.readouterr().out
    assert "CREATE OR REPLACE VIEW commands" in out and "ignore_errors = true" in out
    pq_out = tmp_path / "out.parquet"
    assert main(["query", "--format", "parquet", "-o", str(pq_out), sql, path]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(pq_out).num_rows == len(counted)
    assert main(["query", "SELECT nope FROM commands", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qmprr: ") and len(err.splitlines()) == 1
    assert main(["query", "SELECT 1", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("qmprr: ")
    assert main(["query", "--dataset", str(tmp_path), "SELECT 1"]) == 2
    assert "not a qmprr Parquet dataset" in capsys.readouterr().err


def test_verified_verdicts_come_from_the_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qmprr.analysis.query import files

    write_recording(tmp_path / "a.jsonl", 500, seed=1)
    write_recording(tmp_path / "b.jsonl", 500, seed=2)
    assert not open_recordings([str(tmp_path)], only_verified=True).excluded
    calls: list[str] = []
    monkeypatch.setattr(files, "_verify_one", lambda p: calls.append(p) or (True, ""))
    open_recordings([str(tmp_path)], only_verified=True)
    assert calls == []  # unchanged files: the cached verdicts
    with open(tmp_path / "b.jsonl", "ab") as f:
        f.write(b'{"seq":')
    open_recordings([str(tmp_path)], only_verified=True, )
    assert [Path(p).name for p in calls] == ["b.jsonl"]  # only the changed one again


def test_bench_fleet_answers_agree(tmp_path: Path) -> None:
    from qmprr.bench import fleet

    results = fleet.run(recordings=4, records=2_000, folder=str(tmp_path))
    assert results["records"] == 2_000 and results["dataset_bytes"] > 0
    if "identical" in results:  # jq installed
        assert results["identical"]


def test_a_hostile_host_name_stays_inside_the_dataset(tmp_path: Path) -> None:
    """The host partition comes from the header, which anyone can write: no path escapes DIR."""
    recs = dicts(RECORDINGS / "errors.jsonl")
    for r in recs:
        r.pop("h")
    recs[0]["host"] = "../../../escaped/x"
    (tmp_path / "in").mkdir()
    write_records(tmp_path / "in" / "a.jsonl", recs)
    export_parquet([str(tmp_path / "in")], str(tmp_path / "ds"))
    assert not any(tmp_path.rglob("escaped"))
    written = [p for p in tmp_path.rglob("*.parquet")]
    assert written and all((tmp_path / "ds") in p.parents for p in written)
    hosts = open_dataset(str(tmp_path / "ds")).con.execute("SELECT DISTINCT host FROM commands").fetchall()
    assert hosts == [("../../../escaped/x",)]
