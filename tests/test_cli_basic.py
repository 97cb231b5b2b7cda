"""The ``qmprr`` console script, run as a user runs it (a separate process).

Child processes get the environment a user has: ``PYTHONUNBUFFERED`` and
colour variables are removed unless a test sets them, since they change how
output is buffered and coloured.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
from pathlib import Path

import pytest
from support import qmprr_exe

from qmprr.recording import (
    Client,
    Close,
    Command,
    Event,
    Fd,
    Greeting,
    Local,
    Note,
    RecordWriter,
    Reply,
    Taint,
    Tx,
)

ANSI = "\x1b["



def user_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONUNBUFFERED", "NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE")}
    env["TERM"] = "xterm-256color"
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [qmprr_exe(), *args], capture_output=True, text=True, timeout=60,
        env=env or user_env(), **kw,
    )


def run_in_pty(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """Run qmprr with stdout on a terminal; its exit status and output."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([qmprr_exe(), *args], stdout=slave, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=env)
    finally:
        os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    rc = proc.wait(30)
    proc.stderr.close()
    return rc, b"".join(chunks).decode()


def make_recording(path: Path, extra_events: int = 0) -> int:
    """A recording with every kind of record; returns its number of records.

    Free-form strings here hold no control characters (see
    test_show_escapes_control_characters for those).
    """
    with RecordWriter.create(path, sync="none") as w:
        w.append(Greeting(msg={"QMP": {"version": {"qemu": {"major": 8, "minor": 2, "micro": 0}},
                                       "capabilities": ["oob"]}}))
        w.append(Client(action="connect", name="primary-1", role="primary", peer="unix"))
        c = w.append(Command(src="primary-1", role="primary", msg={"execute": "stop", "id": "q1"},
                             client_id="libvirt-1"))
        w.append(Event(msg={"event": "STOP", "data": {}}))
        w.append(Reply(cmd=c.seq, msg={"return": {}, "id": "q1"}))
        c = w.append(Command(src="debug-1", role="debug",
                             msg={"execute": "qom-get", "arguments": {"path": "/", "property": "x\ny"}}))
        w.append(Reply(cmd=c.seq, msg={"error": {"class": "GenericError", "desc": "no such property"}}))
        w.append(Taint(reason="custom-monitor", client="debug-1"))
        w.append(Tx(action="begin", tx=1, label="migrate", owner="primary-1"))
        w.append(Tx(action="abort", tx=1, label="migrate", owner="primary-1", reason="idle"))
        w.append(Fd(src="primary-1", placeholder="fd:0", cmd=3))
        w.append(Note(text="a note", data={"k": "v\nw"}))
        w.append(Local(src="debug-1", role="debug", msg={"execute": "qmp_capabilities"}, reply={"return": {}}))
        w.append(Local(src="debug-1", role="debug", input="{oops",
                       reply={"error": {"class": "GenericError", "desc": "JSON parse error"}}))
        for i in range(extra_events):
            w.append(Event(msg={"event": "TICK", "data": {"i": i}}))
        w.append(Close(reason="eof", detail="QEMU exited"))
        return w.next_seq


@pytest.fixture
def recording(tmp_recording: Path) -> tuple[Path, int]:
    return tmp_recording, make_recording(tmp_recording)


# -- help, version, usage ---------------------------------------------------------


def test_help_lists_the_commands() -> None:
    res = run("--help")
    assert res.returncode == 0 and res.stderr == ""
    for cmd in ("verify", "show", "repair"):
        assert cmd in res.stdout
    for cmd in ("verify", "show", "repair"):
        sub = run(cmd, "--help")
        assert sub.returncode == 0 and "usage: qmprr " + cmd in sub.stdout


def test_version() -> None:
    res = run("--version")
    assert res.returncode == 0 and res.stdout.startswith("qmprr ")


def test_no_command_is_a_usage_error() -> None:
    res = run()
    assert res.returncode == 2
    assert res.stderr == "qmprr: the following arguments are required: COMMAND; see 'qmprr --help'\n"


# -- verify -------------------------------------------------------------------


def test_verify_clean(recording: tuple[Path, int]) -> None:
    path, n = recording
    res = run("verify", str(path))
    assert res.returncode == 0, res.stdout
    assert res.stderr == ""
    assert res.stdout.splitlines()[-1] == f"{path}: {n} records, ok"


def test_verify_lists_commands_in_flight(tmp_recording: Path) -> None:
    with RecordWriter.create(tmp_recording) as w:
        w.append(Command(src="primary-1", role="primary", msg={"execute": "quit", "id": 1}))
    res = run("verify", str(tmp_recording))
    assert res.returncode == 0
    assert f"{tmp_recording}: in flight when the log ended: seq 1 quit from primary-1" in res.stdout


@pytest.mark.parametrize("command", ["verify", "show", "repair"])
def test_missing_file_is_one_line_exit_2(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "nope.jsonl"
    res = run(command, str(missing))
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("qmprr: ") and str(missing) in lines[0]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("command", ["verify", "show", "repair"])
def test_not_a_recording_is_one_line_exit_2(tmp_path: Path, command: str) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just some text\n")
    res = run(command, str(path))
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"qmprr: {path}: not a qmprr/1 recording")
    assert path.read_text() == "just some text\n"  # repair did not touch it


def test_directory_is_one_line_exit_2(tmp_path: Path) -> None:
    res = run("verify", str(tmp_path))
    assert res.returncode == 2
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("qmprr: ")


# -- show -----------------------------------------------------------------------


def test_show_prints_one_line_per_record(recording: tuple[Path, int]) -> None:
    path, n = recording
    res = run("show", str(path))
    assert res.returncode == 0 and res.stderr == ""
    lines = res.stdout.splitlines()
    assert len(lines) == n  # newlines inside messages are escaped
    for seq, line in enumerate(lines):
        assert line.split()[1] == str(seq)
    assert ANSI not in res.stdout  # not a terminal
    assert "->" in lines[3] and "stop" in lines[3]
    assert "<-" in lines[5] and "stop" in lines[5] and "ms" in lines[5]
    assert "ERROR GenericError" in lines[7]


def test_show_escapes_control_characters(tmp_recording: Path) -> None:
    """Strings from clients, QEMU or users must not break the one-line-per-record
    layout nor reach the terminal as control sequences."""
    hostile = "evil\x1b]0;owned\x07\x1b[2J\rover\nwrite\x00"
    with RecordWriter.create(tmp_recording, sync="none") as w:
        c = w.append(Command(src="debug-1", role="debug", msg={"execute": hostile}))
        w.append(Reply(cmd=c.seq, msg={"error": {"class": hostile, "desc": hostile}}))
        w.append(Event(msg={"event": hostile}))
        w.append(Note(text=hostile))
        w.append(Tx(action="abort", tx=1, label=hostile, owner="p", reason=hostile))
        w.append(Close(reason=hostile, detail=hostile))
        n = w.next_seq
    res = subprocess.run([qmprr_exe(), "show", "--color", "never", str(tmp_recording)],
                         capture_output=True, env=user_env(), timeout=60)  # bytes: no newline translation
    assert res.returncode == 0
    lines = res.stdout.decode().split("\n")
    assert lines[-1] == ""
    assert len(lines[:-1]) == n, lines
    for line in lines[:-1]:
        assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in line), repr(line)


def test_show_reports_problems_on_stderr(recording: tuple[Path, int]) -> None:
    path, n = recording
    data = path.read_bytes().replace(b'"event":"STOP"', b'"event":"STOQ"')
    path.write_bytes(data + b'{"seq":')
    res = run("show", str(path))
    assert res.returncode == 0
    assert len(res.stdout.splitlines()) == n - 1
    errs = res.stderr.splitlines()
    assert len(errs) == 2 and all(e.startswith(f"qmprr: {path}:line ") for e in errs)
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("records", [200, 20_000])
def test_show_into_head(tmp_path: Path, records: int) -> None:
    """``qmprr show FILE | head -1``: the reader leaving early is not an error."""
    path = tmp_path / "big.jsonl"
    n = make_recording(path, extra_events=records)
    head = shutil.which("head")
    assert head is not None
    for _ in range(3):
        show = subprocess.Popen([qmprr_exe(), "show", str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=user_env())
        out = subprocess.run([head, "-1"], stdin=show.stdout, capture_output=True, timeout=60)
        show.stdout.close()
        err = show.stderr.read().decode()
        show.stderr.close()
        rc = show.wait(60)
        assert out.stdout.count(b"\n") == 1 and b"recording qmprr/1" in out.stdout
        assert "Traceback" not in err
        assert err == "", err
        assert rc == 0
    assert n > records


def test_show_to_a_closed_pipe(recording: tuple[Path, int]) -> None:
    """Output smaller than a pipe buffer, the reader gone before qmprr writes."""
    path, _ = recording
    for command in ("show", "verify"):
        r, w = os.pipe()
        os.close(r)
        try:
            res = subprocess.run([qmprr_exe(), command, str(path)], stdout=w, stderr=subprocess.PIPE,
                                 text=True, env=user_env(), timeout=60)
        finally:
            os.close(w)
        assert res.stderr == "", (command, res.stderr)
        assert res.returncode == 0, command


# -- colour -----------------------------------------------------------------------


def test_color_auto_on_a_terminal(recording: tuple[Path, int]) -> None:
    path, n = recording
    rc, out = run_in_pty("show", str(path), env=user_env())
    assert rc == 0
    assert ANSI in out
    assert len(out.splitlines()) == n


@pytest.mark.parametrize("value", ["1", "true", "0"])
def test_no_color_is_respected(recording: tuple[Path, int], value: str) -> None:
    path, n = recording
    rc, out = run_in_pty("show", str(path), env=user_env(NO_COLOR=value))
    assert rc == 0
    assert ANSI not in out
    assert len(out.splitlines()) == n


def test_empty_no_color_does_not_disable_color(recording: tuple[Path, int]) -> None:
    """no-color.org: NO_COLOR disables colour "when present and not an empty string"."""
    path, _ = recording
    rc, out = run_in_pty("show", str(path), env=user_env(NO_COLOR=""))
    assert rc == 0
    assert ANSI in out


def test_dumb_terminal_gets_no_color(recording: tuple[Path, int]) -> None:
    path, _ = recording
    rc, out = run_in_pty("show", str(path), env=user_env(TERM="dumb"))
    assert rc == 0 and ANSI not in out


def test_color_never_on_a_terminal(recording: tuple[Path, int]) -> None:
    path, _ = recording
    rc, out = run_in_pty("show", "--color", "never", str(path), env=user_env())
    assert rc == 0 and ANSI not in out


def test_color_always_into_a_pipe(recording: tuple[Path, int]) -> None:
    path, n = recording
    for env in (user_env(), user_env(NO_COLOR="1")):  # an explicit flag beats NO_COLOR
        res = run("show", "--color", "always", str(path), env=env)
        assert res.returncode == 0
        lines = res.stdout.splitlines()
        assert len(lines) == n
        assert all(ANSI in line and line.endswith("\x1b[0m") for line in lines)


def test_color_choice_is_validated(recording: tuple[Path, int]) -> None:
    path, _ = recording
    res = run("show", "--color", "sometimes", str(path))
    assert res.returncode == 2 and "invalid choice" in res.stderr


# -- repair ---------------------------------------------------------------------


def test_repair_clean_file_changes_nothing(recording: tuple[Path, int]) -> None:
    path, _ = recording
    before = path.read_bytes()
    res = run("repair", str(path))
    assert res.returncode == 0 and "nothing to repair" in res.stdout
    assert path.read_bytes() == before


def test_repair_torn_file(recording: tuple[Path, int]) -> None:
    path, n = recording
    with path.open("ab") as f:
        f.write(b'{"seq":99,"t":1.0,"kind":"no')
    assert run("verify", str(path)).returncode == 1
    res = run("repair", str(path))
    assert res.returncode == 0 and "truncated the torn last line" in res.stdout
    res = run("verify", str(path))
    assert res.returncode == 0
    assert res.stdout.splitlines()[-1] == f"{path}: {n + 1} records, ok"


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "inf"])
def test_inject_bad_timeout_is_one_line_exit_2(tmp_path: Path, timeout: str) -> None:
    res = run("inject", str(tmp_path / "no.sock"), "query-status", "--timeout", timeout)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("qmprr: ") and "--timeout" in res.stderr, res.stderr


@pytest.mark.parametrize("option, value", [
    ("--max-clients", "0"), ("--max-clients", "8M"), ("--client-output-budget", "lots"),
    ("--max-message", "1"), ("--debug-max-message", "-5K"),
])
def test_bad_limit_is_one_line_exit_2(tmp_path: Path, option: str, value: str) -> None:
    res = run("launch", "--record", str(tmp_path / "r.jsonl"), "--socket", str(tmp_path / "s"),
              f"{option}={value}", "--", "qemu-system-x86_64")
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("qmprr: ") and option in res.stderr, res.stderr
    assert not (tmp_path / "r.jsonl").exists()
