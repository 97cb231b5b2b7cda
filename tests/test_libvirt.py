"""An unmodified libvirtd drives a TCG domain through ``qmprr-libvirt-emulator``.

Needs root and libvirt (``make test`` installs it; tests/libvirt_env.py runs
a private libvirtd). One domain lives through the whole scenario: start,
QMP and HMP through ``virsh qemu-monitor-command``, suspend/resume,
domblklist, attach-disk, ``dump --memory-only`` (an fd passed with
``getfd``), a libvirtd restart, injections on the debug socket and a debug
transaction while libvirt waits, destroy. Then the recording verifies, its
libvirt commands are those libvirt's own debug log shows (``qmprr import
libvirt``), and it replays against the fake with no divergence.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from pathlib import Path

import pytest

import support
from qmprr.client import QmpClient
from qmprr.recording import Client, Command, Fd, Header, read_records, verify

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(600)]

QEMU = "/usr/bin/qemu-system-x86_64"


def _wrapper(folder: Path, **config: object) -> tuple[Path, Path]:
    """A generated emulator script running this checkout's wrapper with its own config."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    conf = folder / "libvirt.toml"
    lines = [f'folder = "{folder / "recordings"}"', f'qemu = "{QEMU}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in config.items()]
    conf.write_text("\n".join(lines) + "\n")
    script = folder / "qmprr-emulator"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m qmprr.libvirt.emulator --config {conf} -- "$@"\n')
    script.chmod(0o755)
    return script, conf


def _domain_xml(name: str, emulator: Path | str, disk: Path | None = None) -> str:
    disk_xml = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>") if disk else ""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuidlib.uuid4()}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>{emulator}</emulator>
    {disk_xml}
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _qcow2(path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path


def _define(libvirtd, tmp_path: Path, name: str, emulator: Path | str, disk: Path | None = None) -> None:
    xml = tmp_path / f"{name}.xml"
    xml.write_text(_domain_xml(name, emulator, disk))
    libvirtd.virsh("define", str(xml))


def _recordings(folder: Path, name: str) -> list[Path]:
    return sorted((folder / "recordings" / name).glob("*.jsonl"))


def _wait(predicate, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _debug_socket(qemu_log: Path) -> str:
    for line in qemu_log.read_text(errors="replace").splitlines()[::-1]:
        if "qmprr-libvirt-emulator: recording domain" in line and "debug socket " in line:
            return line.rsplit("debug socket ", 1)[1].strip()
    raise AssertionError(f"no qmprr line in {qemu_log}")


def _closed(path: Path) -> bool:
    return any(r.kind == "close" for r in read_records(path))


def _qmprr(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*support.QMPRR, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def short_tmp(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A folder with a short path, so the debug socket fits beside the recording."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="qv", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_libvirt_drives_a_domain_through_the_recorder(libvirtd, tmp_path: Path, short_tmp: Path) -> None:
    name = "qmprr-scenario"
    script, _ = _wrapper(short_tmp / "w")
    _define(libvirtd, tmp_path, name, script, _qcow2(tmp_path / "root.qcow2"))
    log_start = libvirtd.log_size()
    libvirtd.virsh("start", name)
    try:
        recs = _wait(lambda: _recordings(short_tmp / "w", name), what="the recording")
        record = recs[0]
        dbg = _debug_socket(Path(f"/var/log/libvirt/qemu/{name}.log"))
        v = libvirtd.virsh
        out = v("qemu-monitor-command", name, '{"execute":"query-status"}').stdout
        assert json.loads(out)["return"]["status"] == "running"
        assert v("qemu-monitor-command", name, "--hmp", "info version").stdout.strip().startswith("7.")
        v("suspend", name)
        assert "paused" in v("domstate", name).stdout
        v("resume", name)
        assert "running" in v("domstate", name).stdout
        assert "vda" in v("domblklist", name).stdout
        v("attach-disk", name, str(_qcow2(tmp_path / "extra.qcow2")), "vdb", "--driver", "qemu",
          "--subdriver", "qcow2", "--targetbus", "virtio", "--live")
        assert "vdb" in v("domblklist", name).stdout
        dump = tmp_path / "mem.dump"
        v("dump", name, str(dump), "--memory-only")
        assert dump.stat().st_size > 0
        # Injected beside libvirt.
        done = _qmprr("inject", dbg, "query-name")
        assert done.returncode == 0, done.stderr
        assert _qmprr("inject", dbg, "--hmp", "info status").returncode == 0
        # A debug transaction: libvirt's command waits for its end; nothing interleaves.
        with QmpClient(dbg, timeout=60) as debug:
            debug.execute("qmprr-transaction-begin", {"label": "debug-block"})
            result: dict[str, object] = {}
            t = threading.Thread(target=lambda: result.update(
                out=v("qemu-monitor-command", name, '{"execute":"query-kvm"}').stdout))
            t.start()
            time.sleep(0.5)
            assert "out" not in result  # libvirt waits
            debug.execute("query-status")
            debug.execute("query-name")
            debug.execute("qmprr-transaction-end")
            t.join(60)
            assert "out" in result
        # libvirtd restarts; it reconnects to the monitor through the recorder.
        libvirtd.restart()
        _wait(lambda: "running" in v("domstate", name, check=False).stdout, what="running after restart")
        out = v("qemu-monitor-command", name, '{"execute":"query-status"}').stdout
        assert json.loads(out)["return"]["status"] == "running"
    finally:
        libvirtd.virsh("destroy", name, check=False)
    _wait(lambda: _closed(record), what="the recording's close")
    libvirtd.virsh("undefine", name, check=False)
    assert len(_recordings(short_tmp / "w", name)) == 1  # one recording per start, reconnect inside it

    records = list(read_records(record))
    assert verify(record).ok
    header = records[0]
    assert isinstance(header, Header)
    assert header.labels["libvirt_domain"] == name and header.qemu_argv[0] == QEMU
    assert header.domain_xml is None or name in header.domain_xml
    primaries = [r for r in records if isinstance(r, Client) and r.role == "primary" and r.action == "connect"]
    assert len(primaries) >= 2  # libvirt, and libvirt again after its restart
    commands = [r for r in records if isinstance(r, Command)]
    names = [c.msg["execute"] for c in commands]
    assert "getfd" in names and "dump-guest-memory" in names
    fds = [r for r in records if isinstance(r, Fd)]
    assert fds and fds[0].stat["type"] in ("file", "pipe")
    # The transaction: its commands are contiguous, libvirt's query-kvm after them.
    tx_cmds = [i for i, c in enumerate(commands) if c.tx is not None]
    assert len(tx_cmds) == 2 and tx_cmds[1] == tx_cmds[0] + 1
    assert names[tx_cmds[1] + 1] == "query-kvm"
    debug_names = [c.msg["execute"] for c in commands if c.role == "debug"]
    assert debug_names == ["query-name", "human-monitor-command", "query-status", "query-name"]

    # libvirt's own debug log of the same run, imported: the same libvirt commands, in order.
    log_copy = tmp_path / "libvirtd-run.log"
    with open(libvirtd.log, "rb") as f:
        f.seek(log_start)
        log_copy.write_bytes(f.read())
    imported = tmp_path / "imported"
    done = _qmprr("import", "libvirt", str(log_copy), "--all", "-o", str(imported))
    assert done.returncode in (0, 1), done.stderr
    from_log: list[str] = []
    for path in sorted(imported.glob("*.jsonl"), key=lambda p: next(iter(read_records(p))).started_epoch):
        recs_ = list(read_records(path))
        if recs_[0].labels.get("vm") == name:
            from_log += [c.msg["execute"] for c in recs_ if isinstance(c, Command)]  # qemu-monitor-command: role debug there
    ours = [c.msg["execute"] for c in commands if c.role == "primary" and c.msg["execute"] != "qmp_capabilities"]
    from_log = [n for n in from_log if n != "qmp_capabilities"]
    if from_log != ours:
        import difflib

        diff = "\n".join(difflib.unified_diff(from_log, ours, "libvirt's log", "qmprr's recording", lineterm="", n=3))
        raise AssertionError(f"libvirt's commands differ from the recording's:\n{diff}")

    # Replay against the fake: no divergence.
    done = _qmprr("replay", str(record), "--target", "fake")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    # Against a real QEMU from the recorded argv (libvirt's monitor and master key left out by the
    # wrapper): it runs, and whatever differs is named.
    report = tmp_path / "replay-qemu.json"
    done = _qmprr("replay", str(record), "--target", "qemu", "--map-path", f"{tmp_path}={tmp_path}",
                  "--keep-going", "--report", str(report), timeout=300)
    print(done.stdout[-1500:])
    assert done.returncode in (0, 1), done.stderr
    assert "against qemu" in done.stdout and "0 interrupted" in done.stdout
    print(f"recording: {len(records)} records, {len(commands)} commands, {len(debug_names)} injected")


def test_domcapabilities_identical_through_the_wrapper(libvirtd, tmp_path: Path) -> None:
    script, _ = _wrapper(tmp_path / "w")
    direct = libvirtd.virsh("domcapabilities", "--emulatorbin", QEMU, "--virttype", "qemu").stdout
    wrapped = libvirtd.virsh("domcapabilities", "--emulatorbin", str(script), "--virttype", "qemu").stdout
    assert wrapped.replace(str(script), QEMU) == direct


def test_recorded_probes_give_the_same_capabilities(libvirtd, tmp_path: Path, short_tmp: Path) -> None:
    script, _ = _wrapper(short_tmp / "w", record_probes=True)
    direct = libvirtd.virsh("domcapabilities", "--emulatorbin", QEMU, "--virttype", "qemu").stdout
    wrapped = libvirtd.virsh("domcapabilities", "--emulatorbin", str(script), "--virttype", "qemu").stdout
    assert wrapped.replace(str(script), QEMU) == direct
    probes = _wait(lambda: sorted((short_tmp / "w" / "recordings" / "probes").glob("*.jsonl")), what="probes")
    _wait(lambda: all(_closed(p) for p in probes), what="the probes' recordings to close")
    for path in probes:
        assert verify(path).ok
    names = [r.msg["execute"] for p in probes for r in read_records(p) if isinstance(r, Command)]
    assert "query-qmp-schema" in names and "query-cpu-definitions" in names


def test_unwritable_folder_still_starts_the_vm(libvirtd, tmp_path: Path) -> None:
    name = "qmprr-norecord"
    folder = tmp_path / "w"
    script, conf = _wrapper(folder)
    (folder / "recordings").write_text("a file, not a folder")
    _define(libvirtd, tmp_path, name, script)
    try:
        libvirtd.virsh("start", name)
        assert "running" in libvirtd.virsh("domstate", name).stdout
        log = Path(f"/var/log/libvirt/qemu/{name}.log").read_text(errors="replace")
        assert "qmprr-libvirt-emulator: not recording domain" in log
        libvirtd.virsh("destroy", name)
        conf.write_text(conf.read_text() + "strict = true\n")
        done = libvirtd.virsh("start", name, check=False)
        assert done.returncode != 0
        log = Path(f"/var/log/libvirt/qemu/{name}.log").read_text(errors="replace")
        assert "not starting (strict)" in log
    finally:
        libvirtd.virsh("destroy", name, check=False)
        libvirtd.virsh("undefine", name, check=False)


def test_recorder_death_ends_the_vm_as_crashed(libvirtd, tmp_path: Path) -> None:
    name = "qmprr-recorder-dies"
    script, _ = _wrapper(tmp_path / "w")
    _define(libvirtd, tmp_path, name, script)
    try:
        libvirtd.virsh("start", name)
        record = _wait(lambda: _recordings(tmp_path / "w", name), what="the recording")[0]
        header = _wait(lambda: next(iter(read_records(record)), None), what="the header")
        pid = int(header.labels["recorder_pid"])
        qemu_pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
        assert header.qemu_pid == qemu_pid  # the wrapper's pid is QEMU's: it exec'd
        # The recorder kept none of what libvirt handed QEMU (libvirt's QEMU log on stdout/stderr).
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert not any(h.startswith("/var/log/libvirt/") or h.startswith("/var/lib/libvirt/") for h in held), held
        os.kill(pid, 9)
        _wait(lambda: "shut off" in libvirtd.virsh("domstate", name, "--reason", check=False).stdout,
              what="libvirt to end the VM")
        assert "crashed" in libvirtd.virsh("domstate", name, "--reason").stdout
        _wait(lambda: not os.path.exists(f"/proc/{qemu_pid}") or
              Path(f"/proc/{qemu_pid}/stat").read_text().split(")")[1].split()[0] == "Z", what="QEMU to exit")
    finally:
        libvirtd.virsh("destroy", name, check=False)
        libvirtd.virsh("undefine", name, check=False)


def test_install_and_uninstall(libvirtd, tmp_path: Path, short_tmp: Path) -> None:
    name = "qmprr-install"
    folder = short_tmp / "w"
    _, conf = _wrapper(folder)
    _define(libvirtd, tmp_path, name, QEMU)
    uri = ["--connect", libvirtd.uri, "--config", str(conf)]
    try:
        done = _qmprr("libvirt", "install", name, *uri)
        assert done.returncode == 0, done.stderr
        emulator = libvirtd.virsh("dumpxml", name).stdout.split("<emulator>")[1].split("</emulator>")[0]
        assert emulator == str(folder / "qmprr-libvirt-emulator")
        assert f'"{name}" = "{QEMU}"' in conf.read_text()
        libvirtd.virsh("start", name)
        assert _wait(lambda: _recordings(folder, name), what="the recording")
        done = _qmprr("libvirt", "uninstall", name, *uri)
        assert done.returncode == 2 and done.stderr.startswith("qmprr: ") and "running" in done.stderr
        libvirtd.virsh("destroy", name)
        done = _qmprr("libvirt", "uninstall", name, *uri)
        assert done.returncode == 0, done.stderr
        assert f"<emulator>{QEMU}</emulator>" in libvirtd.virsh("dumpxml", name).stdout
        assert name not in conf.read_text()
        done = _qmprr("libvirt", "uninstall", name, *uri)
        assert done.returncode == 2 and "not installed by qmprr" in done.stderr
    finally:
        libvirtd.virsh("destroy", name, check=False)
        libvirtd.virsh("undefine", name, check=False)
