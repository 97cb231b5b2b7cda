"""The emulator wrapper's pieces that need no libvirtd: argv reading, configuration, fd stat."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from qmprr.fdpass import fd_stat
from qmprr.libvirt import config as configuration
from qmprr.libvirt.emulator import _own_options, identity, monitor_fd, recording_paths, replayable_argv

# libvirt 9.0's argv for a domain start (abridged), JSON -object included.
ARGV = [
    "-name", "guest=vm,,1,debug-threads=on", "-S",
    "-object", '{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-1-vm/master-key.aes"}',
    "-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off",
    "-uuid", "0b6a5b0c-1d6e-4b8e-9c3e-2b1f7f0b9a11",
    "-chardev", "socket,id=charmonitor,fd=26,server=on,wait=off",
    "-mon", "chardev=charmonitor,id=monitor,mode=control",
]


def test_identity_and_monitor_fd() -> None:
    assert identity(ARGV) == ("vm,1", "0b6a5b0c-1d6e-4b8e-9c3e-2b1f7f0b9a11")
    assert monitor_fd(ARGV) == (ARGV.index("-chardev") + 1, 26)


def test_replayable_argv() -> None:
    index = ARGV.index("-chardev") + 1
    assert replayable_argv(ARGV, index) == [
        "-name", "guest=vm,,1,debug-threads=on", "-S", "-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off",
        "-uuid", "0b6a5b0c-1d6e-4b8e-9c3e-2b1f7f0b9a11"]
    used = [*ARGV, "-object", "secret,id=disk0-secret,keyid=masterKey0,data=x,format=base64"]
    assert any('"id":"masterKey0"' in a for a in replayable_argv(used, index))  # still needed: kept


@pytest.mark.parametrize("chardev", [
    "socket,id=charmonitor,path=/tmp/m.sock,server=on,wait=off",  # a path, not libvirt's fd
    "socket,id=charother,fd=26,server=on,wait=off",
    "socket,id=charmonitor,fd=26",  # not listening
    "pty,id=charmonitor",
])
def test_not_libvirts_monitor_is_passed_through(chardev: str) -> None:
    assert monitor_fd(["-chardev", chardev]) is None


def test_probe_argv_has_no_monitor_fd() -> None:
    probe = ["-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none,accel=kvm:tcg",
             "-qmp", "unix:/var/lib/libvirt/qemu/qmp-X/qmp.monitor,server=on,wait=off",
             "-pidfile", "/var/lib/libvirt/qemu/qmp-X/qmp.pid", "-daemonize"]
    assert monitor_fd(probe) is None


def test_own_options() -> None:
    assert _own_options(["--strict", "--config", "/x.toml", "--", "-name", "a"]) == (
        {"strict": True, "config": "/x.toml"}, ["-name", "a"])
    assert _own_options(["-name", "a", "--", "b"]) == ({}, ["-name", "a", "--", "b"])
    assert _own_options(ARGV) == ({}, ARGV)


def test_config_load_and_emulators(tmp_path: Path) -> None:
    conf = tmp_path / "libvirt.toml"
    assert configuration.load(str(conf)) == {}
    conf.write_text('folder = "/tmp/r"\n# a comment that stays\n')
    configuration.set_emulator(str(conf), 'vm "one"', "/usr/bin/qemu-system-x86_64")
    configuration.set_emulator(str(conf), "vm2", "/opt/qemu")
    data = configuration.load(str(conf))
    assert data["folder"] == "/tmp/r" and "a comment that stays" in conf.read_text()
    assert configuration.real_qemu(data, 'vm "one"') == "/usr/bin/qemu-system-x86_64"
    assert configuration.real_qemu(data, "vm2") == "/opt/qemu"
    assert configuration.real_qemu(data, "other") == configuration.DEFAULT_QEMU
    configuration.set_emulator(str(conf), "vm2", None)
    assert "vm2" not in configuration.load(str(conf))["emulators"]
    conf.write_text("nonsense = 1\n")
    with pytest.raises(configuration.ConfigError, match="unknown key 'nonsense'"):
        configuration.load(str(conf))


def test_recording_paths(tmp_path: Path) -> None:
    paths = recording_paths(str(tmp_path), "../evil/name", "u-1")
    assert Path(paths["record"]).parent == tmp_path / ".._evil_name"
    assert Path(paths["record"]).name.startswith("u-1-") and paths["record"].endswith(".jsonl")
    assert oct(os.stat(tmp_path / ".._evil_name").st_mode & 0o777) == "0o700"
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(OSError):
        recording_paths(str(blocked), "vm", "u")


def test_fd_stat(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 7)
    os.chmod(f, 0o640)
    fd = os.open(f, os.O_RDONLY)
    r, w = os.pipe()
    a, b = socket.socketpair()
    try:
        assert fd_stat(fd) == {"type": "file", "mode": "0640", "size": 7}
        assert fd_stat(r)["type"] == "pipe"
        assert fd_stat(a.fileno())["type"] == "socket"
    finally:
        for x in (fd, r, w):
            os.close(x)
        a.close()
        b.close()


@pytest.mark.qemu
def test_wrapper_passes_a_probe_straight_to_qemu(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('qemu = "/usr/bin/qemu-system-x86_64"\n')
    done = subprocess.run([sys.executable, "-m", "qmprr.libvirt.emulator", "--config", str(conf), "--", "-version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "QEMU emulator version" in done.stdout
    conf.write_text("qemu = 1\n")  # bad: defaults, and one line says so
    done = subprocess.run([sys.executable, "-m", "qmprr.libvirt.emulator", "--config", str(conf), "--", "-version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "qemu must be a str; using the defaults" in done.stderr
