"""Hostile clients against the serve loop's bounds, through a real QEMU (-machine none).

Each test is built so that it fails when the defence is removed: a client that
never reads would grow the proxy's memory and log without end, a connection
flood would be served, a garbage burst would be logged item by item, a debug
client's 4 MiB argument would reach QEMU, a leaving client's queued command
would still run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import support
from qmprr import wire
from qmprr.recording import Client, Command, Local, Note, read_records, verify
from qmprr.server import Limits

pytestmark = pytest.mark.qemu

TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def proxy(tmp_path: Path, tx_idle_timeout: float = 30.0, **limits: Any) -> AsyncIterator[support.Proxy]:
    """QEMU -machine none + Channel + QmpServer (primary and debug sockets), in this loop."""
    with support.qemu_with_qmp(tmp_path) as (_proc, qemu_sock):
        async with support.proxy_for(qemu_sock, tmp_path, sockets=("p.sock", "d.sock"),
                                     tx_idle_timeout=tx_idle_timeout, limits=Limits(**limits)) as p:
            yield p


def records_of(path: Path) -> list[Any]:
    report = verify(path)
    assert report.ok, [str(p) for p in report.problems]
    return list(read_records(path))


class Raw:
    """An asyncio QMP client that sends raw bytes and reads replies when told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = wire.StreamDecoder()
        self.pending: list[Any] = []

    @classmethod
    async def connect(cls, path: str, negotiate: bool = True) -> Raw:
        reader, writer = await asyncio.open_unix_connection(path)
        raw = cls(reader, writer)
        assert "QMP" in await raw.receive()
        if negotiate:
            assert await raw.execute("qmp_capabilities", id="neg") == {"return": {}, "id": "neg"}
        return raw

    async def receive(self) -> Any:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            if not data:
                raise EOFError("the server closed the connection")
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    async def reply(self, cid: Any) -> dict[str, Any]:
        """The reply with id *cid* (events and other replies before it are dropped)."""
        while True:
            msg = await self.receive()
            if isinstance(msg, dict) and msg.get("id") == cid:
                return msg

    def send(self, command: str, arguments: dict[str, Any] | None = None, id: Any = None) -> None:
        msg: dict[str, Any] = {"execute": command, "id": id}
        if arguments is not None:
            msg["arguments"] = arguments
        self.writer.write(wire.encode(msg))

    async def execute(self, command: str, arguments: dict[str, Any] | None = None, id: Any = 1) -> dict[str, Any]:
        self.send(command, arguments, id)
        return await self.reply(id)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def wait_for_record(path: Path, predicate: Any) -> Any:
    for _ in range(int(TIMEOUT / 0.02)):
        for r in read_records(path):
            if predicate(r):
                return r
        await asyncio.sleep(0.02)
    raise AssertionError("record never appeared")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- a client that never reads ---------------------------------------------------------


def test_a_client_that_never_reads_is_disconnected_and_memory_and_log_stay_bounded(tmp_path: Path) -> None:
    """``qmprr launch`` with a 1 MiB output budget; a client sends commands and garbage, never reads."""
    with support.qmprr_launch(tmp_path, None, "--client-output-budget", "1M") as launched:
        support.wait_for_socket(launched.socket)
        pid = launched.proc.pid
        good = socket.socket(socket.AF_UNIX)
        good.connect(launched.socket)
        good.settimeout(TIMEOUT)
        good_file = good.makefile("rwb")
        assert b"QMP" in good_file.readline()
        good_file.write(b'{"execute":"qmp_capabilities"}\n')
        good_file.flush()
        assert good_file.readline().strip() == b"{\"return\":{}}"
        before = rss_kib(pid)

        bad = socket.socket(socket.AF_UNIX)
        bad.connect(launched.socket)
        bad.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it never reads anyway
        bad.sendall(b'{"execute":"qmp_capabilities"}\n')
        # Big replies (the QMP schema) and many small ones (garbage), 8 MiB of input at most.
        chunk = b'{"execute":"query-qmp-schema"}\n' + b"x\n" * 2000
        sent = 0
        bad.settimeout(TIMEOUT)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 8 * 1024 * 1024:
                bad.sendall(chunk)
                sent += len(chunk)
        assert sent < 8 * 1024 * 1024, "the proxy kept reading from a client that never reads"
        grown = rss_kib(pid) - before
        # The good client still gets answers.
        good_file.write(b'{"execute":"query-name","id":"after"}\n')
        good_file.flush()
        line = good_file.readline()
        while b'"after"' not in line:
            line = good_file.readline()
        assert line.strip() == b"{\"return\":{},\"id\":\"after\"}"
        bad.close()
        good.close()
        assert launched.stop() == 0
    records = records_of(launched.record)
    (left,) = [r for r in records if isinstance(r, Client) and r.action == "disconnect" and r.name == "primary-2"]
    assert left.reason and "does not read" in left.reason and "--client-output-budget" in left.reason
    schema = [r for r in records if isinstance(r, Command) and r.src == "primary-2"]
    assert 1 <= len(schema) < 200  # each ~100 KiB reply counts against its 1 MiB
    assert os.path.getsize(launched.record) < 30 * 1024 * 1024
    assert grown < 48 * 1024, f"proxy RSS grew by {grown} KiB"


# -- connection cap ----------------------------------------------------------------------


async def test_connections_over_the_cap_are_refused_with_an_error_and_a_record(tmp_path: Path) -> None:
    async with proxy(tmp_path) as p:  # the default cap: 64
        accepted: list[Raw] = []
        refused: list[dict[str, Any]] = []
        for _ in range(100):
            reader, writer = await asyncio.open_unix_connection(p.socket)
            raw = Raw(reader, writer)
            first = await raw.receive()
            if "QMP" in first:
                accepted.append(raw)
            else:
                refused.append(first)
                with pytest.raises(EOFError):
                    await raw.receive()
                await raw.close()
        assert len(accepted) == 64 and len(refused) == 36
        assert all("too many clients" in r["error"]["desc"] and "--max-clients" in r["error"]["desc"] for r in refused)
        # The debug socket has its own cap; and once a client leaves, a new one gets in.
        debug = await Raw.connect(p.debug_socket)
        await accepted.pop().close()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if p.server._clients and len([c for c in p.server._clients if c.role == "primary"]) < 64:
                break
        newcomer = await Raw.connect(p.socket)
        assert await newcomer.execute("query-name", id="in") == {"return": {}, "id": "in"}
        for raw in [*accepted, debug, newcomer]:
            await raw.close()
    records = records_of(p.record)
    connects = [r for r in records if isinstance(r, Client) and r.action == "connect" and r.role == "primary"]
    refusals = [r for r in records if isinstance(r, Client) and r.action == "refuse"]
    counted = [r.data["refused"] for r in records if isinstance(r, Note) and r.data and "refused" in r.data]
    assert len(connects) == 65
    # One record for the burst of refusals, and a note with the rest of its count.
    assert len(refusals) == 1 and "too many clients" in (refusals[0].reason or "")
    assert len(refusals) + sum(counted) == 36


# -- garbage bursts ------------------------------------------------------------------------


async def test_a_garbage_burst_is_one_record_and_a_count(tmp_path: Path) -> None:
    async with proxy(tmp_path) as p:
        raw = await Raw.connect(p.socket)
        for burst in range(2):
            raw.writer.write(b"x " * 5000 + b"}" * 3000)
            assert await raw.execute("query-name", id=burst) == {"return": {}, "id": burst}
        await raw.close()
    records = records_of(p.record)
    garbage = [r for r in records if isinstance(r, Local) and r.src == "primary-1" and r.msg is None]
    notes = [r for r in records if isinstance(r, Note) and r.data and r.data.get("client") == "primary-1"]
    assert len(garbage) == 2 and len(notes) == 2  # O(1) per burst, not 8000
    assert all(n.data["count"] == 7999 == sum(n.data["errors"].values()) for n in notes), [n.data for n in notes]
    assert os.path.getsize(p.record) < 64 * 1024


# -- a debug client's big argument ------------------------------------------------------------


async def test_a_debug_clients_4_mib_argument_is_refused_locally_and_never_reaches_qemu(tmp_path: Path) -> None:
    async with proxy(tmp_path) as p:  # default debug limit: 16 KiB
        debug = await Raw.connect(p.debug_socket)
        primary = await Raw.connect(p.socket)
        # Half of a 4 MiB command: already far over the limit, refused before it ends.
        head = b'{"execute": "query-status", "id": "big", "arguments": {"a": ['
        body = b"0," * (2 * 1024 * 1024)
        debug.writer.write(head + body[: len(body) // 2])
        await debug.writer.drain()
        refusal = await debug.receive()
        assert "error" in refusal and "id" not in refusal
        assert "--debug-max-message" in refusal["error"]["desc"]
        # Meanwhile (the debug message still unfinished) the wire is free for the primary client.
        assert await primary.execute("query-name", id="prompt") == {"return": {}, "id": "prompt"}
        debug.writer.write(body[len(body) // 2 :] + b'{"execute":"quit"}]}}')
        assert await debug.execute("query-status", id="small") == {
            "return": {"status": "running", "singlestep": False, "running": True}, "id": "small"}
        await debug.close()
        await primary.close()
    records = records_of(p.record)
    debug_commands = [r for r in records if isinstance(r, Command) and r.src == "debug-1"]
    assert [c.client_id for c in debug_commands] == ["small"]  # neither the 4 MiB one nor its quit
    (local,) = [r for r in records if isinstance(r, Local) and r.src == "debug-1" and r.msg is None]
    assert "--debug-max-message" in local.reply["error"]["desc"]
    assert os.path.getsize(p.record) < 64 * 1024  # the argument is not in the log either


# -- withdrawal of queued commands ------------------------------------------------------------


async def test_a_leaving_clients_queued_command_is_withdrawn(tmp_path: Path) -> None:
    async with proxy(tmp_path) as p:
        owner = await Raw.connect(p.socket)
        begin = await owner.execute("qmprr-transaction-begin", {"label": "hold"}, id="b")
        assert begin == {"return": {"tx": 1}, "id": "b"}
        leaver = await Raw.connect(p.debug_socket)
        leaver.send("query-name", id="never")
        await leaver.writer.drain()
        await asyncio.sleep(0.1)  # the server has read it: it waits for the wire
        await leaver.close()
        note = await wait_for_record(p.record, lambda r: isinstance(r, Note) and "withdrawn" in r.text)
        assert await owner.execute("qmprr-transaction-end", id="e") == {"return": {"tx": 1}, "id": "e"}
        assert await owner.execute("query-name", id="after") == {"return": {}, "id": "after"}
        await owner.close()
    assert note.data == {"src": "debug-1", "command": "query-name", "client_id": "never"}
    records = records_of(p.record)
    assert not [r for r in records if isinstance(r, Command) and r.src == "debug-1"]


async def inject(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *support.QMPRR, "inject", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_inject_timeout_leaves_the_command_queued_or_withdraws_it(tmp_path: Path) -> None:
    async with proxy(tmp_path) as p:
        owner = await Raw.connect(p.socket)
        assert await owner.execute("qmprr-transaction-begin", {"label": "hold"}, id="b") == {
            "return": {"tx": 1}, "id": "b"}
        status, err = await inject(p.debug_socket, "--timeout", "0.3", '{"execute": "qom-list", "arguments": {"path": "/"}}')
        assert status == 2 and err.count("\n") == 1 and "may still run" in err, err
        status, err = await inject(p.debug_socket, "--timeout", "0.3", "--cancel-on-timeout", "query-name")
        assert status == 2 and err.count("\n") == 1 and "withdrawn if it had not reached QEMU" in err, err
        await wait_for_record(p.record, lambda r: isinstance(r, Note) and "withdrawn" in r.text)
        assert await owner.execute("qmprr-transaction-end", id="e") == {"return": {"tx": 1}, "id": "e"}
        # The detached command runs once the wire is free; its reply goes to the log.
        await wait_for_record(p.record, lambda r: isinstance(r, Command) and r.src == "debug-1")
        await owner.close()
    records = records_of(p.record)
    ran = [r.msg["execute"] for r in records if isinstance(r, Command) and r.src.startswith("debug")]
    assert ran == ["qom-list"]  # the withdrawn query-name never reached QEMU
    (withdrawn,) = [r for r in records if isinstance(r, Note) and "withdrawn" in r.text]
    assert withdrawn.data == {"src": "debug-2", "command": "query-name", "client_id": "inject-2"}
    detach = [r for r in records if isinstance(r, Local) and r.msg and r.msg.get("execute") == "qmprr-detach"]
    assert [r.src for r in detach] == ["debug-1"]


# -- every refusal is a record ---------------------------------------------------------------


async def test_every_answer_qmprr_gives_itself_is_a_record(tmp_path: Path) -> None:
    async with proxy(tmp_path, tx_idle_timeout=0.2) as p:
        owner = await Raw.connect(p.socket)
        assert await owner.execute("qmprr-transaction-begin", {"label": "idle"}, id="b") == {
            "return": {"tx": 1}, "id": "b"}
        twice = await owner.execute("qmprr-transaction-begin", {"label": "again"}, id="b2")
        await wait_for_record(p.record, lambda r: getattr(r, "kind", None) == "tx" and r.action == "abort")
        over = await owner.execute("query-name", id="over")  # the transaction is over: refused
        end = await owner.execute("qmprr-transaction-end", id="e")
        none_open = await owner.execute("qmprr-transaction-end", id="e2")
        debug = await Raw.connect(p.debug_socket)
        quit_refused = await debug.execute("quit", id="q")
        await owner.close()
        await debug.close()
    told = {m["id"]: m for m in (twice, over, end, none_open, quit_refused)}
    assert all("error" in m for m in told.values()), told
    records = records_of(p.record)
    local = {r.msg.get("id"): dict(r.reply) for r in records if isinstance(r, Local) and r.msg}
    for cid, reply in told.items():
        assert local.get(cid) == reply, (cid, reply)
    assert local["neg"] == {"return": {}, "id": "neg"}  # negotiation too
