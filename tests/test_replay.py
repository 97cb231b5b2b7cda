"""``qmprr replay``: every recording reproduces, edits are caught and named, options work.

The CLI runs in process (``qmprr.cli.main``) where only its output and exit
status matter, and as a subprocess where the process boundary is the point.
Real QEMU 7.2 targets start from each recording's own argv; ``block.jsonl``
gets the qcow2 images it names in its work folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from qmprr.cli import main
from qmprr.recording import Command, Event, Header, Msg, Record, RecordingReader, Reply, read_records, verify
from replay_support import (
    ALL_RECORDINGS,
    PAUSED,
    RECORDINGS,
    RUNNING,
    Step,
    event,
    fake_process,
    qmprr,
    rewrite_recording,
    write_recording,
)

LIFECYCLE = RECORDINGS / "lifecycle.jsonl"


def make_workdir(folder: Path) -> Path:
    """A folder to run QEMU in, with the images block.jsonl opens (relative names)."""
    folder.mkdir(exist_ok=True)
    for name in ("base.qcow2", "top.qcow2"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / name), "16M"], check=True)
    return folder


def replay(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["replay", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def load_report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# -- every recording reproduces ------------------------------------------------------------


@pytest.mark.parametrize("target", ["fake", pytest.param("qemu", marks=pytest.mark.qemu)])
@pytest.mark.parametrize("name", ALL_RECORDINGS)
def test_every_recording_replays_without_divergence(
    name: str, target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.json"
    args = [str(RECORDINGS / name), "--target", target, "--report", str(report)]
    if target == "qemu":
        args += ["--workdir", str(make_workdir(tmp_path / "work"))]
    status, out, _ = replay(*args, capsys=capsys)
    assert status == 0, out
    data = load_report(report)
    assert data["reproduced"] is True and data["error"] is None
    assert data["counts"]["diverged"] == data["counts"]["refused"] == data["counts"]["interrupted"] == 0
    assert data["counts"]["matched"] == len(data["steps"]) > 0
    assert "reproduced: no divergence" in out


# -- an edited recording diverges, and the step is named --------------------------------------


def _edit_second_status(record: Record) -> Record:
    """lifecycle.jsonl with the paused query-status (seq 11, reply seq 12) recorded as running."""
    if isinstance(record, Reply) and record.cmd == 11:
        record.msg = Msg({**record.msg, "return": RUNNING})
    return record


@pytest.mark.qemu
def test_edited_reply_diverges_against_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edited = rewrite_recording(LIFECYCLE, tmp_path / "edited.jsonl", _edit_second_status)
    assert verify(edited).ok  # a valid recording, just not what QEMU does
    status, out, _ = replay(str(edited), "--target", "qemu", capsys=capsys)
    assert status == 1
    assert "3 step(s), 2 matched, 1 diverged" in out  # stops at the first divergence
    assert "first divergence at step 3, recorded seq 11: query-status from primary-1" in out
    assert "reply return.status: recorded 'running', got 'paused'" in out
    assert "reply return.running: recorded True, got False" in out
    assert ">> seq     11 primary-1    query-status" in out


def test_edited_reply_diverges_against_a_fake_of_the_original(tmp_path: Path) -> None:
    # The subprocess CLI end to end: 'qmprr fake' serves the real recording, replay the edited one into it.
    edited = rewrite_recording(LIFECYCLE, tmp_path / "edited.jsonl", _edit_second_status)
    sock = tmp_path / "fake.sock"
    with fake_process(LIFECYCLE, sock, "--mode", "lenient"):
        result = qmprr("replay", str(edited), "--target", f"socket:{sock}", "--keep-going")
    assert result.returncode == 1, result.stderr
    assert "first divergence at step 3, recorded seq 11: query-status" in result.stdout
    assert "7 step(s), 6 matched, 1 diverged" in result.stdout


def test_edited_events_are_missing_and_extra(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def edit(record: Record) -> Record:
        if isinstance(record, Event) and record.msg.get("event") == "RESET":
            record.msg = Msg({**record.msg, "data": {"guest": True, "reason": "guest-reset"}})
        return record

    edited = rewrite_recording(LIFECYCLE, tmp_path / "edited.jsonl", edit)
    sock = tmp_path / "fake.sock"
    with fake_process(LIFECYCLE, sock):
        status, out, _ = replay(str(edited), "--target", f"socket:{sock}", "--event-timeout", "0.3", capsys=capsys)
    assert status == 1
    assert "first divergence at step 5, recorded seq 16: system_reset from primary-1" in out
    assert "missing-event RESET" in out and "extra-event RESET" in out


def test_rate_limited_events_may_be_coalesced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rtc = [event("RTC_CHANGE", {"offset": 1, "qom-path": "/machine/unattached/device[7]"})] * 3
    recorded = write_recording(tmp_path / "recorded.jsonl", [Step("query-status", reply={"return": RUNNING}, after=rtc)])
    coalesced = write_recording(tmp_path / "now.jsonl", [Step("query-status", reply={"return": RUNNING}, after=rtc[:1])])
    sock = tmp_path / "fake.sock"
    with fake_process(coalesced, sock):
        status, out, _ = replay(str(recorded), "--target", f"socket:{sock}", capsys=capsys)
    assert status == 0, out


def test_events_may_come_late_within_the_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Recorded before the reply; served after it: same window, no divergence.
    before = write_recording(tmp_path / "before.jsonl", [Step("stop", before=[event("STOP")]), Step("query-status", reply={"return": PAUSED})])
    after = write_recording(tmp_path / "after.jsonl", [Step("stop", after=[event("STOP")]), Step("query-status", reply={"return": PAUSED})])
    sock = tmp_path / "fake.sock"
    with fake_process(after, sock):
        status, out, _ = replay(str(before), "--target", f"socket:{sock}", capsys=capsys)
    assert status == 0, out


# -- report, record ----------------------------------------------------------------------------


def test_report_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edited = rewrite_recording(LIFECYCLE, tmp_path / "edited.jsonl", _edit_second_status)
    report = tmp_path / "report.json"
    sock = tmp_path / "fake.sock"
    with fake_process(LIFECYCLE, sock, "--mode", "lenient"):
        status, _, _ = replay(str(edited), "--target", f"socket:{sock}", "--keep-going", "--report", str(report), capsys=capsys)
    assert status == 1
    data = load_report(report)
    assert data["recording"] == str(edited) and data["target"] == f"socket:{sock}"
    assert data["reproduced"] is False and data["error"] is None
    assert data["counts"] == {"matched": 6, "diverged": 1, "skipped": 0, "refused": 0, "interrupted": 0}
    assert [s["command"] for s in data["steps"]] == ["query-status", "stop", "query-status", "cont", "system_reset", "query-status", "quit"]
    assert [s["seq"] for s in data["steps"]] == [6, 8, 11, 13, 16, 19, 21]
    step = data["steps"][2]
    assert step["index"] == 2 and step["src"] == "primary-1" and step["status"] == "diverged"
    assert step["recorded_reply"] == {"return": RUNNING}
    assert step["actual_reply"] == {"return": PAUSED}
    assert {"what": "reply", "path": "return.status", "recorded": "running", "actual": "paused",
            "summary": None, "host": None,
            "text": "reply return.status: recorded 'running', got 'paused'"} in step["differences"]
    assert all(isinstance(s["seconds"], float) for s in data["steps"])


def test_record_the_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_rec = tmp_path / "replayed.jsonl"
    status, out, _ = replay(str(LIFECYCLE), "--target", "fake", "--record", str(out_rec), capsys=capsys)
    assert status == 0
    assert f"the replay was recorded to {out_rec}" in out
    checked = verify(out_rec)
    assert checked.ok and not checked.in_flight
    records = list(read_records(out_rec))
    header = records[0]
    assert isinstance(header, Header) and header.labels == {"replay-of": "lifecycle.jsonl"}
    sent = [(r.src, r.msg["execute"]) for r in records if isinstance(r, Command) and r.role != "internal"]
    assert sent == [("primary-1", n) for n in ["query-status", "stop", "query-status", "cont", "system_reset", "query-status", "quit"]]
    assert [r.msg["event"] for r in records if isinstance(r, Event)] == ["STOP", "RESUME", "RESET", "SHUTDOWN"]
    # Never overwritten.
    status, _, err = replay(str(LIFECYCLE), "--target", "fake", "--record", str(out_rec), capsys=capsys)
    assert status == 2 and "file exists" in err


@pytest.mark.qemu
def test_record_the_replay_against_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_rec = tmp_path / "replayed.jsonl"
    status, _, _ = replay(str(RECORDINGS / "hotplug.jsonl"), "--target", "qemu", "--record", str(out_rec), capsys=capsys)
    assert status == 0
    assert verify(out_rec).ok
    with RecordingReader(out_rec) as reader:
        header = reader.header
        records = list(reader)
    assert header.qemu_argv and os.path.basename(header.qemu_argv[0]) == "qemu-system-x86_64"  # the local one ran
    assert header.qemu_version is not None
    assert sum(isinstance(r, Command) for r in records) == 8  # negotiation + 7 replayed


# -- selecting and pacing ----------------------------------------------------------------------------


def test_until(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "r.json"
    status, out, _ = replay(str(LIFECYCLE), "--target", "fake", "--until", "11", "--report", str(report), capsys=capsys)
    assert status == 0
    assert [s["seq"] for s in load_report(report)["steps"]] == [6, 8, 11]
    assert "3 step(s), 3 matched" in out


def test_the_report_reads_back_as_the_typed_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qmprr.replay.engine import ReplayReport
    from qmprr.replay.report import to_json
    from qmprr.results import ResultError, structure

    report = tmp_path / "r.json"
    status, _, _ = replay(str(LIFECYCLE), "--target", "fake", "--until", "11", "--report", str(report), capsys=capsys)
    assert status == 0
    data = load_report(report)
    typed = structure(data, ReplayReport)
    assert [s.status for s in typed.steps] == ["matched"] * 3 and typed.reproduced
    assert to_json(typed) == data
    with pytest.raises(ResultError, match=r"\$\.steps\[0\]\.status"):
        structure({**data, "steps": [{**data["steps"][0], "status": "won"}]}, ReplayReport)


def test_only_src(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = RECORDINGS / "inject-during-transaction.jsonl"
    report = tmp_path / "r.json"
    status, out, _ = replay(str(rec), "--target", "fake", "--only-src", "debug-1", "--report", str(report), capsys=capsys)
    assert status == 0, out
    steps = load_report(report)["steps"]
    assert [(s["src"], s["status"]) for s in steps] == [
        ("primary-1", "skipped"), ("primary-1", "skipped"), ("primary-1", "skipped"),
        ("primary-1", "skipped"), ("debug-1", "matched"), ("qmprr", "skipped"),
    ]
    assert "skipped: seq 12 stop (primary-1): source not selected" in out
    status, out, _ = replay(str(rec), "--target", "fake", "--only-src", "debug-1", "--only-src", "primary-1", capsys=capsys)
    assert status == 0 and "5 matched" in out and "1 skipped" in out


def test_only_src_against_the_fake_when_the_first_commands_are_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = replay(str(RECORDINGS / "hotplug.jsonl"), "--target", "fake", "--only-src", "qmprr",
                            "--event-timeout", "0.2", capsys=capsys)
    assert status == 0, out


def test_keep_going(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def edit(record: Record) -> Record:
        if isinstance(record, Reply) and record.cmd in (6, 19):  # both 'running' query-status replies
            record.msg = Msg({**record.msg, "return": PAUSED})
        return record

    edited = rewrite_recording(LIFECYCLE, tmp_path / "edited.jsonl", edit)
    with fake_process(LIFECYCLE, tmp_path / "fake1.sock", "--mode", "lenient"):
        status, out, _ = replay(str(edited), "--target", f"socket:{tmp_path / 'fake1.sock'}", capsys=capsys)
    assert status == 1 and "1 step(s), 0 matched, 1 diverged" in out
    with fake_process(LIFECYCLE, tmp_path / "fake2.sock", "--mode", "lenient"):
        status, out, _ = replay(str(edited), "--target", f"socket:{tmp_path / 'fake2.sock'}", "--keep-going", capsys=capsys)
    assert status == 1
    assert "7 step(s), 5 matched, 2 diverged" in out
    assert "first divergence at step 1, recorded seq 6: query-status" in out
    assert "(and 1 more divergent step(s); see --report)" in out


def test_pace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = write_recording(tmp_path / "slow.jsonl", [
        Step("query-status", reply={"return": RUNNING}),
        Step("query-status", reply={"return": RUNNING}, sleep=0.6),
    ])

    def timed(*pace: str) -> float:
        start = time.monotonic()
        status, out, _ = replay(str(rec), "--target", "fake", *pace, capsys=capsys)
        assert status == 0, out
        return time.monotonic() - start

    asap = timed()
    recorded = timed("--pace", "recorded")
    fast = timed("--pace", "4")
    assert recorded >= 0.6 > asap + 0.3
    assert 0.15 <= fast < recorded - 0.3
    for bad in ("0", "-1", "slow"):
        status, _, err = replay(str(rec), "--target", "fake", "--pace", bad, capsys=capsys)
        assert status == 2 and err.startswith("qmprr: --pace"), err


# -- could not run: exit 2, one line ------------------------------------------------------------------


def test_not_a_recording(tmp_path: Path) -> None:
    result = qmprr("replay", str(RECORDINGS / "README.md"), "--target", "fake")
    assert result.returncode == 2
    assert result.stderr.startswith("qmprr: ") and "not a qmprr/1 recording" in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_missing_qemu_binary(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = replay(str(LIFECYCLE), "--target", "qemu", "--qemu", "/nonexistent/qemu", capsys=capsys)
    assert status == 2
    assert "QEMU binary '/nonexistent/qemu' not found" in err and err.count("\n") == 1


def test_recording_without_argv_on_qemu_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = write_recording(tmp_path / "proxied.jsonl", [Step("query-status", reply={"return": RUNNING})], argv=None)
    status, _, err = replay(str(rec), "--target", "qemu", capsys=capsys)
    assert status == 2
    assert "the recording has no QEMU command line" in err and "--argv-file" in err


@pytest.mark.qemu
def test_argv_file_and_startup_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = write_recording(tmp_path / "proxied.jsonl", [Step("query-status", reply={"return": RUNNING})], argv=None)
    argv = tmp_path / "argv.txt"
    argv.write_text("qemu-system-x86_64\n-machine\nnone\n-nodefaults\n-display\nnone\n")
    status, out, _ = replay(str(rec), "--target", "qemu", "--argv-file", str(argv), capsys=capsys)
    assert status == 0, out
    argv.write_text("qemu-system-x86_64\n-machine\nno-such-machine\n")
    status, _, err = replay(str(rec), "--target", "qemu", "--argv-file", str(argv), capsys=capsys)
    assert status == 2
    assert "QEMU exited at start-up" in err.splitlines()[-1]
    status, _, err = replay(str(rec), "--target", "qemu", "--argv-file", str(tmp_path / "none.txt"), capsys=capsys)
    assert status == 2 and "cannot read" in err


def test_other_cannot_run_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = replay(str(LIFECYCLE), "--target", "vm", capsys=capsys)
    assert status == 2 and "unknown target 'vm'" in err
    status, _, err = replay(str(LIFECYCLE), "--target", f"socket:{tmp_path / 'nobody.sock'}", capsys=capsys)
    assert status == 2 and "cannot connect" in err
    empty = write_recording(tmp_path / "empty.jsonl", [])
    status, _, err = replay(str(empty), "--target", "fake", capsys=capsys)
    assert status == 2 and "no commands to replay" in err
    status, _, err = replay(str(tmp_path / "missing.jsonl"), "--target", "fake", capsys=capsys)
    assert status == 2 and "cannot read recording" in err


def test_subprocess_exit_statuses(tmp_path: Path) -> None:
    ok = qmprr("replay", str(LIFECYCLE), "--target", "fake")
    assert ok.returncode == 0 and "reproduced: no divergence" in ok.stdout
    edited = rewrite_recording(LIFECYCLE, tmp_path / "edited.jsonl", _edit_second_status)
    sock = tmp_path / "fake.sock"
    with fake_process(LIFECYCLE, sock, "--mode", "lenient"):
        diverged = qmprr("replay", str(edited), "--target", f"socket:{sock}")
    assert diverged.returncode == 1 and "Traceback" not in diverged.stderr
    assert os.path.exists(edited)


def _lifecycle_as_set(folder: Path, rotate_after: int, edit=lambda r: r) -> Path:  # type: ignore[no-untyped-def]
    """LIFECYCLE rewritten as a segment set, rotating after its *rotate_after*-th command (records *edit*-ed)."""
    import attrs

    from qmprr.recording.rotate import Rotation, SegmentedWriter

    records = list(read_records(LIFECYCLE))
    renumber: dict[int, int] = {}
    commands = 0
    with SegmentedWriter(str(folder / "life"), attrs.evolve(records[0], seq=-1), Rotation()) as w:
        for record in records[1:]:
            old = record.seq
            if isinstance(record, Reply):
                record.cmd = renumber[record.cmd]
            if isinstance(record, Command) and record.role != "internal":
                commands += 1
                if commands == rotate_after + 1:
                    w.rotate()
            renumber[old] = w.append(edit(record)).seq
    return folder / "life.000001.jsonl"


def test_from_segment_replays_the_start_as_prelude(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = _lifecycle_as_set(tmp_path, rotate_after=3)
    assert verify(first).ok and len(verify(first).files) == 2
    second_start = next(RecordingReader(tmp_path / "life.000002.jsonl", one_file=True).headers[0][1].seq for _ in [0])
    report = tmp_path / "r.json"
    status, out, _ = replay(str(first), "--target", "fake", "--from-segment", "2", "--report", str(report), capsys=capsys)
    assert status == 0, out
    steps = load_report(report)["steps"]
    assert [s["status"] for s in steps] == ["prelude"] * 3 + ["matched"] * (len(steps) - 3)
    assert all((s["seq"] < second_start) == (s["status"] == "prelude") for s in steps)
    assert "3 prelude (before --from-segment" in out and "reproduced" in out
    # A prelude step that differs does not count: the edited first segment still reproduces from segment 2.
    edited_dir = tmp_path / "edited"
    edited_dir.mkdir()
    seen = []

    def edit(record: Record) -> Record:
        if isinstance(record, Reply) and not seen and record.msg.get("return", {}) != {}:
            seen.append(record.seq)
            record.msg = Msg({**record.msg, "return": {"edited": True}})
        return record

    edited = _lifecycle_as_set(edited_dir, rotate_after=3, edit=edit)
    assert seen and seen[0] < second_start
    sock = tmp_path / "fake.sock"
    with fake_process(first, sock, "--mode", "lenient", "--keep-serving"):
        status, out, _ = replay(str(edited), "--target", f"socket:{sock}", "--from-segment", "2", capsys=capsys)
        assert status == 0, out
        status, out, _ = replay(str(edited), "--target", f"socket:{sock}", capsys=capsys)
        assert status == 1 and "diverged" in out
    status, _, err = replay(str(first), "--target", "fake", "--from-segment", "9", capsys=capsys)
    assert status == 2 and err.startswith("qmprr: ") and "no such segment" in err


def test_events_the_guest_caused_are_host_differences() -> None:
    """A guest's own RESET or SHUTDOWN ("guest": true) falls where the guest's clock puts it: a warning."""
    import asyncio

    from qmprr.replay.engine import GUEST_TIMING, ReplayOptions, _compare_events
    from qmprr.replay.normalize import Normalizer

    class Events:
        def __init__(self, msgs: list[dict]) -> None:
            self.queue: asyncio.Queue = asyncio.Queue()
            for m in msgs + [None]:
                self.queue.put_nowait(m)

    guest = {"event": "RESET", "data": {"guest": True, "reason": "guest-reset"}}
    host = {"event": "RESET", "data": {"guest": False, "reason": "host-qmp-system-reset"}}

    async def diffs(expected: list[dict], got: list[dict]) -> list:
        return await _compare_events(expected, Events(got), ReplayOptions(event_timeout=0.01), Normalizer())

    extra = asyncio.run(diffs([], [guest]))
    assert [(d.what, d.host) for d in extra] == [("extra-event", GUEST_TIMING)]
    missing = asyncio.run(diffs([guest], []))
    assert [(d.what, d.host) for d in missing] == [("missing-event", GUEST_TIMING)]
    assert [d.host for d in asyncio.run(diffs([], [host]))] == [None]  # the host's own: a divergence


def test_a_command_qemu_never_answers_is_interrupted_and_withdrawn(tmp_path: Path) -> None:
    """A chained step (plain commands run from the channel's callback) still times out, as any step does.

    The monitor answers the first two query-status and then nothing: the third
    step is interrupted ("no reply in time"), the replay stops there, and the
    log of the replay keeps the command that got no reply.
    """
    import asyncio
    import socket

    from qmprr import wire
    from qmprr.channel import Channel
    from qmprr.replay.engine import ReplayOptions, ReplayReport
    from qmprr.replay.engine import replay as run_replay
    from qmprr.replay.script import Exchange, Script
    from qmprr.replay.targets import log_factory

    reply = {"return": RUNNING}
    script = Script(greeting={}, exchanges=[Exchange("query-status", reply=reply, seq=i) for i in range(1, 6)])
    out = tmp_path / "replayed.jsonl"

    async def go() -> ReplayReport:
        ours, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()

        def monitor() -> None:  # a QMP monitor that stops answering after two commands
            theirs.sendall(wire.encode({"QMP": {"version": {}, "capabilities": []}}))
            decoder, answered = wire.StreamDecoder(), 0
            while answered < 3:
                data = theirs.recv(65536)
                if not data:
                    return
                for msg in decoder.feed(data):
                    answer = {**(reply if answered else {"return": {}}), "id": msg.get("id")}
                    theirs.sendall(wire.encode(answer))
                    answered += 1
            theirs.recv(65536)  # the third query-status, never answered

        server = loop.run_in_executor(None, monitor)
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        channel = await Channel.open(reader, writer, log_factory(str(out), None, {}))
        report = ReplayReport(recording="script", target="test")
        try:
            await run_replay(script, channel, ReplayOptions(command_timeout=0.2), report)
        finally:
            await channel.close()
            channel.log.close()
            theirs.close()
            await server
        return report

    report = asyncio.run(go())
    assert [(s.status, s.reason) for s in report.steps] == [
        ("matched", None), ("matched", None), ("interrupted", "no reply in time")]
    commands = [r for r in read_records(out) if isinstance(r, Command) and r.role == "primary"]
    assert len(commands) == 3
