"""Make the recordings in this folder again, against a real QEMU.

Each recording is made the way a user makes one: ``qmprr launch`` runs as a
subprocess with QEMU behind it, and real QMP clients talk to its primary and
debug sockets. Afterwards ``qmprr verify`` must pass on the file and a few
facts about it are checked (the events expected are there, the injected
command waited for the transaction, ...).

Run from the repository root::

    .venv/bin/python recordings/regenerate.py            # writes recordings/*.jsonl
    .venv/bin/python recordings/regenerate.py --out DIR  # somewhere else
    .venv/bin/python recordings/regenerate.py block      # only some of them

Everything runs in a temporary folder that is QEMU's and qmprr's working
directory, so the paths inside the recordings are short relative names
(``base.qcow2``, ``guest.dump``) rather than temporary paths. A recording
replaces the file of the same name in the output folder only once it has
passed its checks; nothing else there is touched. Timestamps, process ids
and the host name are those of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from qmprr import wire

HERE = Path(__file__).resolve().parent
QMPRR = [sys.executable, "-m", "qmprr.cli"]
Q35 = ["-machine", "q35", "-accel", "tcg", "-nodefaults", "-display", "none", "-m", "128"]
NONE = ["-machine", "none", "-nodefaults", "-display", "none"]
TIMEOUT = 10.0


class Failed(Exception):
    """A recording did not come out as expected."""


def check(condition: object, what: str) -> None:
    if not condition:
        raise Failed(what)


# -- a small asyncio QMP client ------------------------------------------------


class Client:
    """A raw QMP client over a UNIX socket: events are collected as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = wire.StreamDecoder()
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.events: list[dict[str, Any]] = []
        self._new_event = asyncio.Event()
        self._ids = 0
        self.greeting: dict[str, Any] | None = None
        self._greeted = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, path: str, *, negotiate: bool = True) -> Client:
        reader, writer = await asyncio.open_unix_connection(path)
        client = cls(reader, writer)
        await asyncio.wait_for(client._greeted.wait(), TIMEOUT)
        if negotiate:
            reply = await client.execute("qmp_capabilities")
            check("return" in reply, f"negotiation failed: {reply}")
        return client

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            for item in self.decoder.feed(data):
                if isinstance(item, wire.FramingError):
                    raise Failed(f"unreadable data from qmprr: {item!r}")
                if self.greeting is None and "QMP" in item:
                    self.greeting = item
                    self._greeted.set()
                elif "event" in item:
                    self.events.append(item)
                    self._new_event.set()
                else:
                    self.replies.put_nowait(item)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.replies.get(), TIMEOUT)

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        self._ids += 1
        msg: dict[str, Any] = {"execute": command, "id": self._ids}
        if arguments is not None:
            msg["arguments"] = arguments
        await self.send_raw(wire.encode(msg))
        reply = await self.reply()
        check(reply.get("id") == self._ids, f"{command}: reply with the wrong id: {reply}")
        return reply

    async def ok(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Execute and insist on success; the ``return`` value."""
        reply = await self.execute(command, arguments)
        check("return" in reply, f"{command} failed: {reply}")
        return reply["return"]

    async def event(self, name: str, match: dict[str, Any] | None = None) -> dict[str, Any]:
        """Wait for (and take) the first collected event *name* whose data has *match*."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            for ev in self.events:
                data = ev.get("data", {})
                if ev["event"] == name and all(data.get(k) == v for k, v in (match or {}).items()):
                    self.events.remove(ev)
                    return ev
            self._new_event.clear()
            left = deadline - time.monotonic()
            check(left > 0, f"no {name} event {match or ''} within {TIMEOUT:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_event.wait(), left)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


# -- running qmprr launch ------------------------------------------------------


class Launch:
    """``qmprr launch`` in *work*: sockets ``qmp.sock`` and ``debug.sock``."""

    def __init__(self, work: Path, name: str, qemu: str, qemu_args: list[str]) -> None:
        self.work, self.name = work, name
        self.record = work / f"{name}.jsonl"
        self.socket, self.debug_socket = str(work / "qmp.sock"), str(work / "debug.sock")
        self.argv = [
            *QMPRR, "launch", "--record", self.record.name, "--socket", "qmp.sock",
            "--debug-socket", "debug.sock", "--label", f"recording={name}",
            "--label", "made-by=recordings/regenerate.py",
            "--", qemu, *qemu_args,
        ]  # fmt: skip
        self.stderr_path = work / f"{name}.stderr"
        self.proc: asyncio.subprocess.Process | None = None

    def env(self, qemu: str) -> dict[str, str]:
        # A plain environment, so the header's qemu_env says little about this machine.
        found = shutil.which(qemu)
        dirs = [os.path.dirname(found)] if found else []
        dirs += [d for d in ("/usr/local/bin", "/usr/bin", "/bin") if d not in dirs]
        return {"PATH": os.pathsep.join(dirs), "LANG": "C.UTF-8"}

    async def __aenter__(self) -> Launch:
        with open(self.stderr_path, "wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, cwd=self.work, env=self.env(self.argv[self.argv.index("--") + 1]),
                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
            )  # fmt: skip
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(self.debug_socket):
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise Failed(f"qmprr launch did not come up:\n{self.stderr()}")
            await asyncio.sleep(0.01)
        return self

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait(self) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), 2 * TIMEOUT)
        except TimeoutError:
            self.proc.kill()
            raise Failed(f"qmprr launch did not exit:\n{self.stderr()}") from None

    async def stop(self) -> int:
        """SIGTERM: qmprr asks QEMU to quit (logged as an internal command) and exits."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait()

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(Exception):
                await self.wait()


def records(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def commands(recs: list[dict[str, Any]], name: str | None = None) -> list[dict[str, Any]]:
    return [r for r in recs if r["kind"] == "command" and (name is None or r["msg"]["execute"] == name)]


def event_names(recs: list[dict[str, Any]]) -> list[str]:
    return [r["msg"]["event"] for r in recs if r["kind"] == "event"]


def reply_to(recs: list[dict[str, Any]], cmd: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in recs if r["kind"] == "reply" and r["cmd"] == cmd["seq"])


async def wait_for_record(path: Path, kind: str) -> dict[str, Any]:
    """Poll the growing recording until a record of *kind* appears (each is one write())."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec["kind"] == kind:
                return rec
        await asyncio.sleep(0.01)
    raise Failed(f"no {kind} record appeared in {path.name}")


# -- the recordings ------------------------------------------------------------


async def lifecycle(work: Path, qemu: str) -> Path:
    """VM lifecycle: query-status, stop, cont, system_reset, quit, with their events."""
    async with Launch(work, "lifecycle", qemu, Q35) as run:
        c = await Client.connect(run.socket)
        check((await c.ok("query-status"))["status"] == "running", "VM not running at start")
        await c.ok("stop")
        await c.event("STOP")
        check((await c.ok("query-status"))["status"] == "paused", "VM not paused after stop")
        await c.ok("cont")
        await c.event("RESUME")
        await c.ok("system_reset")
        await c.event("RESET")
        check((await c.ok("query-status"))["status"] == "running", "VM not running after reset")
        await c.ok("quit")
        await c.event("SHUTDOWN")
        await c.close()
        check(await run.wait() == 0, f"qmprr launch failed:\n{run.stderr()}")
    recs = records(run.record)
    names = [r["msg"]["execute"] for r in commands(recs)]
    check(names == ["qmp_capabilities", "query-status", "stop", "query-status", "cont",
                    "system_reset", "query-status", "quit"], f"commands: {names}")  # fmt: skip
    for ev in ("STOP", "RESUME", "RESET", "SHUTDOWN"):
        check(ev in event_names(recs), f"no {ev} event recorded")
    check(recs[-1]["kind"] == "close" and recs[-1]["reason"] == "eof", "log does not end with close (eof)")
    return run.record


async def block(work: Path, qemu: str) -> Path:
    """qcow2 overlay with blockdev-snapshot, then an active block-commit job to completion."""
    for image in ("base.qcow2", "top.qcow2"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", image, "16M"], cwd=work, check=True)
    async with Launch(work, "block", qemu, NONE) as run:
        c = await Client.connect(run.socket)
        await c.ok("blockdev-add", {"driver": "qcow2", "node-name": "base",
                                    "file": {"driver": "file", "filename": "base.qcow2"}})  # fmt: skip
        await c.ok("blockdev-add", {"driver": "qcow2", "node-name": "top", "backing": None,
                                    "file": {"driver": "file", "filename": "top.qcow2"}})  # fmt: skip
        await c.ok("blockdev-snapshot", {"node": "base", "overlay": "top"})
        # Give the overlay some data, so the commit has something to copy down.
        await c.ok("human-monitor-command", {"command-line": 'qemu-io top "write -P 0x5a 0 64k"'})
        await c.ok("block-commit", {"job-id": "commit0", "device": "top", "auto-dismiss": False})
        await c.event("BLOCK_JOB_READY", {"device": "commit0"})
        jobs = await c.ok("query-block-jobs")
        check([j["device"] for j in jobs] == ["commit0"] and jobs[0]["ready"], f"jobs: {jobs}")
        await c.ok("job-complete", {"id": "commit0"})
        await c.event("BLOCK_JOB_COMPLETED", {"device": "commit0"})
        await c.event("JOB_STATUS_CHANGE", {"id": "commit0", "status": "concluded"})
        await c.ok("job-dismiss", {"id": "commit0"})
        check(await c.ok("query-block-jobs") == [], "job still listed after job-dismiss")
        await c.ok("blockdev-del", {"node-name": "top"})
        await c.ok("blockdev-del", {"node-name": "base"})
        await c.close()
        check(await run.stop() == 0, f"qmprr launch failed:\n{run.stderr()}")
    recs = records(run.record)
    events = event_names(recs)
    for ev in ("JOB_STATUS_CHANGE", "BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED"):
        check(ev in events, f"no {ev} event recorded")
    statuses = [r["msg"]["data"]["status"] for r in recs
                if r["kind"] == "event" and r["msg"]["event"] == "JOB_STATUS_CHANGE"]  # fmt: skip
    check(statuses == ["created", "running", "ready", "waiting", "pending", "concluded", "null"],
          f"job statuses: {statuses}")  # fmt: skip
    completed = next(r for r in recs if r["kind"] == "event" and r["msg"]["event"] == "BLOCK_JOB_COMPLETED")
    check(completed["msg"]["data"]["len"] > 0, "the commit copied nothing")
    check(len(commands(recs, "blockdev-del")) == 2, "blockdev-del missing")
    described = [d["path"] for r in recs if r["kind"] == "note" for d in (r.get("data") or {}).get("images", [])]
    check(described == ["base.qcow2", "top.qcow2"], f"images described (for replay's scratch images): {described}")
    return run.record


async def hotplug(work: Path, qemu: str) -> Path:
    """USB devices plugged into and out of a qemu-xhci controller on a paused q35."""
    async with Launch(work, "hotplug", qemu, [*Q35, "-S", "-device", "qemu-xhci,id=xhci"]) as run:
        c = await Client.connect(run.socket)
        await c.ok("device_add", {"driver": "usb-kbd", "id": "kbd0", "bus": "xhci.0"})
        await c.ok("device_add", {"driver": "usb-tablet", "id": "tablet0", "bus": "xhci.0"})
        names = {p["name"] for p in await c.ok("qom-list", {"path": "/machine/peripheral"})}
        check({"kbd0", "tablet0"} <= names, f"devices not plugged: {names}")
        for dev in ("kbd0", "tablet0"):
            await c.ok("device_del", {"id": dev})
            await c.event("DEVICE_DELETED", {"device": dev})
        names = {p["name"] for p in await c.ok("qom-list", {"path": "/machine/peripheral"})}
        check(not {"kbd0", "tablet0"} & names, f"devices still there: {names}")
        await c.close()
        check(await run.stop() == 0, f"qmprr launch failed:\n{run.stderr()}")
    recs = records(run.record)
    deleted = [r["msg"]["data"]["device"] for r in recs
               if r["kind"] == "event" and r["msg"]["event"] == "DEVICE_DELETED"]  # fmt: skip
    check(deleted == ["kbd0", "tablet0"], f"DEVICE_DELETED for {deleted}")
    check([r["role"] for r in commands(recs, "quit")] == ["internal"], "qmprr's own quit not recorded")
    return run.record


async def errors(work: Path, qemu: str) -> Path:
    """What clients get wrong, through the proxy: QEMU's errors and qmprr's own answers."""
    async with Launch(work, "errors", qemu, NONE) as run:
        raw = await Client.connect(run.socket, negotiate=False)
        # Before negotiation: only qmp_capabilities works (qmprr answers, as QEMU would).
        await raw.send_raw(b'{"execute": "query-status", "id": "too-early"}\r\n')
        check((await raw.reply())["error"]["class"] == "CommandNotFound", "command before negotiation")
        await raw.send_raw(b'{"execute": "qmp_capabilities", "id": "caps"}\r\n')
        check("return" in await raw.reply(), "negotiation")
        # Input that is not JSON: a parse error, answered by qmprr without an id.
        await raw.send_raw(b'{"execute": "query-status", "id": 1,}\r\n')
        bad = await raw.reply()
        check(bad["error"]["desc"] == "JSON parse error" and "id" not in bad, f"parse error: {bad}")
        # The same connection still works afterwards.
        await raw.send_raw(b'{"execute": "query-status", "id": "after"}\r\n')
        check("return" in await raw.reply(), "connection unusable after a parse error")
        await raw.close()

        c = await Client.connect(run.socket)
        qemu_errors = [
            ("no-such-command", None, "CommandNotFound"),  # unknown command
            ("query-status", {"verbose": True}, "GenericError"),  # unexpected argument
            ("device_del", {}, "GenericError"),  # missing argument
            ("human-monitor-command", {"command-line": 42}, "GenericError"),  # wrong type
            ("blockdev-del", {"node-name": "nowhere"}, "GenericError"),  # no such node
        ]
        for command, arguments, cls in qemu_errors:
            reply = await c.execute(command, arguments)
            check(reply.get("error", {}).get("class") == cls, f"{command}: {reply}")
        # Answered by qmprr itself.
        reply = await c.execute("qmp_capabilities")
        check(reply["error"]["class"] == "CommandNotFound", f"second qmp_capabilities: {reply}")
        await c.send_raw(b'{"exec-oob": "query-status", "id": "oob"}\r\n')
        check("error" in await c.reply(), "exec-oob accepted")
        reply = await c.execute("qmprr-transaction-end")
        check("error" in reply, f"transaction end without begin: {reply}")
        await c.close()

        d = await Client.connect(run.debug_socket)
        reply = await d.execute("quit")  # refused to debug clients by the default policy
        check("qmprr policy refuses 'quit'" in reply["error"]["desc"], f"debug quit: {reply}")
        await d.close()
        check(await run.stop() == 0, f"qmprr launch failed:\n{run.stderr()}")
    recs = records(run.record)
    local = [r for r in recs if r["kind"] == "local"]
    local_errors = [r for r in local if "error" in r["reply"]]
    check(len(local_errors) == 6, f"{len(local_errors)} local error records, expected 6")
    check(any(r.get("input") is not None and "msg" not in r for r in local), "no record of the unparsable input")
    failed = [r for r in recs if r["kind"] == "reply" and "error" in r["msg"]]
    check(len(failed) == len(qemu_errors), f"{len(failed)} error replies from QEMU")
    check(not any(r["kind"] == "taint" for r in recs), "a refused debug command tainted the recording")
    check([r["msg"]["execute"] for r in commands(recs) if r["src"] != "qmprr"][0] == "query-status",
          "the too-early command reached QEMU")  # fmt: skip
    return run.record


async def inject_during_transaction(work: Path, qemu: str) -> Path:
    """A transaction (stop, dump-guest-memory, cont) while a debug client's command waits."""
    async with Launch(work, "inject-during-transaction", qemu, Q35) as run:
        primary = await Client.connect(run.socket)
        debug = await Client.connect(run.debug_socket)
        await primary.ok("query-status")
        tx = await primary.ok("qmprr-transaction-begin", {"label": "dump"})
        # The debug client's command arrives while the transaction holds the channel.
        injected = asyncio.create_task(debug.execute("query-status"))
        # qmprr logs the taint when it takes the debug command, before the command
        # waits for the channel: once it is in the log, the command is waiting.
        await wait_for_record(run.record, "taint")
        await primary.ok("stop")
        await primary.ok("dump-guest-memory", {"paging": False, "protocol": "file:guest.dump"})
        check(not injected.done(), "the injected command did not wait for the transaction")
        await primary.ok("cont")
        check(not injected.done(), "the injected command did not wait for the transaction")
        check(await primary.ok("qmprr-transaction-end") == tx, "transaction end")
        reply = await asyncio.wait_for(injected, TIMEOUT)
        check(reply["return"]["status"] == "running", f"injected query-status: {reply}")
        check(os.path.getsize(work / "guest.dump") > 128 << 20, "dump file too small")
        os.unlink(work / "guest.dump")
        await primary.close()
        await debug.close()
        check(await run.stop() == 0, f"qmprr launch failed:\n{run.stderr()}")
    recs = records(run.record)
    txs = [r for r in recs if r["kind"] == "tx"]
    check([t["action"] for t in txs] == ["begin", "end"], f"tx records: {txs}")
    begin, end = txs
    inside = [r for r in commands(recs) if begin["seq"] < r["seq"] < end["seq"]]
    check([r["msg"]["execute"] for r in inside] == ["stop", "dump-guest-memory", "cont"], "tx commands")
    check(all(r.get("tx") == begin["tx"] and r["src"] == "primary-1" for r in inside), "tx members")
    taint = next(r for r in recs if r["kind"] == "taint")
    check(begin["seq"] < taint["seq"] < end["seq"], "the debug command did not arrive during the transaction")
    (dbg,) = [r for r in commands(recs) if r["role"] == "debug"]
    check(dbg["seq"] > end["seq"] and "tx" not in dbg, "the injected command ran inside the transaction")
    check(reply_to(recs, dbg)["seq"] > end["seq"], "reply order")
    for ev in ("STOP", "DUMP_COMPLETED", "RESUME"):
        check(ev in event_names(recs), f"no {ev} event recorded")
    return run.record


RECORDINGS: dict[str, Callable[[Path, str], Awaitable[Path]]] = {
    "lifecycle": lifecycle,
    "block": block,
    "hotplug": hotplug,
    "errors": errors,
    "inject-during-transaction": inject_during_transaction,
}


# -- main ------------------------------------------------------------------------


def verify(path: Path) -> None:
    result = subprocess.run([*QMPRR, "verify", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise Failed(f"qmprr verify failed:\n{result.stdout}{result.stderr}")


@contextlib.asynccontextmanager
async def workdir(name: str) -> AsyncIterator[Path]:
    # Short path: UNIX socket paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix=f"qmprr-{name}-") as tmp:
        yield Path(tmp)


async def make(name: str, out: Path, qemu: str) -> float:
    started = time.monotonic()
    async with workdir(name) as work:
        made = await RECORDINGS[name](work, qemu)
        verify(made)
        target = out / f"{name}.jsonl"
        partial = out / f".{name}.jsonl.partial"
        shutil.copyfile(made, partial)
        os.replace(partial, target)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: recordings/)")
    parser.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary (default qemu-system-x86_64)")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"recordings to make (default all: {', '.join(RECORDINGS)})")  # fmt: skip
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in RECORDINGS]
    if unknown:
        parser.error(f"no recording named {', '.join(unknown)} (choose from {', '.join(RECORDINGS)})")
    if shutil.which(args.qemu) is None or shutil.which("qemu-img") is None:
        print(f"regenerate: {args.qemu} and qemu-img are needed (Debian: qemu-system-x86 qemu-utils)",
              file=sys.stderr)  # fmt: skip
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    total = time.monotonic()
    for name in args.names or RECORDINGS:
        try:
            took = asyncio.run(make(name, args.out, args.qemu))
        except Failed as exc:
            print(f"regenerate: {name}: {exc}", file=sys.stderr)
            return 1
        n = sum(1 for _ in open(args.out / f"{name}.jsonl", "rb"))
        print(f"{args.out / (name + '.jsonl')}: {n} records, verified ({took:.1f} s)")
    print(f"done in {time.monotonic() - total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
