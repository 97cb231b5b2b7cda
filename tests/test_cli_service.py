"""``qmprr launch``, ``qmprr proxy`` and ``qmprr inject`` end to end, as subprocesses.

Real QEMU throughout. Error cases check the CLI contract: exit status 2 and
one ``qmprr: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import support
from qmprr.client import QmpClient
from qmprr.recording import Close, Command, Event, Header, Record, Reply, Taint, read_records, verify

pytestmark = pytest.mark.qemu


# -- helpers ------------------------------------------------------------------------


def run_qmprr(tmp_path: Path, *args: str, timeout: float = 30, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``qmprr ARGS``; (exit status, stdout, stderr).

    Output goes to files, not pipes: a QEMU that qmprr leaves behind would hold
    a pipe open and hang the test instead of failing it.
    """
    name = uuid.uuid4().hex[:8]
    out_path, err_path = tmp_path / f"out-{name}", tmp_path / f"err-{name}"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.run([*support.QMPRR, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                              timeout=timeout, env={**os.environ, **(env or {})})
    return proc.returncode, out_path.read_bytes().decode(), err_path.read_bytes().decode()


def assert_one_error_line(stderr: str, *, allow_qemu_lines: bool = False) -> str:
    """The single ``qmprr:`` line of *stderr* (and no traceback); returns it."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    ours = [line for line in lines if line.startswith("qmprr:")]
    assert len(ours) == 1, stderr
    assert lines[-1] == ours[0], stderr
    others = [line for line in lines if not line.startswith("qmprr:")]
    if allow_qemu_lines:
        # QEMU's own stderr is relayed as it comes; nothing else may appear.
        assert all(not line.startswith(("  File ", "Traceback")) for line in others), stderr
    else:
        assert others == [], stderr
    return ours[0]


def load(path: Path | str) -> list[Record]:
    report = verify(path)
    assert report.ok, [str(p) for p in report.problems]
    assert report.torn is None
    return list(read_records(path))


def commands(records: list[Record]) -> list[Command]:
    return [r for r in records if isinstance(r, Command)]


def reply_to(records: list[Record], command: Command) -> Reply:
    (reply,) = [r for r in records if isinstance(r, Reply) and r.cmd == command.seq]
    return reply


qemu_processes = support.qemu_processes


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique QEMU ``-name``; QEMUs left running with it are killed (by pid) afterwards."""
    name = f"qmprr-test-{uuid.uuid4().hex[:12]}"
    yield name
    support.kill_qemus_named(name)


def qemu_none(marker: str) -> list[str]:
    return [*support.QEMU_NONE, "-name", marker]


def mode(path: str) -> int:
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode), path
    return stat.S_IMODE(st.st_mode)


# -- launch: the happy path -----------------------------------------------------------


def test_launch_sockets_header_and_sigterm(tmp_path: Path, marker: str) -> None:
    argv = qemu_none(marker)
    with support.qmprr_launch(tmp_path, argv, "--label", "bug=123", "--label", "note=a=b") as launched:
        assert mode(launched.socket) == 0o600
        assert mode(launched.debug_socket) == 0o600
        with QmpClient(launched.socket) as client:
            greeting = client.greeting
            assert client.execute("query-status")["return"]["status"] == "running"
        assert qemu_processes(marker)
        assert launched.stop() == 0  # SIGTERM: QEMU quits cleanly, its status is ours
        stderr = launched.proc.stderr.read().decode()
    assert "Traceback" not in stderr
    assert stderr.startswith("qmprr: recording to "), stderr
    assert not os.path.exists(launched.socket) and not os.path.exists(launched.debug_socket)
    assert qemu_processes(marker) == []

    records = load(launched.record)
    header = records[0]
    assert isinstance(header, Header)
    assert header.qemu_argv == argv  # as given, without the private monitor options
    assert header.qemu_version == greeting["QMP"]["version"]
    assert header.qemu_version["qemu"]["major"] == 7
    assert header.qemu_env is not None and header.qemu_env.get("PATH") == os.environ["PATH"]
    assert header.labels == {"bug": "123", "note": "a=b"}

    quit_cmd = commands(records)[-1]
    assert (quit_cmd.src, quit_cmd.role, quit_cmd.msg["execute"]) == ("qmprr", "internal", "quit")
    after = records[records.index(quit_cmd) + 1 :]
    shutdown = [r for r in after if isinstance(r, Event)]
    assert [e.msg["event"] for e in shutdown] == ["SHUTDOWN"]
    assert shutdown[0].msg["data"]["reason"] == "host-qmp-quit"
    assert reply_to(records, quit_cmd).msg["return"] == {}
    assert isinstance(records[-1], Close)
    assert [r for r in records if isinstance(r, Close)] == [records[-1]]


def test_launch_exits_with_status_0_when_qemu_quits_by_itself(tmp_path: Path, marker: str) -> None:
    with support.qmprr_launch(tmp_path, qemu_none(marker)) as launched:
        with QmpClient(launched.socket) as client:
            assert client.execute("quit") == {"return": {}, "id": "inject-2"}
        assert launched.proc.wait(20) == 0  # no signal: QEMU's exit ends qmprr
        stderr = launched.proc.stderr.read().decode()
    assert "Traceback" not in stderr
    assert qemu_processes(marker) == []
    records = load(launched.record)
    quit_cmd = commands(records)[-1]
    assert (quit_cmd.src, quit_cmd.role, quit_cmd.msg["execute"]) == ("primary-1", "primary", "quit")
    assert quit_cmd.client_id == "inject-2"
    assert not any(c.src == "qmprr" and c.msg["execute"] == "quit" for c in commands(records))
    assert "SHUTDOWN" in [r.msg["event"] for r in records if isinstance(r, Event)]
    assert isinstance(records[-1], Close) and records[-1].reason == "eof"


def test_launch_exit_status_follows_qemu(tmp_path: Path, marker: str) -> None:
    # QEMU killed by a signal: qmprr reports it as a shell would (128+N).
    with support.qmprr_launch(tmp_path, qemu_none(marker)) as launched:
        (pid,) = qemu_processes(marker)
        os.kill(pid, signal.SIGKILL)
        assert launched.proc.wait(20) == 128 + signal.SIGKILL
    records = load(launched.record)
    assert isinstance(records[-1], Close) and records[-1].reason == "eof"


# -- launch: errors ------------------------------------------------------------------------


def _error_case(case: str, tmp_path: Path, marker: str, keep: list[socket.socket]) -> tuple[list[str], str]:
    """(qmprr arguments, text the error line must contain) for one failing launch.

    Listening sockets the case needs are put in *keep*; the caller closes them.
    """
    record, sock, dbg = str(tmp_path / "e.jsonl"), str(tmp_path / "e.sock"), str(tmp_path / "e-dbg.sock")
    base = ["launch", "--record", record, "--socket", sock, "--debug-socket", dbg]
    qemu = ["--", *qemu_none(marker)]
    if case == "qemu binary missing":
        return [*base, "--", "/nonexistent/qemu", "-machine", "none"], "/nonexistent/qemu"
    if case == "qemu fails at start-up":
        # QEMU prints "qemu-system-x86_64: unsupported machine type" and then a
        # hint line; the error must carry QEMU's error, not just the hint.
        return [*base, "--", support.QEMU, "-machine", "nosuchmachine", "-display", "none", "-name", marker], \
            "unsupported machine type"
    if case == "socket taken by a live listener":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(sock)
        listener.listen()
        keep.append(listener)
        return [*base, *qemu], sock
    if case == "debug socket taken by a live listener":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(dbg)
        listener.listen()
        keep.append(listener)
        return [*base, *qemu], dbg
    if case == "socket path is a regular file":
        Path(sock).write_text("not a socket\n")
        return [*base, *qemu], "not a socket"
    if case == "recording exists":
        Path(record).write_text("precious\n")
        return [*base, *qemu], "exists"
    if case == "malformed label":
        return [*base, "--label", "no-equals-sign", *qemu], "--label"
    if case == "empty label key":
        return [*base, "--label", "=value", *qemu], "--label"
    if case == "no qemu command line":
        return [*base, "--"], "'--'"
    if case == "qemu -daemonize":
        # Without the refusal QEMU's daemon child outlives qmprr (exit 0, an orphaned VM).
        return [*base, *qemu, "-daemonize"], "-daemonize forks QEMU into a daemon"
    if case == "qemu --daemonize":
        return [*base, *qemu, "--daemonize"], "-daemonize"
    if case == "qemu -runas without --keep-vm":
        return [*base, *qemu, "-runas", "nobody"], "-runas changes QEMU's user"
    if case == "--monitor-socket without --keep-vm":
        return [*base, "--monitor-socket", str(tmp_path / "m.sock"), *qemu], "--keep-vm"
    if case == "--keep-vm monitor socket taken by a live listener":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp_path / "m.sock"))
        listener.listen()
        keep.append(listener)
        return [*base, "--keep-vm", "--monitor-socket", str(tmp_path / "m.sock"), *qemu], "m.sock"
    raise AssertionError(case)


LAUNCH_ERRORS = [
    "qemu binary missing",
    "qemu fails at start-up",
    "socket taken by a live listener",
    "debug socket taken by a live listener",
    "socket path is a regular file",
    "recording exists",
    "malformed label",
    "empty label key",
    "no qemu command line",
    "qemu -daemonize",
    "qemu --daemonize",
    "qemu -runas without --keep-vm",
    "--monitor-socket without --keep-vm",
    "--keep-vm monitor socket taken by a live listener",
]


@pytest.mark.parametrize("case", LAUNCH_ERRORS)
def test_launch_error_is_one_clear_line_and_status_2(tmp_path: Path, marker: str, case: str) -> None:
    keep: list[socket.socket] = []
    args, needle = _error_case(case, tmp_path, marker, keep)
    try:
        status, stdout, stderr = run_qmprr(tmp_path, *args)
    finally:
        for s in keep:
            s.close()
    assert status == 2, stderr
    line = assert_one_error_line(stderr, allow_qemu_lines=case == "qemu fails at start-up")
    assert needle in line, line
    assert stdout == ""
    if case == "recording exists":
        assert (tmp_path / "e.jsonl").read_text() == "precious\n"  # never overwritten
    if case == "socket path is a regular file":
        assert (tmp_path / "e.sock").read_text() == "not a socket\n"


@pytest.mark.parametrize("loop", ["default", "asyncio"])
@pytest.mark.parametrize(
    "case", ["qemu fails at start-up", "socket taken by a live listener", "debug socket taken by a live listener",
             "socket path is a regular file", "qemu -daemonize"]
)
def test_launch_error_leaves_no_qemu_and_no_socket_behind(tmp_path: Path, marker: str, case: str, loop: str) -> None:
    # "asyncio": the standard event loop even when uvloop is installed (QMPRR_EVENT_LOOP).
    # The primary socket must not outlive a failure to create the debug socket.
    before = set(os.listdir(tmp_path))
    keep: list[socket.socket] = []
    args, _ = _error_case(case, tmp_path, marker, keep)
    prepared = set(os.listdir(tmp_path)) - before
    try:
        status, _, stderr = run_qmprr(tmp_path, *args, env={"QMPRR_EVENT_LOOP": loop} if loop == "asyncio" else None)
    finally:
        for s in keep:
            s.close()
    assert status == 2, stderr
    try:  # a QEMU qmprr stopped may take a moment to be gone
        support.wait_until(lambda: not qemu_processes(marker), "QEMU's exit", timeout=2.0)
    except TimeoutError:
        pass  # reported below
    problems = []
    if "Traceback" in stderr:
        problems.append(f"traceback on stderr: {stderr}")
    if qemu_processes(marker):
        problems.append("qmprr exited but left its QEMU running")
    sockets = sorted(p for p in set(os.listdir(tmp_path)) - prepared if p.endswith(".sock"))
    if sockets:
        problems.append(f"socket files left behind: {sockets}")
    assert problems == []


def test_launch_starts_when_a_stale_socket_file_is_in_the_way(tmp_path: Path, marker: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "rec.sock"))
    stale.close()  # the file stays, nobody listens
    with support.qmprr_launch(tmp_path, qemu_none(marker)) as launched:
        with QmpClient(launched.socket) as client:
            assert "return" in client.execute("query-name")
        assert launched.stop() == 0


# -- proxy -------------------------------------------------------------------------------------


def start_proxy(tmp_path: Path, upstream: str, *extra: str) -> tuple[subprocess.Popen, Path, str, str]:
    record, sock, dbg = tmp_path / "proxy.jsonl", str(tmp_path / "px.sock"), str(tmp_path / "px-dbg.sock")
    proc = subprocess.Popen(
        [*support.QMPRR, "proxy", "--upstream", upstream, "--record", str(record), "--socket", sock,
         "--debug-socket", dbg, *extra],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    support.wait_for_socket(dbg, proc=proc)
    return proc, record, sock, dbg


def test_proxy_records_and_leaves_qemu_running(tmp_path: Path) -> None:
    with support.qemu_with_qmp(tmp_path) as (qemu, upstream):
        proc, record, sock, dbg = start_proxy(tmp_path, upstream, "--label", "via=proxy")
        try:
            assert mode(sock) == 0o600 and mode(dbg) == 0o600
            with QmpClient(sock) as client:
                greeting = client.greeting
                assert client.execute("query-status")["return"]["status"] == "running"
                assert client.execute("human-monitor-command", {"command-line": "info status"})["return"] == (
                    "VM status: running\r\n"
                )
            status, stdout, stderr = run_qmprr(tmp_path, "inject", dbg, "query-name")
            assert status == 0, stderr
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            support.reap(proc)
        assert "Traceback" not in proc.stderr.read().decode()
        # QEMU keeps running, and its monitor is free again.
        assert qemu.poll() is None
        with QmpClient(upstream) as direct:
            assert direct.execute("query-status")["return"]["status"] == "running"

    records = load(record)
    header = records[0]
    assert isinstance(header, Header)
    assert header.qemu_argv is None and header.qemu_env is None
    assert header.qemu_version == greeting["QMP"]["version"]
    assert header.labels == {"via": "proxy"}
    cmds = commands(records)
    assert [(c.src, c.role, c.msg["execute"]) for c in cmds] == [
        ("qmprr", "internal", "qmp_capabilities"),
        ("primary-1", "primary", "query-status"),
        ("primary-1", "primary", "human-monitor-command"),
        ("debug-1", "debug", "query-name"),
    ]
    assert [c.client_id for c in cmds[1:]] == ["inject-2", "inject-3", "inject-2"]
    assert [(t.reason, t.client) for t in records if isinstance(t, Taint)] == [("custom-monitor", "debug-1")]
    assert isinstance(records[-1], Close) and records[-1].reason == "stopped"


def test_proxy_exits_0_when_qemu_goes_away(tmp_path: Path) -> None:
    with support.qemu_with_qmp(tmp_path) as (qemu, upstream):
        proc, record, sock, _ = start_proxy(tmp_path, upstream)
        try:
            with QmpClient(sock) as client:
                assert client.execute("quit")["return"] == {}
            assert proc.wait(20) == 0
            assert qemu.wait(10) == 0
        finally:
            support.reap(proc)
    records = load(record)
    assert isinstance(records[-1], Close) and records[-1].reason == "eof"


def test_proxy_missing_upstream_is_a_clear_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-qemu.sock")
    record = tmp_path / "p.jsonl"
    status, stdout, stderr = run_qmprr(
        tmp_path, "proxy", "--upstream", missing, "--record", str(record), "--socket", str(tmp_path / "p.sock")
    )
    assert status == 2
    line = assert_one_error_line(stderr)
    assert missing in line and "No such file or directory" in line
    assert not record.exists()
    assert not (tmp_path / "p.sock").exists()


def test_proxy_upstream_that_is_not_qmp_is_a_clear_error(tmp_path: Path) -> None:
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen()
    try:
        status, _, stderr = run_qmprr(
            tmp_path, "proxy", "--upstream", str(tmp_path / "silent.sock"), "--record", str(tmp_path / "s.jsonl"),
            "--socket", str(tmp_path / "s.sock"), timeout=40,
        )
    finally:
        silent.close()
    assert status == 2
    assert "QMP" in assert_one_error_line(stderr)


# -- inject ---------------------------------------------------------------------------------------


@pytest.fixture
def running(tmp_path: Path, marker: str) -> Iterator[support.Launched]:
    with support.qmprr_launch(tmp_path, qemu_none(marker)) as launched:
        yield launched


def inject(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    return run_qmprr(tmp_path, "inject", *args)


def test_inject(running: support.Launched, tmp_path: Path, marker: str) -> None:
    dbg, primary = running.debug_socket, running.socket

    status, out, err = inject(tmp_path, dbg, '{"execute": "query-status"}')
    assert (status, err) == (0, "")
    assert json.loads(out) == {"status": "running", "singlestep": False, "running": True}

    status, out, err = inject(tmp_path, dbg, "query-name")
    assert (status, err, json.loads(out)) == (0, "", {"name": marker})

    status, out, err = inject(tmp_path, dbg, '{"execute": "qom-get", "arguments": {"path": "/machine", "property": "type"}}')
    assert (status, err) == (0, "")
    assert json.loads(out) == "none-machine"

    status, out, err = inject(tmp_path, dbg, "--hmp", "info status")
    assert (status, err, out) == (0, "", "VM status: running\r\n")

    status, out, err = inject(tmp_path, dbg, "query-status", "--json")
    assert (status, err) == (0, "")
    assert out.count("\n") == 1
    assert json.loads(out) == {"return": {"status": "running", "singlestep": False, "running": True}}

    status, out, err = inject(tmp_path, primary, "--json", "--hmp", "info name")
    assert (status, err) == (0, "")
    assert json.loads(out) == {"return": f"{marker}\r\n"}

    # QMP errors: exit 1, the error on stderr.
    status, out, err = inject(tmp_path, dbg, "no-such-command")
    assert status == 1
    assert err == "qmprr: error reply CommandNotFound: The command no-such-command has not been found\n"
    assert json.loads(out)["error"]["class"] == "CommandNotFound"

    status, out, err = inject(tmp_path, "--json", dbg, '{"execute": "qom-get", "arguments": {"path": "/machine"}}')
    assert status == 1
    assert json.loads(out) == {"error": {"class": "GenericError", "desc": "Parameter 'property' is missing"}}

    # The default policy refuses quit to debug clients: exit 1, QEMU still runs.
    status, out, err = inject(tmp_path, dbg, "quit")
    assert status == 1 and "policy refuses 'quit'" in err
    status, out, err = inject(tmp_path, dbg, "--hmp", "quit")
    assert status == 1 and "policy refuses 'hmp:quit'" in err
    assert qemu_processes(marker)

    assert running.stop() == 0
    records = load(running.record)
    cmds = [c for c in commands(records) if c.src != "qmprr"]
    assert {c.role for c in cmds if c.src.startswith("debug-")} == {"debug"}
    assert {c.role for c in cmds if c.src.startswith("primary-")} == {"primary"}
    assert all(c.client_id == "inject-2" for c in cmds)  # each inject's own id
    hmp = [c for c in cmds if c.msg["execute"] == "human-monitor-command"]
    assert [c.msg["arguments"] for c in hmp] == [{"command-line": "info status"}, {"command-line": "info name"}]
    assert not any(c.msg["execute"] == "quit" and c.src != "qmprr" for c in cmds)  # refused, never sent
    taints = [r for r in records if isinstance(r, Taint)]
    assert [t.client for t in taints] == ["debug-1"]


@pytest.mark.parametrize("option", [["--json"], ["--timeout", "5"]])
def test_inject_option_between_socket_and_command(running: support.Launched, tmp_path: Path, option: list[str]) -> None:
    # argparse gives the optional positional COMMAND nothing when SOCKET is followed by an
    # option; the CLI hands the leftover word to it (set_defaults(intermixed=...)).
    status, out, err = inject(tmp_path, running.debug_socket, *option, "query-status")
    assert (status, err) == (0, ""), err
    assert "running" in out


def test_inject_with_allow_quit(tmp_path: Path, marker: str) -> None:
    with support.qmprr_launch(tmp_path, qemu_none(marker), "--allow", "quit") as launched:
        status, out, err = inject(tmp_path, launched.debug_socket, "quit")
        assert (status, err) == (0, "")
        assert launched.proc.wait(20) == 0
    records = load(launched.record)
    quit_cmd = commands(records)[-1]
    assert (quit_cmd.src, quit_cmd.role, quit_cmd.msg["execute"]) == ("debug-1", "debug", "quit")


@pytest.mark.parametrize(
    "args, needle",
    [
        ([], "give a command"),
        (["not json!"], "not JSON"),
        (['["execute"]'], '"execute"'),
        (['{"arguments": {}}'], '"execute"'),
        (["query-status", "--hmp", "info status"], "not both"),
    ],
)
def test_inject_usage_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    status, out, err = inject(tmp_path, str(tmp_path / "never-used.sock"), *args)
    assert status == 2 and out == ""
    assert needle in assert_one_error_line(err)


def test_inject_missing_socket(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.sock")
    status, out, err = inject(tmp_path, missing, "query-status")
    assert status == 2 and out == ""
    line = assert_one_error_line(err)
    assert missing in line and "No such file or directory" in line


def test_inject_socket_nobody_listens_on(tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    status, out, err = inject(tmp_path, str(tmp_path / "stale.sock"), "query-status")
    assert status == 2 and out == ""
    assert "Connection refused" in assert_one_error_line(err)


# -- help ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["launch", "proxy", "inject"])
def test_help(tmp_path: Path, command: str) -> None:
    status, out, err = run_qmprr(tmp_path, command, "--help")
    assert (status, err) == (0, "")
    assert out.startswith(f"usage: qmprr {command}")
    if command != "inject":
        assert "0600" in out and "--debug-socket" in out
