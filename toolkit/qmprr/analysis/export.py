"""``qmprr export --format chrome-trace``: a recording as Chrome Trace Event JSON.

Opens in Perfetto (ui.perfetto.dev) and chrome://tracing. One process (the
recording); a thread per client with each command as a complete (``X``) slice
from send to reply, its command and reply JSON in ``args``; QEMU's events as
instants on a "QEMU events" thread; transactions as slices on a
"transactions" thread and waits for them on the waiting client's thread;
qmprr's own answers, taint, fds and connections as instants on the client's
thread; notes and the connection's close on a "qmprr" thread. Times are
microseconds since the recording started (``ts``).

Written as it is read, so memory stays flat.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

import orjson

from ..files import check_output, display_name
from .context import CommandInfo, Tracker, command_name, error_class
from .output import clip, replace_file
from .source import Scanner
from .waits import WaitTracker, queued_of as _queued

PID = 1
EVENTS_TID, TX_TID, QMPRR_TID = 1, 2, 3
FIRST_CLIENT_TID = 10


def _us(t: float) -> float:
    return round(t * 1e6, 3)


class _TraceWriter:
    """Writes trace events into a JSON object's ``traceEvents`` array."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.count = 0
        out.write(b'{"displayTimeUnit":"ms","traceEvents":[\n')

    def event(self, ev: dict[str, Any]) -> None:
        self.out.write((b",\n" if self.count else b"") + orjson.dumps(ev))
        self.count += 1

    def close(self, other: dict[str, Any]) -> None:
        self.out.write(b'\n],"otherData":' + orjson.dumps(other) + b"}\n")


class _ChromeTrace:
    def __init__(self, writer: _TraceWriter, path: str) -> None:
        self.w = writer
        self.tids: dict[str, int] = {}
        self.tracker = Tracker(on_drop=lambda info: self._slice(info, None, None, None))
        self.waits = WaitTracker()
        self.tx_open: dict[int, tuple[str, str, float]] = {}
        self._meta("process_name", PID, 0, f"qmprr {display_name(os.path.basename(path))}")
        for tid, name in ((EVENTS_TID, "QEMU events"), (TX_TID, "transactions"), (QMPRR_TID, "qmprr")):
            self._meta("thread_name", PID, tid, name)
            self._meta("thread_sort_index", PID, tid, tid)

    def _meta(self, name: str, pid: int, tid: int, value: Any) -> None:
        key = "sort_index" if name.endswith("sort_index") else "name"
        self.w.event({"name": name, "ph": "M", "pid": pid, "tid": tid, "args": {key: value}})

    def tid(self, client: str, role: str | None) -> int:
        tid = self.tids.get(client)
        if tid is None:
            tid = self.tids[client] = FIRST_CLIENT_TID + len(self.tids)
            role = role or self.tracker.roles.get(client, "?")
            self._meta("thread_name", PID, tid, f"{client} ({role})")
            self._meta("thread_sort_index", PID, tid, tid)
        return tid

    def _slice(self, info: CommandInfo, t1: float | None, reply: Any, reply_seq: int | None) -> None:
        end = t1 if t1 is not None else self.tracker.last_t
        cat = ["command", info.role]
        err = error_class(reply)
        if err is not None:
            cat.append("error")
        if t1 is None:
            cat.append("no-reply")
        args: dict[str, Any] = {"seq": info.seq, "command": clip(info.msg)}
        if reply is not None:
            args["reply"] = clip(reply)
            args["reply_seq"] = reply_seq
        if info.tx is not None:
            args["tx"] = info.tx
        ev = {"name": info.name + (f" ERROR {err}" if err else "") + (" (no reply)" if t1 is None else ""),
              "cat": ",".join(cat), "ph": "X", "ts": _us(info.t), "dur": _us(max(0.0, end - info.t)),
              "pid": PID, "tid": self.tid(info.src, info.role), "args": args}
        if err is not None:
            ev["cname"] = "terrible"
        self.w.event(ev)

    def _instant(self, name: str, cat: str, t: float, tid: int, args: dict[str, Any]) -> None:
        self.w.event({"name": name, "cat": cat, "ph": "i", "s": "t", "ts": _us(t), "pid": PID, "tid": tid,
                      "args": args})

    def add(self, d: dict[str, Any]) -> None:
        info = self.tracker.update(d)
        kind, t = d["kind"], d["t"]
        record = {k: v for k, v in d.items() if k != "h"}
        if kind == "command" and info is not None:
            self.tid(info.src, info.role)
            wait = self.waits.command(info.src, t, _queued(d))
            if wait is not None:
                self.w.event({"name": f"waiting for tx {wait.tx}", "cat": "wait", "ph": "X",
                              "ts": _us(wait.start), "dur": _us(wait.seconds), "pid": PID,
                              "tid": self.tid(wait.client, None), "args": {"tx": wait.tx}})
        elif kind == "reply":
            if info is not None:
                self._slice(info, t, d.get("msg"), d["seq"])
        elif kind == "event":
            msg = d.get("msg")
            name = msg.get("event") if isinstance(msg, dict) else None
            self._instant(name if isinstance(name, str) else "?", "event", t, EVENTS_TID,
                          {"seq": d["seq"], "event": clip(msg)})
        elif kind == "tx":
            self._tx(d, t)
        elif kind in ("local", "taint", "fd", "client"):
            client = str(d.get({"taint": "client", "client": "name"}.get(kind, "src"), "?"))
            if kind in ("taint", "fd"):
                self.waits.trace(client, t)
            elif kind == "client" and d.get("action") == "disconnect":
                self.waits.gone(client)
            label = {"local": lambda: f"{_local_name(d)} (answered by qmprr)",
                     "taint": lambda: f"TAINTED {d.get('reason')}",
                     "fd": lambda: f"fd {d.get('placeholder')}",
                     "client": lambda: f"{d.get('action')}"}[kind]()
            self._instant(label, kind, t, self.tid(client, d.get("role")), {"record": clip(record)})
        elif kind in ("note", "close", "greeting"):
            self._instant(kind if kind != "note" else f"note: {d.get('text')}", kind, t, QMPRR_TID,
                          {"record": clip(record)})

    def _tx(self, d: dict[str, Any], t: float) -> None:
        tx, action = d.get("tx"), d.get("action")
        if type(tx) is not int:
            return
        if action == "begin":
            self.tx_open[tx] = (str(d.get("label", "")), str(d.get("owner", "?")), t)
            self.waits.begin(tx, str(d.get("owner", "?")), t)
        elif tx in self.tx_open:
            self.waits.end(tx, t)
            self._tx_slice(tx, t, "aborted" if action == "abort" else "ended", d.get("reason"))

    def _tx_slice(self, tx: int, t: float, status: str, reason: Any = None) -> None:
        label, owner, t0 = self.tx_open.pop(tx)
        args = {"tx": tx, "label": label, "owner": owner, "status": status}
        if reason:
            args["reason"] = reason
        self.w.event({"name": f"tx {tx} {label} ({owner})", "cat": f"transaction,{status}", "ph": "X",
                      "ts": _us(t0), "dur": _us(t - t0), "pid": PID, "tid": TX_TID, "args": args})

    def finish(self) -> None:
        for info in self.tracker.pending.values():
            self._slice(info, None, None, None)
        for tx in list(self.tx_open):
            self._tx_slice(tx, self.tracker.last_t, "open")


def _local_name(d: dict[str, Any]) -> str:
    msg = d.get("msg")
    return command_name(msg) if isinstance(msg, dict) else "unparsable input"


def write_chrome_trace(path: str | os.PathLike[str], output: str | os.PathLike[str]) -> int:
    """Write recording *path* as a Chrome trace to *output* (``-``: stdout, else mode 0600); the number
    of trace events."""
    check_output(output, inputs=[path])
    with Scanner(path, check_chain=False) as scanner, replace_file(output) as out:
        writer = _TraceWriter(out)
        trace = _ChromeTrace(writer, scanner.path)
        for d, _ in scanner:
            trace.add(d)
        trace.finish()
        h = scanner.header
        writer.close({"recording": display_name(os.path.basename(scanner.path)), "started": h.started, "host": h.host,
                      "qemu_version": h.qemu_version, "format": h.format})
    return writer.count
