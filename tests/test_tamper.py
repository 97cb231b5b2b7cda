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


# -- keyed sealing (--seal-key / verify --key) ------------------------------------------

from qmprr.errors import RecordingError  # noqa: E402
from qmprr.recording import RecordingReader, read_records  # noqa: E402
from qmprr.recording.chain import SealKey, SealKeyError  # noqa: E402
from qmprr.recording.encode import END_SEAL_TEXT  # noqa: E402
from qmprr.recording.verify import NotSealed  # noqa: E402

KEY_BYTES = b"k3y-" + bytes(range(40))


def qmprr(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([*_qmprr(), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qmprr: "), res.stderr
    return lines[0]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "seal.key"
    path.write_bytes(KEY_BYTES)
    path.chmod(0o600)
    return path


def build_sealed(path: Path, key: SealKey, n: int = N_LINES) -> list[bytes]:
    """Like :func:`build`, sealed: n lines and the end seal."""
    with RecordWriter.create(path, sync="none", seal_key=key) as writer:
        while writer.next_seq < n:
            seq = writer.next_seq
            if seq % 2:
                writer.append(Command(src="primary-1", role="primary",
                                      msg={"execute": "query-status", "id": f"q{seq}", "pad": f"p{seq}"}))
            else:
                writer.append(Reply(cmd=seq - 1, msg={"return": {"pad": f"p{seq}"}, "id": f"q{seq - 1}"}))
    return path.read_bytes().splitlines(keepends=True)


def replain(lines: list[bytes], start: int) -> list[bytes]:
    """Recompute an unkeyed chain from line *start* (1-based) on: what a forger without the key can do."""
    out = list(lines[: start - 1])
    prev = chain.GENESIS if start == 1 else chain.unseal(lines[start - 2])[1]
    for raw in lines[start - 1 :]:
        body, _ = chain.unseal(raw)
        line, prev = chain.seal(body, prev)
        out.append(line)
    return out


def test_sealed_recording_verifies_only_with_its_key(tmp_recording: Path, key_file: Path, tmp_path: Path) -> None:
    key = SealKey.from_file(str(key_file))
    lines = build_sealed(tmp_recording, key)
    assert len(lines) == N_LINES + 1  # + the end seal
    header = next(read_records(tmp_recording))
    assert header.seal == {"alg": chain.SEAL_ALG, "key_id": key.key_id}
    data = tmp_recording.read_bytes()
    assert KEY_BYTES not in data and key.key.hex().encode() not in data and key.key not in data
    assert verify(tmp_recording, key=key).ok
    res = qmprr("verify", "--key", str(key_file), str(tmp_recording))
    assert res.returncode == 0 and res.stdout.splitlines()[-1].endswith(f"ok, sealed with key {key.key_id}"), res.stdout
    # Without the key: everything but the chain, and it says so.
    res = qmprr("verify", str(tmp_recording))
    assert res.returncode == 0 and "the chain was not checked" in res.stdout, res.stdout
    # Another key: refused, one line, status 1.
    other = tmp_path / "other.key"
    other.write_bytes(b"another key, 16+ bytes long")
    res = qmprr("verify", "--key", str(other), str(tmp_recording))
    assert res.returncode == 1 and "sealed with key id" in one_error_line(res)


@pytest.mark.parametrize("start", range(1, N_LINES + 2))
def test_a_recomputed_plain_chain_fails_verify_key(tmp_recording: Path, start: int) -> None:
    key = SealKey.from_bytes(KEY_BYTES)
    lines = build_sealed(tmp_recording, key)
    target = start - 1
    lines[target] = lines[target].replace(b'"pad":"p', b'"pad":"X') if start > 1 else lines[0].replace(
        b'"host":"', b'"host":"forged-')
    tmp_recording.write_bytes(b"".join(replain(lines, start)))
    report = verify(tmp_recording, key=key)
    assert not report.ok
    assert report.problems[0].line == max(start, 2), report.problems[:2]
    assert verify(tmp_recording).ok  # a keyless verify cannot tell: that is what the key is for


def test_stripping_the_seal_fails_verify_key(tmp_recording: Path, key_file: Path) -> None:
    key = SealKey.from_bytes(KEY_BYTES)
    lines = build_sealed(tmp_recording, key)
    header = codec.loads(chain.unseal(lines[0])[0])
    del header["seal"]
    lines[0] = chain.seal(codec.dumps(header), chain.GENESIS)[0]
    tmp_recording.write_bytes(b"".join(replain(lines, 1)))
    assert verify(tmp_recording).ok
    with pytest.raises(NotSealed):
        verify(tmp_recording, key=key)
    res = qmprr("verify", "--key", str(key_file), str(tmp_recording))
    assert res.returncode == 1 and "not sealed" in one_error_line(res)


def test_unsealed_recording_with_key_fails_clearly(clean: tuple[Path, list[bytes]], key_file: Path) -> None:
    path, _ = clean
    res = qmprr("verify", "--key", str(key_file), str(path))
    assert res.returncode == 1 and "not sealed" in one_error_line(res), res.stderr


def test_truncation_of_a_sealed_recording_shows_and_repair_seals_a_crash(tmp_recording: Path, key_file: Path) -> None:
    key = SealKey.from_file(str(key_file))
    lines = build_sealed(tmp_recording, key)
    tmp_recording.write_bytes(b"".join(lines[:10]))  # cut at a line boundary: a crash, or a forger
    report = verify(tmp_recording, key=key)
    assert not report.ok and "no end seal" in report.problems[-1].message
    res = qmprr("verify", "--key", str(key_file), str(tmp_recording))
    assert res.returncode == 1 and "no end seal" in res.stdout
    # The key holder says it was a crash: repair seals the end.
    res = qmprr("repair", "--seal-key", str(key_file), str(tmp_recording))
    assert res.returncode == 0, res.stderr
    assert verify(tmp_recording, key=key).ok


def test_torn_sealed_tail_is_repaired_with_the_key_only(tmp_recording: Path, key_file: Path) -> None:
    key = SealKey.from_file(str(key_file))
    lines = build_sealed(tmp_recording, key)
    tmp_recording.write_bytes(b"".join(lines[:10]) + lines[10][:7])
    report = verify(tmp_recording, key=key)
    assert report.torn is not None and not report.ok
    res = qmprr("repair", str(tmp_recording))
    assert res.returncode == 2 and "give its key" in one_error_line(res)
    res = qmprr("repair", "--seal-key", str(key_file), str(tmp_recording))
    assert res.returncode == 0, res.stderr
    assert verify(tmp_recording, key=key).ok


def test_append_to_sealed_needs_the_same_key(tmp_recording: Path) -> None:
    key = SealKey.from_bytes(KEY_BYTES)
    build_sealed(tmp_recording, key, n=5)
    with pytest.raises(RecordingError, match="give its key"):
        RecordWriter.append_to(tmp_recording)
    with pytest.raises(RecordingError, match="not with this key"):
        RecordWriter.append_to(tmp_recording, seal_key=SealKey.from_bytes(b"x" * 32))
    with RecordWriter.append_to(tmp_recording, seal_key=key) as w:
        w.append(Note(text="second segment"))
    assert verify(tmp_recording, key=key).ok
    kinds = [(r.kind, getattr(r, "text", None)) for r in read_records(tmp_recording)]
    assert kinds[-1] == ("note", END_SEAL_TEXT) and ("note", "second segment") in kinds


def test_unsealed_cannot_start_sealing_midway(clean: tuple[Path, list[bytes]]) -> None:
    path, _ = clean
    with pytest.raises(RecordingError, match="rechain --seal-key"):
        RecordWriter.append_to(path, seal_key=SealKey.from_bytes(KEY_BYTES))


@pytest.mark.parametrize("case", ["missing", "short", "folder"])
def test_bad_key_file_is_one_line_status_2(clean: tuple[Path, list[bytes]], tmp_path: Path, case: str) -> None:
    path, _ = clean
    key = tmp_path / "k"
    if case == "short":
        key.write_bytes(b"short")
    elif case == "folder":
        key.mkdir()
    for args in (["verify", "--key", str(key), str(path)],
                 ["rechain", "--seal-key", str(key), str(path), str(tmp_path / "o.jsonl")],
                 ["import", "replies", "--seal-key", str(key), "x.replies", "-o", str(tmp_path / "i.jsonl")],
                 ["launch", "--record", str(tmp_path / "l.jsonl"), "--socket", str(tmp_path / "l.sock"),
                  "--seal-key", str(key), "--", "qemu-system-x86_64", "-machine", "none", "-display", "none"]):
        res = qmprr(*args)
        assert res.returncode == 2, (args, res.stderr)
        one_error_line(res)
    assert not (tmp_path / "l.jsonl").exists() and not (tmp_path / "l.sock").exists()  # before QEMU starts
    with pytest.raises(SealKeyError):
        SealKey.from_file(str(key))


def test_import_seal_key(tmp_path: Path, key_file: Path) -> None:
    src = Path(__file__).parent / "data" / "libvirt" / "caps-x86_64.replies"
    out = tmp_path / "caps.jsonl"
    res = qmprr("import", "replies", str(src), "-o", str(out), "--seal-key", str(key_file))
    assert res.returncode in (0, 1), res.stderr
    res = qmprr("verify", "--key", str(key_file), str(out))
    assert res.returncode == 0, res.stdout
    assert KEY_BYTES not in out.read_bytes()


@pytest.mark.qemu
def test_launch_seal_key_with_real_qemu(tmp_path: Path, key_file: Path) -> None:
    import support
    from qmprr.client import QmpClient

    with support.qmprr_launch(tmp_path, None, "--seal-key", str(key_file)) as launched:
        with QmpClient(launched.socket) as client:
            assert client.execute("query-status")["return"]["status"]
        assert launched.stop() == 0
    key = SealKey.from_file(str(key_file))
    report = verify(launched.record, key=key)
    assert report.ok and report.end_sealed, report.problems
    with RecordingReader(launched.record) as reader:
        assert reader.header.seal["key_id"] == key.key_id and not reader.chain_checked


# -- intended edits: rechain / edit ------------------------------------------------------


def hand_edit(path: Path, out: Path) -> list[bytes]:
    """A clean recording with one reply changed by hand: its chain is broken there."""
    lines = build(path)
    new = list(lines)
    new[2] = new[2].replace(b'"pad":"p2"', b'"pad":"edited"')
    out.write_bytes(b"".join(new))
    assert not verify(out).ok
    return lines


def test_rechain_makes_an_edit_valid_and_names_the_original(tmp_path: Path, key_file: Path) -> None:
    original, edited, fixed = tmp_path / "a.jsonl", tmp_path / "edited.jsonl", tmp_path / "fixed.jsonl"
    lines = hand_edit(original, edited)
    res = qmprr("rechain", str(edited), str(fixed))
    assert res.returncode == 0, res.stderr
    assert verify(fixed).ok
    records = list(read_records(fixed))
    d = records[0].derived_from
    assert d["how"] == "edited" and d["file"] == "edited.jsonl"
    assert d["final_hash"] == chain.unseal(lines[-1])[1]  # the original writer's chain head
    assert records[2].msg["return"]["pad"] == "edited"
    assert (fixed.stat().st_mode & 0o777) == 0o600
    res = qmprr("verify", str(fixed))
    assert "derived (edited) from edited.jsonl" in res.stdout
    # Sealed: provenance of the rechained file, by the key holder who rechained it.
    sealed = tmp_path / "sealed.jsonl"
    assert qmprr("rechain", "--seal-key", str(key_file), str(edited), str(sealed)).returncode == 0
    assert qmprr("verify", "--key", str(key_file), str(sealed)).returncode == 0
    # Rechained without a key, verify --key says so.
    res = qmprr("verify", "--key", str(key_file), str(fixed))
    assert res.returncode == 1 and "rechained without --seal-key" in one_error_line(res)


def test_rechain_renumbers_after_a_deletion(tmp_path: Path) -> None:
    original, edited, fixed = tmp_path / "a.jsonl", tmp_path / "e.jsonl", tmp_path / "f.jsonl"
    lines = build(original)
    del lines[3:5]  # an event (seq 3) and a note (seq 4)
    edited.write_bytes(b"".join(lines))
    assert qmprr("rechain", str(edited), str(fixed)).returncode == 0
    records = list(read_records(fixed))
    assert [r.seq for r in records] == list(range(len(records)))
    replies = [r for r in records if isinstance(r, Reply)]
    by_seq = {r.seq: r for r in records}
    assert all(isinstance(by_seq[r.cmd], Command) and by_seq[r.cmd].msg["id"] == r.msg["id"] for r in replies)
    assert verify(fixed).ok


@pytest.mark.parametrize("case", ["not json", "dangling reply", "second header", "no header", "other format",
                                  "output exists"])
def test_rechain_errors_are_one_line_status_2(tmp_path: Path, case: str) -> None:
    original, edited, out = tmp_path / "a.jsonl", tmp_path / "e.jsonl", tmp_path / "o.jsonl"
    lines = build(original)
    if case == "not json":
        lines[4] = b"{oops\n"
    elif case == "dangling reply":
        del lines[1]  # the command of the reply on the next line
    elif case == "second header":
        lines.insert(3, lines[0])
    elif case == "no header":
        del lines[0]
    elif case == "other format":
        lines[0] = lines[0].replace(b'"format":"qmprr/1"', b'"format":"qmprr/9"')
        assert b"qmprr/9" in lines[0]
    else:
        out.write_text("x")
    edited.write_bytes(b"".join(lines))
    res = qmprr("rechain", str(edited), str(out))
    assert res.returncode == 2, res.stdout
    line = one_error_line(res)
    if case != "output exists":
        assert re.search(r"e\.jsonl:\d+: ", line), line
        assert not out.exists()
    words = {"second header": "e.jsonl:4: a second header", "no header": "e.jsonl:1: first record is a command, not a header",
             "other format": "e.jsonl:1: format 'qmprr/9' is not 'qmprr/1'"}  # the reader's words
    assert words.get(case, "") in line


def test_replay_accepts_a_rechained_recording(tmp_path: Path) -> None:
    original, edited, fixed = tmp_path / "a.jsonl", tmp_path / "e.jsonl", tmp_path / "f.jsonl"
    hand_edit(original, edited)
    res = qmprr("replay", "--target", "fake", str(edited))
    assert res.returncode == 2 and "hash chain" in res.stderr  # refused: broken chain
    assert qmprr("rechain", str(edited), str(fixed)).returncode == 0
    res = qmprr("replay", "--target", "fake", str(fixed))
    assert res.returncode == 0, (res.stdout, res.stderr)


def test_edit_runs_the_editor_and_rechains(tmp_path: Path) -> None:
    original, out = tmp_path / "a.jsonl", tmp_path / "o.jsonl"
    build(original)
    before = original.read_bytes()
    script = tmp_path / "ed.sh"
    script.write_text('#!/bin/sh\nsed -i \'s/"pad":"p2"/"pad":"by-editor"/\' "$1"\n')
    script.chmod(0o755)
    res = qmprr("edit", str(original), str(out), env={"VISUAL": "", "EDITOR": str(script)})
    assert res.returncode == 0, res.stderr
    assert original.read_bytes() == before  # IN is never changed
    assert verify(out).ok and list(read_records(out))[2].msg["return"]["pad"] == "by-editor"
    # Unchanged: nothing written; editor failing: status 1; no editor: status 2.
    res = qmprr("edit", str(original), str(tmp_path / "u.jsonl"), env={"VISUAL": "", "EDITOR": "true"})
    assert res.returncode == 0 and not (tmp_path / "u.jsonl").exists() and "unchanged" in res.stdout
    res = qmprr("edit", str(original), str(tmp_path / "u.jsonl"), env={"VISUAL": "", "EDITOR": "false"})
    assert res.returncode == 1 and not (tmp_path / "u.jsonl").exists()
    one_error_line(res)
    res = qmprr("edit", str(original), str(tmp_path / "u.jsonl"), env={"VISUAL": "no-such-editor-qmprr"})
    assert res.returncode == 2 and "not found" in one_error_line(res)
