"""Real QMP clients, unmodified, through the proxy to a real QEMU.

Each test runs the proxy (in-process: Channel + QmpServer, or ``qmprr launch``
as a subprocess) in front of a real ``qemu-system-x86_64`` and drives it with a
client written for QEMU itself: qemu.qmp's async ``QMPClient``, its legacy
``QEMUMonitorProtocol``, the ``qmp-shell`` program, and raw sockets. Afterwards
the recording is checked: it verifies, every command carries the right
``src``/``role``, and the client's own ids came back to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

import support
from qmprr import wire
from qmprr.recording import (
    ABSENT,
    Client,
    Close,
    Command,
    Event,
    Greeting,
    Local,
    Record,
    Reply,
    Taint,
    read_records,
    verify,
)

pytestmark = pytest.mark.qemu

QMP_SHELL = Path(sys.executable).parent / "qmp-shell"
TIMEOUT = 10.0


# -- helpers ---------------------------------------------------------------------


def load(path: Path | str) -> list[Record]:
    """The records of a finished recording, after checking it verifies clean."""
    report = verify(path)
    assert report.ok, [str(p) for p in report.problems]
    assert report.torn is None
    assert not report.in_flight, report.in_flight
    return list(read_records(path))


def commands(records: list[Record], src: str | None = None) -> list[Command]:
    return [r for r in records if isinstance(r, Command) and (src is None or r.src == src)]


def reply_to(records: list[Record], command: Command) -> Reply:
    (reply,) = [r for r in records if isinstance(r, Reply) and r.cmd == command.seq]
    assert reply.msg.get("id") == command.msg["id"]  # QEMU answered the wire id
    return reply


def check_channel_records(records: list[Record]) -> None:
    """What every recording must hold: one negotiation, unique wire ids, a close at the end."""
    cmds = commands(records)
    assert cmds[0].src == "qmprr" and cmds[0].role == "internal"
    assert cmds[0].msg["execute"] == "qmp_capabilities"
    wire_ids = [c.msg["id"] for c in cmds]
    assert len(set(wire_ids)) == len(wire_ids), "wire ids must be unique on the channel"
    assert all(isinstance(i, str) and i.startswith("qmprr-") for i in wire_ids)
    for c in cmds:
        assert c.role in ("primary", "debug", "internal")
        assert c.role == ("internal" if c.src == "qmprr" else c.src.rsplit("-", 1)[0])
        reply_to(records, c)
    assert isinstance(records[-1], Close)


def client_names(records: list[Record], action: str = "connect") -> list[str]:
    return [r.name for r in records if isinstance(r, Client) and r.action == action]


def events(records: list[Record]) -> list[str]:
    return [r.msg["event"] for r in records if isinstance(r, Event)]


Proxy = support.Proxy


@contextlib.asynccontextmanager
async def proxy_for(qemu_sock: str, qemu: subprocess.Popen, tmp_path: Path) -> AsyncIterator[Proxy]:
    """Channel.open_unix to QEMU's QMP socket + QmpServer on two sockets, in this event loop."""
    async with support.proxy_for(qemu_sock, tmp_path, qemu=qemu,
                                 record=tmp_path / f"inproc-{time.monotonic_ns()}.jsonl") as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def inprocess_proxy(tmp_path: Path, argv: list[str] | None = None) -> AsyncIterator[Proxy]:
    """A QEMU of its own (support.qemu_with_qmp) behind an in-process proxy."""
    with support.qemu_with_qmp(tmp_path, argv) as (proc, qsock):
        async with proxy_for(qsock, proc, tmp_path) as proxy:
            yield proxy


class RawClient:
    """A blocking raw-socket QMP client that sends exactly the bytes it is given."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.decoder = wire.StreamDecoder()
        self.pending: list[Any] = []
        self.events: list[dict[str, Any]] = []
        self.greeting = self.receive()

    def send(self, data: bytes, *, chunk: int | None = None) -> None:
        if chunk is None:
            self.sock.sendall(data)
            return
        for i in range(0, len(data), chunk):
            self.sock.sendall(data[i : i + chunk])
            time.sleep(0.0002)  # let the proxy see the pieces one by one

    def receive(self) -> dict[str, Any]:
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            for item in self.decoder.feed(data):
                assert not isinstance(item, wire.FramingError), item
                self.pending.append(item)
        return self.pending.pop(0)

    def replies(self, n: int) -> list[dict[str, Any]]:
        out = []
        while len(out) < n:
            msg = self.receive()
            if "event" in msg:
                self.events.append(msg)
            else:
                out.append(msg)
        return out

    def nothing_more(self, wait: float = 0.2) -> bool:
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return not self.pending
        finally:
            self.sock.settimeout(TIMEOUT)
        return not data and not self.pending

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[support.Launched]:
    """``qmprr launch`` (subprocess) in front of a paused q35 QEMU."""
    with support.qmprr_launch(tmp_path, support.QEMU_Q35) as launched:
        yield launched


def stop(launched: support.Launched) -> list[Record]:
    assert launched.stop() == 0
    return load(launched.record)


# -- (a) qemu.qmp's asyncio QMPClient --------------------------------------------------


async def test_qemu_qmp_client(tmp_path: Path) -> None:
    async with inprocess_proxy(tmp_path, support.QEMU_Q35) as proxy:
        qmp = QMPClient("qmprr-test")
        await qmp.connect(proxy.socket)
        try:
            assert qmp.greeting is not None
            assert qmp.greeting.QMP.version["qemu"]["major"] == 7
            # No oob offered: every command is serialized, so the client must not negotiate it.
            assert qmp.greeting.QMP.capabilities == []
            status = await qmp.execute("query-status")
            assert status == {"status": "prelaunch", "singlestep": False, "running": False}
            machine = await qmp.execute("qom-get", {"path": "/machine", "property": "type"})
            assert isinstance(machine, str) and machine.startswith("pc-q35-")
            text = await qmp.execute("human-monitor-command", {"command-line": "info status"})
            assert text == "VM status: paused (prelaunch)\r\n"

            with pytest.raises(ExecuteError) as err:
                await qmp.execute("no-such-command")
            assert err.value.error_class == "CommandNotFound"
            assert str(err.value) == "The command no-such-command has not been found"
            with pytest.raises(ExecuteError) as err:
                await qmp.execute("qom-get", {"path": "/machine"})
            assert err.value.error_class == "GenericError"
            assert str(err.value) == "Parameter 'property' is missing"
            # Out-of-band execution is refused cleanly, with QEMU's text for a
            # client that did not negotiate oob.
            with pytest.raises(ExecuteError) as err:
                await qmp.execute("query-status", oob=True)
            assert str(err.value) == "QMP input member 'exec-oob' is unexpected"

            # Events: cont -> RESUME, stop -> STOP, each delivered to the listener.
            qmp.events.clear()
            assert await qmp.execute("cont") == {}
            resume = await asyncio.wait_for(qmp.events.get(), TIMEOUT)
            assert resume["event"] == "RESUME"
            assert (await qmp.execute("query-status"))["status"] == "running"
            assert await qmp.execute("stop") == {}
            stopped = await asyncio.wait_for(qmp.events.get(), TIMEOUT)
            assert stopped["event"] == "STOP"

            # Many commands in flight at once: each reply finds its caller.
            names = ["query-status", "query-name", "query-kvm", "query-version"] * 5
            results = await asyncio.gather(*(qmp.execute(n) for n in names))
            for name, result in zip(names, results, strict=True):
                assert {
                    "query-status": lambda r: r["status"] == "paused",
                    "query-name": lambda r: r == {},
                    "query-kvm": lambda r: set(r) == {"enabled", "present"},
                    "query-version": lambda r: r["qemu"]["major"] == 7,
                }[name](result), (name, result)
        finally:
            await qmp.disconnect()
        await asyncio.to_thread(support.wait_until, lambda: support.logged_disconnect(proxy.record, "primary-1"), "the disconnect record")
    records = load(proxy.record)
    check_channel_records(records)
    assert client_names(records) == ["primary-1"] and client_names(records, "disconnect") == ["primary-1"]
    mine = commands(records, "primary-1")
    assert mine and all(c.role == "primary" for c in mine)
    # qemu.qmp's own ids (__qmp#NNNNN) are what the recording remembers it sent.
    assert all(isinstance(c.client_id, str) and c.client_id.startswith("__qmp#") for c in mine)
    assert len({c.client_id for c in mine}) == len(mine)
    assert [c.msg["execute"] for c in mine][:3] == ["query-status", "qom-get", "human-monitor-command"]
    assert "RESUME" in events(records) and "STOP" in events(records)
    # QEMU's own greeting (with oob) is what the recording keeps.
    (greeting,) = [r for r in records if isinstance(r, Greeting)]
    assert greeting.msg["QMP"]["capabilities"] == ["oob"]
    # Negotiation (without oob) and the oob refusal were answered locally.
    local = [r for r in records if isinstance(r, Local)]
    assert local[0].msg["execute"] == "qmp_capabilities"
    assert "oob" not in (local[0].msg.get("arguments") or {}).get("enable", [])
    assert local[0].reply == {"return": {}}
    assert any(r.msg is not None and "exec-oob" in r.msg for r in local)
    assert not any(isinstance(r, Taint) for r in records)


# -- (b) qemu.qmp.legacy.QEMUMonitorProtocol ----------------------------------------------


def test_legacy_qemu_monitor_protocol(launched: support.Launched) -> None:
    mon = QEMUMonitorProtocol(launched.socket)
    greeting = mon.connect(negotiate=True)
    assert greeting is not None and greeting["QMP"]["version"]["qemu"]["major"] == 7
    assert mon.cmd("query-status")["status"] == "prelaunch"
    assert mon.cmd("qom-get", path="/machine", property="type").startswith("pc-q35-")
    with pytest.raises(ExecuteError):
        mon.cmd("no-such-command")
    assert mon.cmd_obj({"execute": "query-name", "id": "legacy-7"}) == {"return": {}, "id": "legacy-7"}
    assert mon.cmd_obj({"execute": "query-name"}) == {"return": {}}  # no id given, none returned
    reply = mon.cmd_obj({"execute": "no-such-command", "id": "legacy-8"})
    assert reply == {
        "error": {"class": "CommandNotFound", "desc": "The command no-such-command has not been found"},
        "id": "legacy-8",
    }
    hmp = mon.cmd_obj({"execute": "human-monitor-command", "arguments": {"command-line": "info status"}, "id": "h"})
    assert hmp == {"return": "VM status: paused (prelaunch)\r\n", "id": "h"}
    mon.cmd("cont")
    got = mon.get_events(wait=TIMEOUT)
    assert [e["event"] for e in got] == ["RESUME"]
    mon.close()

    records = stop(launched)
    check_channel_records(records)
    mine = commands(records, "primary-1")
    assert all(c.role == "primary" for c in mine)
    by_name = [(c.msg["execute"], c.client_id) for c in mine]
    assert ("query-name", "legacy-7") in by_name
    assert ("query-name", ABSENT) in by_name
    assert ("no-such-command", "legacy-8") in by_name
    assert ("human-monitor-command", "h") in by_name
    assert by_name[0][0] == "query-status" and by_name[0][1].startswith("__qmp#")
    # The internal quit at SIGTERM, and its SHUTDOWN, close the recording.
    assert commands(records)[-1].src == "qmprr" and commands(records)[-1].msg["execute"] == "quit"
    assert "SHUTDOWN" in events(records)


# -- (c) the qmp-shell program -----------------------------------------------------------------


def run_shell(args: list[str], stdin: str, home: Path) -> subprocess.CompletedProcess[str]:
    assert QMP_SHELL.exists(), f"{QMP_SHELL} missing (qemu.qmp installs it)"
    env = {**os.environ, "HOME": str(home)}  # it keeps a history file there
    return subprocess.run(
        [str(QMP_SHELL), *args], input=stdin, capture_output=True, text=True, env=env, timeout=30
    )


def shell_outputs(stdout: str) -> list[str]:
    """What followed each prompt, as a list (the banner and the final EOF newline dropped)."""
    head, *rest = stdout.split("(QEMU) ")
    assert head.startswith("Welcome to the ") and "Connected to QEMU 7." in head
    return [r.rstrip("\n") for r in rest]


def test_qmp_shell(launched: support.Launched, tmp_path: Path) -> None:
    result = run_shell(
        [launched.socket],
        "query-status\nquery-name\nqom-get path=/machine property=type\nno-such-command\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = shell_outputs(result.stdout)
    assert out[-1] == ""  # EOF at the last prompt
    replies = [json.loads(line) for line in out[:-1]]
    assert replies == [
        {"return": {"status": "prelaunch", "singlestep": False, "running": False}},
        {"return": {}},
        {"return": replies[2]["return"]},
        {"error": {"class": "CommandNotFound", "desc": "The command no-such-command has not been found"}},
    ]
    assert replies[2]["return"].startswith("pc-q35-")

    records = stop(launched)
    check_channel_records(records)
    mine = commands(records, "primary-1")
    assert all(c.role == "primary" for c in mine)
    names = [c.msg["execute"] for c in mine]
    # query-commands fills its completion (qemu.qmp id); the typed commands carry no id.
    assert names == ["query-commands", "query-status", "query-name", "qom-get", "no-such-command"]
    assert mine[0].client_id.startswith("__qmp#")
    assert all(c.client_id is ABSENT for c in mine[1:])
    assert client_names(records, "disconnect") == ["primary-1"]


def test_qmp_shell_hmp_mode(launched: support.Launched, tmp_path: Path) -> None:
    result = run_shell(["-H", launched.socket], "info status\ninfo version\nno-such-hmp\n", tmp_path)
    assert result.returncode == 0, result.stderr
    out = shell_outputs(result.stdout)
    assert out[0].startswith("VM status: paused (prelaunch)")
    assert out[1].startswith("7.2.")
    assert out[2].startswith("unknown command: 'no-such-hmp'")

    records = stop(launched)
    check_channel_records(records)
    mine = commands(records, "primary-1")
    # HMP passes through as human-monitor-command, exactly as the shell sent it.
    assert {c.msg["execute"] for c in mine} == {"human-monitor-command"}
    lines = [c.msg["arguments"]["command-line"] for c in mine]
    assert lines[-3:] == ["info status", "info version", "no-such-hmp"]
    status = mine[-3]
    assert status.msg["arguments"] == {"command-line": "info status", "cpu-index": 0}
    assert reply_to(records, status).msg["return"] == "VM status: paused (prelaunch)\r\n"


# -- (d) raw socket: no newlines, 1-byte writes -----------------------------------------------


def test_raw_client_without_newlines_in_one_byte_writes(launched: support.Launched) -> None:
    ids: list[Any] = ["neg", 1, None, {"a": [1, None]}, [], "", 2.5, "last"]
    msgs = [
        {"execute": "qmp_capabilities", "id": ids[0]},
        {"execute": "query-status", "id": ids[1]},
        {"execute": "query-name", "id": ids[2]},
        {"execute": "human-monitor-command", "arguments": {"command-line": "info status"}, "id": ids[3]},
        {"execute": "no-such-command", "id": ids[4]},
        {"execute": "qom-get", "arguments": {"path": "/machine", "property": "type"}, "id": ids[5]},
        {"execute": "query-kvm", "id": ids[6]},
        {"execute": "query-name", "id": ids[7]},
    ]
    client = RawClient(launched.socket)
    assert "QMP" in client.greeting
    data = b"".join(json.dumps(m, separators=(",", ":")).encode() for m in msgs)
    assert b"\n" not in data
    client.send(data, chunk=1)
    replies = client.replies(len(msgs))
    assert [r["id"] for r in replies] == ids
    assert [type(r["id"]) for r in replies] == [type(i) for i in ids]
    assert replies[0]["return"] == {}
    assert replies[1]["return"]["status"] == "prelaunch"
    assert replies[2]["return"] == {}
    assert replies[3]["return"] == "VM status: paused (prelaunch)\r\n"
    assert replies[4]["error"]["class"] == "CommandNotFound"
    assert replies[5]["return"].startswith("pc-q35-")
    assert set(replies[6]["return"]) == {"enabled", "present"}
    # A command with no id gets a reply with no id, even split byte by byte.
    client.send(b'{"execute":"query-name"}', chunk=1)
    assert client.replies(1) == [{"return": {}}]
    assert client.nothing_more()
    client.close()

    # A debug client, same raw style: recorded with role debug, and it taints.
    debug = RawClient(launched.debug_socket)
    debug.send(b'{"execute":"qmp_capabilities"}{"execute":"query-status","id":"d1"}', chunk=1)
    assert debug.replies(2)[1]["id"] == "d1"
    debug.close()
    support.wait_until(lambda: support.logged_disconnect(launched.record, "debug-1"), "the debug client's disconnect record")

    records = stop(launched)
    check_channel_records(records)
    mine = commands(records, "primary-1")
    assert [c.client_id for c in mine] == ids[1:] + [ABSENT]
    assert all(c.role == "primary" for c in mine)
    assert [c.msg["execute"] for c in mine] == [m["execute"] for m in msgs[1:]] + ["query-name"]
    (dbg,) = commands(records, "debug-1")
    assert dbg.role == "debug" and dbg.client_id == "d1"
    taints = [r for r in records if isinstance(r, Taint)]
    assert [(t.reason, t.client) for t in taints] == [("custom-monitor", "debug-1")]
    negotiation = [r for r in records if isinstance(r, Local) and r.src == "primary-1"]
    assert negotiation[0].msg == msgs[0] and negotiation[0].reply == {"return": {}, "id": "neg"}


# -- two clients, same ids, at the same time --------------------------------------------------


async def test_two_clients_with_the_same_ids_never_see_each_others_replies(launched: support.Launched) -> None:
    ids: list[Any] = [*range(1, 41), "x", None, {"o": 1}]

    def command(who: str, i: int) -> dict[str, Any]:
        if i % 3 == 0:
            return {"execute": "query-status" if who == "a" else "query-name"}
        return {"execute": f"{who}-cmd-{i}"}

    def expected(who: str, i: int, reply: dict[str, Any]) -> bool:
        if i % 3 == 0:
            if who == "a":
                return reply.get("return", {}).get("status") == "prelaunch"
            return reply.get("return") == {}
        return reply.get("error", {}).get("desc") == f"The command {who}-cmd-{i} has not been found"

    async def client(who: str, start: asyncio.Event) -> list[dict[str, Any]]:
        reader, writer = await asyncio.open_unix_connection(launched.socket)
        decoder = wire.StreamDecoder()
        pending: list[Any] = []

        async def receive() -> dict[str, Any]:
            while not pending:
                data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
                assert data
                pending.extend(decoder.feed(data))
            return pending.pop(0)

        assert "QMP" in await receive()
        writer.write(b'{"execute":"qmp_capabilities","id":1}')
        assert await receive() == {"return": {}, "id": 1}
        await start.wait()
        for n, cid in enumerate(ids):
            msg = {**command(who, n), "id": cid}
            writer.write(wire.encode(msg))
            if n % 4 == 0:
                await writer.drain()
                await asyncio.sleep(0)
        await writer.drain()
        out = []
        while len(out) < len(ids):
            msg = await receive()
            if "event" not in msg:
                out.append(msg)
        with pytest.raises(TimeoutError):  # and nothing else for us
            await asyncio.wait_for(reader.read(65536), 0.2)
        writer.close()
        return out

    start = asyncio.Event()
    tasks = [asyncio.create_task(client(w, start)) for w in "ab"]
    await asyncio.sleep(0.2)  # the clients connect and wait for start (not observable)
    start.set()
    a, b = await asyncio.gather(*tasks)
    for who, replies in (("a", a), ("b", b)):
        assert [r["id"] for r in replies] == ids
        for n, reply in enumerate(replies):
            assert expected(who, n, reply), (who, n, reply)

    await asyncio.to_thread(
        support.wait_until, lambda: support.logged_disconnect(launched.record, "primary-1", "primary-2"), "the disconnect records"
    )
    records = await asyncio.to_thread(stop, launched)
    check_channel_records(records)
    for name in ("primary-1", "primary-2"):
        mine = commands(records, name)
        assert [c.client_id for c in mine] == ids
        whos = {c.msg["execute"][0] for c in mine if "-cmd-" in c.msg["execute"]}
        assert len(whos) == 1
    # Both clients' commands really were interleaved on the one channel.
    srcs = [c.src for c in commands(records) if c.src != "qmprr"]
    switches = sum(1 for x, y in zip(srcs, srcs[1:]) if x != y)
    assert switches >= 2, srcs


# -- the proxy's errors are QEMU's errors ------------------------------------------------------

SENTINEL = b'{"execute":"query-name","id":"sentinel"}'

ERROR_CASES = [
    # (case, negotiate first, input)
    ("pre-negotiation command", False, b'{"execute":"query-status","id":1}'),
    ("second qmp_capabilities", True, b'{"execute":"qmp_capabilities","id":2}'),
    ("unknown command", True, b'{"execute":"no-such-command","id":3}'),
    ("missing argument", True, b'{"execute":"human-monitor-command","id":4}'),
    ("parse error", True, b'{"execute": x}'),
    ("non-object", True, b"42"),
    ("non-object before negotiation", False, b"42"),
    ("unknown capability", False, b'{"execute":"qmp_capabilities","arguments":{"enable":["foo"]},"id":"x"}'),
    ("empty enable", False, b'{"execute":"qmp_capabilities","arguments":{"enable":[]},"id":"y"}'),
    ("unexpected parameter", False, b'{"execute":"qmp_capabilities","arguments":{"bogus":1}}'),
    ("arguments not an object", False, b'{"execute":"qmp_capabilities","arguments":[]}'),
    ("enable not an array", False, b'{"execute":"qmp_capabilities","arguments":{"enable":"oob"}}'),
    ("lacks execute after negotiation", True, b'{"id":6}'),
    ("array input", True, b"[1]"),
    ("string input", True, b'"query-status"'),
    ("exec-oob without oob negotiated", True, b'{"exec-oob":"query-status","id":7}'),
    ("extra member", True, b'{"execute":"query-name","extra":1,"id":8}'),
    # QEMU checks a request's shape before the negotiation state.
    ("lacks execute before negotiation", False, b'{"id":5}'),
    ("execute not a string before negotiation", False, b'{"execute":42,"id":9}'),
    ("extra member in qmp_capabilities", False, b'{"execute":"qmp_capabilities","extra":1}'),
    ("enable item not a string", False, b'{"execute":"qmp_capabilities","arguments":{"enable":[1]}}'),
    # After negotiation QEMU still parses qmp_capabilities' arguments before ignoring it.
    ("second qmp_capabilities, unknown capability", True,
     b'{"execute":"qmp_capabilities","arguments":{"enable":["foo"]},"id":10}'),
]


def summarize(msg: dict[str, Any]) -> tuple[Any, ...]:
    cid = msg.get("id", "<no id>")
    if "error" in msg:
        return ("error", msg["error"]["class"], msg["error"]["desc"], cid)
    return ("return", cid)


async def exchange(path: str, negotiate: bool, data: bytes) -> list[tuple[Any, ...]]:
    """Send *data* then a sentinel command; the summaries of every reply up to the sentinel's."""
    reader, writer = await asyncio.open_unix_connection(path)
    decoder = wire.StreamDecoder()
    pending: list[Any] = []

    async def receive() -> dict[str, Any]:
        while not pending:
            chunk = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            assert chunk, "connection closed"
            pending.extend(decoder.feed(chunk))
        return pending.pop(0)

    try:
        assert "QMP" in await receive()
        if negotiate:
            writer.write(b'{"execute":"qmp_capabilities","id":"neg"}\r\n')
            assert await receive() == {"return": {}, "id": "neg"}
        writer.write(data + b"\r\n" + SENTINEL + b"\r\n")
        out = []
        while True:
            msg = await receive()
            if "event" in msg:
                continue
            out.append(summarize(msg))
            if msg.get("id") == "sentinel":
                return out
    finally:
        writer.close()


@pytest.fixture(scope="module")
def qemu_two_monitors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, str, str]]:
    """One QEMU with two QMP monitors: one for the proxy, one to ask directly."""
    tmp = tmp_path_factory.mktemp("two-monitors")
    direct = str(tmp / "direct.sock")
    with support.qemu_with_qmp(tmp, [*support.QEMU_NONE, "-qmp", f"unix:{direct},server=on,wait=off"]) as (
        proc,
        for_proxy,
    ):
        support.wait_for_socket(direct, proc=proc)
        yield proc, for_proxy, direct


@pytest.mark.parametrize("case, negotiate, data", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
async def test_errors_match_qemu(
    qemu_two_monitors: tuple[subprocess.Popen, str, str], tmp_path: Path, case: str, negotiate: bool, data: bytes
) -> None:
    proc, for_proxy, direct = qemu_two_monitors
    from_qemu = await exchange(direct, negotiate, data)
    async with proxy_for(for_proxy, proc, tmp_path) as proxy:
        from_proxy = await exchange(proxy.socket, negotiate, data)
        await asyncio.sleep(0.05)
    assert from_qemu[-1][-1] == "sentinel"
    assert from_proxy == from_qemu
    records = load(proxy.record)
    check_channel_records(records)
