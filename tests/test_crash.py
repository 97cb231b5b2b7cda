"""Crash safety: a writer SIGKILLed at a random moment loses no acknowledged record.

A child process appends records in a tight loop and reports each ``seq`` on
stdout once :meth:`RecordWriter.append` has returned. The parent kills it
after a (seeded, so reproducible) random delay, then checks that every
reported record is in the file, that the only possible damage is a torn last
line, and that ``qmprr repair`` makes the file verify clean.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support import qmprr_exe

from qmprr import cli
from qmprr.errors import RecordingLocked
from qmprr.recording import Note, RecordingReader, RecordWriter, verify

SEED = 20240611
TRIALS = 36

CHILD = textwrap.dedent(
    """
    import os, random, sys
    from qmprr.recording import Command, Event, RecordWriter, Reply

    path, sync, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    writer = RecordWriter.create(path, sync=sync)
    os.write(1, b"ready\\n")
    while True:
        # Mostly small records, now and then a large one (a large write()
        # is the likeliest to be cut short by SIGKILL).
        size = rng.choice((0, 10, 100, 1000)) if rng.random() < 0.99 else rng.randrange(32_000, 384_000)
        cmd = writer.append(Command(src="primary-1", role="primary",
                                    msg={"execute": "guest-file-write", "id": "q",
                                         "arguments": {"buf": "b" * size}}))
        os.write(1, b"%d\\n" % cmd.seq)
        rep = writer.append(Reply(cmd=cmd.seq, msg={"return": {"count": size}, "id": "q"}))
        os.write(1, b"%d\\n" % rep.seq)
        ev = writer.append(Event(msg={"event": "TICK", "data": {"s": "\\u20ac" * (size % 7)}}))
        os.write(1, b"%d\\n" % ev.seq)
    """
)



def run_and_kill(path: Path, sync: str, seed: int, delay: float) -> int:
    """Run the child, kill it after *delay* seconds; the highest seq it reported."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), sync, str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        ready = proc.stdout.readline()
        assert ready == b"ready\n", (ready, proc.stderr.read())
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out = proc.stdout.read()
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    reported = [int(x) for x in out.split(b"\n") if x.strip()]
    assert reported == list(range(1, len(reported) + 1))  # no gap in what the child saw
    return reported[-1] if reported else 0


def check_recovered(path: Path, acknowledged: int) -> tuple[int, bool]:
    """Reader and verify agree: at most a torn tail; every acknowledged record is there."""
    with RecordingReader(path, errors="skip") as reader:
        seqs = [r.seq for r in reader]
    torn = reader.torn
    assert seqs == list(range(len(seqs)))
    assert seqs[-1] >= acknowledged, f"lost acknowledged records: read up to {seqs[-1]}, child saw {acknowledged}"
    if torn is None:
        assert reader.problems == []
    else:
        assert [p.line for p in reader.problems] == [torn.line] == [len(seqs) + 1]
        assert torn.offset + torn.size == path.stat().st_size

    report = verify(path)
    assert report.records == len(seqs)
    assert report.torn == torn
    assert all(torn is not None and p.line == torn.line for p in report.problems), report.problems
    # A crash can leave at most the command whose reply it did not log in flight.
    assert len(report.in_flight) <= 1
    return len(seqs), torn is not None


def test_sigkill_at_random_moments_loses_no_acknowledged_record(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    exe = qmprr_exe()
    torn_seen = 0
    for trial in range(TRIALS):
        sync = ("none", "batch", "always")[trial % 3]
        delay = rng.uniform(0.0, 0.150)
        path = tmp_path / f"crash-{trial}-{sync}.jsonl"
        acknowledged = run_and_kill(path, sync, rng.randrange(2**32), delay)
        count, torn = check_recovered(path, acknowledged)
        torn_seen += torn

        # The kernel dropped the dead writer's lock; repair truncates a torn
        # tail (logging a note) and leaves a clean file alone.
        if trial % 6 == 0:
            res = subprocess.run([exe, "repair", str(path)], capture_output=True, text=True, timeout=30)
            assert res.returncode == 0, res.stderr
            assert "Traceback" not in res.stderr
        else:
            assert cli.main(["repair", str(path)]) == 0
        report = verify(path)
        assert report.ok and report.torn is None, (trial, report.problems)
        data = path.read_bytes()
        last = json.loads(data[data.rfind(b"\n", 0, len(data) - 1) + 1 :])
        if torn:
            assert report.records == count + 1
            assert last["kind"] == "note" and last["text"].startswith("repaired")
        else:
            assert report.records == count
        # And the file can be extended again.
        with RecordWriter.append_to(path) as writer:
            writer.append(Note(text="resumed"))
        if trial % 3 == 0:
            assert verify(path).ok
    print(f"{TRIALS} trials, {torn_seen} with a torn tail")


def test_repair_cli_on_a_torn_file(tmp_path: Path) -> None:
    path = tmp_path / "torn.jsonl"
    with RecordWriter.create(path) as writer:
        for i in range(10):
            writer.append(Note(text=f"n{i}"))
    full = path.read_bytes()
    # Cut the last line at every interesting point: just after the previous
    # newline, in the middle, just before its own newline.
    last_start = full.rstrip(b"\n").rfind(b"\n") + 1
    exe = qmprr_exe()
    for cut in (last_start + 1, (last_start + len(full)) // 2, len(full) - 1):
        path.write_bytes(full[:cut])
        res = subprocess.run([exe, "verify", str(path)], capture_output=True, text=True, timeout=30)
        assert res.returncode == 1, res.stdout
        assert f"{path}:11: torn last line" in res.stdout
        res = subprocess.run([exe, "repair", str(path)], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0 and "truncated" in res.stdout, res
        assert path.read_bytes().startswith(full[:last_start])
        res = subprocess.run([exe, "verify", str(path)], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stdout
        assert res.stdout.rstrip().endswith("11 records, ok")
        res = subprocess.run([exe, "repair", str(path)], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0 and "nothing to repair" in res.stdout


def test_writer_lock_released_when_holder_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "locked.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), "none", "1"], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline() == b"ready\n"
        with pytest.raises(RecordingLocked):
            RecordWriter.append_to(path, repair=True)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    RecordWriter.append_to(path, repair=True).close()
    assert verify(path).ok
