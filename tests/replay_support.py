"""Helpers for the replay, fake and plugin tests (no tests here).

Recordings are written with qmprr's own :class:`RecordWriter`, so they carry a
valid hash chain: synthetic ones from a list of steps, and edited copies of
real ones (read with :class:`RecordingReader`, changed, written again).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from qmprr import codec, wire
from qmprr.recording import (
    Command,
    Event,
    Fd,
    Greeting,
    Msg,
    Record,
    RecordingReader,
    RecordWriter,
    Reply,
    new_header,
)

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "recordings"
ALL_RECORDINGS = sorted(p.name for p in RECORDINGS.glob("*.jsonl"))
QMPRR = [sys.executable, "-m", "qmprr.cli"]
QEMU_NONE = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none"]
VERSION = {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}
GREETING = {"QMP": {"version": VERSION, "capabilities": ["oob"]}}
RUNNING = {"status": "running", "singlestep": False, "running": True}
PAUSED = {"status": "paused", "singlestep": False, "running": False}


def event(name: str, data: dict[str, Any] | None = None, seconds: int = 1_700_000_000) -> dict[str, Any]:
    msg: dict[str, Any] = {"timestamp": {"seconds": seconds, "microseconds": 1}, "event": name}
    if data is not None:
        msg["data"] = data
    return msg


@attrs.define
class Step:
    """One exchange of a synthetic recording."""

    execute: str
    arguments: dict[str, Any] | None = None
    reply: dict[str, Any] | None = attrs.Factory(lambda: {"return": {}})  # None: in flight at the end
    before: list[dict[str, Any]] = attrs.Factory(list)  # events between the command and its reply
    after: list[dict[str, Any]] = attrs.Factory(list)  # events after the reply
    src: str = "primary-1"
    role: str = "primary"
    fd: str | None = None  # an fd placeholder passed with the command
    sleep: float = 0.0  # seconds to wait before the command (recorded time)


def write_recording(
    path: str | os.PathLike[str],
    steps: list[Step],
    *,
    argv: list[str] | None = QEMU_NONE,
    greeting: dict[str, Any] = GREETING,
    initial_events: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> Path:
    """A recording as ``qmprr launch`` would write it for *steps* (valid hash chain)."""
    version = greeting.get("QMP", {}).get("version")
    header = new_header(qemu_version=version, qemu_argv=argv, labels={"made-by": "tests"})
    with RecordWriter.create(path, header, sync="none") as writer:
        writer.append(Greeting(msg=Msg(greeting)))
        cap = writer.append(
            Command(src="qmprr", role="internal", msg=Msg({"execute": "qmp_capabilities", "id": "qmprr-0"}))
        )
        writer.append(Reply(cmd=cap.seq, msg=Msg({"return": {}, "id": "qmprr-0"})))
        for ev in initial_events:
            writer.append(Event(msg=Msg(ev)))
        for n, step in enumerate(steps, 1):
            if step.sleep:
                time.sleep(step.sleep)
            msg: dict[str, Any] = {"execute": step.execute}
            if step.arguments is not None:
                msg["arguments"] = step.arguments
            msg["id"] = f"qmprr-{n}"
            cmd = writer.append(Command(src=step.src, role=step.role, msg=Msg(msg)))  # type: ignore[arg-type]
            if step.fd is not None:
                writer.append(Fd(src=step.src, placeholder=step.fd, cmd=cmd.seq))
            for ev in step.before:
                writer.append(Event(msg=Msg(ev)))
            if step.reply is not None:
                writer.append(Reply(cmd=cmd.seq, msg=Msg({**step.reply, "id": msg["id"]})))
            for ev in step.after:
                writer.append(Event(msg=Msg(ev)))
    return Path(path)


def rewrite_recording(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], edit: Callable[[Record], Record]
) -> Path:
    """A copy of *src* with every record passed through *edit*, hash chain rebuilt."""
    with RecordingReader(src) as reader:
        records = list(reader)
    header, rest = records[0], records[1:]
    with RecordWriter.create(dst, header, sync="none") as writer:  # type: ignore[arg-type]
        for record in rest:
            writer.append(edit(record))
    return Path(dst)


def qmprr(*args: str, cwd: str | os.PathLike[str] | None = None, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the qmprr CLI as a subprocess."""
    return subprocess.run(
        [*QMPRR, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, **kw
    )


def wait_for_socket(path: str | os.PathLike[str], proc: subprocess.Popen[Any] | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.01)


@contextlib.contextmanager
def fake_process(recording: str | os.PathLike[str], sock: str | os.PathLike[str], *extra: str) -> Iterator[subprocess.Popen[str]]:
    """``qmprr fake RECORDING --socket SOCK EXTRA...`` running until the block ends (then killed if alive)."""
    proc = subprocess.Popen(
        [*QMPRR, "fake", str(recording), "--socket", str(sock), *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_socket(sock, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


class RawClient:
    """A blocking raw-socket QMP client that keeps every message it read."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.decoder = wire.StreamDecoder()
        self.pending: list[dict[str, Any]] = []
        self.seen: list[dict[str, Any]] = []
        self.greeting = self.read()

    def read(self) -> dict[str, Any]:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.pending.extend(m for m in self.decoder.feed(data) if isinstance(m, dict))
        msg = self.pending.pop(0)
        self.seen.append(msg)
        return msg

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(codec.dumps(msg))

    def execute(self, name: str, arguments: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """Send a command; read up to its reply (events on the way are kept in ``seen``)."""
        msg: dict[str, Any] = {"execute": name, **extra}
        if arguments is not None:
            msg["arguments"] = arguments
        self.send(msg)
        while True:
            reply = self.read()
            if "return" in reply or "error" in reply:
                return reply

    def negotiate(self) -> dict[str, Any]:
        return self.execute("qmp_capabilities")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
