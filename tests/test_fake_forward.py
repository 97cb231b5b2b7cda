"""The hybrid fake (``qmprr fake --forward-unmatched``) against a real QEMU, through the CLI.

Commands the recording answers come from it; the rest go to a real
``qemu-system-x86_64`` started from the recorded command line (sandboxed), or
to a QEMU started here (``--upstream``); what was forwarded is recorded into
``--record OUT`` in the normal format, and the report says where each answer
came from.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp.legacy import QEMUMonitorProtocol

from qmprr.recording import RecordingReader, verify
from replay_support import QMPRR, RECORDINGS, Step, fake_process, qmprr, wait_for_socket, write_recording
from support import qemu_with_qmp, require_qemu

LIFECYCLE = RECORDINGS / "lifecycle.jsonl"



def _records(path: Path) -> list[Any]:
    with RecordingReader(path) as reader:
        return list(reader)


def _commands(path: Path) -> list[tuple[str, str]]:
    return [(r.msg["execute"], r.role) for r in _records(path) if r.kind == "command"]


@pytest.mark.qemu
def test_forward_unmatched_to_qemu_from_the_recorded_argv(tmp_path: Path) -> None:
    require_qemu()
    sock, out, report = tmp_path / "f.sock", tmp_path / "forwarded.jsonl", tmp_path / "report.json"
    with fake_process(LIFECYCLE, sock, "--mode", "lenient", "--forward-unmatched", "--record", str(out),
                      "--report", str(report)) as proc:
        mon = QEMUMonitorProtocol(str(sock))
        mon.connect(negotiate=True)
        assert mon.cmd("query-status")["running"] is True  # from the recording
        name = mon.cmd("query-name")  # never recorded: answered by the real QEMU
        kvm = mon.cmd("query-kvm")
        assert mon.cmd("stop") == {}  # from the recording (QEMU was not stopped)
        mon.close()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert name == {}  # QEMU started without -name
    assert kvm["present"] is True and "enabled" in kvm  # a real QEMU's answer: the recording has no query-kvm
    assert "2 answer(s) from the recording, 2 from QEMU (forwarded), 0 refused" in err
    assert "from QEMU: query-name" in err and "query-name was never recorded" in err
    assert "from the recording: query-status (recorded seq 6)" in err
    # What was forwarded is a normal, verifiable recording made through the channel.
    assert verify(out).ok
    forwarded = _commands(out)
    assert ("query-name", "primary") in forwarded and ("query-kvm", "primary") in forwarded
    assert all(c[0] not in ("query-status", "stop") for c in forwarded)  # answered from the recording
    with RecordingReader(out) as forwarded_rec, RecordingReader(LIFECYCLE) as recorded:
        assert forwarded_rec.header.qemu_argv[1:] == recorded.header.qemu_argv[1:]  # the recorded command line
    data = json.loads(report.read_text())
    sources = [(a["command"], a["source"]) for a in data["forwarding"]["answers"]]
    assert sources == [("query-status", "recording"), ("query-name", "qemu"), ("query-kvm", "qemu"),
                       ("stop", "recording")]


@pytest.mark.qemu
def test_forward_to_an_upstream_socket_and_its_events_reach_the_client(tmp_path: Path) -> None:
    require_qemu()
    sock, out = tmp_path / "f.sock", tmp_path / "forwarded.jsonl"
    with qemu_with_qmp(tmp_path) as (_qemu, upstream):
        with fake_process(LIFECYCLE, sock, "--mode", "strict", "--forward-unmatched", "--upstream", upstream,
                          "--record", str(out)) as proc:
            mon = QEMUMonitorProtocol(str(sock))
            mon.connect(negotiate=True)
            assert mon.cmd("query-status")["running"] is True  # recorded seq 6, next in strict order
            assert mon.cmd("query-status")["running"] is True  # strict expected stop: forwarded, real QEMU
            mon.cmd("stop")  # now the recorded one, with its recorded STOP event
            recorded_stop = mon.get_events(wait=5.0)
            mon.clear_events()
            mon.cmd("stop")  # strict expects query-status now: forwarded, and the real QEMU stops
            real_stop = mon.get_events(wait=5.0)
            mon.close()
            _, err = proc.communicate(timeout=30)
    # strict: the recorded commands never asked for are still unused, so the exit status says so
    assert proc.returncode == 1, err
    assert "from QEMU: query-status" in err and "already consumed" in err
    assert "from QEMU: stop (seq 8 of --record): stop was recorded, but its recorded answers are already consumed" in err
    assert [e["event"] for e in recorded_stop] == ["STOP"] and [e["event"] for e in real_stop] == ["STOP"]
    assert real_stop[0]["timestamp"] != recorded_stop[0]["timestamp"]  # the real QEMU's, not the recorded one
    assert [c for c, _ in _commands(out) if c != "qmp_capabilities"] == ["query-status", "stop"]
    assert "STOP" in [r.msg["event"] for r in _records(out) if r.kind == "event"]


@pytest.mark.qemu
def test_forwarded_command_refused_by_the_replay_policy(tmp_path: Path) -> None:
    require_qemu()
    sock, out = tmp_path / "f.sock", tmp_path / "forwarded.jsonl"
    with fake_process(LIFECYCLE, sock, "--mode", "lenient", "--forward-unmatched", "--record", str(out)) as proc:
        mon = QEMUMonitorProtocol(str(sock))
        mon.connect(negotiate=True)
        reply = mon.cmd_obj({"execute": "human-monitor-command",
                             "arguments": {"command-line": "migrate exec:touch /tmp/qmprr-pwned"}})
        mon.close()
        _, err = proc.communicate(timeout=30)
    assert "not forwarded to QEMU" in reply["error"]["desc"]
    assert proc.returncode == 1
    assert "1 refused" in err
    assert not os.path.exists("/tmp/qmprr-pwned")
    # the refusal is a record of the forwarded recording, like every answer
    locals_ = [r for r in _records(out) if r.kind == "local" and "error" in r.reply]
    assert any("not forwarded" in r.reply["error"]["desc"] for r in locals_)


def test_cli_misuse_is_one_line(tmp_path: Path) -> None:
    res = qmprr("fake", str(LIFECYCLE), "--socket", str(tmp_path / "s"), "--forward-unmatched")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--record OUT" in res.stderr
    existing = tmp_path / "exists.jsonl"
    existing.write_text("")
    res = qmprr("fake", str(LIFECYCLE), "--socket", str(tmp_path / "s"), "--forward-unmatched",
                "--record", str(existing))
    assert res.returncode == 2 and "file exists" in res.stderr and "Traceback" not in res.stderr
    assert "--forward-unmatched" in qmprr("fake", "--help").stdout


def test_unused_commands_are_capped_on_a_terminal(tmp_path: Path) -> None:
    rec = write_recording(tmp_path / "many.jsonl", [Step(f"query-thing-{i}") for i in range(45)])
    sock, report = tmp_path / "f.sock", tmp_path / "r.json"
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*QMPRR, "fake", str(rec), "--socket", str(sock), "--mode", "lenient",
                             "--report", str(report)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=terminal)
    os.close(terminal)
    try:
        wait_for_socket(sock, proc)
        mon = QEMUMonitorProtocol(str(sock))
        mon.connect(negotiate=True)
        mon.close()
        proc.wait(20)
        text = _read_all(controller)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)
    assert text.count("unused: seq") == 20
    assert "unused: 25 more of 45 not shown (--report FILE lists all)" in text
    assert len(json.loads(report.read_text())["unused"]) == 45


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the writer side is closed
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.qemu
def test_a_hostile_recorded_command_line_is_refused_before_serving(tmp_path: Path) -> None:
    require_qemu()
    rec = write_recording(tmp_path / "bad.jsonl", [Step("query-status")],
                          argv=["qemu-system-x86_64", "-machine", "none", "-drive", "file=/etc/shadow,if=none"])
    out, sock = tmp_path / "out.jsonl", tmp_path / "f.sock"
    res = qmprr("fake", str(rec), "--socket", str(sock), "--forward-unmatched", "--record", str(out))
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "reaches host path '/etc/shadow'" in res.stderr and "--upstream SOCKET" in res.stderr
    assert not out.exists() and not sock.exists()
    no_argv = write_recording(tmp_path / "proxy.jsonl", [Step("query-status")], argv=None)
    res = qmprr("fake", str(no_argv), "--socket", str(sock), "--forward-unmatched", "--record", str(out))
    assert res.returncode == 2 and "no QEMU command line" in res.stderr


@pytest.mark.qemu
def test_a_forwarded_fd_command_gets_the_policys_placeholder_fd(tmp_path: Path) -> None:
    require_qemu()
    sock, out = tmp_path / "f.sock", tmp_path / "forwarded.jsonl"
    with fake_process(LIFECYCLE, sock, "--mode", "lenient", "--forward-unmatched", "--record", str(out)) as proc:
        mon = QEMUMonitorProtocol(str(sock))
        mon.connect(negotiate=True)
        # the fake passes no client fds on: without the placeholder QEMU would answer
        # "No file descriptor supplied via SCM_RIGHTS"
        assert mon.cmd("getfd", fdname="fd-a") == {}
        assert mon.cmd("closefd", fdname="fd-a") == {}  # QEMU holds it: it can close it
        mon.close()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    fds = [r for r in _records(out) if r.kind == "fd"]
    assert len(fds) == 1
