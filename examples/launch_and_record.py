"""Launch QEMU through qmprr, drive it as the management application, read the recording.

What it shows: ``qmprr launch`` starts QEMU with a private monitor and serves
QMP on a socket of its own; a management application connects to that socket
as it would to QEMU (here qmprr's small blocking ``QmpClient``) and every
exchange -- negotiation, commands, replies, events -- lands in the recording.
Stopping qmprr with SIGTERM makes it ``quit`` QEMU cleanly (logged too).
Finally the recording is verified and printed with ``qmprr show``.

Run it from the repository root (needs qemu-system-x86_64)::

    .venv/bin/python examples/launch_and_record.py

Everything happens in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

from qmprr.client import QmpClient

QMPRR = [sys.executable, "-m", "qmprr.cli"]
QEMU = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none",
        "-m", "128", "-S"]  # fmt: skip


def wait_for(path: str, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"qmprr launch did not come up (status {proc.poll()})")
        time.sleep(0.01)


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with the subprocesses'
    with tempfile.TemporaryDirectory(prefix="qmprr-example-") as tmp:
        record, sock = os.path.join(tmp, "session.jsonl"), os.path.join(tmp, "qmp.sock")

        # 1. Start QEMU behind qmprr. QEMU's monitor is private; clients use qmp.sock.
        proc = subprocess.Popen([*QMPRR, "launch", "--record", record, "--socket", sock, "--", *QEMU],
                                stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_for(sock, proc)

            # 2. The management application: any QMP client works unchanged.
            with QmpClient(sock) as app:
                print("QEMU", app.greeting["QMP"]["version"]["qemu"], "behind qmprr")
                print("status:", app.execute("query-status")["return"]["status"])
                print("vCPUs:", len(app.execute("query-cpus-fast")["return"]))
                app.execute("cont")
                print("after cont:", app.execute("query-status")["return"]["status"])
                app.execute("stop")
                print("events seen by the client:", [e["event"] for e in app.events])
        finally:
            # 3. Stop qmprr: it sends 'quit' to QEMU through the channel and closes the log.
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(30)
        print(f"qmprr launch exited with status {status}")

        # 4. The recording: check it, then print it.
        print("\n$ qmprr verify session.jsonl")
        checked = subprocess.run([*QMPRR, "verify", record])
        print("\n$ qmprr show session.jsonl")
        subprocess.run([*QMPRR, "show", "--color", "never", record], check=True)
        return 0 if status == 0 and checked.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
