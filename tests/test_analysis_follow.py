"""``qmprr show --follow``: tailing a recording while it is written.

A writer (a thread, or qmprr's own RecordWriter) appends records, one of
them in two writes with a pause between (a torn last line that is completed
later); the reader must hand out every record once, whole, in order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from qmprr import codec
from qmprr.analysis.follow import LineTail
from qmprr.analysis.source import Scanner
from qmprr.errors import RecordingError
from qmprr.recording import Event, RecordWriter, chain, new_header

POLL = 0.01


def recording_lines(n: int) -> list[bytes]:
    """A header and *n* events, as the lines of a valid recording."""
    header = {"seq": 0, "t": 0.0, "kind": "header", "format": "qmprr/1", "started": "2026-01-01T00:00:00+00:00",
              "started_epoch": 1767225600.0, "host": "h", "qmprr_version": "0.1.0"}
    records = [header, *({"seq": i, "t": i / 10, "kind": "event", "msg": {"event": f"E{i}"}} for i in range(1, n + 1))]
    prev = chain.GENESIS
    out = []
    for d in records:
        line, prev = chain.seal(codec.dumps(d), prev)
        out.append(line)
    return out


def test_line_tail_holds_back_a_torn_line_until_it_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "f"
    lines = [b"one\n", b"two\n", b"three, written in pieces\n", b"four\n"]
    path.write_bytes(lines[0])
    done = threading.Event()

    def writer() -> None:
        with open(path, "ab", buffering=0) as f:
            time.sleep(0.05)
            f.write(lines[1])
            f.write(lines[2][:5])
            time.sleep(0.1)  # the reader sees "three" with no newline, several times
            f.write(lines[2][5:12])
            time.sleep(0.05)
            f.write(lines[2][12:] + lines[3])
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    with open(path, "rb") as f:
        tail = LineTail(f, str(path), follow=True, poll=POLL, should_stop=done.is_set)
        got = list(tail)
    thread.join()
    assert got == lines
    assert tail.torn is None and tail.offset == sum(map(len, lines))


def test_line_tail_drops_a_torn_line_that_was_replaced(tmp_path: Path) -> None:
    """``qmprr repair`` truncates a torn last line and appends a note in its place."""
    path = tmp_path / "f"
    path.write_bytes(b"one\ntorn-by-a-cra")
    seen: list[bytes] = []
    state = {"polls": 0}

    def should_stop() -> bool:
        state["polls"] += 1
        if state["polls"] == 3:
            with open(path, "r+b") as f:
                f.truncate(4)
                f.seek(4)
                f.write(b"repaired\n")
        return state["polls"] > 5

    with open(path, "rb") as f:
        seen = list(LineTail(f, str(path), follow=True, poll=POLL, should_stop=should_stop))
    assert seen == [b"one\n", b"repaired\n"]


def test_line_tail_fails_when_the_file_shrinks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one\ntwo\n")
    polls = iter(range(100))

    def should_stop() -> bool:
        if next(polls) == 1:
            path.write_bytes(b"o")
        return False

    with open(path, "rb") as f, pytest.raises(RecordingError, match="shrank"):
        list(LineTail(f, str(path), follow=True, poll=POLL, should_stop=should_stop))


def test_without_follow_a_torn_tail_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one\ntwo")
    with open(path, "rb") as f:
        tail = LineTail(f, str(path))
        assert list(tail) == [b"one\n"]
    assert tail.torn == (4, 3)


def test_scanner_follows_records_and_a_torn_record_completed_later(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"")  # the reader waits for the header too
    lines = recording_lines(40)
    done = threading.Event()

    def writer() -> None:
        with open(path, "ab", buffering=0) as f:
            for i, line in enumerate(lines):
                if i in (0, 20):  # the header and a record, each in two writes
                    f.write(line[:30])
                    time.sleep(0.1)
                    f.write(line[30:])
                else:
                    f.write(line)
                if i % 7 == 0:
                    time.sleep(0.01)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    problems: list[object] = []
    with Scanner(path, follow=True, poll=POLL, should_stop=done.is_set, on_problem=problems.append) as scanner:
        seqs = [d["seq"] for d, _ in scanner]
    thread.join()
    assert problems == []
    assert seqs == list(range(41))


def test_show_follow_cli_with_a_real_writer(tmp_path: Path) -> None:
    """``show --follow --json`` in its own process while RecordWriter appends; Ctrl-C ends it."""
    path = tmp_path / "live.jsonl"
    writer = RecordWriter.create(path, new_header(), sync="none")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qmprr.cli", "show", "--follow", "--json", "--kind", "event", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        for i in range(5):
            writer.append(Event(msg={"event": "TICK", "data": {"i": i}}))
        assert json.loads(proc.stdout.readline())["msg"]["data"] == {"i": 0}  # before the writer is done
        writer.close()
        # a torn line: half a record now, the rest later (as a slow writer would leave it)
        last = path.read_bytes().splitlines(keepends=True)[-1]
        body = {"seq": len(path.read_bytes().splitlines()), "t": 9.0, "kind": "event",
                "msg": {"event": "SLOW", "data": {}}}
        line, _ = chain.seal(codec.dumps(body), chain.unseal(last)[1])
        with open(path, "ab", buffering=0) as raw:
            raw.write(line[:25])
            time.sleep(0.3)  # the scenario: a line torn for a while
            raw.write(line[25:])
        got = [json.loads(proc.stdout.readline()) for _ in range(5)]
        assert [g["msg"].get("data", {}).get("i") for g in got[:4]] == [1, 2, 3, 4]
        assert got[4]["msg"]["event"] == "SLOW"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
        assert proc.stderr is not None and proc.stderr.read() == b""
    finally:
        writer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
