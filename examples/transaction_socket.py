"""Hold the channel from a socket client: qmprr-transaction-begin / qmprr-transaction-end.

What it shows: any QMP client of ``qmprr launch`` can send the proxy-local
commands ``qmprr-transaction-begin`` (``{"label": ...}``) and
``qmprr-transaction-end``. In between, only that client's commands reach
QEMU; everyone else's wait, in order, until the end. Here client A pauses
the VM, looks at it and resumes it inside a transaction, while client B
(another connection, in a thread) asks ``query-status`` meanwhile: B's
answer comes only after A ends the transaction, and in the recording B's
command follows the transaction's ``end`` record.

Run it from the repository root (needs qemu-system-x86_64)::

    .venv/bin/python examples/transaction_socket.py

Everything happens in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

from qmprr.client import QmpClient

QMPRR = [sys.executable, "-m", "qmprr.cli"]
QEMU = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none",
        "-m", "128"]  # fmt: skip
T0 = time.monotonic()


def say(who: str, text: str) -> None:
    print(f"{time.monotonic() - T0:6.3f}s  {who}: {text}")


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with the subprocesses'
    with tempfile.TemporaryDirectory(prefix="qmprr-example-") as tmp:
        record, sock = os.path.join(tmp, "session.jsonl"), os.path.join(tmp, "qmp.sock")
        proc = subprocess.Popen([*QMPRR, "launch", "--record", record, "--socket", sock, "--", *QEMU],
                                stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            while not os.path.exists(sock):
                if proc.poll() is not None:
                    raise SystemExit("qmprr launch did not come up")
                time.sleep(0.01)
            with QmpClient(sock) as a, QmpClient(sock) as b:
                b_reply: dict = {}

                def client_b() -> None:
                    say("B", "query-status")
                    b_reply.update(b.execute("query-status"))
                    say("B", f"answer: {b_reply['return']['status']!r}")

                tx = a.execute("qmprr-transaction-begin", {"label": "pause-and-look"})["return"]["tx"]
                say("A", f"transaction {tx} begun: the channel is mine")
                waiting = threading.Thread(target=client_b)
                waiting.start()
                time.sleep(0.2)  # B has asked by now, and waits
                say("A", "stop")
                a.execute("stop")
                say("A", f"query-status: {a.execute('query-status')['return']['status']!r}")
                say("A", "cont")
                a.execute("cont")
                say("A", f"B still waiting: {waiting.is_alive()}")
                a.execute("qmprr-transaction-end")
                say("A", f"transaction {tx} ended")
                waiting.join(10)
                ok = bool(b_reply) and not waiting.is_alive()
        finally:
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(30)

        print("\n$ qmprr verify session.jsonl")
        checked = subprocess.run([*QMPRR, "verify", record])
        print("\n$ qmprr show session.jsonl")
        subprocess.run([*QMPRR, "show", "--color", "never", record], check=True)
        return 0 if ok and status == 0 and checked.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
