"""Line forms the real capture does not show, in hand-written logs.

Each log here follows libvirt's documented wording (qemu_monitor.c,
qemu_monitor_json.c; see ``docs/import.md``); the real capture covers the
common forms, these cover the rare ones: two VMs whose monitors interleave,
a partial write, a write that failed and was retried, an fd pass that failed,
QEMU closing the monitor (EOF), older releases' ``refs=`` fields.
"""

from __future__ import annotations

from pathlib import Path

from import_support import lines, run_import

from qmprr.importers.libvirt_log import LibvirtLogParser
from qmprr.recording import verify

GREETING = '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}'


class Log:
    """Builds a log: one method per line form, timestamps 1 ms apart."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.ms = 0

    def _line(self, tid: int, level: str, where: str, text: str) -> None:
        self.ms += 1
        self.out.append(f"2026-01-02 03:04:{5 + self.ms // 1000:02d}.{self.ms % 1000:03d}+0000: {tid}: {level} : {where} : {text}\n")

    def connect(self, tid: int, vm: str, name: str) -> None:
        self._line(tid, "debug", "qemuProcessWaitForMonitor:2291", f"Connect monitor to vm={vm} name='{name}'")

    def new(self, tid: int, mon: str, extra: str = " fd=29") -> None:
        self._line(tid, "info", "qemuMonitorOpenInternal:647", f"QEMU_MONITOR_NEW: mon={mon}{extra}")

    def send(self, tid: int, mon: str, msg: str, fd: int = -1) -> None:
        self._line(tid, "info", "qemuMonitorSend:861", f"QEMU_MONITOR_SEND_MSG: mon={mon} msg={msg}\r\n fd={fd}")

    def write(self, tid: int, mon: str, buf: str, ret: int | None = None, errno: int = 0) -> None:
        n = len(buf) + 2
        self._line(tid, "info", "qemuMonitorIOWrite:366",
                   f"QEMU_MONITOR_IO_WRITE: mon={mon} buf={buf}\r\n len={n} ret={n if ret is None else ret} errno={errno}")

    def send_fd(self, tid: int, mon: str, ret: int) -> None:
        self._line(tid, "info", "qemuMonitorIOWrite:371", f"QEMU_MONITOR_IO_SEND_FD: mon={mon} fd=31 ret={ret} errno={0 if ret >= 0 else 9}")

    def greeting(self, tid: int) -> None:
        self._line(tid, "debug", "qemuMonitorJSONIOProcessLine:189", f"Line [{GREETING}]")

    def reply(self, tid: int, mon: str, reply: str) -> None:
        self._line(tid, "debug", "qemuMonitorJSONIOProcessLine:189", f"Line [{reply}]")
        self._line(tid, "info", "qemuMonitorJSONIOProcessLine:208", f"QEMU_MONITOR_RECV_REPLY: mon={mon} reply={reply}")

    def event(self, tid: int, mon: str, event: str) -> None:
        self._line(tid, "info", "qemuMonitorJSONIOProcessLine:203", f"QEMU_MONITOR_RECV_EVENT: mon={mon} event={event}")

    def eof(self, tid: int, mon: str, vm: str, name: str) -> None:
        self._line(tid, "debug", "qemuMonitorIO:615", f"Triggering EOF callback mon={mon} vm={vm} name={name}")

    def close(self, tid: int, mon: str, extra: str = "") -> None:
        self._line(tid, "info", "qemuMonitorClose:782", f"QEMU_MONITOR_CLOSE: mon={mon}{extra}")

    def save(self, path: Path) -> Path:
        path.write_text("".join(self.out))
        return path


def cmd(name: str, n: int, args: str = "") -> str:
    return '{"execute":"' + name + '"' + (f',"arguments":{args}' if args else "") + f',"id":"libvirt-{n}"' + "}"


def test_two_vms_interleaved_each_with_its_greeting(tmp_path: Path) -> None:
    log = Log()
    a, b = "0x7f0000000a00", "0x7f0000000b00"
    log.connect(100, "0x1a", "vm-a")
    log.new(100, a)
    log.connect(200, "0x1b", "vm-b")
    log.new(200, b)
    log.send(100, a, cmd("qmp_capabilities", 1))
    log.send(200, b, cmd("qmp_capabilities", 1))
    log.greeting(201)  # vm-b's event thread reads its greeting first
    log.greeting(101)
    log.write(201, b, cmd("qmp_capabilities", 1))
    log.write(101, a, cmd("qmp_capabilities", 1))
    log.reply(101, a, '{"return": {}, "id": "libvirt-1"}')
    log.reply(201, b, '{"return": {}, "id": "libvirt-1"}')
    log.send(100, a, cmd("stop", 2))
    log.send(200, b, cmd("query-name", 2))
    log.write(101, a, cmd("stop", 2))
    log.write(201, b, cmd("query-name", 2))
    log.event(101, a, '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}')
    log.reply(201, b, '{"return": {"name": "vm-b"}, "id": "libvirt-2"}')
    log.reply(101, a, '{"return": {}, "id": "libvirt-2"}')
    log.eof(101, a, "0x1a", "vm-a")
    log.close(100, a)
    log.close(200, b)
    parser = LibvirtLogParser(str(log.save(tmp_path / "two.log"))).parse()
    assert not parser.problems
    vm_a, vm_b = parser.connections
    assert (vm_a.name, vm_b.name) == ("vm-a", "vm-b")
    for conn in (vm_a, vm_b):
        kinds = [i.record.kind for i in conn.items]
        assert kinds[0] == "greeting" and conn.greeting is not None
        # The greeting came from the connection's own event thread.
        assert conn.items[0].orig["tid"] == conn.items[1].orig["tid"] + 1  # type: ignore[index]
    assert [i.record.kind for i in vm_a.items] == [
        "greeting", "command", "reply", "command", "event", "reply", "close"
    ]
    assert vm_a.closed == "eof" and vm_b.closed == "stopped"
    assert vm_b.items[-2].record.msg == {"return": {"name": "vm-b"}, "id": "libvirt-2"}  # type: ignore[attr-defined]


def test_partial_and_failed_writes_failed_fd_pass_and_old_refs_fields(tmp_path: Path) -> None:
    log = Log()
    mon = "0x55d000001000"
    log.new(100, mon, " refs=2 fd=25")
    log.send(100, mon, cmd("qmp_capabilities", 1))
    log.greeting(101)
    log.write(101, mon, cmd("qmp_capabilities", 1), ret=-1, errno=11)  # EAGAIN: nothing written yet
    log.write(101, mon, cmd("qmp_capabilities", 1))
    log.reply(101, mon, '{"return": {}, "id": "libvirt-1"}')
    big = cmd("human-monitor-command", 2, '{"command-line":"info ' + "x" * 40 + '"}')
    log.send(100, mon, big)
    log.write(101, mon, big, ret=20)  # a partial write ...
    log.write(101, mon, big[20:])  # ... and the rest
    log.reply(101, mon, '{"return": "", "id": "libvirt-2"}')
    log.send(100, mon, cmd("getfd", 3, '{"fdname":"x"}'), fd=31)
    log.write(101, mon, cmd("getfd", 3, '{"fdname":"x"}'))
    log.send_fd(101, mon, -1)
    log.reply(101, mon, '{"error": {"class": "GenericError", "desc": "No file descriptor supplied via SCM_RIGHTS"}, "id": "libvirt-3"}')
    log.close(100, mon, " refs=1")
    path = log.save(tmp_path / "edge.log")
    parser = LibvirtLogParser(str(path)).parse()
    assert not parser.problems
    (conn,) = parser.connections
    assert [i.record.kind for i in conn.items] == [
        "greeting", "command", "reply", "command", "reply", "command", "note", "reply", "close"
    ]
    assert conn.commands == 3 and conn.fds == 0
    assert "failed to pass a file descriptor" in conn.items[6].record.text  # type: ignore[attr-defined]
    status, text = run_import("libvirt", path, "-o", tmp_path / "edge.jsonl")
    assert status == 0, text
    recs = lines(tmp_path / "edge.jsonl")
    assert "vm" not in recs[0]["labels"] and recs[0]["labels"]["monitor"] == mon  # the log never named it
    assert verify(tmp_path / "edge.jsonl").ok


def test_reply_with_an_unknown_id_and_commands_never_written(tmp_path: Path) -> None:
    log = Log()
    mon = "0x55d000002000"
    log.new(100, mon)
    log.send(100, mon, cmd("query-status", 1))
    log.write(101, mon, cmd("query-status", 1))
    log.reply(101, mon, '{"return": {}, "id": "libvirt-99"}')
    log.reply(101, mon, '{"return": {"status": "running", "running": true}, "id": "libvirt-1"}')
    log.send(100, mon, cmd("cont", 2))
    log.close(100, mon)
    path = log.save(tmp_path / "odd.log")
    parser = LibvirtLogParser(str(path)).parse()
    assert [p.message for p in parser.problems] == ["reply (id 'libvirt-99') to no command in flight; skipped"]
    assert parser.skipped["commands never written to the socket"] == 1
    (conn,) = parser.connections
    assert [i.record.kind for i in conn.items] == ["command", "reply", "note", "close"]
    assert "never written" in conn.items[2].record.text  # type: ignore[attr-defined]
