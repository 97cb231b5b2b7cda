"""A management application and a debug client on the same QEMU, both recorded.

What it shows: the management application (here the ``qemu.qmp`` library's
``QMPClient``, exactly as it would talk to QEMU) is connected to qmprr's
primary socket. Meanwhile a person injects commands with ``qmprr inject`` on
the debug socket. Both go through the one serialized channel, so the
recording has them in the order QEMU ran them; the injected ones carry role
``debug``, the first one taints the recording (as libvirt taints a domain
for a custom monitor command), and the default policy refuses ``quit`` to
debug clients. Events caused by the injected ``stop`` reach the management
application too. The script then reads the recording with
``qmprr.recording.RecordingReader`` and prints who did what.

Run it from the repository root (needs qemu-system-x86_64)::

    .venv/bin/python examples/inject_from_second_client.py

Everything happens in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
import tempfile

from qemu.qmp import QMPClient

from qmprr.recording import Command, RecordingReader, Reply, Taint

QMPRR = [sys.executable, "-m", "qmprr.cli"]
QEMU = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none",
        "-m", "128"]  # fmt: skip


async def inject(debug_socket: str, *command: str) -> None:
    """Run ``qmprr inject DEBUG_SOCKET COMMAND`` and show what it printed."""
    print(f"$ qmprr inject debug.sock {shlex.join(command)}")
    proc = await asyncio.create_subprocess_exec(*QMPRR, "inject", debug_socket, *command)
    status = await proc.wait()
    print(f"(exit status {status})")


async def session(tmp: str) -> int:
    record = os.path.join(tmp, "session.jsonl")
    sock, debug_sock = os.path.join(tmp, "qmp.sock"), os.path.join(tmp, "debug.sock")
    qmprr = await asyncio.create_subprocess_exec(
        *QMPRR, "launch", "--record", record, "--socket", sock, "--debug-socket", debug_sock,
        "--", *QEMU, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(1000):
            if os.path.exists(debug_sock):
                break
            await asyncio.sleep(0.01)

        # The management application.
        app = QMPClient("management-app")
        await app.connect(sock)
        print("management app: status", (await app.execute("query-status"))["status"])

        # A person debugging the VM injects commands on the debug socket.
        await inject(debug_sock, "query-status")
        await inject(debug_sock, "stop")
        await inject(debug_sock, "--hmp", "info status")
        await inject(debug_sock, "quit")  # refused: debug clients may not quit the VM

        # The STOP caused by the injected 'stop' reached the management app as well.
        event = await asyncio.wait_for(app.events.get(), 5)
        print("management app saw event:", event["event"])
        await app.execute("cont")
        await app.disconnect()
    finally:
        qmprr.send_signal(signal.SIGTERM)
        status = await qmprr.wait()

    # Who did what, from the recording.
    print("\nThe recording, commands and taint only:")
    with RecordingReader(record) as reader:
        names = {}
        for r in reader:
            if isinstance(r, Command):
                names[r.seq] = r.msg["execute"]
                print(f"  seq {r.seq:2}  {r.role:8} {r.src:10} -> {r.msg['execute']}")
            elif isinstance(r, Reply) and "error" in r.msg:
                print(f"  seq {r.seq:2}  error reply to {names[r.cmd]}: {r.msg['error']['desc']}")
            elif isinstance(r, Taint):
                print(f"  seq {r.seq:2}  TAINT {r.reason} by {r.client}")
    print("\n$ qmprr show session.jsonl")
    show = await asyncio.create_subprocess_exec(*QMPRR, "show", "--color", "never", record)
    await show.wait()
    return status


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with the subprocesses'
    with tempfile.TemporaryDirectory(prefix="qmprr-example-") as tmp:
        return asyncio.run(session(tmp))


if __name__ == "__main__":
    sys.exit(main())
