"""Replay's sandbox, work folder and argument checks (issue 10), against a real QEMU 7.2.

The checks are the first line and name what they refuse; every bypass found
in the issue has a case here. The sandbox is the second: with the checks off
(``RunOptions(checks=False)``) an ``exec:`` migration makes QEMU die by SIGSYS,
reported as "refused by QEMU's sandbox".
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from qmprr.cli import main
from qmprr.replay.engine import ReplayOptions
from qmprr.replay.run import RunOptions, run_replay
from qmprr.replay.safety import argv_refusal, refusal, resolve_qemu
from replay_support import QEMU_NONE, RUNNING, Step, write_recording

ROOTS = ["/srv/replay"]


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["replay", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -- the checks: each bypass of the issue, refused with its reason (pure) ------------------------


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["-incoming", "exec:touch /tmp/x # a=b"], "runs a host program"),
        (["-qmp", "tcp:127.0.0.1:4444,server=on,wait=off"], "opens a network socket"),
        (["-monitor", "mon:telnet:127.0.0.1:4444"], "opens a network socket"),
        (["-serial", "file:/x=y"], "reaches host path '/x'"),
        (["-D", "/tmp/qemu.log"], "reaches host path '/tmp/qemu.log'"),
        (["-drive", 'file=json:{"file.filename":"/etc/x"}'], "reaches host path"),
        (["-drive", 'file=json:{"file.filename":"\\/etc\\/x"}'], "reaches host path '/etc/x'"),
        (["-drive", "serial=a,,,file=/some/path,if=none"], "reaches host path '/some/path'"),  # issue 18
        (["-drive", "file=fat:rw:/etc,if=none"], "reaches host path '/etc'"),
        (["-drive", "file=//etc/passwd,if=none"], "reaches host path"),
        (["-D", "../../../../etc/x"], "outside the work folder"),
        (["-chardev", "socket,id=c,host=10.0.0.1,port=22"], "opens a network socket"),
        (["-netdev", "tap,id=n,script=/x"], "runs a host program"),
        (["-netdev", "user,id=n,smb=/srv"], "runs a host program"),
        (["-netdev", "tap,id=n,fd=3"], "a file descriptor cannot come from a recording"),
        (["--daemonize"], "-daemonize detaches QEMU"),
        (["-readconfig", "x.cfg"], "reads options from a file"),
        (["-plugin", "libevil.so"], "loads host code"),
        (["-sandbox", "off"], "replay sets QEMU's sandbox itself"),
    ],
)
def test_argv_bypasses_are_refused_with_a_reason(args: list[str], reason: str) -> None:
    found = argv_refusal(args, ROOTS)
    assert found is not None and reason in found


@pytest.mark.parametrize(
    "args",
    [
        ["-machine", "none", "-nodefaults", "-display", "none"],
        ["-drive", "file=disk.qcow2,if=none,id=d0"],  # relative: inside the work folder
        ["-drive", "file=/srv/replay/disk.qcow2,if=none,id=d0"],
        ["-chardev", "socket,id=m,path=mon.sock,server=on,wait=off", "-mon", "chardev=m"],
        ["-append", "console=ttyS0 root=/dev/vda init=/bin/sh"],  # the guest's text, not host paths
        ["-bios", "/usr/share/qemu/bios.bin"],
    ],
)
def test_argv_checks_let_ordinary_lines_through(args: list[str]) -> None:
    assert argv_refusal(args, ROOTS) is None


@pytest.mark.parametrize(
    ("command", "arguments"),
    [
        ("human-monitor-command", {"command-line": 'migrate -d"exec:touch /tmp/x"'}),
        ("human-monitor-command", {"command-line": "logfile /tmp/x"}),
        ("human-monitor-command", {"command-line": "drive_add 0 if=none,serial=a,,,file=/etc/shadow"}),
        ("human-monitor-command", {"command-line": 'pmemsave 0 16 "/tmp/x"'}),
        ("migrate", {"uri": "exec:true"}),
        ("blockdev-add", {"driver": "raw", "node-name": "d", "file": "json:{\"filename\":\"/etc/x\"}"}),
        ("blockdev-create", {"job-id": "j", "options": {"driver": "file", "filename": "../" * 9 + "etc/x", "size": 0}}),
        ("screendump", {"filename": "/root/x.ppm"}),
        ("dump-guest-memory", {"paging": False, "protocol": "file:/root/guest.dump"}),
        ("netdev_add", {"type": "user", "id": "n", "smb": "/"}),
    ],
)
def test_command_bypasses_are_refused(command: str, arguments: dict[str, Any]) -> None:
    assert refusal(command, arguments, ROOTS) is not None


def test_argv0_is_the_local_emulator_of_that_name(tmp_path: Path) -> None:
    local = shutil.which("qemu-system-x86_64")
    assert resolve_qemu("/tmp/evil/qemu-system-x86_64", None) == local  # a recorded path is never run
    for bad in ("sh", "/usr/bin/qemu-img", "qemu-system-x86_64 -x", "evil/qemu-kvm"):
        with pytest.raises(ValueError, match="does not start a QEMU system emulator"):
            resolve_qemu(bad, None)
    assert resolve_qemu("anything", local) == local  # --qemu is the user's choice


# -- the sandbox ---------------------------------------------------------------------------------


def _replay_api(rec: Path, run: RunOptions, **options: Any) -> Any:
    return asyncio.run(run_replay(str(rec), run, ReplayOptions(event_timeout=0.2, **options)))


@pytest.mark.qemu
def test_exec_migration_dies_by_sigsys_and_is_refused_by_the_sandbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    rec = write_recording(tmp_path / "mig.jsonl", [
        Step("query-status", reply={"return": RUNNING}),
        Step("migrate", {"uri": f"exec:touch {marker}"}),
        Step("query-status", reply={"return": RUNNING}),
    ])
    report = _replay_api(rec, RunOptions(target="qemu", checks=False), keep_going=True)
    out = capsys.readouterr().out
    assert [s.status for s in report.steps] == ["matched", "refused"]  # QEMU is dead: nothing after
    assert report.steps[1].reason.startswith("refused by QEMU's sandbox: QEMU was killed by SIGSYS")
    assert "refused: refused by QEMU's sandbox" in out
    assert not marker.exists()


@pytest.mark.qemu
def test_the_host_is_read_only_but_the_work_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside, work = tmp_path / "outside", tmp_path / "work"
    outside.mkdir()
    work.mkdir()
    rec = write_recording(tmp_path / "log.jsonl", [
        Step("human-monitor-command", {"command-line": "log guest_errors"}, reply={"return": ""}),
        Step("human-monitor-command", {"command-line": f"logfile {outside}/x.log"}, reply={"return": ""}),
        Step("human-monitor-command", {"command-line": "logfile inside.log"}, reply={"return": ""}),
    ])
    report = _replay_api(rec, RunOptions(target="qemu", checks=False, workdir=str(work)), keep_going=True)
    assert "Read-only file system" in report.steps[1].actual_reply["return"]
    assert report.steps[2].status == "matched"
    assert not list(outside.iterdir()) and (work / "inside.log").exists()


@pytest.mark.qemu
def test_no_sandbox_no_replay_unless_allow_unsafe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    import qmprr.sandbox

    monkeypatch.setattr(qmprr.sandbox, "_unshare", lambda: ["false"])  # as when user namespaces are off
    qmprr.sandbox._interpreter.cache_clear()
    request.addfinalizer(qmprr.sandbox._interpreter.cache_clear)
    rec = write_recording(tmp_path / "r.jsonl", [Step("query-status", reply={"return": RUNNING})])
    status, _, err = replay(capsys, str(rec), "--target", "qemu")
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("qmprr: cannot sandbox QEMU: cannot make the namespaces") and "--allow-unsafe" in err
    status, out, err = replay(capsys, str(rec), "--target", "qemu", "--allow-unsafe")
    assert status == 0, out
    assert "qmprr: --allow-unsafe: no sandbox and no checks" in err


@pytest.mark.qemu
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody")
def test_unprivileged_replay_uses_a_user_namespace() -> None:
    folder = Path(tempfile.mkdtemp(prefix="qmprr-nobody-"))
    try:
        folder.chmod(0o777)
        rec = write_recording(folder / "r.jsonl", [
            Step("human-monitor-command", {"command-line": "log guest_errors"}, reply={"return": ""}),
            Step("human-monitor-command", {"command-line": "logfile inside.log"}, reply={"return": ""}),
        ])
        rec.chmod(0o644)
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "qmprr.cli", "replay", str(rec), "--target", "qemu", "--event-timeout", "0.2"],
            capture_output=True, text=True, cwd=folder, env={**os.environ, "HOME": str(folder)}, timeout=60,
        )
        if "cannot make the namespaces" in done.stderr:
            assert done.returncode == 2 and "--allow-unsafe" in done.stderr  # the clear way out
        else:
            assert done.returncode == 0, done.stdout + done.stderr
            assert "reproduced" in done.stdout
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the work folder -----------------------------------------------------------------------------


def _writes_relative(tmp_path: Path) -> Path:
    return write_recording(tmp_path / "rel.jsonl", [
        Step("human-monitor-command", {"command-line": "log guest_errors"}, reply={"return": ""}),
        Step("human-monitor-command", {"command-line": "logfile left-behind.log"}, reply={"return": ""}),
    ])


@pytest.mark.qemu
def test_default_work_folder_is_fresh_and_removed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = _writes_relative(tmp_path)
    caller = tmp_path / "caller"
    caller.mkdir()
    monkeypatch.chdir(caller)
    status, out, err = replay(capsys, str(rec), "--target", "qemu")
    assert status == 0, out
    assert not list(caller.iterdir())  # never the caller's folder
    assert "work folder" not in err

    status, out, err = replay(capsys, str(rec), "--target", "qemu", "--keep-workdir")
    assert status == 0, out
    kept = Path(err.split("qmprr: the work folder is kept: ", 1)[1].split("\n", 1)[0])
    try:
        assert (kept / "left-behind.log").exists() and not list(caller.iterdir())
    finally:
        shutil.rmtree(kept)


@pytest.mark.qemu
def test_workdir_chooses_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    status, out, _ = replay(capsys, str(_writes_relative(tmp_path)), "--target", "qemu", "--workdir", str(work))
    assert status == 0, out
    assert (work / "left-behind.log").exists()


# -- nothing replayed ----------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["fake", pytest.param("qemu", marks=pytest.mark.qemu)])
def test_nothing_replayed_is_not_reproduced(tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str) -> None:
    rec = write_recording(tmp_path / "r.jsonl", [Step("query-status", reply={"return": RUNNING})], argv=QEMU_NONE)
    status, out, _ = replay(capsys, str(rec), "--target", target, "--only-src", "nobody")
    assert status == 1
    assert "nothing replayed" in out and "reproduced" not in out


@pytest.mark.qemu
def test_a_start_up_spawn_is_reported_as_the_sandbox(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    rec = write_recording(tmp_path / "in.jsonl", [Step("query-status", reply={"return": RUNNING})],
                          argv=[*QEMU_NONE, "-incoming", f"exec:touch {marker}"])
    with pytest.raises(Exception, match=r"killed at start-up by its sandbox \(SIGSYS\)"):
        _replay_api(rec, RunOptions(target="qemu", checks=False))
    assert not marker.exists()


@pytest.mark.qemu
def test_the_pytest_plugin_records_in_the_sandbox(tmp_path: Path) -> None:
    from qmprr.pytest_plugin import _Recorder

    outside = tmp_path / "outside"
    outside.mkdir()

    async def go() -> tuple[Any, str]:
        recorder = await _Recorder.start(list(QEMU_NONE), tmp_path / "rec.jsonl", str(tmp_path / "s.sock"), "t")
        try:
            await recorder.channel.execute({"execute": "human-monitor-command",
                                            "arguments": {"command-line": "log guest_errors"}}, src="t", role="primary")
            reply = await recorder.channel.execute({"execute": "human-monitor-command", "arguments": {
                "command-line": f"logfile {outside}/x.log"}}, src="t", role="primary")
        finally:
            await recorder.stop()
        return reply, recorder.workdir

    reply, workdir = asyncio.run(go())
    assert "Read-only file system" in reply["return"]
    assert not list(outside.iterdir()) and not os.path.exists(workdir)  # its work folder is removed too


_PRINT_PDEATHSIG = (
    "import ctypes, sys; v = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(v), 0, 0, 0);"
    " print(v.value)"
)


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_a_sandboxed_program_dies_with_its_starter(user: str) -> None:
    """The parent-death signal holds inside the sandbox, also where a user namespace cleared it."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root (and setpriv to become nobody)")
    tmp_path = Path(tempfile.mkdtemp(prefix="qmprr-pdeath-"))
    try:
        tmp_path.chmod(0o777)
        _check_dies_with_starter(tmp_path, user)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _check_dies_with_starter(tmp_path: Path, user: str) -> None:
    from qmprr.sandbox import Sandbox

    become = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if user == "nobody" else []
    # The starter: a Python that builds the sandboxed command line for itself and runs it.
    starter = (
        "import subprocess, sys; from qmprr.sandbox import Sandbox;"
        f" cmd = Sandbox([{str(tmp_path)!r}]).command('/usr/bin/python3', ['-c', {_PRINT_PDEATHSIG!r}]);"
        " sys.exit(subprocess.run(cmd).returncode)"
    )
    done = subprocess.run([*become, sys.executable, "-c", starter], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    if "cannot make the namespaces" in done.stderr or "Operation not permitted" in done.stderr:
        pytest.skip(f"no user namespace for {user} here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(int(signal.SIGKILL))
    # And the check after it: a sandbox told of a parent that is not its parent runs nothing.
    cmd = Sandbox([str(tmp_path)]).command("/usr/bin/touch", [str(tmp_path / "ran")])
    cmd[cmd.index("--parent") + 1] = "1"
    refused = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert refused.returncode == 125 and "is gone" in refused.stderr
    assert not (tmp_path / "ran").exists()


# -- found by a hostile review ----------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["json: {", "json:\t{", "json:\n{", "json:{"])
@pytest.mark.parametrize("quote", ['"', "'"])
def test_json_filenames_are_read_as_qemu_reads_them(spelling: str, quote: str) -> None:
    """QEMU's JSON parser skips whitespace after ``json:`` and reads single quotes and ``\\/``."""
    from qmprr.replay.safety import argv_refusal

    q = quote
    spec = (f"file={spelling}{q}driver{q}:{q}raw{q},,{q}file{q}:{{{q}driver{q}:{q}file{q},,"
            f"{q}filename{q}:{q}\\/etc\\/hosts{q}}}}},if=none,id=d0")
    why = argv_refusal(["-drive", spec], ["/work/nothing"])
    assert why is not None and "/etc/hosts" in why


def test_unreadable_json_filename_is_refused() -> None:
    from qmprr.replay.safety import argv_refusal

    assert "cannot read" in argv_refusal(["-drive", "file=json: {bad,if=none"], ["/w"])


def _in_sandbox(folder: Path, code: str) -> subprocess.CompletedProcess[str]:
    from qmprr.sandbox import Sandbox

    return subprocess.run(Sandbox([str(folder)]).command("/usr/bin/python3", ["-c", code]),
                          capture_output=True, text=True, cwd=folder, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to bind-mount a file")
def test_a_file_bind_mount_is_read_only_in_the_sandbox(tmp_path: Path) -> None:
    """Container runtimes bind files (/etc/hosts): those mount points must be remounted too."""
    src, dst, work = tmp_path / "src", tmp_path / "dst", tmp_path / "work"
    src.write_text("host file\n")
    dst.write_text("")
    work.mkdir()
    inner = f"open({str(dst)!r}, 'a').write('PWNED')"
    starter = tmp_path / "starter.py"
    starter.write_text(
        "import subprocess, sys\nfrom qmprr.sandbox import Sandbox\n"
        f"cmd = Sandbox([{str(work)!r}]).command('/usr/bin/python3', ['-c', {inner!r}])\n"
        f"sys.exit(subprocess.run(cmd, cwd={str(work)!r}).returncode)\n"
    )
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           f"mount --bind {src} {dst} && exec {sys.executable} {starter}"],
                          capture_output=True, text=True, timeout=60)
    assert "Read-only file system" in done.stderr, done.stderr
    assert src.read_text() == "host file\n"


def test_the_sandbox_shows_no_host_device_nodes(tmp_path: Path) -> None:
    code = ("import os; print(sorted(n for n in os.listdir('/dev') if not n.startswith('.')));"
            " open('/dev/null', 'w').write('x'); print(len(open('/dev/urandom', 'rb').read(8)))")
    done = _in_sandbox(tmp_path, code)
    assert done.returncode == 0, done.stderr
    listed, random_bytes = done.stdout.splitlines()
    assert set(eval(listed)) <= {"null", "zero", "full", "random", "urandom", "kvm", "shm",
                                 "fd", "stdin", "stdout", "stderr"}
    assert random_bytes == "8"
    for node in ("/dev/kmsg", "/dev/mem", "/dev/vda", "/dev/sda"):
        assert _in_sandbox(tmp_path, f"open({node!r}, 'w')").returncode != 0  # neither there nor creatable
    assert _in_sandbox(tmp_path, "open('/dev/shm/scratch', 'w').write('x')").returncode == 0


@pytest.mark.qemu
def test_a_recorded_sandbox_option_is_replaced_by_the_replays(tmp_path: Path) -> None:
    """libvirt records -sandbox on,...; a hostile recording may say -sandbox off: neither applies."""
    marker = tmp_path / "pwned"
    rec = write_recording(tmp_path / "in.jsonl", [Step("query-status", reply={"return": RUNNING})],
                          argv=[*QEMU_NONE, "-sandbox", "off", "-incoming", f"exec:touch {marker}"])
    with pytest.raises(Exception, match=r"killed at start-up by its sandbox \(SIGSYS\)"):
        _replay_api(rec, RunOptions(target="qemu", checks=False))
    assert not marker.exists()


def test_recorded_sandbox_options_are_dropped_from_the_argv() -> None:
    from qmprr.replay.targets import drop_recorded_sandbox

    argv = ["qemu-system-x86_64", "-sandbox", "off", "-m", "64", "--sandbox", "on", "-name", "x"]
    assert drop_recorded_sandbox(argv) == ["qemu-system-x86_64", "-m", "64", "-name", "x"]
