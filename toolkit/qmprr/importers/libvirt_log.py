"""Parsing a libvirtd (or virtqemud) debug log into monitor connections.

A log line is ``DATE TIME+ZONE: TID: LEVEL : FUNCTION:LINE : MESSAGE``; a
message with a newline in it goes on over the next lines (the monitor probes
end their JSON with ``\\r\\n``, so ``SEND_MSG`` and ``IO_WRITE`` always
have a continuation line: `` fd=-1``, `` len=49 ret=49 errno=0``). What
is read, all from ``qemu.qemu_monitor`` and ``qemu.qemu_monitor_json``
(libvirt 9.0 wording; older releases differ only in extra ``refs=``):

``QEMU_MONITOR_NEW: mon=P fd=N``
    a connection opens (a pointer ``P`` is reused once its connection closed);
``QEMU_MONITOR_SEND_MSG: mon=P msg=JSON`` + `` fd=N``
    libvirt's thread hands a command to the monitor (``fd`` >= 0: with a descriptor);
``QEMU_MONITOR_IO_WRITE: mon=P buf=JSON`` + `` len= ret= errno=``
    the event thread writes it to the socket: this is when QEMU got it;
``QEMU_MONITOR_IO_SEND_FD: mon=P fd=N ret= errno=``
    the descriptor passed with it;
``qemuMonitorJSONIOProcessLine: Line [JSON]`` (debug)
    every line QEMU sent; only the greeting (``{"QMP": ...}``) is taken
    from here, as nothing else logs it. It names no monitor: it goes to the
    connection whose event thread (same thread id) first shows activity;
``QEMU_MONITOR_RECV_REPLY: mon=P reply=JSON`` / ``QEMU_MONITOR_RECV_EVENT: mon=P event=JSON``
    replies (matched to commands by order and id) and events;
``QEMU_MONITOR_CLOSE: mon=P``
    the connection ends.

Around them, other debug lines tell who is who: ``Connect monitor to vm=V
name='NAME'`` (and ``Reconnect ...`` after a daemon restart) just before
``QEMU_MONITOR_NEW`` on the same thread, ``qemuProcessQMPConnectMonitor:
... emulator=PATH`` for capability probes, ``qemuMonitorXxx: mon:P vm:V
fd:N`` for the libvirt function that sends the next command
(``qemuMonitorArbitraryCommand`` is ``virsh qemu-monitor-command``),
``Triggering EOF callback mon=P`` when QEMU closed the socket, and the
``qemuDomainObjTaintMsg`` warnings. ``libvirt version: ...`` starts every
daemon's log: a restart, after which open connections are over.

Everything else (other sources, levels, garbage) is counted and skipped; a
line whose JSON cannot be read is reported with its number and the rest is
still read. The parser streams: each connection is handed to ``on_finished``
when it ends, so memory holds only the connections still open.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import attrs

from .. import codec, wire
from ..recording import Close, Command, Event, Fd, Greeting, Msg, Note, Reply, Taint
from .qemu_log import parse_stamp
from .writer import Item, LogImportError

_HEAD = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)([+-]\d{4})?: (\d+): (\w+) : (.*)$")
_FUNC = re.compile(r"^([A-Za-z_]\w*):(\d+) : ")
_MON_MSG = re.compile(r"^(QEMU_MONITOR_[A-Z_]+): mon=(0x[0-9a-fA-F]+|\(nil\))(.*)$", re.S)
_FD_TAIL = re.compile(r"\s+fd=(-?\d+)\s*$")
_WRITE_TAIL = re.compile(r"\s+len=(\d+) ret=(-?\d+) errno=(-?\d+)\s*$")
_SEND_FD = re.compile(r"^\s*fd=(-?\d+) ret=(-?\d+) errno=(-?\d+)")
_ID = re.compile(r'"id"\s*:\s*"([^"]*)"')
_LIBVIRT_ID = re.compile(r"^libvirt-(\d+)$")
#: How many nested ``mon:P vm:V`` functions are remembered per thread.
CALLER_DEPTH = 4
_MON_CHECK = re.compile(r"^mon:(0x[0-9a-fA-F]+) vm:(0x[0-9a-fA-F]+|\(nil\)) fd:(-?\d+)")
_CONNECT = re.compile(r"^(?:Connect monitor to vm|Reconnect monitor to def)=(0x[0-9a-fA-F]+) name='([^']*)'")
_VM_NAME = re.compile(r"\bvm=(0x[0-9a-fA-F]+),? name='?([^',\s]+)'?")
_PROBE = re.compile(r"emulator=([^,\s]+)")
_PROBE_MACHINE = re.compile(r"^Try to probe capabilities of '([^']*)' via QMP, machine (\S+)")
_EOF = re.compile(r"^Triggering (EOF|error) callback mon=(0x[0-9a-fA-F]+)")
_TAINT = re.compile(r"^Domain id=(-?\d+) name='([^']*)' uuid=(\S+) is tainted: (\S+)")
_KILL = re.compile(r"^vm=(0x[0-9a-fA-F]+) name=(\S+) pid=(\d+) flags=(0x[0-9a-fA-F]+)")

#: How far back (in lines) a "Connect monitor" line may be to name the next QEMU_MONITOR_NEW on its thread.
_CONTEXT_LINES = 200


@attrs.define
class Entry:
    """One log message (its header line and any continuation lines)."""

    line: int
    stamp: str
    at: float
    tid: int
    level: str
    func: str | None
    message: str
    cut: bool = False  # the file ended inside it, without a newline

    def orig(self) -> dict[str, Any]:
        return {"ts": self.stamp, "tid": self.tid, "line": self.line}


@attrs.define
class Problem:
    """A line that could not be read, or was read but not used."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@attrs.define(eq=False)
class Connection:
    """One monitor connection: a ``mon=`` pointer from ``QEMU_MONITOR_NEW`` to ``QEMU_MONITOR_CLOSE``."""

    index: int  # 1-based, in the order connections appear in the log
    mon: str
    daemon: int  # 1 for the first libvirtd run in the log, 2 after a restart, ...
    first_line: int
    start: float
    stamp: str
    keep: bool = True  # collect items (else only counts, for listings)
    implicit: bool = False  # first seen without QEMU_MONITOR_NEW
    name: str | None = None  # the VM's name, when the log tells
    probe: str | None = None  # emulator path of a capability probe
    machine: str | None = None  # the probe's -machine value
    vm: str | None = None  # libvirt's virDomainObj pointer
    reconnect: bool = False  # libvirtd reconnected to a QEMU already running (after a restart)
    last_line: int = 0
    end: float = 0.0
    closed: str | None = None  # close reason; None while open or when the log ended first
    items: list[Item] = attrs.Factory(list)
    greeting: dict[str, Any] | None = None
    commands: int = 0
    replies: int = 0
    events: int = 0
    fds: int = 0
    taints: int = 0
    unanswered: int = 0
    missing_ids: int = 0
    first_commands: list[str] = attrs.Factory(list)
    taint_reasons: list[tuple[str, float]] = attrs.Factory(list)
    # parsing state
    queued: list[Item] = attrs.Factory(list)  # handed to the monitor, not yet written
    awaiting: list[Item] = attrs.Factory(list)  # written, no reply yet
    ending: str | None = None  # "eof" / "error" from the EOF/error callback line
    last_id: int | None = None
    last_command: Item | None = None
    killed: bool = False  # libvirt signalled QEMU (qemuProcessKill): its SHUTDOWN comes from outside

    @property
    def label(self) -> str:
        """A short name for people: the VM, ``probe:BINARY``, or ``unknown``."""
        if self.name:
            return self.name
        if self.probe:
            return "probe:" + os.path.basename(self.probe)
        return "unknown"

    def add(self, item: Item) -> None:
        if self.keep:
            self.items.append(item)


@attrs.define
class LogStats:
    """What the whole log held, for the summary."""

    lines: int = 0
    entries: int = 0
    foreign_lines: int = 0  # not in libvirt's line format
    other_entries: int = 0  # libvirt lines of no interest here
    daemons: int = 0
    hosts: list[str] = attrs.Factory(list)
    versions: list[str] = attrs.Factory(list)
    cut_at_end: bool = False


def _libvirt_id(msg: Any) -> int | None:
    if isinstance(msg, dict):
        m = _LIBVIRT_ID.match(str(msg.get("id", "")))
        if m:
            return int(m.group(1))
    return None


class LibvirtLogParser:
    """Reads a debug log; see the module docstring.

    ``keep(conn)`` says whether a new connection's records are collected
    (listing needs only counts); ``on_finished(conn)`` gets every connection
    once it has ended or the log has, in the order they end.
    """

    def __init__(
        self,
        path: str,
        *,
        keep: Callable[[Connection], bool] = lambda conn: True,
        on_finished: Callable[[Connection], None] | None = None,
    ) -> None:
        self.path = path
        self.keep = keep
        self.on_finished = on_finished
        self.connections: list[Connection] = []
        self.problems: list[Problem] = []
        self.skipped: collections.Counter[str] = collections.Counter()
        self.stats = LogStats()
        self.open: dict[str, Connection] = {}
        self._daemon_state()

    def _daemon_state(self) -> None:
        """Pointers and threads mean something only within one daemon's run."""
        self._context: dict[int, tuple[int, dict[str, str]]] = {}  # tid -> (line, {name|probe|machine|vm})
        # tid -> [function, mon, sent a command yet], innermost last
        self._caller: dict[int, list[list[Any]]] = {}
        self._vm_names: dict[str, str] = {}
        self._greetings: dict[int, collections.deque[Item]] = collections.defaultdict(collections.deque)
        self._pending_taints: dict[str, list[Item]] = collections.defaultdict(list)

    # -- reading ----------------------------------------------------------------

    def parse(self) -> LibvirtLogParser:
        try:
            f = open(self.path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise LogImportError(f"{self.path}: cannot read: {exc.strerror}") from None
        with f:
            for entry in self._entries(f):
                self.stats.entries += 1
                self._entry(entry)
        self._finish_log()
        return self

    def _entries(self, f: BinaryIO) -> Iterator[Entry]:
        current: Entry | None = None
        parts: list[str] = []
        number = 0
        for raw in f:
            number += 1
            complete = raw.endswith(b"\n")
            text = raw.decode("utf-8", errors="replace").rstrip("\n").rstrip("\r")
            if not complete:
                self.stats.cut_at_end = True
            m = _HEAD.match(text)
            if m is None:
                if current is not None:
                    parts.append(text)
                    if not complete:
                        current.cut = True
                elif text.strip():
                    self.stats.foreign_lines += 1
                continue
            if current is not None:
                current.message = "\n".join(parts)
                yield current
            date, zone, tid, level, rest = m.groups()
            try:
                at = parse_stamp(date, zone)
            except ValueError:
                self.stats.foreign_lines += 1
                current = None
                continue
            func = None
            f_m = _FUNC.match(rest)
            if f_m is not None:
                func = f_m.group(1)
                rest = rest[f_m.end() :]
            current = Entry(number, date + (zone or ""), at, int(tid), level, func, "", cut=not complete)
            parts = [rest]
        if current is not None:
            current.message = "\n".join(parts)
            yield current
        self.stats.lines = number

    # -- dispatch ---------------------------------------------------------------

    def _entry(self, e: Entry) -> None:
        msg = e.message
        if e.func is None:
            if msg.startswith("libvirt version:"):
                self._daemon_start(e)
            elif msg.startswith("hostname:"):
                self.stats.hosts.append(msg[len("hostname:") :].strip())
            else:
                self.stats.other_entries += 1
            return
        m = _MON_MSG.match(msg)
        if m is not None:
            self._monitor(e, m.group(1), m.group(2), m.group(3))
            return
        if msg.startswith("Line [") and e.func == "qemuMonitorJSONIOProcessLine":
            self._line(e)
            return
        if self._context_line(e):
            return
        self.stats.other_entries += 1

    def _context_line(self, e: Entry) -> bool:
        msg = e.message
        m = _MON_CHECK.match(msg)
        if m is not None:
            mon, vm = m.group(1), m.group(2)
            stack = self._caller.setdefault(e.tid, [])
            if not stack or stack[-1][:2] != [e.func or "", mon]:
                stack.append([e.func or "", mon, False])  # a function calling another (DumpToFd, SendFileHandle)
                del stack[:-CALLER_DEPTH]
            conn = self.open.get(mon)
            if conn is not None and vm != "(nil)":
                conn.vm = conn.vm or vm
                if conn.name is None and vm in self._vm_names:
                    self._set_name(conn, self._vm_names[vm])
            return True
        m = _CONNECT.match(msg)
        if m is not None:
            self._vm_names[m.group(1)] = m.group(2)
            ctx = {"name": m.group(2), "vm": m.group(1)}
            if msg.startswith("Reconnect"):
                ctx["reconnect"] = "yes"
            self._context[e.tid] = (e.line, ctx)
            return True
        if e.func == "qemuProcessKill":
            m = _KILL.match(msg)
            if m is not None:
                self._kill(e, m.group(1), m.group(2), int(m.group(3)), m.group(4))
                return True
        if e.func == "qemuProcessQMPLaunch":
            m = _PROBE_MACHINE.match(msg)
            if m is not None:
                self._context[e.tid] = (e.line, {"probe": m.group(1), "machine": m.group(2)})
                return True
        if e.func == "qemuProcessQMPConnectMonitor":
            m = _PROBE.search(msg)
            if m is not None:
                previous = self._context.get(e.tid, (0, {}))[1]
                ctx = {"probe": m.group(1)}
                if previous.get("probe") == m.group(1) and "machine" in previous:
                    ctx["machine"] = previous["machine"]
                self._context[e.tid] = (e.line, ctx)
                return True
        m = _EOF.match(msg)
        if m is not None:
            conn = self.open.get(m.group(2))
            if conn is not None:
                conn.ending = m.group(1).lower()
        m = _TAINT.match(msg)
        if m is not None:
            self._taint(e, m.group(2), m.group(4))
            return True
        m = _VM_NAME.search(msg)
        if m is not None and m.group(1) not in self._vm_names:
            self._vm_names[m.group(1)] = m.group(2)
            for conn in self.open.values():
                if conn.vm == m.group(1) and conn.name is None:
                    self._set_name(conn, m.group(2))
        return m is not None

    def _set_name(self, conn: Connection, name: str) -> None:
        conn.name = name
        for item in self._pending_taints.pop(name, []):
            self._place_taint(conn, item)

    # -- connections -------------------------------------------------------------

    def _daemon_start(self, e: Entry) -> None:
        self.stats.daemons += 1
        self.stats.versions.append(e.message[len("libvirt version:") :].strip())
        for conn in list(self.open.values()):
            self._end(
                conn,
                e,
                "stopped",
                f"libvirtd restarted (line {e.line}) without closing this monitor (no QEMU_MONITOR_CLOSE)",
            )
        for taints in self._pending_taints.values():
            if taints:
                self.skipped["taint lines for a VM with no monitor in the log"] += len(taints)
        self._drop_greetings()
        self._daemon_state()

    def _drop_greetings(self) -> None:
        for queue in self._greetings.values():
            if queue:
                self.skipped["greetings no connection showed activity for"] += len(queue)

    def _new_connection(self, mon: str, e: Entry, *, implicit: bool) -> Connection:
        conn = Connection(
            index=len(self.connections) + 1,
            mon=mon,
            daemon=max(self.stats.daemons, 1),
            first_line=e.line,
            start=e.at,
            stamp=e.stamp,
            implicit=implicit,
            last_line=e.line,
            end=e.at,
        )
        if not implicit:
            line, ctx = self._context.pop(e.tid, (0, {}))
            if ctx and e.line - line <= _CONTEXT_LINES:
                conn.name = ctx.get("name")
                conn.probe = ctx.get("probe")
                conn.machine = ctx.get("machine")
                conn.vm = ctx.get("vm")
                conn.reconnect = "reconnect" in ctx
        conn.keep = self.keep(conn)
        self.connections.append(conn)
        self.open[mon] = conn
        if implicit:
            conn.add(
                Item(
                    Note(text="the log starts in the middle of this connection (no QEMU_MONITOR_NEW before it)"),
                    e.at,
                    e.orig(),
                )
            )
        if conn.name:
            for item in self._pending_taints.pop(conn.name, []):
                self._place_taint(conn, item)
        return conn

    def _end(self, conn: Connection, e: Entry | None, reason: str | None, detail: str | None) -> None:
        for item in conn.queued:
            cmd = item.record.msg  # type: ignore[attr-defined]  # this item holds a Command or Greeting
            conn.add(
                Item(
                    Note(
                        text=f"libvirt handed {_name(cmd)} to the monitor (line {item.orig['line'] if item.orig else '?'})"
                        " but it was never written before the connection ended",
                        data=Msg({"msg": cmd}),
                    ),
                    e.at if e else None,
                    e.orig() if e else None,
                )
            )
            self.skipped["commands never written to the socket"] += 1
        conn.queued.clear()
        conn.unanswered = conn.commands - conn.replies  # commands with no reply record
        if reason is not None and e is not None:
            conn.add(Item(Close(reason=reason, detail=detail), e.at, e.orig()))
            conn.closed = reason
        elif e is None:
            conn.add(
                Item(
                    Note(text=f"the log ends (line {self.stats.lines}) with this monitor still open"),
                    None,
                    None,
                )
            )
        if e is not None:
            conn.last_line, conn.end = e.line, e.at
        self.open.pop(conn.mon, None)
        conn.awaiting = []
        conn.last_command = None
        if self.on_finished is not None:
            self.on_finished(conn)  # it may write the connection out and drop its items

    def _finish_log(self) -> None:
        for conn in list(self.open.values()):
            for item in conn.queued:  # handed over as the log ends: treat as sent
                self._place(conn, item, None)
            conn.queued.clear()
            self._end(conn, None, None, None)
        for taints in self._pending_taints.values():
            if taints:
                self.skipped["taint lines for a VM with no monitor in the log"] += len(taints)
        self._drop_greetings()

    # -- monitor traffic ------------------------------------------------------

    def _monitor(self, e: Entry, what: str, mon: str, rest: str) -> None:
        if what == "QEMU_MONITOR_NEW":
            old = self.open.get(mon)
            if old is not None:
                self._end(
                    old,
                    e,
                    "stopped",
                    f"QEMU_MONITOR_NEW for the same address at line {e.line}; the log has no QEMU_MONITOR_CLOSE for it",
                )
            self._new_connection(mon, e, implicit=False)
            return
        conn = self.open.get(mon)
        if conn is None:
            if what == "QEMU_MONITOR_CLOSE":
                self.skipped["QEMU_MONITOR_CLOSE for a monitor the log never opened"] += 1
                return
            conn = self._new_connection(mon, e, implicit=True)
        conn.last_line, conn.end = e.line, e.at
        handler = {
            "QEMU_MONITOR_SEND_MSG": self._send,
            "QEMU_MONITOR_IO_WRITE": self._write,
            "QEMU_MONITOR_IO_SEND_FD": self._send_fd,
            "QEMU_MONITOR_RECV_REPLY": self._reply,
            "QEMU_MONITOR_RECV_EVENT": self._event,
            "QEMU_MONITOR_CLOSE": self._close,
        }.get(what)
        if handler is None:
            self.skipped[f"{what} lines (not used)"] += 1
            return
        handler(conn, e, rest)

    def _json(self, e: Entry, text: str, what: str) -> Any:
        """The JSON in *text*, or None after reporting the problem."""
        text = text.strip()
        try:
            value = codec.loads(text)
        except codec.JSONDecodeError as exc:
            if e.cut:
                self.problems.append(Problem(e.line, f"{what} cut short at the end of the file; skipped"))
            else:
                self.problems.append(Problem(e.line, f"malformed JSON in {what} ({exc}); skipped"))
            return None
        if not isinstance(value, dict):
            self.problems.append(Problem(e.line, f"{what} is not a JSON object; skipped"))
            return None
        return value

    def _send(self, conn: Connection, e: Entry, rest: str) -> None:
        rest = rest.strip()
        if rest.startswith("msg="):
            rest = rest[4:]
        m = _FD_TAIL.search(rest)
        if m is not None:
            rest = rest[: m.start()]
        msg = self._json(e, rest, "QEMU_MONITOR_SEND_MSG")
        if msg is None:
            self.skipped["commands that could not be read"] += 1
            return
        orig = e.orig()
        src, role = "libvirt", "primary"
        stack = self._caller.get(e.tid)
        caller = stack[-1] if stack else None  # one libvirt function may send several commands
        if caller is not None and stack is not None:
            caller[2] = True
            if len(stack) > 1 and not stack[-2][2]:
                stack.pop()  # a helper sent for a function still to send its own (getfd for the dump)
        if caller is not None and caller[1] == conn.mon:
            orig["caller"] = caller[0]
            if caller[0] == "qemuMonitorArbitraryCommand":
                src, role = "qemu-monitor-command", "debug"
        if msg.get("execute") == "qmp_capabilities" and role == "primary":
            role = "internal"  # negotiation: every replay target does its own
        conn.queued.append(Item(Command(src=src, role=role, msg=Msg(msg)), e.at, orig))  # type: ignore[arg-type]  # role is the log's; Record.role names the known ones

    def _write(self, conn: Connection, e: Entry, rest: str) -> None:
        self._claim_greeting(conn, e)
        rest = rest.strip()
        if rest.startswith("buf="):
            rest = rest[4:]
        ret = None
        m = _WRITE_TAIL.search(rest)
        if m is not None:
            rest = rest[: m.start()]
            ret = int(m.group(2))
        if ret is not None and ret <= 0:
            return  # nothing written (EAGAIN, error): libvirt tries again, or gives up and closes
        if conn.queued:
            item = conn.queued.pop(0)
            self._place(conn, item, e)
            return
        # No SEND_MSG for it: the rest of a partial write, or a log that lacks it.
        last = conn.last_command
        if last is not None and not rest.lstrip().startswith("{"):
            return  # the remainder of a partial write
        msg = self._json(e, rest, "QEMU_MONITOR_IO_WRITE")
        if msg is None:
            self.skipped["commands that could not be read"] += 1
            return
        if "execute" not in msg and "exec-oob" not in msg:
            return
        if last is not None and last.record.msg == msg:  # type: ignore[attr-defined]  # this item holds a Command or Greeting
            return  # the same command again (a retried write)
        role = "internal" if msg.get("execute") == "qmp_capabilities" else "primary"
        self._place(conn, Item(Command(src="libvirt", role=role, msg=Msg(msg)), e.at, e.orig()), e)  # type: ignore[arg-type]  # role is the log's; Record.role names the known ones

    def _place(self, conn: Connection, item: Item, e: Entry | None) -> None:
        """The command reached QEMU: into the recording, in wire order."""
        if e is not None:
            item.at = e.at
        msg = item.record.msg  # type: ignore[attr-defined]  # this item holds a Command or Greeting
        number = _libvirt_id(msg)
        if number is not None:
            if conn.last_id is not None and number > conn.last_id + 1:
                missing = number - conn.last_id - 1
                conn.missing_ids += missing
                self.skipped["commands absent from the log (gaps in libvirt-N ids)"] += missing
                conn.add(
                    Item(
                        Note(
                            text=f"the log has no commands libvirt-{conn.last_id + 1} to libvirt-{number - 1}"
                            f" ({missing}): filtered or trimmed out of the log",
                            data=Msg({"first": f"libvirt-{conn.last_id + 1}", "last": f"libvirt-{number - 1}"}),
                        ),
                        item.at,
                        None,
                    )
                )
            conn.last_id = number
        conn.add(item)
        conn.awaiting.append(item)
        conn.last_command = item
        conn.commands += 1
        name = _name(msg)
        if len(conn.first_commands) < 6 and name != "qmp_capabilities":
            conn.first_commands.append(name)

    def _send_fd(self, conn: Connection, e: Entry, rest: str) -> None:
        m = _SEND_FD.match(rest)
        if m is None:
            self.problems.append(Problem(e.line, "QEMU_MONITOR_IO_SEND_FD without fd/ret; skipped"))
            return
        command = conn.last_command
        if int(m.group(2)) < 0:
            conn.add(Item(Note(text=f"libvirt failed to pass a file descriptor (errno {m.group(3)})"), e.at, e.orig()))
            return
        src = command.record.src if command is not None else "libvirt"  # type: ignore[attr-defined]  # this item holds a Command or Greeting
        conn.add(Item(Fd(src=src, placeholder=f"fd:{conn.fds}", cmd=-1 if command else None), e.at, e.orig(), ref=command))
        conn.fds += 1

    def _reply(self, conn: Connection, e: Entry, rest: str) -> None:
        self._claim_greeting(conn, e)
        rest = rest.strip()
        if rest.startswith("reply="):
            rest = rest[6:]
        while conn.queued:  # the log shows no IO_WRITE for them
            self._place(conn, conn.queued.pop(0), e)
        reply = self._json(e, rest, "QEMU_MONITOR_RECV_REPLY")
        if reply is None:
            m = _ID.search(rest)
            target = self._answered(conn, m.group(1) if m else None)
            if target is not None:
                conn.add(Item(Note(text=f"the reply to {_name(target.record.msg)} could not be read (line {e.line})"), e.at, e.orig()))  # type: ignore[attr-defined]  # this item holds a Command or Greeting
            self.skipped["replies that could not be read"] += 1
            return
        target = self._answered(conn, reply.get("id"))
        if target is None:
            self.problems.append(Problem(e.line, f"reply (id {reply.get('id')!r}) to no command in flight; skipped"))
            self.skipped["replies to no command in flight"] += 1
            return
        conn.add(Item(Reply(cmd=-1, msg=Msg(reply)), e.at, e.orig(), ref=target))
        conn.replies += 1

    def _answered(self, conn: Connection, reply_id: Any) -> Item | None:
        """The command a reply answers: the oldest in flight, or the one with its id."""
        if not conn.awaiting:
            return None
        head = conn.awaiting[0]
        if reply_id is None or head.record.msg.get("id") == reply_id:  # type: ignore[attr-defined]  # this item holds a Command or Greeting
            return conn.awaiting.pop(0)
        for i, item in enumerate(conn.awaiting):
            if item.record.msg.get("id") == reply_id:  # type: ignore[attr-defined]  # this item holds a Command or Greeting
                return conn.awaiting.pop(i)
        return None

    def _event(self, conn: Connection, e: Entry, rest: str) -> None:
        self._claim_greeting(conn, e)
        rest = rest.strip()
        if rest.startswith("event="):
            rest = rest[6:]
        event = self._json(e, rest, "QEMU_MONITOR_RECV_EVENT")
        if event is None:
            self.skipped["events that could not be read"] += 1
            return
        if _external(conn, event):
            conn.add(Item(Note(text=EXTERNAL_NOTE, data=Msg({"external": event.get("event")})), e.at, e.orig()))
        conn.add(Item(Event(msg=Msg(event)), e.at, e.orig()))
        conn.events += 1

    def _close(self, conn: Connection, e: Entry, rest: str) -> None:
        reason = conn.ending or "stopped"
        detail = {
            "eof": "QEMU closed the monitor (libvirt saw EOF), then libvirt closed it (QEMU_MONITOR_CLOSE)",
            "error": "libvirt saw an error on the monitor and closed it (QEMU_MONITOR_CLOSE)",
        }.get(reason, "libvirt closed the monitor (QEMU_MONITOR_CLOSE)")
        self._end(conn, e, reason, detail)

    # -- greeting and taints ---------------------------------------------------

    def _line(self, e: Entry) -> None:
        body = e.message[len("Line [") :]
        if not body.lstrip().startswith('{"QMP"'):
            return  # replies and events: their RECV_REPLY / RECV_EVENT line follows
        body = body.rstrip()
        if body.endswith("]"):
            body = body[:-1]
        greeting = self._json(e, body, "greeting (Line [...])")
        if greeting is None:
            return
        self._greetings[e.tid].append(Item(Greeting(msg=Msg(greeting)), e.at, e.orig()))

    def _claim_greeting(self, conn: Connection, e: Entry) -> None:
        """A connection's first activity on its event thread takes the greeting read there."""
        if conn.greeting is not None or conn.implicit or conn.commands or conn.replies or conn.events:
            return
        queue = self._greetings.get(e.tid)
        if not queue:
            return
        item = queue.popleft()
        conn.greeting = item.record.msg  # type: ignore[attr-defined]  # this item holds a Command or Greeting
        conn.add(item)

    def _taint(self, e: Entry, name: str, reason: str) -> None:
        item = Item(Taint(reason=reason, client="libvirt"), e.at, e.orig())
        candidates = [c for c in self.open.values() if c.name == name]
        if candidates:
            self._place_taint(candidates[-1], item)
        else:
            self._pending_taints[name].append(item)

    def _kill(self, e: Entry, vm: str, name: str, pid: int, flags: str) -> None:
        for conn in self.open.values():
            if conn.vm == vm or (conn.vm is None and conn.name == name):
                conn.killed = True
                conn.add(
                    Item(
                        Note(
                            text=f"libvirt signals QEMU (qemuProcessKill pid {pid} flags {flags}): the VM is killed"
                            " outside the monitor, which a replay does not do",
                            data=Msg({"pid": pid, "flags": flags}),
                        ),
                        e.at,
                        e.orig(),
                    )
                )

    def _place_taint(self, conn: Connection, item: Item) -> None:
        conn.add(item)
        conn.taints += 1
        conn.taint_reasons.append((item.record.reason, item.at or conn.start))  # type: ignore[attr-defined]  # this item holds a Taint


#: The note before an event that no monitor command caused (``data.external``: the event's name).
EXTERNAL_NOTE = ("the next event comes from outside the monitor (a signal libvirt sent QEMU): replay does not"
                 " await it, the fake sends it only with --external-events")


def _external(conn: Connection, event: Any) -> bool:
    """A SHUTDOWN caused by a signal: after libvirt's qemuProcessKill, or one QEMU says came from the host."""
    if not isinstance(event, dict) or event.get("event") != "SHUTDOWN":
        return False
    data = event.get("data")
    return conn.killed or (isinstance(data, dict) and data.get("reason") == "host-signal")


def _name(msg: Any) -> str:
    if isinstance(msg, dict):
        name = wire.command_name(msg)
        if isinstance(name, str):
            return name
    return "?"
