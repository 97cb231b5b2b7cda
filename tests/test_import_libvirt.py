"""``qmprr import libvirt``: a real libvirtd 9.0 debug log into recordings.

The capture (``tests/data/libvirt/libvirtd-debug.log``, made by
``regenerate.py``) holds three capability probes (two at one reused monitor
address), the ``qmprr-demo`` VM started, suspended, resumed, sent
``qemu-monitor-command`` in QMP and HMP form, a disk hot-plug, a memory dump
(an fd pass), a libvirtd restart (the new daemon reconnects) and a second
start. Robustness tests change copies of it the way real logs go wrong.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from import_support import LOG, QEMU_LOG, commands, lines, run_import

from qmprr.importers.libvirt_log import LibvirtLogParser
from qmprr.recording import verify
from qmprr.replay.engine import ReplayOptions
from qmprr.replay.run import RunOptions, run_replay

LOG_LINES = LOG.read_text().splitlines(keepends=True)


def parse(path: Path = LOG) -> LibvirtLogParser:
    return LibvirtLogParser(str(path)).parse()


@pytest.fixture(scope="module")
def parsed() -> LibvirtLogParser:
    return parse()


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Every connection of the capture, imported with the VM's QEMU log."""
    out = tmp_path_factory.mktemp("all") / "out"
    status, text = run_import("libvirt", LOG, "--all", "--qemu-log", QEMU_LOG, "-o", out)
    assert status == 0, text
    return {int(p.name[:3]): p for p in sorted(out.iterdir())}


def records_of(imported: dict[int, Path], index: int) -> list[dict]:
    return lines(imported[index])


# -- the connections in the log ----------------------------------------------------------


def test_connections_probes_vms_restart_and_reused_addresses(parsed: LibvirtLogParser) -> None:
    conns = parsed.connections
    assert [c.label for c in conns] == [
        "probe:qemu-system-i386",
        "probe:qemu-system-x86_64",
        "probe:qemu-system-x86_64",
        "qmprr-demo",
        "qmprr-demo",
        "qmprr-demo",
    ]
    assert [c.daemon for c in conns] == [1, 1, 1, 1, 2, 2]
    assert parsed.stats.daemons == 2 and parsed.stats.hosts == ["vm", "vm"]
    # The second probe got the address the first had, once that one closed.
    assert conns[0].mon == conns[1].mon and conns[0].closed == "stopped"
    assert conns[4].reconnect and not conns[3].reconnect
    # The first VM connection ended with the daemon, not with a QEMU_MONITOR_CLOSE.
    close = [r for r in conns[3].items if r.record.kind == "close"][-1].record
    assert "libvirtd restarted" in close.detail
    assert conns[1].machine == "none,accel=kvm:tcg" and conns[0].machine == "none,accel=tcg"
    assert all(c.greeting is not None for c in conns)
    assert not parsed.problems


def test_send_msg_and_io_write_lines_with_their_continuations(imported: dict[int, Path]) -> None:
    raw = LOG.read_bytes()
    # The real form: the JSON ends with \r\n, then a continuation line.
    assert re.search(rb'QEMU_MONITOR_SEND_MSG: mon=0x[0-9a-f]+ msg=\{"execute":"cont","id":"libvirt-\d+"\}\r\n fd=-1\n', raw)
    assert re.search(rb'QEMU_MONITOR_IO_WRITE: mon=0x[0-9a-f]+ buf=\{"execute":"cont","id":"libvirt-\d+"\}\r\n len=\d+ ret=\d+ errno=0\n', raw)
    recs = records_of(imported, 4)
    cont = next(r for r in recs if r["kind"] == "command" and r["msg"]["execute"] == "cont")
    assert cont["msg"] == {"execute": "cont", "id": cont["msg"]["id"]}
    # orig points at the SEND_MSG line, with its timestamp and thread as logged.
    line = LOG_LINES[cont["orig"]["line"] - 1]
    assert "QEMU_MONITOR_SEND_MSG" in line and line.startswith(cont["orig"]["ts"] + f": {cont['orig']['tid']}: ")
    assert cont["orig"]["caller"] == "qemuMonitorStartCPUs"


def test_greeting_comes_from_the_debug_line_before_the_first_command(imported: dict[int, Path]) -> None:
    for index, path in imported.items():
        recs = lines(path)
        kinds = [r["kind"] for r in recs]
        assert "greeting" in kinds, index
        assert kinds.index("greeting") < kinds.index("command")
        greeting = recs[kinds.index("greeting")]
        assert greeting["msg"]["QMP"]["version"]["qemu"] == {"micro": 22, "minor": 2, "major": 7}
        source = LOG_LINES[greeting["orig"]["line"] - 1]
        assert "qemuMonitorJSONIOProcessLine" in source and "Line [{\"QMP\"" in source and "mon=" not in source
        assert recs[0]["qemu_version"] == greeting["msg"]["QMP"]["version"]


def test_replies_events_fds_in_wire_order(imported: dict[int, Path]) -> None:
    recs = records_of(imported, 4)
    by_seq = {r["seq"]: r for r in recs}
    for r in recs:
        if r["kind"] == "reply":
            cmd = by_seq[r["cmd"]]
            assert cmd["kind"] == "command" and cmd["msg"]["id"] == r["msg"]["id"]
    # QEMU sends STOP before stop's return: the event sits between command and reply.
    stop = next(r for r in recs if r["kind"] == "command" and r["msg"]["execute"] == "stop")
    after = recs[stop["seq"] + 1 : stop["seq"] + 3]
    assert [a["kind"] for a in after] == ["event", "reply"] and after[0]["msg"]["event"] == "STOP"
    # The dump: getfd with its fd pass (a placeholder, never the number), then the dump and its event.
    fd = next(r for r in recs if r["kind"] == "fd")
    assert by_seq[fd["cmd"]]["msg"]["execute"] == "getfd" and fd["placeholder"] == "fd:0"
    assert "QEMU_MONITOR_IO_SEND_FD" in LOG_LINES[fd["orig"]["line"] - 1]
    assert [e["msg"]["event"] for e in recs if e["kind"] == "event"] == [
        "RESUME", "STOP", "RESUME", "STOP", "DUMP_COMPLETED", "RESUME"
    ]
    assert {r["kind"] for r in recs} >= {"header", "note", "taint", "greeting", "command", "reply", "event", "fd", "close"}


def test_roles_negotiation_and_qemu_monitor_command(imported: dict[int, Path]) -> None:
    recs = records_of(imported, 4)
    cmds = [r for r in recs if r["kind"] == "command"]
    assert cmds[0]["msg"]["execute"] == "qmp_capabilities" and cmds[0]["role"] == "internal"
    debug = [c for c in cmds if c["role"] == "debug"]
    assert [c["msg"]["execute"] for c in debug] == ["query-status", "human-monitor-command", "no-such-command"]
    assert {c["src"] for c in debug} == {"qemu-monitor-command"}
    assert {c["orig"]["caller"] for c in debug} == {"qemuMonitorArbitraryCommand"}
    assert debug[1]["msg"]["arguments"] == {"command-line": "info status"}
    error = next(r for r in recs if r["kind"] == "reply" and r["cmd"] == debug[2]["seq"])
    assert error["msg"]["error"]["class"] == "CommandNotFound"
    assert all(c["src"] == "libvirt" and c["role"] == "primary" for c in cmds[1:] if c not in debug)


def test_times_come_from_the_log(imported: dict[int, Path]) -> None:
    recs = records_of(imported, 4)
    header = recs[0]
    ts = [r["t"] for r in recs]
    assert ts == sorted(ts)
    # t is the log time minus the header's start, which is the earliest line the recording holds.
    from qmprr.importers.qemu_log import parse_stamp

    for r in recs[1:]:
        if r.get("orig", {}).get("ts") and r["kind"] in ("reply", "event", "fd"):
            stamp = r["orig"]["ts"]
            at = parse_stamp(stamp[:-5], stamp[-5:])
            assert r["t"] == pytest.approx(at - header["started_epoch"], abs=1e-6)
    # The device_del waited 5 s in vain for DEVICE_DELETED (no guest OS): the gap shows.
    device_del = next(r for r in recs if r["kind"] == "command" and r["msg"]["execute"] == "device_del")
    nxt = next(r for r in recs if r["kind"] == "command" and r["seq"] > device_del["seq"] + 1)
    assert nxt["t"] - device_del["t"] > 4.9


def test_trimmed_commands_leave_a_note(imported: dict[int, Path]) -> None:
    recs = records_of(imported, 4)
    gap = next(r for r in recs if r["kind"] == "note" and "has no commands" in r["text"])
    assert gap["data"]["first"] == "libvirt-20"


# -- qemu log ----------------------------------------------------------------------


def test_qemu_log_gives_argv_env_and_taints(imported: dict[int, Path]) -> None:
    recs = records_of(imported, 4)
    header = recs[0]
    argv = header["qemu_argv"]
    assert argv[0] == "/usr/bin/qemu-system-x86_64" and "guest=qmprr-demo,debug-threads=on" in argv
    assert not any("charmonitor" in a for a in argv) and "-mon" not in argv
    assert header["qemu_env"]["LC_ALL"] == "C" and header["qemu_env"]["HOME"].endswith("domain-1-qmprr-demo")
    assert header["labels"]["qemu-log"] == "qmprr-demo.log" and header["labels"]["vm"] == "qmprr-demo"
    note = recs[1]
    assert note["kind"] == "note" and note["data"]["removed"][0] == "-chardev"
    assert "fd=" in note["data"]["removed"][1] and note["data"]["removed"][2] == "-mon"
    # Each taint once, though both logs have it, in time order.
    assert [r["reason"] for r in recs if r["kind"] == "taint"] == ["high-privileges", "custom-monitor"]
    # The reconnection: same QEMU run, no taint of its own; the second start: a new run.
    again = records_of(imported, 5)
    assert again[0]["qemu_argv"] == argv and again[0]["labels"]["reconnect"]
    assert not [r for r in again if r["kind"] == "taint"]
    second = records_of(imported, 6)
    assert "domain-2-qmprr-demo" in second[0]["qemu_env"]["HOME"]
    assert [r["reason"] for r in second if r["kind"] == "taint"] == ["high-privileges"]


def test_taints_from_the_qemu_log_alone(tmp_path: Path) -> None:
    """Without qemuDomainObjTaintMsg lines in the debug log, the QEMU log's taints are used."""
    log = tmp_path / "no-taints.log"
    log.write_text("".join(line for line in LOG_LINES if "qemuDomainObjTaintMsg" not in line))
    status, text = run_import("libvirt", log, "--monitor", "4", "--qemu-log", QEMU_LOG, "-o", tmp_path / "vm.jsonl")
    assert status == 0, text
    taints = [r for r in lines(tmp_path / "vm.jsonl") if r["kind"] == "taint"]
    assert [t["reason"] for t in taints] == ["high-privileges", "custom-monitor"]
    assert {t["orig"]["file"] for t in taints} == {"qmprr-demo.log"}


def test_probes_get_libvirts_probe_command_line(imported: dict[int, Path]) -> None:
    header = records_of(imported, 2)[0]
    assert header["qemu_argv"] == [
        "/usr/bin/qemu-system-x86_64", "-S", "-no-user-config", "-nodefaults", "-nographic",
        "-machine", "none,accel=kvm:tcg",
    ]
    assert header["labels"]["probe"] == "/usr/bin/qemu-system-x86_64" and "reconstructed" in header["labels"]["qemu-argv"]


def test_qemu_log_of_another_vm_is_not_used(tmp_path: Path) -> None:
    other = tmp_path / "other.log"
    other.write_text(QEMU_LOG.read_text().replace("guest=qmprr-demo", "guest=other-vm"))
    status, text = run_import("libvirt", LOG, "--monitor", "4", "--qemu-log", other, "-o", tmp_path / "vm.jsonl")
    assert status == 0
    assert "other.log is the log of another VM (other-vm), not of qmprr-demo: not used" in text
    assert lines(tmp_path / "vm.jsonl")[0].get("qemu_argv") is None


# -- the command line: listing, choosing, --all --------------------------------------------


def test_list_shows_connections_names_and_first_commands() -> None:
    status, text = run_import("libvirt", LOG, "--list")
    assert status == 0
    rows = [line for line in text.splitlines() if re.match(r"\s+\d+\s+0x", line)]
    assert len(rows) == 6
    assert "probe:qemu-system-i386" in rows[0] and "query-cpu-definitions" in rows[0]
    assert "probe:qemu-system-x86_64" in rows[1] and "query-version, query-target, query-qmp-schema" in rows[1]
    assert "qmprr-demo" in rows[3] and "query-migrate-capabilities" in rows[3]
    assert "qmprr-demo (reconnect)" in rows[4]
    assert "772 commands absent from the log" in text


def test_all_writes_one_readable_file_per_connection(imported: dict[int, Path]) -> None:
    names = [p.name for p in imported.values()]
    assert [re.sub(r"0x[0-9a-f]+", "0xADDR", n) for n in names] == [
        "001-probe-qemu-system-i386-0xADDR.jsonl",
        "002-probe-qemu-system-x86_64-0xADDR.jsonl",
        "003-probe-qemu-system-x86_64-0xADDR.jsonl",
        "004-qmprr-demo-0xADDR.jsonl",
        "005-qmprr-demo-0xADDR.jsonl",
        "006-qmprr-demo-0xADDR.jsonl",
    ]
    for path in imported.values():
        report = verify(path)
        assert report.ok and not report.in_flight, (path, report.problems)


def test_summary_after_import(tmp_path: Path) -> None:
    status, text = run_import("libvirt", LOG, "--all", "-o", tmp_path / "out")
    assert status == 0
    assert text.startswith(f"{LOG}: {len(LOG_LINES)} lines, 2 libvirtd start(s), 6 monitor connection(s)")
    assert re.search(r"#4 qmprr-demo 0x[0-9a-f]+: 39 commands, 39 replies, 6 events, 1 fd\(s\), 2 taint\(s\), 386 absent from the log \(id gaps\)", text)
    assert "in all: 6 recordings, 136 commands, 136 replies, 8 events" in text
    assert "messages skipped" in text and "skipped in the log: 772 commands absent from the log" in text


def test_choose_by_number_or_address(tmp_path: Path, parsed: LibvirtLogParser) -> None:
    status, text = run_import("libvirt", LOG, "--monitor", "4", "-o", tmp_path / "a.jsonl")
    assert status == 0 and "#4 qmprr-demo" in text
    mon = parsed.connections[3].mon
    status, text = run_import("libvirt", LOG, "--monitor", mon, "-o", tmp_path / "b.jsonl")
    assert status == 0
    assert commands(lines(tmp_path / "a.jsonl")) == commands(lines(tmp_path / "b.jsonl"))
    reused = parsed.connections[0].mon
    status, text = run_import("libvirt", LOG, "--monitor", reused, "-o", tmp_path / "c.jsonl")
    assert status == 2 and "names 2 connections (the address was reused): 1, 2" in text
    status, text = run_import("libvirt", LOG, "-o", tmp_path / "d.jsonl")
    assert status == 2 and "holds 6 monitor connections: pick one with --monitor N" in text
    assert not (tmp_path / "c.jsonl").exists() and not (tmp_path / "d.jsonl").exists()


def test_refusals(tmp_path: Path) -> None:
    existing = tmp_path / "exists.jsonl"
    existing.write_text("keep me\n")
    assert run_import("libvirt", LOG, "--monitor", "4", "-o", existing)[0] == 2
    assert existing.read_text() == "keep me\n"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    status, text = run_import("libvirt", LOG, "--all", "-o", tmp_path / "full")
    assert status == 2 and "not an empty folder" in text
    status, text = run_import("libvirt", tmp_path / "missing.log", "--list")
    assert status == 2 and "no such file" in text
    notlog = tmp_path / "notes.txt"
    notlog.write_text("hello\nworld\n")
    status, text = run_import("libvirt", notlog, "--list")
    assert status == 2 and "no libvirt log lines" in text
    quiet = tmp_path / "quiet.log"
    quiet.write_text("".join(line for line in LOG_LINES if "QEMU_MONITOR" not in line))
    status, text = run_import("libvirt", quiet, "--list")
    assert status == 2 and "1:qemu.qemu_monitor" in text
    status, text = run_import("libvirt", LOG, "--monitor", "99", "-o", tmp_path / "none.jsonl")
    assert status == 2 and "no connection 99" in text


# -- replay -------------------------------------------------------------------------


async def test_every_connection_replays_against_the_fake(imported: dict[int, Path]) -> None:
    for index, path in imported.items():
        report = await run_replay(str(path), RunOptions(target="fake"), ReplayOptions())
        assert report.reproduced, (index, report.first_divergence)
        assert report.count("matched") == len(report.steps) > 0


# -- robustness: real logs go wrong in these ways -----------------------------------------


def _vm_commands(parser: LibvirtLogParser) -> list[list]:
    return [[i.record.msg for i in c.items if i.record.kind == "command"] for c in parser.connections]


def test_windows_line_ends(tmp_path: Path, parsed: LibvirtLogParser) -> None:
    crlf = tmp_path / "crlf.log"
    crlf.write_bytes(LOG.read_bytes().replace(b"\n", b"\r\n"))
    again = parse(crlf)
    assert not again.problems
    assert _vm_commands(again) == _vm_commands(parsed)
    assert [c.greeting for c in again.connections] == [c.greeting for c in parsed.connections]


def test_other_sources_levels_and_garbage_interleaved(tmp_path: Path, parsed: LibvirtLogParser) -> None:
    noisy = []
    for n, line in enumerate(LOG_LINES):
        noisy.append(line)
        if not line.startswith(" ") and n % 7 == 0 and n + 1 < len(LOG_LINES) and not LOG_LINES[n + 1].startswith(" "):
            stamp = line[:28]
            noisy.append(f"{stamp}: 4242: info : virObjectUnref:380 : OBJECT_UNREF: obj=0x55d0 mon=0x1\n")
            noisy.append(f"{stamp}: 4243: error : virNetSocketReadWire:1791 : End of file while reading data\n")
    noisy.insert(0, "some banner a log shipper wrote\n")
    path = tmp_path / "noisy.log"
    path.write_text("".join(noisy))
    again = parse(path)
    assert not again.problems
    assert _vm_commands(again) == _vm_commands(parsed)
    assert again.stats.other_entries > parsed.stats.other_entries and again.stats.foreign_lines == 1


def test_malformed_json_is_reported_with_its_line_and_the_rest_imported(tmp_path: Path) -> None:
    number = next(
        n for n, line in enumerate(LOG_LINES, 1)
        if "QEMU_MONITOR_RECV_REPLY" in line and '"status": "running"' in line
    )
    broken = list(LOG_LINES)
    broken[number - 1] = broken[number - 1].replace('reply={"return": {', 'reply={"return": {{', 1)
    path = tmp_path / "broken.log"
    path.write_text("".join(broken))
    out = tmp_path / "out"
    status, text = run_import("libvirt", path, "--all", "-o", out)
    assert status == 1
    assert f"problem: {path}:{number}: malformed JSON in QEMU_MONITOR_RECV_REPLY" in text
    assert "skipped in the log: 1 replies that could not be read" in text
    recs = lines(next(out.glob("004-*")))
    note = next(r for r in recs if r["kind"] == "note" and "could not be read" in r["text"])
    assert f"line {number}" in note["text"]
    assert sum(r["kind"] == "reply" for r in recs) == 38 and len(commands(recs)) == 39
    for p in out.iterdir():
        assert verify(p).ok


def test_a_line_cut_at_the_end(tmp_path: Path) -> None:
    raw = LOG.read_bytes()
    cut_at = raw.rindex(b"QEMU_MONITOR_RECV_REPLY") + 60
    path = tmp_path / "cut.log"
    path.write_bytes(raw[:cut_at])
    parser = parse(path)
    assert parser.stats.cut_at_end
    assert [p.message for p in parser.problems] == ["QEMU_MONITOR_RECV_REPLY cut short at the end of the file; skipped"]
    last = parser.connections[-1]
    assert last.closed is None and last.unanswered == 1
    assert last.items[-1].record.text.startswith("the log ends")  # type: ignore[attr-defined]
    out = tmp_path / "out"
    status, text = run_import("libvirt", path, "--all", "-o", out)
    assert status == 1 and "the last line has no newline" in text
    report = verify(sorted(out.iterdir())[-1])
    assert report.ok and [c.msg["execute"] for c in report.in_flight] == ["query-block"]


def test_a_daemon_restart_ends_open_connections_and_addresses_start_over(tmp_path: Path) -> None:
    twice = tmp_path / "twice.log"
    twice.write_text(LOG.read_text() * 2)
    parser = parse(twice)
    assert parser.stats.daemons == 4 and len(parser.connections) == 12
    assert [c.daemon for c in parser.connections[6:]] == [3, 3, 3, 3, 4, 4]
    # The last connection of the first copy was closed; the reused pointer opened anew.
    assert parser.connections[5].closed == "stopped" and parser.connections[6].mon == parser.connections[0].mon
    assert not parser.problems


def test_new_for_an_open_address_ends_the_old_connection(tmp_path: Path) -> None:
    first_close = next(n for n, line in enumerate(LOG_LINES) if "QEMU_MONITOR_CLOSE" in line)
    path = tmp_path / "no-close.log"
    path.write_text("".join(LOG_LINES[:first_close] + LOG_LINES[first_close + 1 :]))
    parser = parse(path)
    assert len(parser.connections) == 6
    close = parser.connections[0].items[-1].record
    assert close.kind == "close" and "QEMU_MONITOR_NEW for the same address" in close.detail  # type: ignore[attr-defined]


def test_a_log_that_starts_in_the_middle_of_a_connection(tmp_path: Path) -> None:
    start = next(n for n, line in enumerate(LOG_LINES) if '"execute":"stop"' in line and "SEND_MSG" in line)
    path = tmp_path / "rotated.log"
    path.write_text("".join(LOG_LINES[start:]))
    parser = parse(path)
    first = parser.connections[0]
    assert first.implicit and first.greeting is None and first.commands > 0
    out = tmp_path / "out"
    status, text = run_import("libvirt", path, "--all", "-o", out)
    assert status == 0, text
    header = lines(sorted(out.iterdir())[0])[0]
    assert header["labels"]["partial"] == "the log starts in the middle of this connection"
    assert verify(sorted(out.iterdir())[0]).ok


def test_secrets_in_logged_commands_are_redacted(tmp_path: Path) -> None:
    secret = (
        '2026-11-26 11:38:42.000+0000: 5000: info : qemuMonitorSend:861 : QEMU_MONITOR_SEND_MSG: mon=0x7f00 '
        'msg={"execute":"object-add","arguments":{"qom-type":"secret","id":"s0","data":"hunter2"},"id":"libvirt-1"}\r\n'
        " fd=-1\n"
        '2026-11-26 11:38:42.001+0000: 5001: info : qemuMonitorIOWrite:366 : QEMU_MONITOR_IO_WRITE: mon=0x7f00 '
        'buf={"execute":"object-add","arguments":{"qom-type":"secret","id":"s0","data":"hunter2"},"id":"libvirt-1"}\r\n'
        " len=99 ret=99 errno=0\n"
    )
    path = tmp_path / "secret.log"
    path.write_text(secret)
    status, text = run_import("libvirt", path, "-o", tmp_path / "s.jsonl")
    assert status == 0, text
    data = (tmp_path / "s.jsonl").read_text()
    assert "hunter2" not in data and "<qmprr-redacted>" in data


def test_orig_is_the_last_member_before_h(imported: dict[int, Path]) -> None:
    for raw in imported[4].read_text().splitlines()[1:]:
        keys = list(json.loads(raw))
        assert keys[:3] == ["seq", "t", "kind"] and keys[-1] == "h"
        if "orig" in keys:
            assert keys[-2] == "orig"


def test_the_qmprr_command_has_import() -> None:
    """Through ``qmprr`` itself (qmprr.cli.importing)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "qmprr.cli", "import", "libvirt", str(LOG), "--list"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "6 monitor connection(s)" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "qmprr.cli", "import", "libvirt", str(LOG)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("qmprr: ") and "Traceback" not in proc.stderr
