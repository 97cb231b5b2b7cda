"""Tampering with a recording is caught by the hash chain, at the right line.

Each case changes a clean recording of 21 lines (header + 20 records) and
states exactly which line is the first bad one; ``verify`` must report its
first problem there.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qmprr import codec
from qmprr.recording import Command, Event, Note, RecordWriter, Reply, chain, verify

N_LINES = 21  # header + 20 records


def build(path: Path) -> list[bytes]:
    """A clean recording; every record's msg/data holds the string ``"pad":"p<seq>"``."""
    with RecordWriter.create(path, sync="none") as writer:
        while writer.next_seq < N_LINES:
            seq = writer.next_seq
            if seq % 4 == 1:
                writer.append(Command(src="primary-1", role="primary",
                                      msg={"execute": "query-status", "id": f"q{seq}", "pad": f"p{seq}"}))
            elif seq % 4 == 2:
                writer.append(Reply(cmd=seq - 1, msg={"return": {"pad": f"p{seq}"}, "id": f"q{seq - 1}"}))
            elif seq % 4 == 3:
                writer.append(Event(msg={"event": "TICK", "data": {"pad": f"p{seq}"}}))
            else:
                writer.append(Note(text="marker", data={"pad": f"p{seq}"}))
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == N_LINES
    assert verify(path).ok
    return lines


@pytest.fixture
def clean(tmp_recording: Path) -> tuple[Path, list[bytes]]:
    return tmp_recording, build(tmp_recording)


# -- the tampering operations ---------------------------------------------------
# Each yields (description, new lines, first bad line (1-based)).

Case = tuple[str, list[bytes], int]


def edit_msg_byte(lines: list[bytes]) -> Iterator[Case]:
    for k in range(2, N_LINES + 1):
        new = list(lines)
        seq = k - 1
        old = b'"pad":"p%d"' % seq
        assert new[k - 1].count(old) == 1
        new[k - 1] = new[k - 1].replace(old, b'"pad":"q%d"' % seq)
        json.loads(new[k - 1])  # still valid JSON, same length
        assert len(new[k - 1]) == len(lines[k - 1])
        yield f"edit msg on line {k}", new, k


def edit_hash(lines: list[bytes]) -> Iterator[Case]:
    for k in range(2, N_LINES + 1):
        new = list(lines)
        h = json.loads(new[k - 1])["h"]
        flipped = ("0" if h[0] != "0" else "1") + h[1:]
        new[k - 1] = new[k - 1].replace(h.encode(), flipped.encode())
        yield f"edit h on line {k}", new, k


def delete_line(lines: list[bytes]) -> Iterator[Case]:
    # Deleting the last line leaves a shorter but consistent chain (a
    # truncation): nothing after it can tell. Every other deletion breaks it
    # at the line that moves up into the gap.
    for k in range(2, N_LINES):
        new = lines[: k - 1] + lines[k:]
        yield f"delete line {k}", new, k


def insert_copy(lines: list[bytes]) -> Iterator[Case]:
    for k in range(2, N_LINES + 1):
        # A duplicate right after the original: the copy is the first bad line.
        new = lines[:k] + [lines[k - 1]] + lines[k:]
        yield f"duplicate line {k} after itself", new, k + 1
        # A copy of an earlier line inserted before line k: bad at k.
        for j in (1, 2, k - 1):
            if j < k:
                new = lines[: k - 1] + [lines[j - 1]] + lines[k - 1 :]
                yield f"copy of line {j} inserted as line {k}", new, k
    yield "copy of the last line appended", lines + [lines[-1]], N_LINES + 1


def swap_adjacent(lines: list[bytes]) -> Iterator[Case]:
    for k in range(2, N_LINES):
        new = list(lines)
        new[k - 1], new[k] = new[k], new[k - 1]
        yield f"swap lines {k} and {k + 1}", new, k


def change_seq(lines: list[bytes]) -> Iterator[Case]:
    for k in range(2, N_LINES + 1):
        seq = k - 1
        for other in (seq + 1, seq - 1, seq + 100, 0):
            new = list(lines)
            new[k - 1] = new[k - 1].replace(b'{"seq":%d,' % seq, b'{"seq":%d,' % other, 1)
            assert new[k - 1] != lines[k - 1]
            yield f"seq {seq} -> {other} on line {k}", new, k


def change_seq_and_reseal(lines: list[bytes]) -> Iterator[Case]:
    """Whoever recomputes a line's own hash still gets caught: at that line by
    the seq check, or at the next line by the chain."""
    for k in range(2, N_LINES + 1):
        prev = json.loads(lines[k - 2])["h"]
        d = json.loads(lines[k - 1])
        del d["h"]
        d["seq"] += 1
        new = list(lines)
        new[k - 1] = chain.seal(codec.dumps(d), prev)[0]
        yield f"seq changed and resealed on line {k}", new, k


def edit_msg_and_reseal(lines: list[bytes]) -> Iterator[Case]:
    for k in range(2, N_LINES):  # resealing the last line is a valid new last record
        prev = json.loads(lines[k - 2])["h"]
        body = chain.unseal(lines[k - 1])[0].replace(b'"pad":"p', b'"pad":"q')
        new = list(lines)
        new[k - 1] = chain.seal(body, prev)[0]
        yield f"msg edited and resealed on line {k}", new, k + 1


OPERATIONS: dict[str, Callable[[list[bytes]], Iterator[Case]]] = {
    "edit msg byte": edit_msg_byte,
    "edit h": edit_hash,
    "delete line": delete_line,
    "insert copy": insert_copy,
    "swap adjacent": swap_adjacent,
    "change seq": change_seq,
    "change seq and reseal": change_seq_and_reseal,
    "edit msg and reseal": edit_msg_and_reseal,
}


@pytest.mark.parametrize("op", list(OPERATIONS))
def test_first_problem_is_the_first_bad_line(clean: tuple[Path, list[bytes]], op: str) -> None:
    path, lines = clean
    n = 0
    for what, new, first_bad in OPERATIONS[op](lines):
        assert new != lines, what
        path.write_bytes(b"".join(new))
        report = verify(path)
        assert not report.ok, what
        assert report.problems, what
        assert report.problems[0].line == first_bad, (what, report.problems[:3])
        assert [p.line for p in report.problems] == sorted(p.line for p in report.problems)
        assert report.torn is None, what
        n += 1
    assert n >= N_LINES - 2


def test_deleting_the_last_line_is_a_consistent_truncation(clean: tuple[Path, list[bytes]]) -> None:
    """Documents the limit of a chain without a trailer: dropping the last
    complete line leaves a shorter, valid recording."""
    path, lines = clean
    path.write_bytes(b"".join(lines[:-1]))
    report = verify(path)
    assert report.ok and report.records == N_LINES - 1


def _qmprr() -> list[str]:
    exe = Path(sys.executable).with_name("qmprr")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "qmprr.cli"]


@pytest.mark.parametrize("op", ["edit msg byte", "delete line", "insert copy", "swap adjacent", "change seq"])
def test_cli_verify_reports_the_line(clean: tuple[Path, list[bytes]], op: str) -> None:
    path, lines = clean
    # One case from the middle of the file for each operation.
    cases = list(OPERATIONS[op](lines))
    what, new, first_bad = cases[len(cases) // 2]
    path.write_bytes(b"".join(new))
    res = subprocess.run([*_qmprr(), "verify", str(path)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 1, (what, res.stdout, res.stderr)
    assert res.stderr == ""
    out = res.stdout.splitlines()
    assert out[0].startswith(f"{path}:{first_bad}: "), (what, out)
    for line in out[:-1]:
        assert re.match(re.escape(str(path)) + r"(:\d+)?: ", line), line
    assert re.fullmatch(re.escape(str(path)) + r": \d+ records, \d+ problem\(s\)", out[-1]), out[-1]


def test_cli_verify_clean(clean: tuple[Path, list[bytes]]) -> None:
    path, _ = clean
    res = subprocess.run([*_qmprr(), "verify", str(path)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout
    assert res.stdout.splitlines()[-1] == f"{path}: {N_LINES} records, ok"
