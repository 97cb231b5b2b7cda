"""``qmprr stats``: figures from real and synthetic recordings (SQL over the query
views), capped name tables, several recordings at once, the table and JSON outputs."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from qmprr.analysis.query import stats as stats_sql
from qmprr.cli import main
from qmprr.analysis.stats import compute, compute_many
from qmprr.bench.analysis import write_recording, write_records

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
TX = RECORDINGS / "inject-during-transaction.jsonl"
ERRORS = RECORDINGS / "errors.jsonl"


def header() -> dict[str, Any]:
    return {"seq": 0, "t": 0.0, "kind": "header", "format": "qmprr/1", "started": "2026-01-01T00:00:00+00:00",
            "started_epoch": 1767225600.0, "host": "test", "qmprr_version": "0.1.0"}


def exchanges(latencies_us: list[int], name: str = "query-status", gap: float = 0.001,
              error_every: int = 0) -> list[dict[str, Any]]:
    """A header, then one command and its reply per latency."""
    out = [header()]
    t = 0.0
    for i, us in enumerate(latencies_us):
        t = round(t + gap, 6)
        out.append({"seq": len(out), "t": t, "kind": "command", "src": "primary-1", "role": "primary",
                    "msg": {"execute": name, "id": f"q{i}"}})
        cmd = out[-1]["seq"]
        t = round(t + us / 1e6, 6)
        msg: dict[str, Any] = {"return": {}, "id": f"q{i}"}
        if error_every and i % error_every == 0:
            msg = {"error": {"class": "GenericError", "desc": "no"}, "id": f"q{i}"}
        out.append({"seq": len(out), "t": t, "kind": "reply", "cmd": cmd, "msg": msg})
    return out


def test_transaction_recording(capsys: pytest.CaptureFixture[str]) -> None:
    s = compute(TX)
    assert s["records"] == 30 and s["qemu"] == "7.2.22" and s["duration"] == 0.186945
    assert s["commands"]["dump-guest-memory"]["latency_ms"] == {"p50": 116.873, "p95": 116.873, "p99": 116.873,
                                                                "max": 116.873}
    assert s["commands"]["query-status"]["count"] == 2
    assert s["events"] == {"DUMP_COMPLETED": 1, "RESUME": 1, "SHUTDOWN": 1, "STOP": 1}
    assert s["clients"]["debug-1"] == {"role": "debug", "commands": 1, "errors": 0, "local": 1,
                                       "first": 0.028775, "last": 0.185556}
    assert s["clients"]["primary-1"]["commands"] == 4 and s["clients"]["qmprr"]["role"] == "internal"
    assert s["taint"] == {"count": 1, "items": [{"seq": 11, "t": 0.032366, "reason": "custom-monitor",
                                                 "client": "debug-1"}]}
    tx = s["transactions"]
    assert (tx["count"], tx["ended"], tx["aborted"], tx["open_at_end"]) == (1, 1, 0, 0)
    assert tx["longest"] == {"tx": 1, "label": "dump", "owner": "primary-1", "start": 0.031194,
                             "seconds": 0.13253, "status": "end"}
    # debug-1's command arrived (taint, seq 11) during the transaction and went out after it (seq 22)
    assert tx["waits"] == {"count": 1, "longest": [{"client": "debug-1", "tx": 1, "start": 0.032366,
                                                    "seconds": 0.131486}]}
    assert s["without_reply"]["count"] == 0 and s["problems"]["count"] == 0
    assert s["busiest_second"] == {"start": 0.0, "messages": 20, "commands": 7, "events": 4}


def test_errors_by_class() -> None:
    s = compute(ERRORS)
    assert s["errors_total"] == 5
    assert s["commands"]["no-such-command"]["errors"] == {"CommandNotFound": 1}
    assert s["commands"]["query-status"]["errors"] == {"GenericError": 1}
    assert s["local"]["qmp_capabilities"] == {"count": 4, "errors": 1}
    assert s["local"]["(unparsable input)"] == {"count": 1, "errors": 1}
    assert s["clients"]["debug-1"]["errors"] == 1  # its refused quit


def test_percentiles_are_exact_nearest_rank(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    small = list(range(1, 101))  # 1..100 µs
    write_records(path, exchanges(small))
    lat = compute(path)["commands"]["query-status"]["latency_ms"]
    assert lat == {"p50": 0.05, "p95": 0.095, "p99": 0.099, "max": 0.1}
    big = [1000 * i for i in range(1, 201)]  # 1..200 ms
    write_records(path, exchanges(big))
    lat = compute(path)["commands"]["query-status"]["latency_ms"]
    assert lat == {"p50": 100.0, "p95": 190.0, "p99": 198.0, "max": 200.0}


def test_commands_without_reply_and_orphan_replies(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    records = exchanges([100, 200, 300])
    records = records[:-1]  # the last command never got its reply
    records.append({"seq": len(records), "t": 1.0, "kind": "reply", "cmd": 2, "msg": {"return": {}}})
    write_records(path, records)
    s = compute(path)
    assert s["without_reply"] == {"count": 1, "items": [{"seq": 5, "t": 0.003300, "command": "query-status",
                                                        "src": "primary-1"}]}
    assert s["commands"]["query-status"]["no_reply"] == 1
    assert s["orphan_replies"] == 1


def test_tables_keep_flat_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_sql, "MAX_KEYS", 50)
    path = tmp_path / "r.jsonl"
    records = [header()]
    for i in range(200):
        records.append({"seq": len(records), "t": i / 1000, "kind": "event", "msg": {"event": f"EV{i}"}})
        records.append({"seq": len(records), "t": i / 1000, "kind": "command", "src": f"c{i}", "role": "primary",
                        "msg": {"execute": f"cmd-{i}"}})
        records.append({"seq": len(records), "t": i / 1000, "kind": "reply", "cmd": len(records) - 1,
                        "msg": {"return": {}}})
    write_records(path, records)
    s = compute(path)
    assert len(s["events"]) == 51 and s["events"]["(other)"] == 150  # 50 names, then the rest together
    assert len(s["commands"]) == 51 and s["commands"]["(other)"]["count"] == 150
    assert len(s["clients"]) == 51 and s["clients"]["(other)"]["commands"] == 150
    assert s["commands_total"] == 200


def test_problems_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    write_recording(path, 5_000)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1200] = b'{"not json\n'
    del lines[3000]  # a gap in seq
    path.write_bytes(b"".join(lines) + b'{"seq":')
    s = compute(path)
    assert [p["problem"] for p in s["problems"]["items"]] == [
        "1 unreadable line(s) skipped", "seq 1201 after 1199", "seq 3001 after 2999",
        "torn last line (a writer crashed mid-record)"]
    assert s["records"] == 4998


def test_several_recordings_add_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """stats DIR: every figure is the sum over the recordings, counted here from their records."""
    folder = tmp_path / "fleet"
    folder.mkdir()
    total_commands, errors = 0, 0
    for i, n in enumerate((2_000, 3_000, 1_500)):
        write_recording(folder / f"r{i}.jsonl", n, seed=i + 1)
        recs = [json.loads(x) for x in (folder / f"r{i}.jsonl").read_text().splitlines()]
        total_commands += sum(r["kind"] == "command" for r in recs)
        errors += sum(r["kind"] == "reply" and "error" in r["msg"] for r in recs)
    s = compute_many([folder])
    assert s["recordings"] == 3 and s["records"] == 6_500
    epochs = [json.loads((folder / f"r{i}.jsonl").read_text().splitlines()[0])["started_epoch"] for i in range(3)]
    assert datetime.datetime.fromisoformat(s["started"]).timestamp() == pytest.approx(min(epochs))  # the earliest
    assert s["commands_total"] == total_commands and s["errors_total"] == errors
    one = [compute(folder / f"r{i}.jsonl") for i in range(3)]
    assert s["transactions"]["count"] == sum(x["transactions"]["count"] for x in one)
    assert s["events"] == {k: sum(x["events"].get(k, 0) for x in one)
                           for k in s["events"]}
    assert main(["stats", str(folder)]) == 0
    out, _ = capsys.readouterr()
    assert "3 recordings" in out


def test_stats_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--json", str(TX)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out) == compute(TX)
    assert main(["stats", str(TX)]) == 0
    out, _ = capsys.readouterr()
    for text in ("Recording", "TAINTED", "custom-monitor by debug-1", "Commands (latency in ms)",
                 "dump-guest-memory", "116.873", "Events", "DUMP_COMPLETED", "Clients", "debug-1",
                 "Transactions", "tx 1 'dump' by primary-1: 0.132530 s", "debug-1 waited 0.131486 s"):
        assert text in out, text
    assert "\x1b[" not in out


def test_stats_escapes_hostile_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.jsonl"
    write_records(path, exchanges([10], name="evil\x1b]0;owned\x07[bold]x[/bold]"))
    assert main(["stats", "--color", "always", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert "\x1b]0;owned" not in out and "\\x1b]0;owned\\x07[bold]x[/bold]" in out


def test_stats_of_a_non_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"")
    assert main(["stats", str(path)]) == 2
    _, err = capsys.readouterr()
    assert err == f"qmprr: {path}: not a qmprr/1 recording: file is empty\n"


@pytest.mark.parametrize("name", sorted(p.name for p in RECORDINGS.glob("*.jsonl")))
def test_only_the_fields_read_are_loaded(name: str) -> None:
    """The figures over the table of STATS_COLUMNS are those over every field of the records."""
    from qmprr.analysis.query.engine import open_recordings

    path = str(RECORDINGS / name)
    full, slim = (open_recordings([path], materialize=True, columns=cols) for cols in (None, stats_sql.STATS_COLUMNS))
    torn = {i.path: bool(i.torn) for i in full.files}
    assert stats_sql.stats_dict(slim.con, torn) == stats_sql.stats_dict(full.con, torn)
