"""Rotation and retention end to end: ``qmprr launch``/``proxy`` against a real QEMU (issue 13).

``--rotate-size`` with ``--keep N`` and with ``--keep-age``, and ``proxy
--reattach`` continuing a rotating set after its launcher was SIGKILLed: the
set on disk verifies, names what retention deleted, and keeps every exchange.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import support
from qmprr import cli
from qmprr.client import QmpClient
from qmprr.recording import Command, Header, Reply, read_records, sets, verify

pytestmark = pytest.mark.qemu


def segments(folder: Path, stem: str = "rec") -> list[str]:
    return [p for _, p in sets.segments_of(str(folder / stem))]


def numbers(folder: Path, stem: str = "rec") -> list[int]:
    return [n for n, _ in sets.segments_of(str(folder / stem))]


def headers(files: list[str]) -> list[Header]:
    out = []
    for f in files:
        header = next(iter(read_records(f, errors="skip")))
        assert isinstance(header, Header)
        out.append(header)
    return out


def exchange(sock: str, n: int) -> None:
    with QmpClient(sock) as client:
        for _ in range(n):
            assert client.execute("query-status")["return"]["status"] == "running"


def answered(path: str) -> tuple[list[int], list[int]]:
    """(seqs of the client's commands, the cmd of every reply) in a set."""
    records = list(read_records(path))
    return ([r.seq for r in records if isinstance(r, Command) and r.src != "qmprr"],
            [r.cmd for r in records if isinstance(r, Reply)])


def test_launch_rotate_size_with_keep_n(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with support.qmprr_launch(tmp_path, None, "--rotate-size", "4K", "--keep", "3") as launched:
        exchange(launched.socket, 150)  # ~300 bytes an exchange: a dozen segments
        launched.proc.send_signal(signal.SIGTERM)
        assert launched.proc.wait(30) == 0
    kept = numbers(tmp_path)
    assert len(kept) == 3 and kept[0] > 3 and kept == list(range(kept[0], kept[0] + 3))
    files = segments(tmp_path)
    report = verify(files[0])
    assert report.ok, report.problems[:3]
    assert report.deleted[-1] == f"rec.{kept[0] - 1:06d}.jsonl"  # the note names the last deletion's files
    assert {h.recording for h in headers(files)} == {headers(files)[0].recording} != {None}
    cmds, replies = answered(files[0])
    assert cmds and set(cmds) <= set(replies)  # every kept command has its reply
    assert cli.main(["verify", str(tmp_path)]) == 0
    assert f"(last: rec.{kept[0] - 1:06d}.jsonl)" in capsys.readouterr().out


def test_launch_rotate_size_with_keep_age(tmp_path: Path) -> None:
    with support.qmprr_launch(tmp_path, None, "--rotate-size", "4K", "--keep-age", "1s") as launched:
        exchange(launched.socket, 40)
        before = numbers(tmp_path)
        assert len(before) >= 2
        time.sleep(1.5)  # the segments closed so far are now older than --keep-age
        exchange(launched.socket, 40)  # rotations: retention runs at each one
        launched.proc.send_signal(signal.SIGTERM)
        assert launched.proc.wait(30) == 0
    after = numbers(tmp_path)
    assert after[0] > before[-2]  # every segment closed before the pause is gone
    report = verify(segments(tmp_path)[0])
    assert report.ok, report.problems[:3]
    assert report.deleted[-1] == f"rec.{after[0] - 1:06d}.jsonl"


def test_reattach_continues_a_rotating_set_in_its_next_segment(tmp_path: Path) -> None:
    name = f"qmprr-seg-{uuid.uuid4().hex[:12]}"
    record, sock = tmp_path / "vm.jsonl", str(tmp_path / "vm.sock")
    argv = [*support.QEMU_NONE, "-name", name]
    with open(tmp_path / "launch.stderr", "wb") as err:
        launch = subprocess.Popen(
            [*support.QMPRR, "launch", "--keep-vm", "--record", str(record), "--socket", sock,
             "--rotate-size", "4K", "--", *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    proxy = None
    try:
        support.wait_for_socket(sock, proc=launch)
        exchange(sock, 60)
        first_part = numbers(tmp_path, "vm")
        assert len(first_part) >= 3
        launch.kill()  # idle: no line is being written
        assert launch.wait(20) == -signal.SIGKILL
        (pid,) = support.qemu_processes(name)  # --keep-vm: QEMU lives on
        Path(sock).unlink()
        last = segments(tmp_path, "vm")[-1]
        with open(tmp_path / "proxy.stderr", "wb") as err:
            proxy = subprocess.Popen(
                [*support.QMPRR, "proxy", "--reattach", last, "--record", str(record), "--socket", sock,
                 "--rotate-size", "4K"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        support.wait_for_socket(sock, proc=proxy)
        exchange(sock, 60)
        with QmpClient(sock) as client:
            assert client.execute("quit")["return"] == {}
        assert proxy.wait(20) == 0
    finally:
        for proc in (launch, proxy):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for leftover in support.qemu_processes(name):
            subprocess.run(["kill", "-9", str(leftover)], check=False)
    assert "Traceback" not in (tmp_path / "proxy.stderr").read_text()
    all_numbers = numbers(tmp_path, "vm")
    assert all_numbers == list(range(1, len(all_numbers) + 1)) and len(all_numbers) > len(first_part) + 1
    files = segments(tmp_path, "vm")
    hs = headers(files)
    assert len({h.recording for h in hs}) == 1 and hs[0].recording is not None  # one id for the VM's life
    reattached = hs[len(first_part)]
    assert reattached.previous is not None and reattached.previous["file"] == Path(last).name
    assert reattached.qemu_pid == pid
    report = verify(tmp_path)
    assert report.ok, report.problems[:3]
    assert report.files == files
    cmds, replies = answered(files[0])
    assert len(cmds) >= 120 and set(cmds) <= set(replies)
