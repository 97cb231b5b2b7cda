"""The channel against a real QEMU: a wedged QEMU (SIGSTOP), a log that fails, fds.

The decisions are tested without sockets in test_channel_core.py; these check
that the asyncio driver carries them out with QEMU 7.2 on the other end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import support
from qmprr.channel import (
    Channel,
    ChannelWedged,
    LogUnavailable,
    ReplyNotRecorded,
)
from qmprr.channel_core import Runstate
from qmprr.client import QmpClient
from qmprr.recording import (
    Command,
    Local,
    Note,
    RecordWriter,
    Reply,
)
from qmprr.recording import verify as verify_recording

pytestmark = pytest.mark.qemu


read_log = support.read_log


async def until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for an observable *condition* (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def channel_to_qemu(tmp_path: Path, log: Path | None = None, **options: Any) -> AsyncIterator[tuple[subprocess.Popen, Channel]]:
    with support.qemu_with_qmp(tmp_path) as (qemu, sock):
        channel = await support.open_channel(sock, support.log_to(log or tmp_path / "rec.jsonl"), **options)
        try:
            yield qemu, channel
        finally:
            with contextlib.suppress(ProcessLookupError):
                qemu.send_signal(signal.SIGCONT)
            await channel.close()
            channel.log.close()


async def test_a_stopped_qemu_wedges_the_channel_and_its_late_reply_resumes_it(tmp_path: Path) -> None:
    async with channel_to_qemu(tmp_path, wire_timeout=0.5) as (qemu, ch):
        assert await ch.execute({"execute": "query-name"}) == {"return": {}}
        qemu.send_signal(signal.SIGSTOP)
        stuck = asyncio.create_task(ch.execute({"execute": "query-status"}, src="stuck", client_id=1))
        await until(lambda: ch.core.in_flight is not None, "query-status on the wire")
        waiting = asyncio.create_task(ch.execute({"execute": "query-name"}, src="waiting", client_id=2))
        with pytest.raises(ChannelWedged, match=r"'query-status' \(seq \d+\) .* the channel is wedged"):
            await asyncio.wait_for(stuck, 20)
        with pytest.raises(ChannelWedged, match="wedged"):
            await asyncio.wait_for(waiting, 1)
        with pytest.raises(ChannelWedged):  # refused at once while QEMU does not answer
            await ch.execute({"execute": "query-name"}, src="later", client_id=3)
        assert ch.core.runstate is Runstate.WEDGED
        qemu.send_signal(signal.SIGCONT)
        await until(lambda: ch.core.runstate is Runstate.RUNNING, "QEMU's late reply")
        assert await ch.execute({"execute": "query-name"}) == {"return": {}}

    records = read_log(tmp_path / "rec.jsonl")
    assert verify_recording(tmp_path / "rec.jsonl").ok
    status = next(r for r in records if isinstance(r, Command) and r.msg["execute"] == "query-status")
    reply = next(r for r in records if isinstance(r, Reply) and r.cmd == status.seq)
    assert reply.msg["return"]["status"]  # QEMU's late answer is in the log, as that command's
    notes = [r.text for r in records if isinstance(r, Note)]
    assert any("is wedged" in n for n in notes) and any("no longer wedged" in n for n in notes)
    refused = {r.src: r for r in records if isinstance(r, Local)}
    assert refused["waiting"].reply["id"] == 2 and refused["later"].reply["id"] == 3
    assert not [r for r in records if isinstance(r, Command) and r.src in ("waiting", "later")]


class FailingLog:
    """Makes a RecordWriter fail as a full disk does: from a record of *kind* on, until healed."""

    def __init__(self, log: RecordWriter, kind: str) -> None:
        self.kind, self.failing, self.real, self.path = kind, False, log.append, log.path
        log.append = self.append  # type: ignore[method-assign]
        # The channel's hot path writes commands, replies and events through these.
        for name in ("command", "reply", "event"):
            setattr(log, f"append_{name}", self._hot(name, getattr(log, f"append_{name}")))

    def _fail(self, kind: str) -> None:
        if self.failing or kind == self.kind:
            self.failing, self.kind = True, "-"
            raise support.disk_full(self.path)

    def _hot(self, kind: str, real: Any) -> Any:
        def append(**fields: Any) -> Any:
            self._fail(kind)
            return real(**fields)
        return append

    def append(self, record: Any) -> Any:
        self._fail(record.kind)
        return self.real(record)


async def test_a_reply_that_cannot_be_recorded_pauses_the_channel_until_the_log_heals(tmp_path: Path) -> None:
    async with channel_to_qemu(tmp_path, log_wait_timeout=60) as (_qemu, ch):
        fault = FailingLog(ch.log, "reply")
        with pytest.raises(ReplyNotRecorded, match=r"rec.jsonl: QEMU ran 'query-status' .*DID run"):
            await ch.execute({"execute": "query-status"})
        assert ch.core.runstate is Runstate.PAUSED
        waiting = asyncio.create_task(ch.execute({"execute": "query-name"}, src="waiting"))
        await asyncio.sleep(0)
        assert not waiting.done() and ch.core.in_flight is None  # paused: not sent
        fault.failing = False
        assert await asyncio.wait_for(waiting, 20) == {"return": {}}
    records = read_log(tmp_path / "rec.jsonl")
    assert verify_recording(tmp_path / "rec.jsonl").ok
    [resumed] = [r for r in records if isinstance(r, Note) and "writable again" in r.text]
    assert resumed.data["lost"] == {"reply": 1}
    cmd = next(r for r in records if isinstance(r, Command) and r.src == "waiting")
    assert resumed.seq < cmd.seq


async def test_commands_give_up_on_a_log_that_stays_broken_and_quit_still_works(tmp_path: Path) -> None:
    async with channel_to_qemu(tmp_path, log_wait_timeout=0.3) as (qemu, ch):
        fault = FailingLog(ch.log, "command")
        with pytest.raises(LogUnavailable, match="rec.jsonl.*command not sent"):
            await ch.execute({"execute": "query-status"})
        with pytest.raises(LogUnavailable, match="rec.jsonl: the log cannot be written"):
            await asyncio.wait_for(ch.execute({"execute": "query-status"}), 20)
        # What service.py does on SIGTERM: qmprr's own quit goes out, unrecorded.
        ch.abort_all_transactions("qmprr is stopping")
        with contextlib.suppress(ReplyNotRecorded):
            await asyncio.wait_for(ch.execute({"execute": "quit"}, src="qmprr", role="internal"), 20)
        assert await asyncio.to_thread(qemu.wait, 20) == 0
        await asyncio.wait_for(ch.wait_closed(), 20)
        assert fault.failing
    assert verify_recording(tmp_path / "rec.jsonl").ok  # the log kept what it had


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(check=False, args=["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


async def test_a_real_full_disk(tmp_path: Path) -> None:
    """A 64 KiB tmpfs fills up under a large reply; freeing space resumes the channel."""
    disk = Path(tempfile.mkdtemp(prefix="qmprr-full-"))
    if not _mount_tmpfs(disk, "64k"):
        os.rmdir(disk)
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        log = disk / "rec.jsonl"
        async with channel_to_qemu(tmp_path, log=log, log_wait_timeout=60) as (_qemu, ch):
            filler = disk / "filler"
            with open(filler, "wb") as f:  # leave ~16 KiB
                f.write(b"\0" * (64 * 1024 - 16 * 1024 - log.stat().st_size))
            with pytest.raises(ReplyNotRecorded, match="disk full|No space left on device"):
                await ch.execute({"execute": "query-qmp-schema"})  # ~100+ KiB of reply
            waiting = asyncio.create_task(ch.execute({"execute": "query-name"}, src="waiting"))
            filler.unlink()
            assert await asyncio.wait_for(waiting, 20) == {"return": {}}
        assert verify_recording(log).ok
        records = read_log(log)
        [resumed] = [r for r in records if isinstance(r, Note) and "writable again" in r.text]
        assert resumed.data["lost"] == {"reply": 1}
    finally:
        subprocess.run(["umount", str(disk)], check=False)
        with contextlib.suppress(OSError):
            os.rmdir(disk)


async def test_fds_are_passed_with_their_command(tmp_path: Path) -> None:
    async with channel_to_qemu(tmp_path) as (_qemu, ch):
        r, w = os.pipe()
        try:
            for name in ("a", "b"):  # back to back, each with its own fd
                assert await ch.execute({"execute": "getfd", "arguments": {"fdname": name}}, fds=[r]) == {"return": {}}
            assert await ch.execute({"execute": "closefd", "arguments": {"fdname": "b"}}) == {"return": {}}
            missing = await ch.execute({"execute": "getfd", "arguments": {"fdname": "c"}})
            assert "error" in missing  # no fd attached: QEMU says so
        finally:
            os.close(r)
            os.close(w)
    assert verify_recording(tmp_path / "rec.jsonl").ok


def _fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as f:
        for size in (4096, 512, 64, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)


def test_sigterm_quits_qemu_cleanly_while_the_disk_is_full() -> None:
    """``qmprr launch`` on a full disk: a reply is withheld, and SIGTERM still quits QEMU (status 0)."""
    disk = Path(tempfile.mkdtemp(prefix="qmprr-full-"))
    if not _mount_tmpfs(disk, "128k"):
        os.rmdir(disk)
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with support.qmprr_launch(disk) as launched, QmpClient(launched.socket, timeout=20) as client:
            assert client.execute("query-name")["return"] == {}
            with open(disk / "filler", "wb") as f:  # the disk is full but for a few KiB
                f.write(b"\0" * (128 * 1024 - 8 * 1024 - launched.record.stat().st_size))
            withheld = client.execute("query-qmp-schema")
            assert "DID run" in withheld["error"]["desc"], withheld
            _fill(disk / "filler-2")  # what is left is the slack in the log's last page
            for _ in range(100):
                refused = client.execute("query-status")
                if "error" in refused:
                    break
            assert "could not be recorded" in refused["error"]["desc"] or "command not sent" in refused["error"]["desc"]
            assert launched.stop() == 0, launched.proc.stderr.read().decode()[-2000:]
        report = verify_recording(launched.record)
        assert report.ok, [str(p) for p in report.problems]  # the log kept what it had
    finally:
        subprocess.run(["umount", str(disk)], check=False)
        shutil.rmtree(disk, ignore_errors=True)


async def test_a_caller_that_gives_up_while_waiting_withdraws_its_command(tmp_path: Path) -> None:
    async with channel_to_qemu(tmp_path) as (_qemu, ch):
        async with ch.transaction("hold"):
            waiter = asyncio.create_task(ch.execute({"execute": "query-status"}, src="impatient", client_id=9))
            await until(lambda: bool(ch.core.waiting()), "the waiter to queue")
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert ch.core.waiting() == []
        assert await ch.execute({"execute": "query-name"}) == {"return": {}}
    records = read_log(tmp_path / "rec.jsonl")
    [note] = [r for r in records if isinstance(r, Note) and "withdrawn" in r.text]
    assert note.data == {"src": "impatient", "command": "query-status", "client_id": 9}
    assert not [r for r in records if isinstance(r, Command) and r.src == "impatient"]
