"""Hostile review: what an attacker (a client, a guest, a recording) must never get from qmprr.

Each test names the break it guards against; markers (a secret file's name,
a marker file) must never show up where qmprr writes or be made at all.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qmprr import images
from support import QEMU_NONE, qmprr_launch


def _secret_behind_raw_disk(folder: Path) -> tuple[Path, Path]:
    """A secret host file, and a raw guest disk whose data is a qcow2 header naming it as backing file."""
    secret = folder / "SECRET-marker-file.bin"
    secret.write_bytes(b"s" * 12345)
    disk = folder / "guest.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(disk), "1M"],
                   check=True)  # fmt: skip
    return secret, disk


def _written_by_qmprr(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.glob("*.jsonl"))


def test_argv_raw_disk_is_described_as_raw_never_probed(tmp_path: Path) -> None:
    """A guest can write a qcow2 header into its raw disk: qemu-img must not follow its backing file."""
    secret, disk = _secret_behind_raw_disk(tmp_path)
    argv = ["qemu", "-drive", f"file={disk},format=raw,if=none", "-blockdev",
            f"driver=raw,node-name=r,file.driver=file,file.filename={disk}"]  # fmt: skip
    found = images.describe_all(images.opened_in_argv(argv))
    assert found == [{"path": str(disk), "format": "raw", "virtual_size": -(-disk.stat().st_size // 512) * 512}]
    assert images.named_in_argv(argv) == [str(disk)]


def test_opened_formats_follow_the_command() -> None:
    add = {"driver": "qcow2", "node-name": "t", "backing": None, "file": {"driver": "file", "filename": "t.qcow2"}}
    assert images.opened_in_command({"execute": "blockdev-add", "arguments": add}) == [("t.qcow2", "qcow2", False)]
    add = {"driver": "file", "node-name": "p", "filename": "p.img"}
    assert images.opened_in_command({"execute": "blockdev-add", "arguments": add}) == [("p.img", "raw", False)]
    add = {"driver": "blkdebug", "node-name": "d", "image": {"driver": "file", "filename": "x"}}
    assert images.opened_in_command({"execute": "blockdev-add", "arguments": add}) == []  # unknown: not probed
    hmp = {"execute": "human-monitor-command", "arguments": {"command-line": "drive_add 0 file=a.img,format=raw"}}
    assert images.opened_in_command(hmp) == [("a.img", "raw", True)]


@pytest.mark.qemu
def test_a_client_cannot_make_the_recorder_probe_files(tmp_path: Path) -> None:
    """blockdev-add/drive_add QEMU refuses, or a raw disk with a qcow2 header: nothing of the secret is logged."""
    from qmprr.client import QmpClient

    secret, disk = _secret_behind_raw_disk(tmp_path)
    other = tmp_path / "OTHER-marker.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(other), "3M"], check=True)
    with qmprr_launch(tmp_path, QEMU_NONE) as run:
        with QmpClient(run.socket) as client:
            ok = client.execute("blockdev-add", {"driver": "raw", "node-name": "g",
                                                 "file": {"driver": "file", "filename": str(disk)}})  # fmt: skip
            assert "return" in ok
            bad = client.execute("blockdev-add", {"driver": "no-such-driver", "node-name": "x",
                                                  "file": {"driver": "file", "filename": str(other)}})  # fmt: skip
            assert "error" in bad
            hmp = client.execute("human-monitor-command",
                                 {"command-line": f"drive_add 0 file={other},format=vmdk,if=none"})  # fmt: skip
            assert "OK" not in hmp["return"]
        assert run.stop() == 0
    logged = _written_by_qmprr(tmp_path)
    assert str(disk) in logged  # described, as raw
    assert '"format":"qcow2"' not in logged.replace(" ", "")
    assert secret.name not in logged and other.name not in logged.split("execute", 1)[0]
    notes = [line for line in logged.splitlines() if '"images"' in line and '"note"' in line]
    assert notes and all(other.name not in n and secret.name not in n for n in notes)


@pytest.mark.parametrize("fmt", sorted(images.LINEAR_METADATA))
def test_a_huge_claimed_size_never_fills_the_disk(tmp_path: Path, fmt: str) -> None:
    """vdi/parallels/qcow/vmdk write a block map in proportion to the size: a 1 PiB claim would write GiBs."""
    desc = {"path": "huge.img", "format": fmt, "virtual_size": 2**50}
    assert images.valid(desc)
    with pytest.raises(images.CreateError, match="is refused"):
        images.create(desc, str(tmp_path / "huge.img"), root=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    made = images.create({**desc, "virtual_size": 2**30}, str(tmp_path / "ok.img"), root=str(tmp_path))
    assert made == [str(tmp_path / "ok.img")] and (tmp_path / "ok.img").stat().st_blocks * 512 < 2**24


def test_hostile_chains_stay_in_the_work_folder(tmp_path: Path) -> None:
    """Names starting with -, with commas, absolute, escaping, looping: every file made (and named) is inside."""
    import json

    from qmprr.replay.safety import PathMap
    from qmprr.replay.scratch import prepare
    from qmprr.replay.script import DEFAULT_GREETING, Exchange, Script

    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    q2 = {"format": "qcow2", "virtual_size": 2**20}
    chain = [{"path": "-o,backing_file=/etc/shadow", **q2}, {"path": "/etc/shadow", **q2},
             {"path": f"../outside/{'x' * 3}", **q2}, {"path": "-f", **q2}, {"path": "-f", "format": "raw",
                                                                             "virtual_size": 512}]  # fmt: skip
    tops = ["-top,file=/etc/passwd", "../outside/top", "/etc/top", "a/../../outside/t2"]
    script = Script(greeting=DEFAULT_GREETING, exchanges=[
        Exchange(command="blockdev-add", arguments={"driver": "qcow2", "node-name": f"n{i}",
                                                    "file": {"driver": "file", "filename": t}})
        for i, t in enumerate(tops)])  # fmt: skip
    script.images = [{"path": t, **q2, "backing": chain} for t in tops]
    done = prepare(script, str(work), PathMap())
    assert done.problems == [] and len(done.created) == len(tops)
    assert list(outside.iterdir()) == []
    made = [p for p in work.rglob("*") if p.is_file()]
    for image in made:
        info = json.loads(subprocess.run(["qemu-img", "info", "--backing-chain", "--output=json", "-U", str(image)],
                                         capture_output=True, check=True).stdout)  # fmt: skip
        for layer in info:
            real = Path(layer["filename"]).resolve()
            assert real.is_relative_to(work.resolve()), (image, layer["filename"])


_HOSTILE_TEXT = "\x1b[31m\x07\x7f\u009b2J\u202eevil\u00e9\U0001f600\ud800"


def test_events_lines_are_printable_ascii_whatever_the_server_sends() -> None:
    """A hostile server's event (names, keys, data with ESC, DEL, C1 CSI, bidi, lone surrogate) never reaches a terminal raw."""
    import json

    from qmprr.events import format_event, format_json

    for name in ("STOP", _HOSTILE_TEXT, "Ѕ\u0422OP", 7, None):
        msg = {"event": name, "data": {_HOSTILE_TEXT: [_HOSTILE_TEXT]},
               "timestamp": {"seconds": 1, "microseconds": 2}}  # fmt: skip
        for line in (format_event(msg), format_json(msg)):
            assert all(" " <= c <= "~" for c in line), repr(line)
        assert json.loads(format_json(msg)) == msg


@pytest.mark.timeout(20)
def test_pass_fd_of_a_fifo_never_hangs(tmp_path: Path) -> None:
    """--pass-fd on a FIFO nobody writes (or reads): opened at once for reading, refused for writing, no hang."""
    import os

    from qmprr import kvargs
    from qmprr.inject import PassFd

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = PassFd(str(fifo), fdname="x", mode="r").open()
    try:
        assert os.get_blocking(fd)
    finally:
        os.close(fd)
    with pytest.raises(kvargs.ArgumentsError, match="cannot open"):
        PassFd(str(fifo), fdname="x", mode="w").open()


def _chained(tmp_path: Path, bodies: list[bytes], name: str = "crafted.jsonl") -> Path:
    """The first two records of a real recording, then *bodies* (``SEQ``: the next seq), hash chain made right."""
    from qmprr.recording.chain import seal, unseal
    from replay_support import RECORDINGS

    prev, lines = "", []
    src = (RECORDINGS / "errors.jsonl").read_bytes().splitlines(keepends=True)
    for n, body in enumerate([unseal(line)[0] for line in src[:2]] + bodies):
        line, prev = seal(body.replace(b"SEQ", str(n).encode()), prev)
        lines.append(line)
    path = tmp_path / name
    path.write_bytes(b"".join(lines))
    return path


def test_verify_reads_deep_nesting_as_the_reader_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """msgspec's RecursionError on deep nesting crashed verify (internal error, exit 2); the reader reads it."""
    from qmprr.cli import main
    from qmprr.recording import RecordingReader

    deep = b"[" * 5000 + b"]" * 5000
    path = _chained(tmp_path, [b'{"seq":SEQ,"t":1,"kind":"event","src":"qemu","msg":{"event":"X","data":' + deep + b"}}"])
    with RecordingReader(path) as reader:
        assert len(list(reader)) == 3
    assert main(["verify", str(path)]) == 0
    assert "3 records, ok" in capsys.readouterr().out


_BODIES = [
    b'{"seq":SEQ,"seq":2,"t":0.1,"kind":"event","src":"qemu","msg":{"event":"X"}}',
    b'{"seq":2,"t":0.1,"kind":"event","kind":"command","src":"qemu","msg":{"event":"X"}}',
    b'{"seq":SEQ,"t":0.1,"kind":"event","src":"qemu","msg":{"event":"X"},"unknown":1}',
    b'{"seq":SEQ,"t":1e999,"kind":"event","src":"qemu","msg":{"event":"X"}}',
    b'{"seq":18446744073709551616,"t":1,"kind":"event","src":"qemu","msg":{"event":"X"}}',
    b'{"seq":SEQ,"t":1,"kind":"command","src":"client","role":"primary","conn":18446744073709551617,'
    b'"msg":{"execute":"query-status"}}',
    b'{"seq":SEQ,"t":1,"kind":"command","src":"client","role":"primary","conn":-9223372036854775809,'
    b'"msg":{"execute":"query-status"}}',
    b'{"seq":SEQ,"t":1,"kind":"event","src":"qemu","msg":{"a":"\xed\xa0\x80"}}',
    b'{"seq":SEQ,"t":1,"kind":"event","src":"qemu","msg":[]}',
    b'{"seq":SEQ,"t":1,"kind":"note","text":5,"text":"x"}',
    b'{"seq":SEQ,"t":1,"kind":"note","text":"x","text":5}',
]


@pytest.mark.parametrize("body", _BODIES)
def test_the_fast_schema_never_accepts_what_the_reader_refuses(body: bytes) -> None:
    from qmprr import codec
    from qmprr.recording import convert, lineschema

    line = body.replace(b"SEQ", b"2")
    try:
        fast = lineschema.decode(line)
    except lineschema.Refused:
        return  # the slow path decides
    typed = convert.structure(codec.loads(line))
    assert (typed.kind, typed.seq, getattr(typed, "conn", None)) == (fast.K, fast.seq, getattr(fast, "conn", None))


def test_show_json_fast_path_reads_deep_nesting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``show --json --kind`` (the raw fast path) crashed on nesting the reader reads; now it prints the file's line."""
    from qmprr.cli import main

    deep = b"[" * 5000 + b"]" * 5000
    path = _chained(tmp_path, [b'{"seq":SEQ,"t":1,"kind":"event","src":"qemu","msg":{"event":"X","data":' + deep + b"}}"])
    capsys.readouterr()
    assert main(["show", "--json", "--kind", "event", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out.encode() == path.read_bytes().splitlines(keepends=True)[2] and out.err == ""
