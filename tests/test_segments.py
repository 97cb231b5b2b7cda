"""Segment sets: rotation, compression, retention, reading and verifying a set (issue 13)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import support
from qmprr import cli
from qmprr.analysis.source import Scanner
from qmprr.client import QmpClient
from qmprr.recording import Event, Msg, Note, SealKey, new_header, read_records, sets, verify
from qmprr.recording.rotate import Rotation, SegmentedWriter

verify_mod = importlib.import_module("qmprr.recording.verify")


def write_set(folder: Path, n: int = 120, key: SealKey | None = None, **rotation) -> list[str]:
    """Write *n* events as a set under folder/vm; return the files on disk, in order."""
    w = SegmentedWriter(str(folder / "vm"), new_header(), Rotation(**rotation), seal_key=key)
    with w:
        for i in range(n):
            w.append(Event(msg=Msg({"event": "X", "data": {"i": i}})))
    assert w.errors == []
    return [p for _, p in sets.segments_of(str(folder / "vm"))]


def events(path) -> list[int]:
    return [r.msg["data"]["i"] for r in read_records(path) if isinstance(r, Event)]


def test_rotation_compression_and_reading_a_set(tmp_path: Path) -> None:
    files = write_set(tmp_path, size=2000, compress="zstd")
    assert len(files) > 3
    assert all(f.endswith(".jsonl.zst") for f in files[:-1]) and files[-1].endswith(".000%03d.jsonl" % len(files))
    # the folder, the first segment, the set: everything in order, seq continuous across segments
    for given_path in (tmp_path, files[0]):
        assert events(given_path) == list(range(120))
        report = verify(given_path)
        assert report.ok, report.problems
        assert report.files == files
    # one compressed segment alone
    one = verify(files[1])
    assert one.ok and one.files == [files[1]] and one.header.segment == 2
    headers = [verify(f).header for f in files]
    assert len({h.recording for h in headers}) == 1
    assert [h.segment for h in headers] == list(range(1, len(files) + 1))
    assert headers[1].previous["file"] == os.path.basename(files[0]).removesuffix(".zst")
    # the fast readers (show/stats) agree
    with Scanner(tmp_path) as scanner:
        got = [d["msg"]["data"]["i"] for d, _ in scanner if d["kind"] == "event"]
    assert got == list(range(120)) and scanner.problems == []


@pytest.mark.parametrize("damage", ["remove", "swap", "replace", "tear"])
def test_a_missing_reordered_replaced_or_torn_segment_is_found(tmp_path: Path, damage: str) -> None:
    files = write_set(tmp_path, size=2000)
    assert len(files) >= 4
    if damage == "remove":
        os.remove(files[1])
    elif damage == "swap":
        a, b = files[1], files[2]
        os.rename(a, a + ".tmp")
        os.rename(b, a)
        os.rename(a + ".tmp", b)
    elif damage == "replace":  # a segment of another recording with the same name
        other = tmp_path / "other"
        other.mkdir()
        os.replace(write_set(other, size=2000)[1], files[1])
    else:
        with open(files[1], "ab") as f:
            f.write(b'{"seq":')
    report = verify(tmp_path)
    assert not report.ok
    messages = " ".join(p.message for p in report.problems)
    assert ("segment" in messages) if damage != "tear" else ("not the last" in messages)
    assert cli.main(["verify", str(tmp_path)]) == 1


def test_retention_notes_what_it_deleted_and_the_rest_verifies(tmp_path: Path, capsys) -> None:
    files = write_set(tmp_path, size=2000, keep=3, compress="zstd")
    assert len(files) == 3 and sets.parse(files[0])[1] > 1
    report = verify(tmp_path)
    assert report.ok, report.problems
    assert report.deleted and report.deleted[-1] == sets.segment_name("vm", sets.parse(files[0])[1] - 1)
    assert cli.main(["verify", str(tmp_path)]) == 0
    assert "retention deleted" in capsys.readouterr().out
    # a segment removed by hand is not retention: no header says so
    os.remove(files[0])
    files2 = [p for _, p in sets.segments_of(str(tmp_path / "vm"))]
    if len(files2) > 1:
        report = verify(tmp_path)
        assert not report.ok and "retention" in report.problems[0].message


def test_keep_age_deletes_old_segments(tmp_path: Path) -> None:
    w = SegmentedWriter(str(tmp_path / "vm"), new_header(), Rotation(keep_age=3600))
    with w:
        w.append(Event(msg=Msg({"event": "A"})))
        w.rotate()
        old = w.path
        w.append(Event(msg=Msg({"event": "B"})))
        first = sets.segments_of(str(tmp_path / "vm"))[0][1]
        os.utime(first, (time.time() - 7200, time.time() - 7200))
        w.rotate()
        w.append(Event(msg=Msg({"event": "C"})))
    names = [os.path.basename(p) for _, p in sets.segments_of(str(tmp_path / "vm"))]
    assert names == ["vm.000002.jsonl", "vm.000003.jsonl"] and old.endswith("vm.000002.jsonl")
    report = verify(tmp_path)
    assert report.ok and report.deleted == ["vm.000001.jsonl"]


def test_since_verifies_the_tail_of_a_growing_set(tmp_path: Path, capsys) -> None:
    files = write_set(tmp_path, size=2000)
    report = verify(tmp_path, since=os.path.basename(files[2]))
    assert report.ok and report.files == files[2:]
    assert cli.main(["verify", str(tmp_path), "--since", "3"]) == 0
    assert cli.main(["verify", str(tmp_path), "--since", "999"]) == 2
    assert "no such segment" in capsys.readouterr().err


def test_a_sealed_set_verifies_with_its_key(tmp_path: Path) -> None:
    key = SealKey.from_bytes(b"k" * 32)
    files = write_set(tmp_path, size=2000, key=key, compress="zstd")
    assert len(files) > 2
    report = verify(tmp_path, key=key)
    assert report.ok and report.end_sealed, report.problems
    assert not verify(tmp_path).chain_checked
    # a keyed link edited in a middle segment: found with the key
    plain = tmp_path / "plain"
    plain.mkdir()
    files = write_set(plain, size=2000, key=key)
    lines = Path(files[1]).read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"i":', b'"i": ')
    Path(files[1]).write_bytes(b"".join(lines))
    assert not verify(plain, key=key).ok


def test_one_large_file_is_split_between_processes_with_the_same_verdict(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "big.jsonl"
    from qmprr.recording import RecordWriter

    with RecordWriter.create(path) as w:
        for i in range(3000):
            w.append(Event(msg=Msg({"event": "X", "data": {"i": i}})))
    monkeypatch.setattr(verify_mod, "MIN_SPLIT", 1000)
    assert verify(path, jobs=3).ok and verify(path, jobs=3).records == 3001
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2500] = lines[2500].replace(b'"X"', b'"Y"')  # in the last chunk
    path.write_bytes(b"".join(lines))
    serial, parallel = verify(path, jobs=1), verify(path, jobs=3)
    assert [p.line for p in parallel.problems] == [p.line for p in serial.problems] == [2501]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=30))
def test_any_rotation_points_read_back_as_written(tmp_path_factory, plan: list[int]) -> None:
    folder = tmp_path_factory.mktemp("set")
    w = SegmentedWriter(str(folder / "vm"), new_header(), Rotation(compress="zstd"))
    with w:
        for i, action in enumerate(plan):
            if action == 0:
                w.rotate()
            w.append(Event(msg=Msg({"event": "X", "data": {"i": i}})))
    assert events(folder) == list(range(len(plan)))
    assert verify(folder).ok


def test_follow_goes_on_across_segments(tmp_path: Path) -> None:
    w = SegmentedWriter(str(tmp_path / "vm"), new_header(), Rotation(compress="zstd"))
    first = w.path
    seen: list[int] = []
    done = threading.Event()

    def follow() -> None:
        with Scanner(first, follow=True, poll=0.01, should_stop=done.is_set) as scanner:
            seen.extend(d["msg"]["data"]["i"] for d, _ in scanner if d["kind"] == "event")
            assert scanner.problems == []

    t = threading.Thread(target=follow)
    t.start()
    for i in range(200):
        if i % 40 == 39:
            w.rotate()
        w.append(Event(msg=Msg({"event": "X", "data": {"i": i}})))
    w.close()
    deadline = time.monotonic() + 20  # a failure bound: a busy machine can keep the follower behind for a while
    while len(seen) < 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    done.set()
    t.join(20)
    assert seen == list(range(200))


def test_cli_reads_sets_and_refuses_bad_sizes(tmp_path: Path, capsys) -> None:
    write_set(tmp_path, size=2000, compress="zstd")
    assert cli.main(["show", str(tmp_path), "--kind", "event", "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["msg"]["data"]["i"] for line in out] == list(range(120))
    for bad in (["--rotate-size", "ten"], ["--rotate-age", "-1s"], ["--keep", "0"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(["proxy", "--record", str(tmp_path / "x.jsonl"), "--socket", "s", "--upstream", "u", *bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("qmprr: ") and len(err.strip().splitlines()) == 1


@pytest.mark.qemu
@pytest.mark.slow
def test_soak_rotating_proxy_under_load(tmp_path: Path) -> None:
    """A launch rotating every second under a steady client, compressing, a follower across segments."""
    stop = threading.Event()
    followed: list[int] = []
    with support.qmprr_launch(tmp_path, None, "--rotate-age", "1s", "--compress", "zstd", "--keep", "100",
                              "--sync", "none") as launched:
        first = str(tmp_path / "rec.000001.jsonl")

        def follow() -> None:
            with Scanner(first, follow=True, poll=0.05, should_stop=stop.is_set) as scanner:
                followed.extend(d["seq"] for d, _ in scanner if d["kind"] == "reply")

        t = threading.Thread(target=follow)
        t.start()
        rss = []
        sent = 0
        with QmpClient(launched.socket) as client:
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                assert "return" in client.execute("query-status")
                sent += 1
                if sent % 200 == 0:
                    rss.append(_rss_kib(launched.proc.pid))
            launched.proc.send_signal(signal.SIGHUP)  # one more rotation, by hand
            for _ in range(20):
                assert "return" in client.execute("query-status")
                sent += 1
        launched.proc.send_signal(signal.SIGTERM)
        assert launched.proc.wait(30) == 0
    stop.set()
    t.join(30)
    files = [p for _, p in sets.segments_of(str(tmp_path / "rec"))]
    assert len(files) >= 5
    report = verify(files[0])  # the first segment stands for the set
    assert report.ok, report.problems[:5]
    replies = [r.seq for r in read_records(files[0]) if r.kind == "reply"]
    assert len(replies) >= sent  # every client command was answered and recorded (plus qmprr's own)
    assert followed == replies[: len(followed)] and len(followed) >= sent
    if len(rss) >= 4:  # memory flat: the last samples are not far above the first ones
        assert max(rss[-2:]) < rss[1] * 1.5 + 8192


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.parametrize("damage", ["none", "edit", "delete", "torn", "bad-json", "reordered-members", "header"])
def test_show_json_fast_path_agrees_with_the_full_decoder(tmp_path: Path, damage: str) -> None:
    from qmprr.recording import RecordWriter

    path = tmp_path / "r.jsonl"
    with RecordWriter.create(path) as w:
        for i in range(40):
            w.append(Event(msg=Msg({"event": "X", "data": {"i": i}})) if i % 3 else Note(text=f"n{i}"))
    lines = path.read_bytes().splitlines(keepends=True)
    if damage == "edit":
        lines[11] = lines[11].replace(b'"i":', b'"i" :')
    elif damage == "delete":
        del lines[20]
    elif damage == "torn":
        lines[-1] = lines[-1][:-9]
    elif damage == "bad-json":
        lines[5] = b'{"seq":5,"t":0.1,"kind":"event",' + lines[5][lines[5].index(b'"h"'):]
    elif damage == "reordered-members":  # valid JSON, not as qmprr writes it: the slow way takes it
        d = json.loads(lines[7])
        lines[7] = json.dumps({"kind": d.pop("kind"), **d}, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    kinds = frozenset({"event", "header"} if damage == "header" else {"event"})
    with Scanner(path) as slow:
        want = [raw for d, raw in slow if d["kind"] in kinds]
        want_problems, want_torn = slow.problems, slow.torn
    with Scanner(path) as fast:
        got = [raw for _, raw in fast.kind_lines(kinds)]
        assert (got, fast.problems, fast.torn) == (want, want_problems, want_torn)
    assert damage in ("none", "header", "reordered-members") or want_problems


def test_a_reply_to_a_command_in_the_previous_segment(tmp_path: Path) -> None:
    from qmprr.recording import Command, Reply

    w = SegmentedWriter(str(tmp_path / "vm"), new_header(), Rotation())
    with w:
        cmd = w.append(Command(src="c", role="primary", msg=Msg({"execute": "stop", "id": 1})))
        w.rotate()
        w.append(Reply(cmd=cmd.seq, msg=Msg({"return": {}, "id": 1})))
        w.append(Reply(cmd=cmd.seq, msg=Msg({"return": {}, "id": 1})))  # a second one: wrong
    files = [p for _, p in sets.segments_of(str(tmp_path / "vm"))]
    assert verify(files[1]).ok  # alone: its command is in the segment before, not checked
    report = verify(tmp_path)
    assert [p.message for p in report.problems] == [f"reply names seq {cmd.seq}, which is not a command"]
    assert report.in_flight == []


def test_retention_reads_a_link_from_a_segment_compressed_meanwhile(tmp_path: Path) -> None:
    """The worker may turn NAME.000002.jsonl into .jsonl.zst while a rotation reads its header."""
    from qmprr.recording.rotate import _previous_of

    files = write_set(tmp_path, size=2000, compress="zstd")
    second = files[1]
    assert second.endswith(sets.ZST)
    link = _previous_of(second.removesuffix(sets.ZST))  # the name it had before compression
    assert link["file"] == os.path.basename(files[0]).removesuffix(sets.ZST)
