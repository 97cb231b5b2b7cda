"""Use qmprr as a library: one recorded channel to QEMU, and a transaction on it.

What it shows: ``qmprr.channel.Channel`` connects to a running QEMU's QMP
socket and writes the recording itself. Inside ``async with
channel.transaction(...)`` the commands this task sends (``stop``,
``query-status``, ``cont``) hold the channel: QEMU sees nothing else in
between. A second task (a "poller" asking ``query-status`` on its own) asks
during the transaction and waits until it ends -- its command comes after the
transaction's ``end`` record. A subscription prints the events as they come.

Run it from the repository root (needs qemu-system-x86_64)::

    .venv/bin/python examples/transaction_library.py

Everything happens in a temporary folder that is removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from qmprr.channel import Channel
from qmprr.recording import RecordWriter, header_for_greeting

QMPRR = [sys.executable, "-m", "qmprr.cli"]
QEMU = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none",
        "-m", "128"]  # fmt: skip


async def print_events(channel: Channel) -> None:
    async for event in channel.subscribe("example-events"):
        print(f"  event {event['event']}")


async def poller(channel: Channel, tx_open: asyncio.Event) -> None:
    """Another part of the program: asks for the status while the transaction holds the channel."""
    await tx_open.wait()
    asked = time.monotonic()
    print("  poller: asking query-status (the channel is held, so it waits)")
    reply = await channel.execute({"execute": "query-status"}, src="poller")
    print(f"  poller: got {reply['return']['status']!r} after {1000 * (time.monotonic() - asked):.0f} ms")


async def session(tmp: str) -> int:
    record, qmp = os.path.join(tmp, "session.jsonl"), os.path.join(tmp, "qemu-qmp.sock")
    qemu = subprocess.Popen([*QEMU, "-qmp", f"unix:{qmp},server=on,wait=off"], stdin=subprocess.DEVNULL)
    try:
        while not os.path.exists(qmp):
            if qemu.poll() is not None:
                raise SystemExit("QEMU did not start")
            await asyncio.sleep(0.01)

        def make_log(greeting: dict[str, Any]) -> RecordWriter:
            header = header_for_greeting(greeting, qemu_argv=QEMU, labels={"example": "transaction_library"})
            return RecordWriter.create(record, header)

        channel = await Channel.open_unix(qmp, make_log)
        events = asyncio.create_task(print_events(channel))

        async def run(command: str) -> dict[str, Any]:
            return await channel.execute({"execute": command}, src="example")

        print("status:", (await run("query-status"))["return"]["status"])

        tx_open = asyncio.Event()
        other = asyncio.create_task(poller(channel, tx_open))
        print("transaction 'inspect-paused':")
        async with channel.transaction("inspect-paused", owner="example"):
            tx_open.set()
            await asyncio.sleep(0.1)  # let the poller ask now, while we hold the channel
            await run("stop")
            status = await run("query-status")
            print(f"  inside: status {status['return']['status']!r}")
            await run("cont")
            print("  inside: done, ending the transaction")
        await other

        await run("quit")
        await asyncio.wait_for(channel.wait_closed(), 10)
        await events
        channel.log.close()
    finally:
        if qemu.poll() is None:
            qemu.kill()
        qemu.wait()

    print("\n$ qmprr verify session.jsonl")
    checked = subprocess.run([*QMPRR, "verify", record])
    print("\n$ qmprr show session.jsonl")
    subprocess.run([*QMPRR, "show", "--color", "never", record], check=True)
    return checked.returncode


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # keep our lines in order with the subprocesses'
    with tempfile.TemporaryDirectory(prefix="qmprr-example-") as tmp:
        return asyncio.run(session(tmp))


if __name__ == "__main__":
    sys.exit(main())
