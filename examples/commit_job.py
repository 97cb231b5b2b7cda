"""A management client with a real race, and its fix: what ``qmprr fake --chaos`` finds.

The client runs the session of ``recordings/block.jsonl``: a qcow2 overlay,
an active ``block-commit``, ``BLOCK_JOB_READY``, ``job-complete``,
``BLOCK_JOB_COMPLETED``, clean-up. The racy version (``careful=False``)
reads messages until its command's reply and drops the events it reads on
the way, then waits for the job's event. That works whenever the event comes
after the reply, as it did when the recording was made, so it passes against
the plain fake. But QMP lets an event a command caused come before its reply:
under chaos, ``BLOCK_JOB_COMPLETED`` sometimes arrives before ``job-complete``'s
return, is dropped, and the client waits forever (here: until
``event_timeout``). The careful version keeps the events it reads while
waiting for a reply, and looks there first.

Run it against the fake (from the repository root)::

    .venv/bin/qmprr fake recordings/block.jsonl --socket /tmp/qmp.sock --chaos 0 &
    .venv/bin/python examples/commit_job.py /tmp/qmp.sock           # racy: may hang, then fail
    .venv/bin/python examples/commit_job.py /tmp/qmp.sock --careful
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any


class JobTimeout(Exception):
    """The event the client waited for never came."""


class Client:
    """Just enough QMP: one command at a time, events collected (careful) or dropped (racy)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, careful: bool,
                 event_timeout: float) -> None:  # fmt: skip
        self.reader, self.writer = reader, writer
        self.careful, self.event_timeout = careful, event_timeout
        self.events: list[dict[str, Any]] = []  # careful: events read while waiting for a reply
        self.ids = 0

    async def _message(self) -> dict[str, Any]:
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("QEMU closed the monitor")
        msg: dict[str, Any] = json.loads(line)
        return msg

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        self.ids += 1
        msg: dict[str, Any] = {"execute": command, "id": self.ids}
        if arguments is not None:
            msg["arguments"] = arguments
        self.events.clear()  # what came before the command cannot be its doing
        self.writer.write(json.dumps(msg).encode() + b"\n")
        await self.writer.drain()
        while True:
            reply = await self._message()
            if "event" in reply:
                if self.careful:
                    self.events.append(reply)
                continue  # the racy client drops it
            if reply.get("id") != self.ids:
                raise RuntimeError(f"{command}: reply to another command: {reply}")
            if "error" in reply:
                raise RuntimeError(f"{command}: {reply['error'].get('desc')}")
            return reply.get("return")

    async def event(self, name: str) -> dict[str, Any]:
        """The next event *name*: among those kept since the last command (careful), else from the wire."""
        for i, event in enumerate(self.events):
            if event["event"] == name:
                del self.events[: i + 1]
                return event
        try:
            async with asyncio.timeout(self.event_timeout):
                while True:
                    msg = await self._message()
                    if msg.get("event") == name:
                        return msg
        except TimeoutError:
            raise JobTimeout(f"no {name} within {self.event_timeout:g} s") from None


async def commit(socket_path: str, *, careful: bool, event_timeout: float = 2.0) -> list[str]:
    """Run the overlay + active commit session; return what happened, step by step."""
    reader, writer = await asyncio.open_unix_connection(socket_path)
    qmp = Client(reader, writer, careful, event_timeout)
    steps = []
    try:
        await qmp._message()  # the greeting
        await qmp.execute("qmp_capabilities")
        await qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": "base",
                                           "file": {"driver": "file", "filename": "base.qcow2"}})  # fmt: skip
        await qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": "top", "backing": None,
                                           "file": {"driver": "file", "filename": "top.qcow2"}})  # fmt: skip
        await qmp.execute("blockdev-snapshot", {"node": "base", "overlay": "top"})
        await qmp.execute("human-monitor-command", {"command-line": 'qemu-io top "write -P 0x5a 0 64k"'})
        await qmp.execute("block-commit", {"job-id": "commit0", "device": "top", "auto-dismiss": False})
        ready = await qmp.event("BLOCK_JOB_READY")
        steps.append(f"ready: {ready['data']['offset']} of {ready['data']['len']} bytes")
        await qmp.execute("query-block-jobs")
        await qmp.execute("job-complete", {"id": "commit0"})
        await qmp.event("BLOCK_JOB_COMPLETED")
        steps.append("completed")
        await qmp.execute("job-dismiss", {"id": "commit0"})
        if await qmp.execute("query-block-jobs") != []:
            raise RuntimeError("the job is still listed after job-dismiss")
        await qmp.execute("blockdev-del", {"node-name": "top"})
        await qmp.execute("blockdev-del", {"node-name": "base"})
        steps.append("cleaned up")
    finally:
        writer.close()
        await writer.wait_closed()
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="QMP socket (qmprr fake recordings/block.jsonl --socket ...)")
    parser.add_argument("--careful", action="store_true", help="keep events read while waiting for a reply")
    parser.add_argument("--event-timeout", type=float, default=2.0)
    args = parser.parse_args()
    try:
        for step in asyncio.run(commit(args.socket, careful=args.careful, event_timeout=args.event_timeout)):
            print(step)
    except (JobTimeout, OSError) as exc:
        print(f"commit_job: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
