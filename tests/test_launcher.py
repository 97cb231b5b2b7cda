"""QEMU's lifetime follows its launcher's: no orphans, or (--keep-vm) a way back to its monitor.

Real QEMU and real ``qmprr launch``/``proxy`` subprocesses throughout. Each
QEMU gets a unique ``-name``: a QEMU left running with it is an orphan (and
is killed by pid at the end of the test).
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import support
from qmprr import cli
from qmprr.client import QmpClient
from qmprr.launch import die_with_parent_hook, ownership_refusal
from qmprr.recording import Command, Header, Note, read_records, verify
from qmprr.recording.segment import segment_end
from test_cli_service import assert_one_error_line, run_qmprr

pytestmark = pytest.mark.qemu

SEED = 20261202
TRIALS = 30  # SIGKILLs of 'qmprr launch', a third in each phase
PHASES = ("start-up", "negotiated", "client looping")
GONE_WITHIN = 10.0  # a failure bound, not a timing claim


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Unique QEMU names handed out by the test; QEMUs still running with them are killed afterwards."""
    handed: list[str] = []
    yield handed
    for name in handed:
        support.kill_qemus_named(name)


def new_name(names: list[str]) -> str:
    names.append(f"qmprr-life-{uuid.uuid4().hex[:12]}")
    return names[-1]


def wait_gone(name: str, bound: float = GONE_WITHIN) -> bool:
    """True once no QEMU named *name* runs (polled up to *bound* seconds)."""
    deadline = time.monotonic() + bound
    while support.qemu_processes(name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def launch(tmp_path: Path, name: str, *extra: str, stem: str = "rec") -> tuple[subprocess.Popen, Path, str]:
    """Start ``qmprr launch`` (stderr to a file: a surviving QEMU must not hold a pipe of ours)."""
    record, sock = tmp_path / f"{stem}.jsonl", str(tmp_path / f"{stem}.sock")
    proc, _ = support.qmprr_process(tmp_path, "launch", "--record", str(record), "--socket", sock, *extra,
                                    "--", *support.QEMU_NONE, "-name", name, stem=stem)
    return proc, record, sock


def header_of(path: Path) -> Header:
    header = next(iter(read_records(path, errors="skip")))
    assert isinstance(header, Header)
    return header


class Looper(threading.Thread):
    """A client sending query-status in a loop until its connection fails."""

    def __init__(self, sock: str) -> None:
        super().__init__(daemon=True)
        self.sock, self.done, self.error = sock, 0, None
        self.started_looping = threading.Event()

    def run(self) -> None:
        try:
            with QmpClient(self.sock, timeout=20) as client:
                while True:
                    assert client.execute("query-status")["return"]["status"] == "running"
                    self.done += 1
                    if self.done == 5:
                        self.started_looping.set()
        except Exception as exc:  # the launcher was killed under it
            self.error = exc
            self.started_looping.set()


# -- 1. default: QEMU dies with its launcher ----------------------------------------------------


def test_sigkill_of_launch_never_orphans_qemu(tmp_path: Path, names: list[str]) -> None:
    rng = random.Random(SEED)
    orphans, had_qemu = [], {phase: 0 for phase in PHASES}
    for trial in range(TRIALS):
        phase = PHASES[trial % len(PHASES)]
        name = new_name(names)
        proc, record, sock = launch(tmp_path, name, stem=f"t{trial}")
        looper = None
        try:
            if phase == "start-up" and trial % 2:
                time.sleep(rng.uniform(0.0, 0.4))  # mostly before QEMU is even forked
            elif phase == "start-up":
                # Just after QEMU's exec: greeting, header, negotiation, sockets.
                deadline = time.monotonic() + 20
                while not support.qemu_processes(name) and time.monotonic() < deadline:
                    time.sleep(0.001)
                time.sleep(rng.uniform(0.0, 0.03))
            else:
                support.wait_for_socket(sock, proc=proc)
                if phase == "client looping":
                    looper = Looper(sock)
                    looper.start()
                    assert looper.started_looping.wait(20) and looper.error is None, looper.error
                time.sleep(rng.uniform(0.0, 0.05))
            running = support.qemu_processes(name)
            alive = bool(running)
            proc.kill()
            assert proc.wait(20) == -signal.SIGKILL
        finally:
            support.reap(proc)
        had_qemu[phase] += alive
        if phase != "start-up":
            assert alive, "QEMU should have been running"
            assert [header_of(record).qemu_pid] == running
        if not wait_gone(name):
            orphans.append((trial, phase, support.qemu_processes(name)))
        if looper is not None:
            looper.join(20)
            assert looper.error is not None  # its connection died with the launcher
    print(f"{TRIALS} SIGKILLs of qmprr launch, QEMU running at the kill: {had_qemu}; orphans: {len(orphans)}")
    assert orphans == []


def test_child_whose_parent_died_before_the_prctl_exits_before_exec(tmp_path: Path) -> None:
    # The race the hook closes: the launcher died between fork and prctl, so the
    # child's parent is no longer the launcher (here: claims a parent that is not ours).
    marker = tmp_path / "exec-happened"
    res = subprocess.run(["sh", "-c", f"touch {marker}"], preexec_fn=die_with_parent_hook(parent=1, exit_code=97))
    assert res.returncode == 97
    assert not marker.exists()
    res = subprocess.run(["sh", "-c", f"touch {marker}"], preexec_fn=die_with_parent_hook())
    assert res.returncode == 0 and marker.exists()


def test_ownership_refusals() -> None:
    assert ownership_refusal(["qemu", "-daemonize"]) is not None
    assert ownership_refusal(["qemu", "--daemonize"], die_with_parent=False) is not None
    assert "-runas" in ownership_refusal(["qemu", "-runas", "nobody"])
    assert ownership_refusal(["qemu", "-runas", "nobody"], die_with_parent=False) is None
    for ok in (["-pidfile", "/tmp/p"], ["-chroot", "/"], ["-qmp", "stdio"], ["-monitor", "stdio"], ["-S"]):
        assert ownership_refusal(["qemu", *ok]) is None, ok


# -- 2. --keep-vm and proxy --reattach ----------------------------------------------------------


def start_proxy(tmp_path: Path, *args: str, stem: str) -> tuple[subprocess.Popen, Path]:
    return support.qmprr_process(tmp_path, "proxy", *args, stem=stem)


def last_line_hash(path: Path) -> tuple[int, str]:
    """(seq, h) of the last complete line of *path*."""
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    last = json.loads(data[data.rfind(b"\n", 0, len(data) - 1) + 1 :])
    return last["seq"], last["h"]


def test_keep_vm_survives_sigkill_and_reattach_continues_the_recording(tmp_path: Path, names: list[str]) -> None:
    name = new_name(names)
    proc, first, sock = launch(tmp_path, name, "--keep-vm", stem="seg1")
    try:
        support.wait_for_socket(sock, proc=proc)
        with QmpClient(sock) as client:
            assert client.execute("query-name")["return"] == {"name": name}
            assert client.execute("stop") == {"return": {}, "id": "inject-3"}
        header = header_of(first)
        (pid,) = support.qemu_processes(name)
        assert header.qemu_pid == pid
        assert header.monitor_socket == str(tmp_path / "seg1.monitor.sock")
        proc.kill()
        assert proc.wait(20) == -signal.SIGKILL
    finally:
        support.reap(proc)
    time.sleep(0.5)  # the scenario: time passes and --keep-vm QEMU stays
    assert support.qemu_processes(name) == [pid]  # --keep-vm: still there, paused as it was left
    # The SIGKILL may have torn the last line; make sure it is: reattach must link to the last complete record.
    final_seq, final_hash = last_line_hash(first)
    torn = b'{"seq":99,"t":1.0,"kind":"event","msg":{"ev'
    with open(first, "ab") as f:
        f.write(torn)
    os.unlink(sock)  # stale (its server was killed); the proxy would remove it, but we wait for it to appear

    second = tmp_path / "seg2.jsonl"
    proxy, err = start_proxy(tmp_path, "--reattach", str(first), "--record", str(second), "--socket", sock,
                             stem="seg2")
    try:
        support.wait_for_socket(sock, proc=proxy)
        with QmpClient(sock) as client:
            assert client.execute("query-status")["return"]["status"] == "paused"
            assert client.execute("cont") == {"return": {}, "id": "inject-3"}
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(20) == 0
    finally:
        support.reap(proxy)
    stderr = err.read_text()
    assert "Traceback" not in stderr and f"torn last line of {len(torn)} bytes" in stderr, stderr
    assert support.qemu_processes(name) == [pid]  # proxy semantics: QEMU keeps running

    # A segment can be reattached in turn; this time the client quits QEMU.
    third = tmp_path / "seg3.jsonl"
    proxy, err = start_proxy(tmp_path, "--reattach", str(second), "--record", str(third), "--socket", sock,
                             stem="seg3")
    try:
        support.wait_for_socket(sock, proc=proxy)
        with QmpClient(sock) as client:
            assert client.execute("query-status")["return"]["status"] == "running"
            assert client.execute("quit")["return"] == {}
        assert proxy.wait(20) == 0
    finally:
        support.reap(proxy)
    assert wait_gone(name)
    assert not os.path.exists(header.monitor_socket)  # the stale monitor socket is cleaned up

    # The old file is untouched and verifies but for its torn tail; repair makes it clean.
    report = verify(first)
    assert report.torn is not None and [p.line for p in report.problems] == [report.torn.line]
    assert cli.main(["repair", str(first)]) == 0
    assert verify(first).ok
    for path in (second, third):
        assert verify(path).ok, verify(path).problems
    h2, h3 = header_of(second), header_of(third)
    assert h2.previous == {"file": "seg1.jsonl", "final_seq": final_seq, "final_hash": final_hash,
                           "torn_bytes": len(torn)}
    assert (h2.qemu_pid, h2.monitor_socket) == (pid, header.monitor_socket)
    seq2, hash2 = last_line_hash(second)
    assert h3.previous == {"file": "seg2.jsonl", "final_seq": seq2, "final_hash": hash2}
    # The hash named is a record of the old file's chain (repair only appended after it).
    lines = first.read_bytes().splitlines()
    assert json.loads(lines[final_seq])["h"] == final_hash

    records = list(read_records(second))
    notes = [r for r in records if isinstance(r, Note)]
    assert notes and notes[0].text.startswith("reattached to QEMU's monitor")
    cmds = [(c.src, c.msg["execute"]) for c in records if isinstance(c, Command)]
    assert cmds == [("qmprr", "qmp_capabilities"), ("primary-1", "query-status"), ("primary-1", "cont")]


def test_keep_vm_sigterm_still_quits_qemu(tmp_path: Path, names: list[str]) -> None:
    name = new_name(names)
    monitor = tmp_path / "chosen-monitor.sock"
    proc, record, sock = launch(tmp_path, name, "--keep-vm", "--monitor-socket", str(monitor))
    try:
        support.wait_for_socket(sock, proc=proc)
        assert os.stat(monitor).st_mode & 0o777 == 0o600
        # QEMU serves one monitor client at a time: while the recorder holds it,
        # a direct connection gets nothing (no way past the channel).
        direct = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        direct.settimeout(1.0)
        direct.connect(str(monitor))
        with QmpClient(sock) as client:
            assert "return" in client.execute("query-status")
        with pytest.raises(TimeoutError):
            direct.recv(100)
        direct.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        support.reap(proc)
    assert wait_gone(name)
    assert not monitor.exists()
    assert header_of(record).monitor_socket == str(monitor)
    assert verify(record).ok


@pytest.mark.parametrize(
    "case", ["no monitor in header", "recorder still alive", "qemu gone", "neither option", "not a recording"]
)
def test_reattach_errors_are_one_line(tmp_path: Path, names: list[str], case: str) -> None:
    name = new_name(names)
    new = tmp_path / "new.jsonl"
    base = ["proxy", "--record", str(new), "--socket", str(tmp_path / "new.sock")]
    proc = None
    if case == "neither option":
        args, needle = base, "--reattach"
    elif case == "not a recording":
        (tmp_path / "junk.jsonl").write_text("hello\n")
        args, needle = [*base, "--reattach", str(tmp_path / "junk.jsonl")], "not a qmprr/1 recording"
    else:
        proc, record, sock = launch(tmp_path, name, *(["--keep-vm"] if case != "no monitor in header" else []))
        support.wait_for_socket(sock, proc=proc)
        if case != "recorder still alive":
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        args = [*base, "--reattach", str(record)]
        needle = {"recorder still alive": "still recording", "no monitor in header": "--keep-vm",
                  "qemu gone": "is no longer running"}[case]
    try:
        status, out, err = run_qmprr(tmp_path, *args)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
    assert status == 2 and out == ""
    assert needle in assert_one_error_line(err)
    assert not new.exists()


def test_segment_end_of_a_clean_file(tmp_path: Path) -> None:
    from qmprr.recording import RecordWriter

    path = tmp_path / "a.jsonl"
    with RecordWriter.create(path) as w:
        w.append(Note(text="x"))
    end = segment_end(path)
    assert (end.final_seq, end.torn_bytes) == (1, 0)
    assert end.final_hash == last_line_hash(path)[1]
    assert end.previous(str(tmp_path / "sub" / "b.jsonl"))["file"] == "../a.jsonl"


# -- 3. SIGTERM when the log cannot be written -------------------------------------------------


def test_sigterm_stops_qemu_when_the_log_cannot_be_written(tmp_path: Path, names: list[str]) -> None:
    name = new_name(names)
    proc, record, sock = launch(tmp_path, name)
    try:
        support.wait_for_socket(sock, proc=proc)
        with QmpClient(sock) as client:
            assert "return" in client.execute("query-status")
        support.wait_until(lambda: any(d["kind"] == "reply" for d in support.records_on_disk(record)), "the reply on disk")
        size = record.stat().st_size
        # From now on every write to the recording fails (EFBIG; Python ignores SIGXFSZ).
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (size, size))
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(60)
    finally:
        support.reap(proc)
    assert wait_gone(name), "qmprr exited and left QEMU running"
    stderr = (tmp_path / "rec.stderr").read_text()
    assert "Traceback" not in stderr, stderr
    # The channel still sends qmprr's own quit unrecorded while the log fails (see
    # docs/channel.md); were it refused, the launcher's SIGTERM fallback would stop QEMU.
    assert status == 0, stderr  # QEMU's own status: it quit (on quit or on SIGTERM)
    report = verify(record)  # the log keeps what it had
    assert report.ok and report.torn is None and record.stat().st_size == size


def test_qemu_deaf_to_quit_and_sigterm_is_killed(tmp_path: Path, names: list[str], monkeypatch) -> None:
    import asyncio

    from qmprr import service

    monkeypatch.setattr(service, "QUIT_TIMEOUT", 0.5)
    monkeypatch.setattr(service, "TERM_GRACE", 0.5)
    name = new_name(names)
    record, sock = tmp_path / "deaf.jsonl", str(tmp_path / "deaf.sock")
    options = service.ServiceOptions(record=str(record), socket=sock, quiet=True)

    async def main() -> int:
        task = asyncio.create_task(service.run_launch([*support.QEMU_NONE, "-name", name], options))
        while not os.path.exists(sock):
            assert not task.done(), task.result()
            await asyncio.sleep(0.01)
        (pid,) = support.qemu_processes(name)
        os.kill(pid, signal.SIGSTOP)  # hears neither quit nor SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # to run_launch's handler
        return await task

    assert asyncio.run(main()) == 128 + signal.SIGKILL
    assert wait_gone(name)
    records = list(read_records(record))
    notes = [r.text for r in records if isinstance(r, Note)]
    assert [n.rsplit(": ", 1)[1] for n in notes] == ["sending QEMU SIGTERM", "sending QEMU SIGKILL"], notes
    assert "did not answer 'quit'" in notes[0]
    assert verify(record).ok
