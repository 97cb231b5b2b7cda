"""The qmprr demo (``make demo``): record a QMP session with a real QEMU, show it, replay it.

What it does, with a heading for each step:

1. starts ``qmprr launch``, which runs QEMU (q35, TCG, 128 MiB, no devices)
   with a private monitor, records to ``out/demo.jsonl`` and serves a primary
   socket (the management application's) and a debug socket;
2. the management application runs a few commands on the primary socket;
3. a person injects commands with ``qmprr inject`` on the debug socket
   (recorded with role ``debug``; the first one taints the recording);
4. the management application holds a transaction -- ``stop``,
   ``dump-guest-memory`` to a file, ``cont`` -- while an injected
   ``query-status`` arrives and waits until the transaction ends;
5. stops qmprr with SIGTERM: it quits QEMU cleanly and closes the recording;
6. prints ``qmprr verify`` and ``qmprr show`` of the recording;
7. replays it with ``qmprr replay``: against a fresh QEMU started from the
   recorded command line, then against the fake QEMU serving the recording.

Run it from the repository root (needs qemu-system-x86_64)::

    .venv/bin/python examples/demo.py        # or: make demo

The recording is left in ``out/demo.jsonl`` (replaced on each run); the
sockets and the memory dump live in a temporary folder removed at the end.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qmprr.client import QmpClient

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "out"
RECORD = OUT / "demo.jsonl"
QMPRR = [sys.executable, "-m", "qmprr.cli"]
QEMU = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none",
        "-m", "128"]  # fmt: skip
TIMEOUT = 15.0


class DemoFailed(Exception):
    pass


def heading(text: str) -> None:
    print(f"\n=== {text}")


def shown(path: Path | str) -> str:
    """*path* relative to the current folder when it is below it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def command_line(args: list[str]) -> str:
    """How a person would type ``qmprr ...`` (our argv starts with python -m qmprr.cli)."""
    return shlex.join(["qmprr", *args[len(QMPRR):]] if args[: len(QMPRR)] == QMPRR else args)


def wait_until(what: str, condition: Any, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise DemoFailed(f"qmprr exited (status {proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out waiting for {what}")
        time.sleep(0.01)


def records_so_far() -> list[dict[str, Any]]:
    """The complete records of the recording qmprr is writing (one write() per record)."""
    with open(RECORD, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def debug_client_negotiated_in_tx(tx: int) -> bool:
    """Whether a debug client negotiated after transaction *tx* began."""
    begun = None
    for r in records_so_far():
        if r["kind"] == "tx" and r["action"] == "begin" and r["tx"] == tx:
            begun = r["seq"]
        elif begun is not None and r["kind"] == "local" and r["role"] == "debug":
            return True
    return False


def inject(debug_socket: str, *command: str) -> int:
    argv = [*QMPRR, "inject", debug_socket, *command]
    print(f"$ {command_line(argv).replace(debug_socket, 'debug.sock')}")
    return subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=TIMEOUT).returncode


def run_session(tmp: Path, qmprr: subprocess.Popen, sock: str, debug_sock: str) -> None:
    heading("2. The management application talks to QEMU through qmprr (primary socket)")
    with QmpClient(sock) as app:
        version = app.greeting["QMP"]["version"]["qemu"]
        print(f"connected: QEMU {version['major']}.{version['minor']}.{version['micro']}")

        def run(command: str, arguments: dict[str, Any] | None = None) -> Any:
            reply = app.execute(command, arguments)
            if "error" in reply:
                raise DemoFailed(f"{command}: {reply['error']['desc']}")
            return reply["return"]

        print("query-status              ->", run("query-status")["status"])
        print("query-cpus-fast           ->", len(run("query-cpus-fast")), "vCPU")
        print("query-memory-size-summary ->", run("query-memory-size-summary")["base-memory"] >> 20, "MiB")

        heading("3. Someone injects commands on the debug socket (recorded as 'debug', taints the recording)")
        inject(debug_sock, "query-status")
        inject(debug_sock, "--hmp", "info status")

        heading("4. A transaction: stop, dump-guest-memory, cont -- an injected command waits for its end")
        tx = run("qmprr-transaction-begin", {"label": "memory-dump"})["tx"]
        print(f"management app: transaction {tx} begun (the channel is held for it)")
        argv = [*QMPRR, "inject", "--json", debug_sock, "query-status"]
        print(f"$ {command_line(argv).replace(debug_sock, 'debug.sock')} &    # in the background")
        asked = time.monotonic()
        waiter = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        # The injected command is on its way once its client has negotiated (logged as 'local').
        wait_until("the injected client to connect", lambda: debug_client_negotiated_in_tx(tx), qmprr)
        time.sleep(0.1)  # ... and sent right after: it now waits for the channel
        run("stop")
        print("management app: stop")
        run("dump-guest-memory", {"paging": False, "protocol": "file:guest.dump"})
        size = (tmp / "guest.dump").stat().st_size
        print(f"management app: dump-guest-memory -> {size >> 20} MiB written")
        run("cont")
        print("management app: cont")
        if waiter.poll() is not None:
            raise DemoFailed("the injected command did not wait for the transaction")
        print("the injected query-status is still waiting")
        run("qmprr-transaction-end")
        print(f"management app: transaction {tx} ended")
        out, _ = waiter.communicate(timeout=TIMEOUT)
        waited = time.monotonic() - asked
        print(f"injected query-status answered after {1000 * waited:.0f} ms: {out.strip()}")
        (tmp / "guest.dump").unlink()

        print("query-status              ->", run("query-status")["status"])


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with the subprocesses'
    OUT.mkdir(exist_ok=True)
    if RECORD.exists():
        RECORD.unlink()  # the previous demo's recording; qmprr never overwrites one itself
    with tempfile.TemporaryDirectory(prefix="qmprr-demo-") as tmpname:
        tmp = Path(tmpname)
        sock, debug_sock = str(tmp / "qmp.sock"), str(tmp / "debug.sock")
        argv = [*QMPRR, "launch", "--record", str(RECORD), "--socket", sock, "--debug-socket", debug_sock,
                "--label", "source=examples/demo.py", "--", *QEMU]  # fmt: skip
        heading("1. Start QEMU through qmprr")
        print("$ " + command_line(argv).replace(str(RECORD), shown(RECORD)).replace(tmpname, "$TMP"))
        # QEMU runs in the temporary folder, so the dump file name in the recording is short.
        qmprr = subprocess.Popen(argv, cwd=tmp, stdin=subprocess.DEVNULL)
        status = None
        try:
            wait_until("qmprr's sockets", lambda: os.path.exists(debug_sock), qmprr)
            run_session(tmp, qmprr, sock, debug_sock)
            heading("5. Stop qmprr (SIGTERM): it asks QEMU to quit, then closes the recording")
            qmprr.send_signal(signal.SIGTERM)
            status = qmprr.wait(TIMEOUT)
            print(f"qmprr launch exited with status {status} (QEMU's exit status)")
        except (DemoFailed, subprocess.TimeoutExpired, OSError) as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        finally:
            if qmprr.poll() is None:
                qmprr.send_signal(signal.SIGTERM)
                try:
                    qmprr.wait(TIMEOUT)
                except subprocess.TimeoutExpired:
                    qmprr.kill()
                    qmprr.wait()

    heading("6. The recording")
    print(f"$ qmprr verify {shown(RECORD)}")
    verified = subprocess.run([*QMPRR, "verify", shown(RECORD)]).returncode
    print(f"\n$ qmprr show {shown(RECORD)}")
    subprocess.run([*QMPRR, "show", shown(RECORD)])
    print(f"\nThe recording is in {shown(RECORD)}")

    heading("7. Replay it: against a fresh real QEMU (from the recorded argv), then the fake")
    replayed = []
    with tempfile.TemporaryDirectory(prefix="qmprr-replay-") as workdir:
        for target in (["--target", "qemu", "--workdir", workdir], ["--target", "fake"]):
            cmd = [*QMPRR, "replay", shown(RECORD), *target]
            print("$ " + command_line(cmd).replace(workdir, "$TMP"))
            replayed.append(subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode)
            print()
    return 0 if status == 0 and verified == 0 and replayed == [0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
