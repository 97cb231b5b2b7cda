"""``launch --socket-fd N``: an inherited listening socket, and fds clients pass with commands."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import support
from qmprr.recording import Command, Fd, Reply, read_records, verify

pytestmark = pytest.mark.qemu


class RawClient:
    """A QMP client on a plain socket, able to send fds with a command (as libvirt does)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read(self) -> dict:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            assert data, "qmprr closed the connection"
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def reply(self) -> dict:
        while True:
            msg = self.read()
            if "return" in msg or "error" in msg:
                return msg

    def execute(self, cmd: str, args: dict | None = None, fds: list[int] = ()) -> dict:
        msg = {"execute": cmd, **({"arguments": args} if args else {})}
        data = json.dumps(msg).encode() + b"\n"
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)
        return self.reply()


def _launch_on_fd(tmp_path: Path) -> tuple[subprocess.Popen, socket.socket, Path]:
    support.require_qemu()
    path = str(tmp_path / "mgmt.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    record = tmp_path / "rec.jsonl"
    dbg = tmp_path / "dbg.sock"
    fd = listener.fileno()
    proc = subprocess.Popen(
        [*support.QMPRR, "launch", "--record", str(record), "--socket-fd", str(fd), "--debug-socket", str(dbg),
         "--", *support.QEMU_NONE],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=[fd],
    )
    support.wait_for_socket(dbg, proc=proc)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    listener.close()
    return proc, client, record


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def test_socket_fd_serves_and_passes_fds(tmp_path: Path) -> None:
    proc, sock, record = _launch_on_fd(tmp_path)
    try:
        client = RawClient(sock)
        assert "QMP" in client.read()
        assert "return" in client.execute("qmp_capabilities")
        target = tmp_path / "secret-content.bin"
        target.write_bytes(b"MARKER-CONTENT-" * 10)
        fd = os.open(target, os.O_RDWR)
        r, w = os.pipe()
        try:
            assert client.execute("getfd", {"fdname": "dumpfd"}, fds=[fd]) == {"return": {}}
            assert client.execute("getfd", {"fdname": "pipefd"}, fds=[w]) == {"return": {}}
            assert client.execute("closefd", {"fdname": "dumpfd"}) == {"return": {}}
            # Without the fd, QEMU itself refuses getfd: the fd really went through.
            err = client.execute("getfd", {"fdname": "nofd"})
            assert "SCM_RIGHTS" in err["error"]["desc"]
            many = [os.dup(fd) for _ in range(20)]
            try:
                err = client.execute("getfd", {"fdname": "many"}, fds=many)
            finally:
                for m in many:
                    os.close(m)
            assert "at most 16" in err["error"]["desc"]
            assert client.execute("query-status")["return"]["status"] in ("running", "prelaunch")
        finally:
            for f in (fd, r, w):
                os.close(f)
        sock.close()
        time.sleep(0.2)
    finally:
        _stop(proc)
    records = list(read_records(record))
    assert verify(record).ok
    fds = [r for r in records if isinstance(r, Fd)]
    assert [f.stat for f in fds] == [
        {"type": "file", "mode": "0644", "size": 150},
        {"type": "pipe", "mode": "0600"},
    ]
    by_seq = {r.seq: r for r in records}
    assert [by_seq[f.cmd].msg["execute"] for f in fds] == ["getfd", "getfd"]
    assert b"MARKER-CONTENT" not in record.read_bytes()
    replies = [r for r in records if isinstance(r, Reply)]
    assert replies and all(isinstance(by_seq[r.cmd], Command) for r in replies)


def test_socket_fd_must_be_a_listening_socket(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        done = subprocess.run(
            [*support.QMPRR, "launch", "--record", str(tmp_path / "r.jsonl"), "--socket-fd", str(r),
             "--", *support.QEMU_NONE],
            capture_output=True, text=True, pass_fds=[r], timeout=60,
        )
    finally:
        os.close(r)
        os.close(w)
    assert done.returncode == 2
    assert done.stderr.startswith("qmprr: ") and "--socket-fd" in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run(
        [*support.QMPRR, "launch", "--record", str(tmp_path / "r.jsonl"), "--", *support.QEMU_NONE],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "--socket-fd" in done.stderr


def test_socket_fd_clients_are_capped_like_the_servers_own(tmp_path: Path) -> None:
    support.require_qemu()
    path = str(tmp_path / "mgmt.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    record, dbg = tmp_path / "rec.jsonl", tmp_path / "dbg.sock"
    proc = subprocess.Popen(
        [*support.QMPRR, "launch", "--record", str(record), "--socket-fd", str(listener.fileno()),
         "--debug-socket", str(dbg), "--max-clients", "2", "--", *support.QEMU_NONE],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=[listener.fileno()],
    )
    socks = []
    try:
        support.wait_for_socket(dbg, proc=proc)
        listener.close()
        for _ in range(2):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            assert "QMP" in RawClient(s).read()  # admitted: the greeting
            socks.append(s)
        extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        extra.connect(path)
        socks.append(extra)
        refusal = RawClient(extra).read()
        assert "too many clients" in refusal["error"]["desc"]
    finally:
        for s in socks:
            s.close()
        _stop(proc)
    refused = [r for r in read_records(record) if getattr(r, "action", None) == "refuse"]
    assert len(refused) == 1 and refused[0].role == "primary"
