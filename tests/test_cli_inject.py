"""``qmprr inject`` the way qmp-shell and virsh users use it, ``qmprr events``, and ``tcp:`` sockets.

Through the real CLI (subprocesses) against a real QEMU, directly and
through ``qmprr launch``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import support
from qmprr.client import QmpClient
from qmprr.recording import Command, Fd, Taint
from test_cli_service import assert_one_error_line, load, marker, qemu_none, run_qmprr  # noqa: F401 (marker: a fixture)

pytestmark = pytest.mark.qemu


@pytest.fixture
def running(tmp_path: Path, marker: str) -> Iterator[support.Launched]:  # noqa: F811
    with support.qmprr_launch(tmp_path, qemu_none(marker)) as launched:
        yield launched


def inject(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    return run_qmprr(tmp_path, "inject", *args)


def block_nodes(tmp_path: Path, sock: str) -> dict[str, dict]:
    status, out, err = inject(tmp_path, sock, "query-named-block-nodes")
    assert (status, err) == (0, ""), err
    return {node["node-name"]: node for node in json.loads(out)}


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def started(proc: subprocess.Popen, out: Path, *args: str) -> None:
    """Fail fast if *proc* exited instead of serving."""
    if proc.poll() is not None:
        raise AssertionError(f"exited {proc.returncode}: {out.read_text() if out.exists() else ''}")


# -- key=value and -j --------------------------------------------------------------------------------


def test_key_value_arguments_as_qmp_shell(running: support.Launched, tmp_path: Path) -> None:
    dbg = running.debug_socket
    status, out, err = inject(tmp_path, dbg, "qom-get", "path=/machine", "property=type")
    assert (status, err, json.loads(out)) == (0, "", "none-machine")
    # Options anywhere among the positionals.
    for words in (["--json", "qom-get", "path=/machine", "property=type"],
                  ["qom-get", "--json", "path=/machine", "property=type"],
                  ["qom-get", "path=/machine", "--json", "property=type"]):
        status, out, err = inject(tmp_path, dbg, *words)
        assert (status, err, out) == (0, "", '{"return":"none-machine"}\n'), words

    # An integer value is an integer: QEMU takes it as the size.
    status, out, err = inject(tmp_path, dbg, "object-add", "qom-type=memory-backend-ram", "id=m0", "size=1048576")
    assert (status, err) == (0, ""), err
    status, out, err = inject(tmp_path, dbg, "qom-get", "path=/objects/m0", "property=size")
    assert json.loads(out) == 1048576

    # Dotted keys nest; -j gives a JSON object that key=value pairs add to; true is a boolean.
    status, out, err = inject(tmp_path, dbg, "blockdev-add", "driver=raw", "node-name=top", "file.driver=null-co",
                              "file.size=4096", "file.node-name=bottom")
    assert (status, err) == (0, ""), err
    status, out, err = inject(tmp_path, dbg, "blockdev-add", "-j", '{"driver": "null-co", "size": 512}',
                              "node-name=zeroes", "read-zeroes=true")
    assert (status, err) == (0, ""), err
    nodes = block_nodes(tmp_path, dbg)
    assert nodes["top"]["drv"] == "raw" and nodes["bottom"]["drv"] == "null-co"
    assert nodes["bottom"]["image"]["virtual-size"] == 4096
    assert nodes["zeroes"]["image"]["virtual-size"] == 512

    # The issue's own example.
    status, out, err = inject(tmp_path, dbg, "blockdev-del", "node-name=top")
    assert (status, err, json.loads(out)) == (0, "", {})
    assert "top" not in block_nodes(tmp_path, dbg)

    # A QMP error is still exit 1.
    status, out, err = inject(tmp_path, dbg, "blockdev-del", "node-name=top")
    assert status == 1 and "error reply GenericError" in err

    assert running.stop() == 0
    sent = {c.msg["arguments"].get("node-name"): c.msg for c in load(running.record)
            if isinstance(c, Command) and c.msg["execute"] == "blockdev-add"}
    assert sent["top"]["arguments"] == {"driver": "raw", "node-name": "top",
                                        "file": {"driver": "null-co", "size": 4096, "node-name": "bottom"}}
    assert sent["zeroes"]["arguments"] == {"driver": "null-co", "size": 512, "node-name": "zeroes", "read-zeroes": True}


@pytest.mark.parametrize(
    "args, needle",
    [
        (["qom-get", "path"], "expected a key=value pair"),
        (["qom-get", "path=/a", "path=/b"], 'cannot set "path" multiple times'),
        (["qom-get", "a=1", "a.b=2"], "both leaf and non-leaf"),
        (["qom-get", "-j", "[1]"], "-j takes a JSON object"),
        (["qom-get", "-j", "{"], "-j: not JSON"),
        (['{"execute": "stop"}', "a=1"], "not with a whole JSON message"),
        (["--hmp", "info status", "a=1"], "not both"),
        (["--fdname", "x", "query-status"], "go with --pass-fd"),
        (["--pass-fd", "f", "query-status"], "--fdname NAME (getfd) or --fdset ID"),
        (["--pass-fd", "f", "--fdname", "a", "--fdset", "1", "query-status"], "one of them"),
        (["--pass-fd", "/nonexistent/f", "--fdname", "a", "--fd-mode", "r"], "cannot open"),
        (["qom-get", "--bogus", "x=1"], "unrecognized arguments: --bogus"),
    ],
)
def test_argument_errors_are_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "f").write_bytes(b"")
    status, out, err = inject(tmp_path, str(tmp_path / "never-used.sock"), *args)
    assert status == 2 and out == ""
    assert needle in assert_one_error_line(err)


# -- --pass-fd -----------------------------------------------------------------------------------------


def migrated(tmp_path: Path, sock: str) -> bool:
    status, out, _ = inject(tmp_path, sock, "query-migrate")
    return status == 0 and json.loads(out).get("status") == "completed"


def test_pass_fd_to_qemu_directly(tmp_path: Path) -> None:
    with support.qemu_with_qmp(tmp_path) as (_proc, sock):
        # getfd, then the command using it: QEMU migrates into our file.
        target = tmp_path / "vm.mig"
        status, out, err = inject(tmp_path, sock, "--pass-fd", str(target), "--fd-mode", "w", "--fdname", "mig",
                                  "migrate", "uri=fd:mig")
        assert (status, json.loads(out)) == (0, {}), err
        assert err == f"qmprr: passed {target} as fd name 'mig'\n"
        support.wait_until(lambda: migrated(tmp_path, sock), "the migration to the passed fd")
        assert target.read_bytes()[:4] == b"QEVM"  # QEMU's migration stream magic

        # add-fd into a set, then a node opening /dev/fdset/ID.
        disk = tmp_path / "disk.img"
        disk.write_bytes(b"\0" * 65536)
        status, out, err = inject(tmp_path, sock, "--pass-fd", str(disk), "--fdset", "7",
                                  "blockdev-add", "driver=file", "filename=/dev/fdset/7", "node-name=disk0")
        assert status == 0, err
        assert "into fdset 7 (/dev/fdset/7)" in err
        node = block_nodes(tmp_path, sock)["disk0"]
        assert (node["file"], node["image"]["virtual-size"]) == ("/dev/fdset/7", 65536)

        # getfd alone: QEMU keeps the name after this client leaves, until closefd.
        status, out, err = inject(tmp_path, sock, "--pass-fd", str(disk), "--fdname", "kept")
        assert (status, json.loads(out)) == (0, {}), err
        assert inject(tmp_path, sock, "closefd", "fdname=kept")[0] == 0
        status, _, err = inject(tmp_path, sock, "closefd", "fdname=kept")
        assert status == 1 and "not found" in err

        # QEMU's own check of the name: exit 1, the command after it never sent.
        status, out, err = inject(tmp_path, sock, "--pass-fd", str(disk), "--fdname", "1bad", "migrate", "uri=fd:1bad")
        assert status == 1 and "not starting with a digit" in err


def test_pass_fd_through_the_proxy(tmp_path: Path, marker: str) -> None:  # noqa: F811
    """fds pass on a primary socket served with --socket-fd; a debug socket says it does not."""
    support.require_qemu()
    path = str(tmp_path / "mgmt.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    record, dbg = tmp_path / "rec.jsonl", str(tmp_path / "dbg.sock")
    proc = subprocess.Popen(
        [*support.QMPRR, "launch", "--record", str(record), "--socket-fd", str(listener.fileno()),
         "--debug-socket", dbg, "--", *qemu_none(marker)],
        stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=[listener.fileno()],
    )
    listener.close()
    try:
        support.wait_for_socket(dbg, proc=proc)
        target = tmp_path / "vm.mig"
        status, out, err = inject(tmp_path, path, "--pass-fd", str(target), "--fd-mode", "w", "--fdname", "mig",
                                  "migrate", "uri=fd:mig")
        assert status == 0, err
        support.wait_until(lambda: migrated(tmp_path, path), "the migration to the passed fd")
        assert target.read_bytes()[:4] == b"QEVM"

        status, out, err = inject(tmp_path, dbg, "--pass-fd", str(target), "--fdname", "x")
        assert status == 1
        assert "No file descriptor supplied via SCM_RIGHTS" in err and "--socket-fd" in err
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    records = load(record)
    (fd,) = [r for r in records if isinstance(r, Fd)]
    by_seq = {r.seq: r for r in records}
    getfd = by_seq[fd.cmd]
    assert isinstance(getfd, Command) and getfd.client_id == "inject-2"
    assert (getfd.msg["execute"], getfd.msg["arguments"]) == ("getfd", {"fdname": "mig"})
    assert fd.stat is not None and fd.stat["type"] == "file"


def test_pass_fd_needs_a_unix_socket(tmp_path: Path) -> None:
    status, out, err = inject(tmp_path, f"tcp:127.0.0.1:{free_port()}", "--pass-fd", str(tmp_path), "--fdname", "x")
    assert status == 2 and "fds cannot be passed over TCP" in assert_one_error_line(err)


# -- events --------------------------------------------------------------------------------------------


def events(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    out, err = tmp_path / f"events-{len(list(tmp_path.glob('events-*')))}.out", tmp_path / "events.err"
    with open(out, "wb") as o, open(err, "ab") as e:
        proc = subprocess.Popen([*support.QMPRR, "events", *args], stdin=subprocess.DEVNULL, stdout=o, stderr=e)
    return proc, out, err


def negotiated(record: Path, name: str) -> bool:
    """Whether the client *name* has negotiated (qmprr subscribes it to events right then)."""
    return any(r.get("kind") == "local" and r.get("src") == name for r in support.records_on_disk(record))


def test_events_as_they_come(running: support.Launched, tmp_path: Path) -> None:
    every, every_out, _ = events(tmp_path, running.debug_socket, "--count", "2")
    picked, picked_out, _ = events(tmp_path, running.debug_socket, "--filter", "res*", "--filter", "NOPE", "--json",
                                   "--count", "1")
    support.wait_until(lambda: negotiated(running.record, "debug-1") and negotiated(running.record, "debug-2"),
                       "both events clients negotiating")
    for command in ("stop", "cont"):
        assert inject(tmp_path, running.socket, command)[0] == 0
    assert (every.wait(30), picked.wait(30)) == (0, 0)

    lines = every_out.read_text().splitlines()
    assert [line.split(" at ")[0] for line in lines] == ["event STOP", "event RESUME"]
    for line in lines:
        stamp = line.split(" at ")[1].split(":")[0]
        seconds, micros = stamp.split(".")
        assert seconds.isdigit() and len(micros) == 6 and line.endswith(": <null>")
    (event,) = [json.loads(line) for line in picked_out.read_text().splitlines()]
    assert event["event"] == "RESUME" and set(event["timestamp"]) == {"seconds", "microseconds"}

    assert running.stop() == 0
    assert not [r for r in load(running.record) if isinstance(r, Taint)]  # listening on the debug socket taints nothing


def test_events_end_on_sigint_eof_and_timeout(running: support.Launched, tmp_path: Path) -> None:
    status, out, err = run_qmprr(tmp_path, "events", running.debug_socket, "--timeout", "0.2")
    assert (status, out, err) == (0, "", "")
    status, out, err = run_qmprr(tmp_path, "events", running.debug_socket, "--timeout", "0.2", "--count", "1")
    assert (status, out, err) == (1, "", "")

    interrupted, _, errors = events(tmp_path, running.debug_socket)
    at_eof, at_eof_out, _ = events(tmp_path, running.debug_socket, "--filter", "SHUTDOWN")
    support.wait_until(lambda: negotiated(running.record, "debug-3") and negotiated(running.record, "debug-4"),
                       "both events clients negotiating")
    interrupted.send_signal(signal.SIGINT)
    assert interrupted.wait(30) == 0
    assert running.stop() == 0  # qmprr quits QEMU (SHUTDOWN) and closes its sockets: EOF
    assert at_eof.wait(30) == 0
    assert at_eof_out.read_text().startswith("event SHUTDOWN at ")
    assert errors.read_text() == ""


def test_events_cannot_connect(tmp_path: Path) -> None:
    status, out, err = run_qmprr(tmp_path, "events", str(tmp_path / "missing.sock"))
    assert status == 2 and "cannot connect" in assert_one_error_line(err)


# -- tcp: ----------------------------------------------------------------------------------------------


def test_tcp_sockets(tmp_path: Path, marker: str) -> None:  # noqa: F811
    support.require_qemu()
    primary, debug = free_port(), free_port()
    record = tmp_path / "rec.jsonl"
    err_path = tmp_path / "launch.err"
    with open(err_path, "wb") as err_file:
        proc = subprocess.Popen(
            [*support.QMPRR, "launch", "--record", str(record), "--socket", f"tcp:127.0.0.1:{primary}",
             "--debug-socket", f"tcp:localhost:{debug}", "--", *qemu_none(marker)],
            stdin=subprocess.DEVNULL, stderr=err_file, cwd=tmp_path,
        )
    try:
        support.wait_until(lambda: started(proc, err_path) or tcp_listening(debug), "the debug TCP socket")
        status, out, err = inject(tmp_path, f"tcp:127.0.0.1:{primary}", "query-name")
        assert (status, err, json.loads(out)) == (0, "", {"name": marker})
        status, out, err = inject(tmp_path, f"tcp:localhost:{debug}", "qom-get", "path=/machine", "property=type")
        assert (status, err, json.loads(out)) == (0, "", "none-machine")
        status, out, err = run_qmprr(tmp_path, "events", f"tcp:127.0.0.1:{debug}", "--timeout", "0.2")
        assert (status, err) == (0, "")
        shell = subprocess.run([str(Path(sys.executable).with_name("qmp-shell")), f"127.0.0.1:{primary}"],
                               input="query-name\n", capture_output=True, text=True, timeout=30)
        assert f'"name": "{marker}"' in shell.stdout, shell.stdout + shell.stderr  # qmp-shell over TCP, unmodified
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert f"primary socket tcp:127.0.0.1:{primary}, debug socket tcp:localhost:{debug}" in err_path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("tcp")) == []  # no socket files
    peers = [r for r in support.records_on_disk(record) if r.get("kind") == "client" and r["action"] == "connect"]
    assert peers and all(p["peer"].startswith("tcp 127.0.0.1:") for p in peers)


def test_tcp_listens_on_loopback_only_unless_told(tmp_path: Path, marker: str) -> None:  # noqa: F811
    port = free_port()
    record = tmp_path / "rec.jsonl"
    for sockets in (["--socket", f"tcp:0.0.0.0:{port}"],
                    ["--socket", str(tmp_path / "q.sock"), "--debug-socket", f"tcp:0.0.0.0:{port}"]):
        status, out, err = run_qmprr(tmp_path, "launch", "--record", str(record), *sockets, "--", *qemu_none(marker))
        assert status == 2
        line = assert_one_error_line(err)
        assert "not a loopback address" in line and "--listen-any" in line and "unauthenticated" in line
        assert not record.exists() and not support.qemu_processes(marker)  # refused before QEMU started

    proc = subprocess.Popen(
        [*support.QMPRR, "launch", "--record", str(record), "--socket", f"tcp:0.0.0.0:{port}", "--listen-any",
         "--", *qemu_none(marker)],
        stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        support.wait_until(lambda: started(proc, record) or tcp_listening(port), "the TCP socket")
        assert inject(tmp_path, f"tcp:127.0.0.1:{port}", "query-status")[0] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


@pytest.mark.parametrize("where, needle", [
    ("tcp:127.0.0.1", "not tcp:HOST:PORT"),
    ("tcp:127.0.0.1:0", "not tcp:HOST:PORT"),
    ("tcp:127.0.0.1:70000", "not tcp:HOST:PORT"),
    ("tcp:::1:4444", "in brackets"),
    ("tcp:[::1]:1", "cannot connect to tcp:[::1]:1"),
])
def test_bad_tcp_addresses(tmp_path: Path, where: str, needle: str) -> None:
    status, out, err = inject(tmp_path, where, "query-status")
    assert status == 2 and needle in assert_one_error_line(err)
    if "connect" not in needle:  # the same words from a listener, before QEMU starts
        status, out, err = run_qmprr(tmp_path, "launch", "--record", str(tmp_path / "r.jsonl"), "--socket", where,
                                     "--", *support.QEMU_NONE)
        assert status == 2 and needle in assert_one_error_line(err)


def test_inject_to_qemus_own_tcp_monitor(tmp_path: Path) -> None:
    support.require_qemu()
    port = free_port()
    proc = subprocess.Popen([*support.QEMU_NONE, "-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        support.wait_until(lambda: tcp_listening(port), "QEMU's TCP monitor")
        with QmpClient(f"tcp:127.0.0.1:{port}") as client:  # the library too
            assert client.execute("query-status")["return"]["running"] is True
        status, out, err = inject(tmp_path, f"tcp:127.0.0.1:{port}", "qom-get", "path=/machine", "property=type")
        assert (status, err, json.loads(out)) == (0, "", "none-machine")
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("chaos", [[], ["--chaos", "3"]], ids=["plain", "chaos"])
def test_the_fake_serves_tcp_on_loopback_only_unless_told(tmp_path: Path, chaos: list[str]) -> None:
    """``qmprr fake --socket tcp:...``: the same address rules as launch and proxy (plain and chaos mode)."""
    recording = str(Path(__file__).parent.parent / "recordings" / "lifecycle.jsonl")
    port = free_port()
    status, out, err = run_qmprr(tmp_path, "fake", recording, "--socket", f"tcp:0.0.0.0:{port}", *chaos)
    assert status == 2 and "--listen-any" in assert_one_error_line(err)
    proc = subprocess.Popen(
        [*support.QMPRR, "fake", recording, "--socket", f"tcp:0.0.0.0:{port}", "--listen-any", "--mode", "lenient",
         "--reuse", "--keep-serving", *chaos],  # keep serving: the probe connection is a client
        stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        support.wait_until(lambda: proc.poll() is not None or tcp_listening(port), "the fake's TCP socket")
        status, out, err = inject(tmp_path, f"tcp:127.0.0.1:{port}", "query-status")
        assert (status, err) == (0, "") and json.loads(out)["status"] == "running"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
