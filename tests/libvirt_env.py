"""A private libvirtd for the ``libvirt`` tests (session-scoped fixture ``libvirtd``).

libvirtd runs in system mode (as root) with its own libvirtd.conf under a
temporary root: its sockets (``unix_sock_dir``), pid file, and a debug log
(``log_filters`` for the monitor and process code, ``log_outputs`` to a file)
that ``qmprr import libvirt`` reads. virsh talks to it through
``qemu:///system?socket=ROOT/sock/libvirt-sock``, never the host's daemon.

The QEMU driver reads its configuration only from ``/etc/libvirt/qemu.conf``
in system mode (no option or environment variable moves it), so the fixture
writes that file (QEMU as root, no security driver, no cgroups, no mount
namespace, QEMU's stdio to a file rather than virtlogd) and restores what
was there afterwards. Its state (``/var/lib/libvirt/qemu``), run
(``/run/libvirt/qemu``) and log (``/var/log/libvirt/qemu``) folders are the
system ones as well: fine on a CI machine, which is why the tests are root-only.

Outside CI a machine without libvirtd (or not root) skips the tests; in CI
(``CI=true``) that is a failure, so a broken set-up cannot pass unnoticed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
LOG_FILTERS = "1:qemu.qemu_monitor 1:qemu.qemu_monitor_json 1:qemu.qemu_process 3:*"

_QEMU_CONF_TEXT = """\
# Written by qmprr's test set-up (tests/libvirt_env.py); restored when the tests end.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""


def _libvirtd_binary() -> str | None:
    return shutil.which("libvirtd") or ("/usr/sbin/libvirtd" if os.access("/usr/sbin/libvirtd", os.X_OK) else None)


def unavailable() -> str | None:
    """Why a private libvirtd cannot run here, or None."""
    if os.geteuid() != 0:
        return "the libvirt tests run libvirtd in system mode: they need root"
    if _libvirtd_binary() is None or shutil.which("virsh") is None:
        return "libvirtd or virsh is missing ('make test' as root installs them)"
    return None


def skip_or_fail(why: str) -> None:
    """Skip a libvirt test, or fail it in CI (``CI=true``), where the set-up must work."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"libvirt tests cannot run in CI: {why}")
    pytest.skip(why)


class Libvirtd:
    """A running private libvirtd, and virsh bound to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock_dir = root / "sock"
        self.conf = root / "libvirtd.conf"
        self.log = root / "libvirtd.log"
        self.pidfile = root / "libvirtd.pid"
        self.uri = f"qemu:///system?socket={self.sock_dir / 'libvirt-sock'}"
        self.process: subprocess.Popen[bytes] | None = None
        self._saved_qemu_conf: bytes | None = None
        self._wrote_qemu_conf = False

    # -- set-up ------------------------------------------------------------------

    def configure(self) -> None:
        self.sock_dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f'unix_sock_dir = "{self.sock_dir}"\n'
            'unix_sock_rw_perms = "0700"\n'
            'auth_unix_rw = "none"\n'
            'auth_unix_ro = "none"\n'
            f'log_filters = "{LOG_FILTERS}"\n'
            f'log_outputs = "1:file:{self.log}"\n'
        )
        QEMU_CONF.parent.mkdir(parents=True, exist_ok=True)
        if QEMU_CONF.exists():
            self._saved_qemu_conf = QEMU_CONF.read_bytes()
        QEMU_CONF.write_text(_QEMU_CONF_TEXT)
        self._wrote_qemu_conf = True

    def start(self, timeout: float = 60.0) -> None:
        binary = _libvirtd_binary()
        assert binary is not None
        with open(self.root / "libvirtd.out", "ab") as out:
            self.process = subprocess.Popen(
                [binary, "-f", str(self.conf), "-p", str(self.pidfile)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"libvirtd exited with status {self.process.returncode}: {self.output()}")
            done = subprocess.run(["virsh", "-c", self.uri, "version"], capture_output=True, timeout=timeout)
            if done.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"libvirtd did not answer within {timeout:g} s: {self.output()}")

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "libvirtd.out").read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        """Stop libvirtd (running domains keep running, as with the real service)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def restore(self) -> None:
        if not self._wrote_qemu_conf:
            return
        if self._saved_qemu_conf is None:
            QEMU_CONF.unlink(missing_ok=True)
        else:
            QEMU_CONF.write_bytes(self._saved_qemu_conf)
        self._wrote_qemu_conf = False

    # -- use ---------------------------------------------------------------------

    def virsh(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``virsh -c URI ARGS``; with *check*, a failure raises with virsh's stderr."""
        done = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except FileNotFoundError:
            return 0


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libvirtd]:
    """A private libvirtd for this test session (see the module docstring)."""
    why = unavailable()
    if why is not None:
        skip_or_fail(why)
    daemon = Libvirtd(tmp_path_factory.mktemp("libvirt"))
    try:
        daemon.configure()
        daemon.start()
    except Exception as exc:  # noqa: BLE001 - reported as the reason
        daemon.stop()
        daemon.restore()
        skip_or_fail(f"libvirtd cannot start: {exc}")
    try:
        yield daemon
    finally:
        for name in daemon.virsh("list", "--all", "--name", check=False).stdout.split():
            daemon.virsh("destroy", name, check=False)
            daemon.virsh("undefine", name, check=False)
        daemon.stop()
        daemon.restore()
