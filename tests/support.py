"""Helpers shared by tests that need a real QEMU or a running qmprr.

Tests of QEMU behaviour use a real ``qemu-system-x86_64`` (``make test``
installs Debian's package): nothing here fakes QEMU.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

QEMU = os.environ.get("QMPRR_TEST_QEMU", "qemu-system-x86_64")
#: The smallest QEMU that answers QMP: no machine, no devices, no display.
QEMU_NONE = [QEMU, "-machine", "none", "-nodefaults", "-display", "none"]
#: A real machine with devices, paused, no accelerator needed.
QEMU_Q35 = [QEMU, "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-S", "-m", "128"]
QMPRR = [sys.executable, "-m", "qmprr.cli"]


def require_qemu() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise RuntimeError(f"{QEMU} is missing: run 'make test' (installs qemu-system-x86) as root")
    return path


def _listening(path: str | Path) -> bool:
    """Whether a socket at *path* accepts connections (QEMU binds before it listens)."""
    if not os.path.exists(path):
        return False
    try:
        with open("/proc/net/unix") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return True  # cannot tell: the file is all there is to see
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == str(path):
            return bool(int(fields[3], 16) & 0x10000)  # __SO_ACCEPTCON: listen() was called
    return True  # not listed (another namespace): the file is all there is to see


def wait_for_socket(path: str | Path, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not _listening(path):
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"process exited ({proc.returncode}) before creating {path}: {err}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll until *predicate* holds: wait for what a test can observe, not for a time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.01)


def records_on_disk(path: str | Path) -> list[dict[str, Any]]:
    """The complete lines of a recording still being written (the last may be torn)."""
    return [json.loads(line) for line in Path(path).read_bytes().split(b"\n")[:-1] if line]


def logged_disconnect(path: str | Path, *names: str) -> bool:
    """Whether the recording at *path* holds the disconnect of each client in *names*."""
    gone = {d.get("name") for d in records_on_disk(path) if d.get("kind") == "client" and d.get("action") == "disconnect"}
    return gone.issuperset(names)


@contextlib.contextmanager
def qemu_with_qmp(tmp_path: Path, argv: list[str] | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """QEMU (default ``-machine none``) listening on a QMP UNIX socket; yields (process, socket path)."""
    require_qemu()
    sock = str(tmp_path / "qemu-qmp.sock")
    proc = subprocess.Popen(
        [*(argv or QEMU_NONE), "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_socket(sock, proc=proc)
        yield proc, sock
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@attrs.define
class Launched:
    """A ``qmprr launch`` subprocess and its paths."""

    proc: subprocess.Popen
    record: Path
    socket: str
    debug_socket: str

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@contextlib.contextmanager
def qmprr_launch(
    tmp_path: Path, qemu_argv: list[str] | None = None, *extra: str, name: str = "rec"
) -> Iterator[Launched]:
    """Run ``qmprr launch`` (recording to tmp_path/NAME.jsonl) until the block ends."""
    require_qemu()
    record = tmp_path / f"{name}.jsonl"
    sock, dbg = str(tmp_path / f"{name}.sock"), str(tmp_path / f"{name}-debug.sock")
    proc = subprocess.Popen(
        [*QMPRR, "launch", "--record", str(record), "--socket", sock, "--debug-socket", dbg, *extra,
         "--", *(qemu_argv or QEMU_NONE)],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    launched = Launched(proc, record, sock, dbg)
    try:
        wait_for_socket(dbg, proc=proc)
        yield launched
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def qemu_processes(marker: str) -> list[int]:
    """Live (not zombie) QEMU processes whose command line holds the word *marker* (e.g. its -name)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if os.path.basename(argv[0]).startswith(b"qemu-system") and marker.encode() in argv and state != "Z":
            pids.append(int(entry))
    return pids


def qmprr_exe() -> str:
    """The installed ``qmprr`` console script (``make test`` installs it)."""
    exe = Path(sys.executable).with_name("qmprr")
    found = str(exe) if exe.exists() else shutil.which("qmprr")
    if found is None:
        raise RuntimeError("the qmprr console script is not installed: run 'make test'")
    return found


# -- a channel and an in-process proxy in front of a QEMU (tests of channel and server) --------


def log_to(path: Path, sync: str = "none") -> Callable[[dict[str, Any]], Any]:
    """A channel's ``make_log``: a recording at *path*, its header from QEMU's greeting."""
    from qmprr.recording import RecordWriter, SyncPolicy, header_for_greeting

    def make_log(greeting: dict[str, Any]) -> RecordWriter:
        return RecordWriter.create(path, header_for_greeting(greeting), sync=SyncPolicy(sync))

    return make_log


def read_log(path: Path) -> list[Any]:
    """Every record of *path* (unreadable lines skipped)."""
    from qmprr.recording import RecordingReader

    with RecordingReader(path, errors="skip") as reader:
        return list(reader)


async def open_channel(qemu_sock: str, make_log: Callable[[dict[str, Any]], Any], **options: Any) -> Any:
    """``Channel.open_unix`` to QEMU's QMP socket, again while QEMU still refuses (the socket file
    exists a moment before QEMU listens, and its single monitor frees up a moment after a client)."""
    import asyncio

    from qmprr.channel import Channel, ChannelError

    for _ in range(100):
        try:
            return await Channel.open_unix(qemu_sock, make_log, **options)
        except ChannelError as exc:
            if "refused" not in str(exc):
                raise
            await asyncio.sleep(0.02)
    return await Channel.open_unix(qemu_sock, make_log, **options)


@attrs.define
class Proxy:
    """An in-process proxy: the channel to QEMU and the server on a primary and a debug socket."""

    channel: Any
    server: Any
    socket: str
    debug_socket: str
    record: Path
    qemu: subprocess.Popen | None = None


@contextlib.asynccontextmanager
async def proxy_for(
    qemu_sock: str, tmp_path: Path, *, qemu: subprocess.Popen | None = None, record: Path | None = None,
    sockets: tuple[str, str] = ("p.sock", "p-debug.sock"), tx_idle_timeout: float = 30.0, **server_options: Any,
) -> Any:
    """Channel to *qemu_sock* + QmpServer (primary and debug sockets in *tmp_path*), in this event loop."""
    from qmprr.server import QmpServer

    record = record or tmp_path / "rec.jsonl"
    channel = await open_channel(qemu_sock, log_to(record, "batch"), tx_idle_timeout=tx_idle_timeout)
    server = QmpServer(channel, **server_options)
    sock, dbg = str(tmp_path / sockets[0]), str(tmp_path / sockets[1])
    try:
        await server.listen(sock, "primary")
        await server.listen(dbg, "debug")
        yield Proxy(channel, server, sock, dbg, record, qemu)
    finally:
        await server.close()
        await channel.close()
        channel.log.close()


def disk_full(path: str | Path) -> Exception:
    """The error a log raises when the disk is full (what a failing fake log raises)."""
    from qmprr.errors import RecordingError

    return RecordingError(f"{path}: cannot write record: No space left on device")


# -- qmprr and QEMU processes a test starts --------------------------------------------------


def reap(proc: subprocess.Popen) -> None:
    """Kill *proc* if it still runs, and wait for it (a test's ``finally``)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def qmprr_process(tmp_path: Path, *args: str, stem: str) -> tuple[subprocess.Popen, Path]:
    """Start ``qmprr ARGS``, its stderr to tmp_path/STEM.stderr (a QEMU it leaves behind must not hold
    a pipe of ours); (the process, that file)."""
    err_path = tmp_path / f"{stem}.stderr"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([*QMPRR, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    return proc, err_path


def kill_qemus_named(name: str) -> None:
    """SIGKILL every QEMU still running with ``-name NAME`` (a fixture's clean-up, by pid)."""
    for pid in qemu_processes(name):
        os.kill(pid, signal.SIGKILL)


def load_example(name: str) -> Any:
    """The module ``examples/NAME.py``, imported from its file (examples are not a package)."""
    import importlib.util

    path = Path(__file__).parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
