"""``qmprr export --format chrome-trace``: Chrome Trace Event JSON for Perfetto."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from qmprr.cli import main
from qmprr.analysis.stats import compute
from qmprr.bench.analysis import write_records

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
TX = RECORDINGS / "inject-during-transaction.jsonl"


def header() -> dict[str, Any]:
    return {"seq": 0, "t": 0.0, "kind": "header", "format": "qmprr/1", "started": "2026-01-01T00:00:00+00:00",
            "started_epoch": 1767225600.0, "host": "test", "qmprr_version": "0.1.0"}


def export(tmp_path: Path, recording: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = tmp_path / "trace.json"
    assert main(["export", str(recording), "--format", "chrome-trace", "-o", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert err == "" and "trace events" in printed
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in RECORDINGS.glob("*.jsonl")))
def test_every_event_is_well_formed(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    trace = export(tmp_path, RECORDINGS / name, capsys)
    events = trace["traceEvents"]
    assert trace["displayTimeUnit"] == "ms" and trace["otherData"]["recording"] == name
    for ev in events:
        assert ev["ph"] in ("X", "i", "M") and ev["pid"] == 1 and isinstance(ev["tid"], int), ev
        if ev["ph"] != "M":
            assert isinstance(ev["ts"], float) and ev["ts"] >= 0 and isinstance(ev["name"], str)
        if ev["ph"] == "X":
            assert ev["dur"] >= 0
    named = {ev["tid"] for ev in events if ev["ph"] == "M" and ev["name"] == "thread_name"}
    assert {ev["tid"] for ev in events} - {0} <= named  # every thread has a name
    stats = compute(RECORDINGS / name)
    commands = [ev for ev in events if ev["ph"] == "X" and ev["cat"].startswith("command")]
    assert len(commands) == stats["commands_total"]
    assert len([ev for ev in events if ev.get("cat") == "event"]) == sum(stats["events"].values())


def test_slices_carry_the_exchange(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = export(tmp_path, TX, capsys)["traceEvents"]
    threads = {ev["args"]["name"]: ev["tid"] for ev in events if ev["name"] == "thread_name"}
    assert {"QEMU events", "transactions", "qmprr", "primary-1 (primary)", "debug-1 (debug)",
            "qmprr (internal)"} <= set(threads)
    dump = next(ev for ev in events if ev["name"] == "dump-guest-memory")
    assert dump["tid"] == threads["primary-1 (primary)"]
    assert dump["ts"] == 44650.0 and dump["dur"] == 116873.0
    assert dump["args"]["command"]["arguments"]["protocol"] == "file:guest.dump"
    assert dump["args"]["reply"] == {"return": {}, "id": "qmprr-3"} and dump["args"]["tx"] == 1
    tx = next(ev for ev in events if ev["tid"] == threads["transactions"] and ev["ph"] == "X")
    assert tx["name"] == "tx 1 dump (primary-1)" and tx["ts"] == 31194.0 and tx["dur"] == 132530.0
    wait = next(ev for ev in events if ev.get("cat") == "wait")
    assert wait["tid"] == threads["debug-1 (debug)"] and wait["ts"] == 32366.0 and wait["dur"] == 131486.0
    taint = next(ev for ev in events if ev.get("cat") == "taint")
    assert taint["name"] == "TAINTED custom-monitor" and taint["tid"] == threads["debug-1 (debug)"]


def test_errors_unanswered_commands_and_big_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = export(tmp_path, RECORDINGS / "errors.jsonl", capsys)["traceEvents"]
    failed = [ev for ev in events if "error" in ev.get("cat", "").split(",")]
    assert len(failed) == 5 and all(" ERROR " in ev["name"] and ev["cname"] == "terrible" for ev in failed)
    path = tmp_path / "r.jsonl"
    records = [header(),
               {"seq": 1, "t": 0.1, "kind": "command", "src": "p", "role": "primary", "msg": {"execute": "big"}},
               {"seq": 2, "t": 0.2, "kind": "reply", "cmd": 1, "msg": {"return": "x" * 40_000}},
               {"seq": 3, "t": 0.3, "kind": "command", "src": "p", "role": "primary", "msg": {"execute": "lost"}},
               {"seq": 4, "t": 0.5, "kind": "event", "msg": {"event": "SHUTDOWN"}}]
    write_records(path, records)
    events = export(tmp_path, path, capsys)["traceEvents"]
    big = next(ev for ev in events if ev["name"] == "big")
    assert big["args"]["reply"]["qmprr-cut"].startswith("40,")
    lost = next(ev for ev in events if ev["name"].startswith("lost"))
    assert lost["name"] == "lost (no reply)" and "no-reply" in lost["cat"]
    assert lost["ts"] == 300000.0 and lost["dur"] == 200000.0  # drawn to the end of the recording


def test_export_to_stdout_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(TX), "-o", "-"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(json.loads(out)["traceEvents"]) > 20
    assert main(["export", str(TX), "-o", str(tmp_path / "missing" / "t.json")]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("qmprr: ") and "cannot write" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
    with pytest.raises(SystemExit) as exc:
        main(["export", str(TX), "--format", "svg", "-o", "x"])
    assert exc.value.code == 2
