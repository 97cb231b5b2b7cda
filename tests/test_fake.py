"""The fake QEMU: matching modes, near-miss messages, events, the builder, real clients.

The matching is tested sans-IO through :meth:`FakeQemu.respond`; the wire
behaviour (greeting, negotiation, events before replies, ids) through
:meth:`FakeQemu.handle` over a socketpair; and ``qmprr fake`` as a
subprocess with unmodified clients: qemu.qmp's ``QMPClient``, its legacy
``QEMUMonitorProtocol``, ``qmp-shell`` fed on stdin, and a raw socket.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

from qmprr.fake import FakeQemu
from qmprr.replay.normalize import Normalizer, Rule
from test_replay_support import (
    PAUSED,
    RECORDINGS,
    RUNNING,
    RawClient,
    Step,
    event,
    fake_process,
    qmprr,
    write_recording,
)

LIFECYCLE = RECORDINGS / "lifecycle.jsonl"
HOTPLUG = RECORDINGS / "hotplug.jsonl"
QMP_SHELL = Path(sys.executable).parent / "qmp-shell"
LIFECYCLE_ORDER = ["query-status", "stop", "query-status", "cont", "system_reset", "query-status", "quit"]


def cmd(name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"execute": name}
    if arguments is not None:
        msg["arguments"] = arguments
    return msg


def desc(reply: dict[str, Any]) -> str:
    assert "error" in reply, reply
    assert reply["error"]["class"] == "GenericError"
    return reply["error"]["desc"]


# -- strict ------------------------------------------------------------------------


def test_strict_serves_the_recorded_sequence() -> None:
    fake = FakeQemu.from_recording(LIFECYCLE, mode="strict")
    replies = [fake.respond(cmd(name)) for name in LIFECYCLE_ORDER]
    assert [r.reply for r in replies] == [
        {"return": RUNNING}, {"return": {}}, {"return": PAUSED}, {"return": {}},
        {"return": {}}, {"return": RUNNING}, {"return": {}},
    ]
    # Events at their recorded positions: all four of these came before the reply.
    assert [[e["event"] for e in r.events_before] for r in replies] == [
        [], ["STOP"], [], ["RESUME"], ["RESET"], [], ["SHUTDOWN"]
    ]
    report = fake.report()
    assert report.ok("strict") and report.answered == 7 and not report.unused


def test_strict_out_of_order_says_what_was_expected() -> None:
    fake = FakeQemu.from_recording(LIFECYCLE, mode="strict")
    text = desc(fake.respond(cmd("stop")).reply)
    assert text == "qmprr fake: expected query-status next (recorded seq 6), got stop"
    # The script did not move: the expected command still works.
    assert fake.respond(cmd("query-status")).reply == {"return": RUNNING}
    report = fake.report()
    assert not report.ok("strict")
    assert [u.reason for u in report.unmatched] == [text.removeprefix("qmprr fake: ")]
    assert report.lines()[1] == "unmatched: stop: expected query-status next (recorded seq 6), got stop"


def test_strict_differing_arguments_are_named_field_by_field() -> None:
    fake = FakeQemu.from_recording(HOTPLUG, mode="strict")
    text = desc(fake.respond(cmd("device_add", {"driver": "usb-kbd", "id": "kbd1", "bus": "xhci.0", "x": 1})).reply)
    assert text.startswith("qmprr fake: expected device_add (recorded seq 6) with other arguments: ")
    assert "arguments.id: recorded 'kbd0', got 'kbd1'" in text
    assert "arguments.x not recorded (got 1)" in text
    text = desc(fake.respond(cmd("device_add", {"driver": "usb-kbd"})).reply)
    assert "arguments.id missing (recorded 'kbd0')" in text and "arguments.bus missing" in text


def test_strict_already_consumed_differs_from_never_recorded() -> None:
    fake = FakeQemu.from_recording(LIFECYCLE, mode="strict")
    fake.respond(cmd("query-status"))
    fake.respond(cmd("stop"))
    consumed = desc(fake.respond(cmd("stop")).reply)
    assert "stop was recorded, but its recorded answers are already consumed" in consumed
    never = desc(fake.respond(cmd("query-cpus-fast")).reply)
    assert "already consumed" not in never
    assert never == "qmprr fake: expected query-status next (recorded seq 11), got query-cpus-fast"


def test_strict_past_the_end_is_never_recorded() -> None:
    fake = FakeQemu.from_recording(LIFECYCLE, mode="strict")
    for name in LIFECYCLE_ORDER:
        fake.respond(cmd(name))
    assert desc(fake.respond(cmd("query-kvm")).reply) == (
        "qmprr fake: query-kvm was never recorded here (the recording has no more commands)"
    )


def test_strict_reports_unused_commands() -> None:
    fake = FakeQemu.from_recording(LIFECYCLE, mode="strict")
    fake.respond(cmd("query-status"))
    report = fake.report()
    assert not report.ok("strict")
    assert [e.seq for e in report.unused] == [8, 11, 13, 16, 19, 21]
    assert "unused: seq 8 stop from primary-1" in report.lines()


@pytest.mark.parametrize("name", ["hotplug.jsonl", "block.jsonl", "errors.jsonl", "inject-during-transaction.jsonl"])
def test_strict_fake_does_not_expect_qmprrs_own_commands(name: str) -> None:
    fake = FakeQemu.from_recording(RECORDINGS / name, mode="strict")
    for exchange in fake.script.exchanges:
        if exchange.role != "internal":  # what the recorded clients sent
            assert fake.respond(exchange.msg).reply == exchange.reply
    report = fake.report()
    assert report.ok("strict"), report.lines()


# -- ordered -----------------------------------------------------------------------


def test_ordered_allows_skipping_but_not_going_back() -> None:
    fake = FakeQemu.from_recording(LIFECYCLE, mode="ordered")
    assert fake.respond(cmd("stop")).reply == {"return": {}}  # query-status skipped
    assert fake.respond(cmd("cont")).reply == {"return": {}}  # the paused query-status skipped
    text = desc(fake.respond(cmd("stop")).reply)
    assert "already consumed" in text
    assert fake.respond(cmd("query-status")).reply == {"return": RUNNING}  # the one after system_reset (seq 19)
    report = fake.report()
    assert [e.seq for e in report.unused] == [6, 11, 16, 21]
    assert report.ok("ordered") is False  # one unmatched
    assert FakeQemu.from_recording(LIFECYCLE, mode="ordered").report().ok("ordered")  # unused alone is fine


# -- lenient and reuse ---------------------------------------------------------------


def test_lenient_matches_in_any_order_consuming_each_once() -> None:
    fake = FakeQemu.from_recording(LIFECYCLE, mode="lenient")
    assert fake.respond(cmd("cont")).events_before[0]["event"] == "RESUME"
    # query-status answers in recorded order: running, paused, running.
    assert [fake.respond(cmd("query-status")).reply["return"]["status"] for _ in range(3)] == [
        "running", "paused", "running"
    ]
    text = desc(fake.respond(cmd("query-status")).reply)
    assert text == (
        "qmprr fake: query-status was recorded, but its recorded answers are already consumed (use reuse to repeat)"
    )
    never = desc(fake.respond(cmd("query-statu")).reply)
    assert never == "qmprr fake: query-statu was never recorded; closest recorded command: query-status"
    report = fake.report()
    assert [e.command for e in report.unused] == ["stop", "system_reset", "quit"]
    assert report.ok("lenient") is False and len(report.unmatched) == 2


def test_lenient_names_the_closest_recorded_arguments() -> None:
    fake = FakeQemu.from_recording(HOTPLUG, mode="lenient")
    text = desc(fake.respond(cmd("device_del", {"id": "mouse0"})).reply)
    assert text == (
        "qmprr fake: device_del was recorded (seq 12) with other arguments: arguments.id: recorded 'kbd0', got 'mouse0'"
    )
    assert fake.respond(cmd("device_del", {"id": "tablet0"})).events_after[0]["data"]["device"] == "tablet0"


def test_reuse_repeats_a_consumed_reply_without_its_events() -> None:
    fake = FakeQemu.from_recording(LIFECYCLE, mode="lenient", reuse=True)
    for name in LIFECYCLE_ORDER:
        fake.respond(cmd(name))
    again = fake.respond(cmd("query-status"))
    assert again.reply == {"return": RUNNING}  # the last recorded answer
    stop = fake.respond(cmd("stop"))
    assert stop.reply == {"return": {}} and stop.events_before == [] and stop.events_after == []
    assert "never recorded" in desc(fake.respond(cmd("query-kvm")).reply)
    report = fake.report()
    assert report.answered == 9 and len(report.unmatched) == 1


def test_matching_normalizes_arguments() -> None:
    fake = (
        FakeQemu.builder()
        .expect("blockdev-add", {"driver": "file", "node-name": "#block123", "filename": "/tmp/run-1/disk.img"})
        .expect("migrate", {"uri": "unix:/run/user/0/mig.sock", "detach": True})
        .build(mode="strict")
    )
    # Built-in rules: auto node names and temporary/socket paths may differ.
    assert fake.respond(cmd("blockdev-add", {"driver": "file", "node-name": "#block987", "filename": "/tmp/run-2/disk.img"})).reply == {"return": {}}
    assert fake.respond(cmd("migrate", {"uri": "unix:/run/user/0/other.sock", "detach": True})).reply == {"return": {}}


def test_matching_with_user_rules() -> None:
    builder = FakeQemu.builder().expect("device_add", {"driver": "virtio-net-pci", "id": "net0", "mac": "52:54:00:12:34:56"})
    strict = builder.build()
    assert "arguments.mac: recorded" in desc(strict.respond(cmd("device_add", {"driver": "virtio-net-pci", "id": "net0", "mac": "52:54:00:ab:cd:ef"})).reply)
    rules = Normalizer().with_rules([Rule("mac", command="device_add")])
    fake = FakeQemu(builder.build().script, normalizer=rules)
    assert fake.respond(cmd("device_add", {"driver": "virtio-net-pci", "id": "net0", "mac": "52:54:00:ab:cd:ef"})).reply == {"return": {}}


# -- builder -------------------------------------------------------------------------


def test_builder_api() -> None:
    fake = (
        FakeQemu.builder()
        .event("RESUME")
        .expect("query-status").returns(RUNNING)
        .expect("stop").emits("STOP").returns()
        .expect("device_del", {"id": "disk1"}).returns({}).emits("DEVICE_DELETED", {"device": "disk1"}, after=True)
        .expect("blockdev-del", {"node-name": "nope"}).fails("Failed to find node with node-name='nope'")
        .expect("query-kvm").fails("not here", cls="CommandNotFound")
        .expect("cont")
        .build(mode="strict")
    )
    assert [e["event"] for e in fake.script.initial_events] == ["RESUME"]
    assert fake.respond(cmd("query-status")).reply == {"return": RUNNING}
    stop = fake.respond(cmd("stop"))
    assert stop.reply == {"return": {}} and [e["event"] for e in stop.events_before] == ["STOP"]
    assert "timestamp" in stop.events_before[0]
    dd = fake.respond(cmd("device_del", {"id": "disk1"}))
    assert dd.events_before == [] and dd.events_after[0]["data"] == {"device": "disk1"}
    assert fake.respond(cmd("blockdev-del", {"node-name": "nope"})).reply == {
        "error": {"class": "GenericError", "desc": "Failed to find node with node-name='nope'"}
    }
    assert fake.respond(cmd("query-kvm")).reply["error"]["class"] == "CommandNotFound"
    assert fake.respond(cmd("cont")).reply == {"return": {}}  # returns {} by default
    assert fake.report().ok("strict")


def test_builder_needs_expect_first() -> None:
    with pytest.raises(ValueError, match="expect"):
        FakeQemu.builder().returns({})
    with pytest.raises(ValueError, match="mode"):
        FakeQemu.builder().build(mode="sloppy")


def test_in_flight_command_has_no_reply(tmp_path: Path) -> None:
    rec = write_recording(tmp_path / "r.jsonl", [Step("query-status", reply={"return": RUNNING}), Step("quit", reply=None)])
    fake = FakeQemu.from_recording(rec)
    fake.respond(cmd("query-status"))
    assert "in flight when recording ended" in desc(fake.respond(cmd("quit")).reply)


# -- on the wire (handle over a socketpair) ---------------------------------------------


async def _connect(fake: FakeQemu) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Task[None]]:
    ours, theirs = socket.socketpair()
    r, w = await asyncio.open_unix_connection(sock=theirs)
    task = asyncio.create_task(fake.handle(r, w))
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return reader, writer, task


async def _read_until_reply(reader: asyncio.StreamReader) -> list[dict[str, Any]]:
    out = []
    while True:
        msg = json.loads(await asyncio.wait_for(reader.readline(), 5))
        out.append(msg)
        if "return" in msg or "error" in msg:
            return out


async def test_wire_greeting_negotiation_events_before_replies_and_ids() -> None:
    fake = FakeQemu.from_recording(LIFECYCLE)
    reader, writer, task = await _connect(fake)
    greeting = json.loads(await reader.readline())
    # The recorded greeting as clients saw it through qmprr: its version, no oob.
    assert greeting["QMP"]["version"] == fake.script.greeting["QMP"]["version"]
    assert greeting["QMP"]["capabilities"] == [] and greeting["QMP"]["version"]["qemu"]["minor"] == 2
    writer.write(b'{"execute": "query-status", "id": 1}')  # no newline: a JSON stream
    assert await _read_until_reply(reader) == [{"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": 1}]
    writer.write(b'{"execute": "qmp_capabilities"}\n')
    assert await _read_until_reply(reader) == [{"return": {}}]
    writer.write(b'{"execute": "query-status", "id": {"any": ["json", 1]}}')
    assert await _read_until_reply(reader) == [{"return": RUNNING, "id": {"any": ["json", 1]}}]
    writer.write(b'{"execute": "stop", "id": "s"}')
    stop = await _read_until_reply(reader)
    assert [m.get("event") for m in stop] == ["STOP", None]  # the event before the reply, as recorded
    assert stop[0] == fake.script.exchanges[1].events_before[0]  # exactly as recorded, timestamp too
    assert stop[1] == {"return": {}, "id": "s"}
    writer.write(b'{"execute": "query-status"}{"execute": "cont"}')  # two commands in one write
    assert await _read_until_reply(reader) == [{"return": PAUSED}]
    assert await _read_until_reply(reader) == [fake.script.exchanges[3].events_before[0], {"return": {}}]
    writer.write(b'{"execute": "nope", "id": 9}{"execute": ')
    nope = await _read_until_reply(reader)
    assert nope[0]["id"] == 9 and "expected system_reset next" in nope[0]["error"]["desc"]
    writer.write(b'1}')  # the rest of a malformed command: a QMP error, connection kept
    malformed = await _read_until_reply(reader)
    assert malformed[0]["error"]["desc"] == "QMP input member 'execute' must be a string"
    writer.close()
    await asyncio.wait_for(task, 5)
    assert len(fake.report().unmatched) == 1


async def test_wire_events_after_the_reply_and_initial_events() -> None:
    fake = (
        FakeQemu.builder()
        .event("RESUME")
        .expect("device_del", {"id": "kbd0"}).emits("DEVICE_DELETED", {"device": "kbd0"}, after=True)
        .expect("query-status").returns(RUNNING)
        .build()
    )
    reader, writer, task = await _connect(fake)
    await reader.readline()
    writer.write(b'{"execute": "qmp_capabilities"}')
    negotiated = [json.loads(await reader.readline()) for _ in range(2)]
    assert negotiated[0] == {"return": {}} and negotiated[1]["event"] == "RESUME"  # after negotiation only
    writer.write(b'{"execute": "device_del", "arguments": {"id": "kbd0"}}')
    got = [json.loads(await reader.readline()) for _ in range(2)]
    assert got[0] == {"return": {}} and got[1]["event"] == "DEVICE_DELETED"
    writer.write(b'{"execute": "query-status"}')
    assert json.loads(await reader.readline()) == {"return": RUNNING}
    writer.close()
    await asyncio.wait_for(task, 5)
    assert fake.report().ok("strict")


async def test_transactions_are_answered_as_the_proxy_answers_them() -> None:
    """Same serve loop as the proxy: begin returns its tx id, an -end with none open is refused."""
    fake = FakeQemu.builder().expect("query-status").returns(RUNNING).build()
    reader, writer, task = await _connect(fake)
    await reader.readline()
    writer.write(b'{"execute": "qmp_capabilities"}')
    assert await _read_until_reply(reader) == [{"return": {}}]
    writer.write(b'{"execute": "qmprr-transaction-end", "id": "early"}')
    (early,) = await _read_until_reply(reader)
    assert early["id"] == "early" and "no transaction is open" in early["error"]["desc"]
    writer.write(b'{"execute": "qmprr-transaction-begin", "arguments": {"label": "t"}, "id": "b"}')
    assert await _read_until_reply(reader) == [{"return": {"tx": 1}, "id": "b"}]
    writer.write(b'{"execute": "qmprr-transaction-begin", "id": "b2"}')
    (twice,) = await _read_until_reply(reader)
    assert twice["id"] == "b2" and "already holds transaction 1" in twice["error"]["desc"]
    writer.write(b'{"execute": "query-status", "id": 1}')
    assert await _read_until_reply(reader) == [{"return": RUNNING, "id": 1}]
    writer.write(b'{"execute": "qmprr-transaction-end", "id": "e"}')
    assert await _read_until_reply(reader) == [{"return": {"tx": 1}, "id": "e"}]
    writer.write(b'{"execute": "qmprr-transaction-begin", "id": "b3"}')
    assert await _read_until_reply(reader) == [{"return": {"tx": 2}, "id": "b3"}]
    writer.close()
    await asyncio.wait_for(task, 5)
    assert fake.report().ok("strict")


async def test_serve_unix_in_process(tmp_path: Path) -> None:
    fake = FakeQemu.from_recording(LIFECYCLE, mode="lenient", reuse=True)
    sock = str(tmp_path / "fake.sock")
    await fake.serve_unix(sock)
    try:
        client = QMPClient("in-process")
        await client.connect(sock)
        assert await client.execute("query-status") == RUNNING
        assert await client.execute("query-status") == PAUSED
        await client.disconnect()
        await asyncio.wait_for(fake.wait_session_end(), 5)
    finally:
        await fake.close()
    assert not Path(sock).exists()


# -- qmprr fake with unmodified clients ---------------------------------------------------


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=10)
    return proc.returncode, err


def test_cli_qemu_qmp_client(tmp_path: Path) -> None:
    sock = tmp_path / "f.sock"

    async def client() -> list[Any]:
        qmp = QMPClient("fake-test")
        events: list[str] = []
        listener = qmp.events  # the default listener collects every event
        await qmp.connect(str(sock))
        out = [await qmp.execute(name) for name in LIFECYCLE_ORDER]
        while not listener.empty():
            events.append((await listener.get())["event"])
        await qmp.disconnect()
        return [out, events]

    with fake_process(LIFECYCLE, sock) as proc:
        out, events = asyncio.run(client())
        status, err = _finish(proc)
    assert out[0] == RUNNING and out[2] == PAUSED
    assert events == ["STOP", "RESUME", "RESET", "SHUTDOWN"]
    assert status == 0, err
    assert "qmprr fake: answered 7 command(s)" in err


def test_cli_legacy_qemu_monitor_protocol(tmp_path: Path) -> None:
    sock = tmp_path / "f.sock"
    with fake_process(LIFECYCLE, sock) as proc:
        mon = QEMUMonitorProtocol(str(sock))
        mon.connect(negotiate=True)
        assert mon.cmd_obj({"execute": "query-status", "id": "legacy-1"}) == {"return": RUNNING, "id": "legacy-1"}
        assert mon.cmd("stop") == {}
        assert [e["event"] for e in mon.get_events(wait=2.0)] == ["STOP"]
        with pytest.raises(ExecuteError, match="expected query-status next"):
            mon.cmd("cont")
        mon.close()
        status, err = _finish(proc)
    assert status == 1
    assert "unmatched: cont: expected query-status next (recorded seq 11), got cont" in err
    assert "unused: seq 11 query-status from primary-1" in err


def test_cli_qmp_shell_on_stdin(tmp_path: Path) -> None:
    # qmp-shell asks query-commands first (for completion): a recording made with it has that too.
    rec = write_recording(tmp_path / "shell.jsonl", [
        Step("query-commands", reply={"return": [{"name": "query-status"}, {"name": "stop"}]}),
        Step("query-status", reply={"return": RUNNING}),
        Step("stop", before=[event("STOP")]),
        Step("query-status", reply={"return": PAUSED}),
    ])
    sock = tmp_path / "f.sock"
    with fake_process(rec, sock) as proc:
        shell = subprocess.run([str(QMP_SHELL), str(sock)], input="query-status\nstop\nquery-status\n",
                               capture_output=True, text=True, timeout=20)
        status, err = _finish(proc)
    assert shell.returncode == 0, shell.stderr
    assert '"status": "paused"' in shell.stdout and '"status": "running"' in shell.stdout
    assert status == 0, err
    assert "answered 4 command(s)" in err


def test_cli_qmp_shell_unrecorded_command_is_reported(tmp_path: Path) -> None:
    sock = tmp_path / "f.sock"
    with fake_process(LIFECYCLE, sock, "--mode", "lenient") as proc:
        shell = subprocess.run([str(QMP_SHELL), str(sock)], input="query-status\n",
                               capture_output=True, text=True, timeout=20)
        status, err = _finish(proc)
    assert '"status": "running"' in shell.stdout
    assert status == 1  # qmp-shell's query-commands was never recorded here
    assert "unmatched: query-commands: query-commands was never recorded" in err
    assert "unused: seq 8 stop from primary-1" in err  # reported, but lenient does not fail on it


def test_cli_raw_socket_and_exit_status(tmp_path: Path) -> None:
    sock = tmp_path / "f.sock"
    with fake_process(HOTPLUG, sock) as proc, RawClient(sock) as client:
        assert client.greeting["QMP"]["capabilities"] == []  # as clients saw it through qmprr
        assert client.negotiate() == {"return": {}}
        assert client.execute("device_add", {"driver": "usb-kbd", "id": "kbd0", "bus": "xhci.0"}, id=1) == {"return": {}, "id": 1}
        bad = client.execute("device_add", {"driver": "usb-tablet", "id": "tablet0", "bus": "xhci.1"}, id=2)
        assert bad["id"] == 2
        assert desc(bad) == ("qmprr fake: expected device_add (recorded seq 8) with other arguments: "
                             "arguments.bus: recorded 'xhci.0', got 'xhci.1'")
        client.close()
        status, err = _finish(proc)
    assert status == 1
    lines = [line.removeprefix("qmprr fake: ") for line in err.splitlines() if line.startswith("qmprr fake:")]
    assert lines[0] == "answered 1 command(s)"
    assert lines[1].startswith("unmatched: device_add: expected device_add (recorded seq 8)")
    assert "unused: seq 12 device_del from primary-1" in lines


def test_cli_strict_unused_fails_lenient_does_not(tmp_path: Path) -> None:
    for mode, expected in (("strict", 1), ("lenient", 0), ("ordered", 0)):
        sock = tmp_path / f"{mode}.sock"
        with fake_process(LIFECYCLE, sock, "--mode", mode) as proc, RawClient(sock) as client:
            client.negotiate()
            assert client.execute("query-status") == {"return": RUNNING}
            client.close()
            status, err = _finish(proc)
        assert status == expected, (mode, err)
        assert "unused: seq 21 quit from primary-1" in err


def test_cli_keep_serving_until_sigterm(tmp_path: Path) -> None:
    sock = tmp_path / "f.sock"
    with fake_process(LIFECYCLE, sock, "--mode", "lenient", "--reuse", "--keep-serving") as proc:
        for _ in range(3):
            with RawClient(sock) as client:
                client.negotiate()
                assert client.execute("query-status")["return"]["status"] in ("running", "paused")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        status, err = _finish(proc)
    assert status == 0, err
    assert "answered 3 command(s)" in err
    assert not sock.exists()


def test_cli_fake_cannot_run(tmp_path: Path) -> None:
    not_rec = tmp_path / "notes.txt"
    not_rec.write_text("hello\n")
    result = qmprr("fake", str(not_rec), "--socket", str(tmp_path / "s.sock"))
    assert result.returncode == 2
    assert result.stderr.startswith("qmprr: ") and "not a qmprr/1 recording" in result.stderr
    assert "Traceback" not in result.stderr
    result = qmprr("fake", str(LIFECYCLE), "--socket", str(tmp_path / "no" / "s.sock"))
    assert result.returncode == 2 and "does not exist" in result.stderr
