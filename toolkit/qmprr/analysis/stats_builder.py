"""The accumulators behind ``qmprr stats``: one pass over record dicts, in flat memory.

Tables keyed by a name (commands, events, clients) keep at most
:data:`MAX_KEYS` entries, later names are counted under ``(other)``; lists
(taint, commands without a reply) keep their first :data:`MAX_EXAMPLES`
entries and a count, waits the longest :data:`MAX_EXAMPLES`. Latencies go to
a :class:`~qmprr.analysis.histogram.LogHistogram` per command.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

import attrs

from .context import MAX_PENDING, command_name, error_class
from .histogram import LogHistogram
from .waits import Wait, WaitTracker
from .waits import queued_of as _queued

MAX_KEYS = 2_000
MAX_EXAMPLES = 20
OTHER = "(other)"
PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
#: Kinds that are QMP traffic, counted for the busiest second.
_MESSAGES = frozenset({"command", "reply", "event", "local"})
#: One second's traffic: (second, messages, commands, events).
Second = tuple[int, int, int, int]


class _CommandAcc:
    __slots__ = ("count", "errors", "hist", "no_reply")

    def __init__(self) -> None:
        self.count = 0
        self.errors: dict[str, int] = {}
        self.hist = LogHistogram()
        self.no_reply = 0

    def merge(self, other: _CommandAcc) -> None:
        self.count += other.count
        self.no_reply += other.no_reply
        _add_counts(self.errors, other.errors)
        h, o = self.hist, other.hist
        _add_counts(h.counts, o.counts)
        h.count += o.count
        h.max, h.min = max(h.max, o.max), min(h.min, o.min)


#: Roles a client has until one of its commands says otherwise (unknown; its negotiation).
_PROVISIONAL = ("?", "internal")


class _ClientAcc:
    __slots__ = ("role", "commands", "errors", "local", "first", "last")

    def __init__(self, role: str, t: float) -> None:
        self.role = role
        self.commands = 0
        self.errors = 0
        self.local = 0
        self.first = t
        self.last = t

    def merge(self, other: _ClientAcc) -> None:
        if self.role in _PROVISIONAL and other.role != "?":
            self.role = other.role
        self.commands += other.commands
        self.errors += other.errors
        self.local += other.local
        self.first, self.last = min(self.first, other.first), max(self.last, other.last)


@attrs.define
class Examples:
    """The first :data:`MAX_EXAMPLES` items of a list, and how many there were."""

    count: int = 0
    items: list[dict[str, Any]] = attrs.Factory(list)

    def add(self, item: dict[str, Any]) -> None:
        self.count += 1
        if len(self.items) < MAX_EXAMPLES:
            self.items.append(item)

    def merge(self, other: Examples) -> None:
        self.count += other.count
        self.items.extend(other.items[: MAX_EXAMPLES - len(self.items)])


def _add_counts(into: dict[Any, int], other: dict[Any, int]) -> None:
    for key, n in other.items():
        into[key] = into.get(key, 0) + n


def _keyed(table: dict[str, Any], name: str, make: Any) -> Any:
    acc = table.get(name)
    if acc is None:
        if len(table) >= MAX_KEYS:
            name = OTHER
            acc = table.get(name)
        if acc is None:
            acc = table[name] = make()
    return acc


def _keyed_count(table: dict[str, int], name: str, n: int = 1) -> None:
    if name not in table and len(table) >= MAX_KEYS:
        name = OTHER
    table[name] = table.get(name, 0) + n


def _ms(us: float) -> float:
    return round(us / 1000.0, 3)


class StatsBuilder:
    """Accumulates statistics from record dicts: :meth:`consume`, then :meth:`finish`.

    A builder may see only a segment of a recording (*start_seq*: the seq of
    its first record): it then ignores replies and transaction ends whose
    start came before it, and :meth:`resolve` reads on past its end for
    what started inside it. Builders of consecutive segments :meth:`merge`.
    """

    def __init__(self, start_seq: int | None = None) -> None:
        self.start_seq = start_seq
        self.last_t = 0.0
        self.commands: dict[str, _CommandAcc] = {}
        self.local: dict[str, list[int]] = {}  # name -> [count, errors]
        self.events: dict[str, int] = {}
        self.clients: dict[str, _ClientAcc] = {}
        self.kinds: dict[str, int] = {}
        #: Commands awaiting a reply: seq -> (its command's and client's accumulators, t, name, src).
        self.pending: dict[int, tuple[_CommandAcc, float, _ClientAcc, str, str]] = {}
        self.unreplied = Examples()
        self.orphan_replies = 0
        self.taint = Examples()
        self.notes = Examples()
        self.closes = Examples()
        self.waits = WaitTracker()
        self.wait_count = 0
        self.wait_longest: list[tuple[float, int, dict[str, Any]]] = []  # a min-heap of the longest
        self.waited = 0.0
        self.tx_open: dict[int, tuple[float, str, str]] = {}  # tx -> (t, label, owner)
        self.tx_counts = {"begin": 0, "end": 0, "abort": 0}
        self.tx_hold = 0.0
        self.tx_longest: dict[str, Any] | None = None
        #: Seconds' traffic: the first and last seconds apart (they may continue in the next segment).
        self.busiest: Second | None = None
        self.edges: list[Second] = []

    # -- the pass ------------------------------------------------------------------

    def consume(self, records: Iterable[dict[str, Any]]) -> None:
        """Take in all the record dicts (as on disk), in order (call once).

        One loop with local names: at a million records, per-record method
        calls and attribute look-ups would cost about a second.
        """
        commands, events, kinds, pending = self.commands, self.events, self.kinds, self.pending
        clients, waiting = self.clients, self.waits.waiting
        sec, messages, n_commands, n_events = -1, 0, 0, 0  # the second being counted
        t = self.last_t
        for d in records:
            kind = d["kind"]
            t = d["t"]
            if kind in kinds:
                kinds[kind] += 1
            else:
                kinds[kind] = 1
            if kind in _MESSAGES:
                if int(t) != sec:
                    if messages:
                        self._second((sec, messages, n_commands, n_events))
                    sec, messages, n_commands, n_events = int(t), 0, 0, 0
                messages += 1
            else:
                self._add_rare(d, kind, t)
                continue
            if kind == "command":
                n_commands += 1
                msg = d.get("msg")
                name = msg.get("execute") if type(msg) is dict else None
                if type(name) is not str:
                    name = command_name(msg)
                src = d.get("src")
                if type(src) is not str:
                    src = "?"
                acc = commands.get(name) or _keyed(commands, name, _CommandAcc)
                acc.count += 1
                client = clients.get(src)
                role = d.get("role")
                if client is None:
                    client = self._client(src, role if isinstance(role, str) else "?", t)
                elif client.role != role and client.role in _PROVISIONAL and isinstance(role, str) and role not in _PROVISIONAL:
                    client.role = role  # a client's role is its commands' role, internal only for negotiation
                client.commands += 1
                client.last = t
                pending[d["seq"]] = (acc, t, client, name, src)
                if len(pending) > MAX_PENDING:
                    self._unreplied(next(iter(pending)))
                if waiting or "queued" in d:
                    self._command_waited(src, t, _queued(d))
            elif kind == "reply":
                cmd = d.get("cmd")
                found = pending.pop(cmd, None) if type(cmd) is int else None
                if found is None:
                    self._orphan(cmd)
                    continue
                acc, t0, client, _, _ = found
                acc.hist.add(round((t - t0) * 1e6))
                msg = d.get("msg")
                if type(msg) is dict and "error" in msg:
                    self._reply_error(acc, client, msg)
            elif kind == "event":
                n_events += 1
                msg = d.get("msg")
                name = msg.get("event") if type(msg) is dict else None
                if type(name) is not str:
                    name = "?"
                if name in events:
                    events[name] += 1
                else:
                    _keyed_count(events, name)
            else:
                self._add_rare(d, kind, t)
        if messages:
            self._second((sec, messages, n_commands, n_events))
        self.last_t = t

    def resolve(self, records: Iterable[dict[str, Any]]) -> None:
        """Read on past this segment until what began in it ended: replies to its
        commands, the end of its open transaction, the waits it caused."""
        for d in records:
            if not (self.pending or self.tx_open or self.waits.waiting):
                return
            kind, t = d["kind"], d["t"]
            if kind == "reply":
                cmd = d.get("cmd")
                found = self.pending.pop(cmd, None) if type(cmd) is int else None
                if found is not None:
                    acc, t0, client, _, _ = found
                    acc.hist.add(round((t - t0) * 1e6))
                    msg = d.get("msg")
                    if type(msg) is dict and "error" in msg:
                        self._reply_error(acc, client, msg)
            elif kind == "tx" and d.get("action") != "begin":
                self._tx(d, t)
            elif kind in ("taint", "fd"):
                self._trace(d, kind, t)
            elif kind == "command" and isinstance(d.get("src"), str):
                self._command_waited(d["src"], t, _queued(d))
            elif kind == "client" and d.get("action") == "disconnect":
                self.waits.gone(str(d.get("name")))

    def seal(self) -> None:
        """End a segment: commands still unanswered after :meth:`resolve` never were."""
        for seq in list(self.pending):
            self._unreplied(seq)

    # -- pieces ----------------------------------------------------------------------

    def _second(self, second: Second) -> None:
        """A second's traffic: the first one is kept apart (it may have begun in the previous segment)."""
        if not self.edges:
            self.edges.append(second)
            return
        if len(self.edges) == 2:
            self._compete(self.edges.pop())
        self.edges.append(second)

    def _compete(self, second: Second) -> None:
        if self.busiest is None or second[1] > self.busiest[1]:
            self.busiest = second

    def _client(self, name: str, role: str, t: float) -> _ClientAcc:
        acc = self.clients.get(name)
        if acc is None:
            acc = _keyed(self.clients, name, lambda: _ClientAcc(role, t))
        acc.last = t
        return acc

    def _orphan(self, cmd: Any) -> None:
        """A reply to no known command (in a segment: unless it answers one before the segment)."""
        if type(cmd) is not int or self.start_seq is None or cmd >= self.start_seq:
            self.orphan_replies += 1

    def _reply_error(self, acc: _CommandAcc, client: _ClientAcc, msg: dict[str, Any]) -> None:
        cls = error_class(msg) or "?"
        acc.errors[cls] = acc.errors.get(cls, 0) + 1
        client.errors += 1

    def _command_waited(self, src: str, t: float, queued: float | None = None) -> None:
        wait = self.waits.command(src, t, queued)
        if wait is not None:
            self._wait(wait)

    def _trace(self, d: dict[str, Any], kind: str, t: float) -> None:
        client = d.get("client" if kind == "taint" else "src")
        if isinstance(client, str):
            self.waits.trace(client, t)

    def _add_rare(self, d: dict[str, Any], kind: str, t: float) -> None:
        if kind == "local":
            name = command_name(d.get("msg")) if d.get("msg") is not None else "(unparsable input)"
            entry = _keyed(self.local, name, lambda: [0, 0])
            entry[0] += 1
            failed = error_class(d.get("reply")) is not None
            entry[1] += failed
            src, role = d.get("src"), d.get("role")
            if isinstance(src, str):
                acc = self._client(src, role if isinstance(role, str) else "?", t)
                acc.local += 1
                acc.errors += failed
        elif kind == "client":
            client, role = d.get("name"), d.get("role")
            if isinstance(client, str):
                self._client(client, role if isinstance(role, str) else "?", t)
                if d.get("action") == "disconnect":
                    self.waits.gone(client)
        elif kind == "tx":
            self._tx(d, t)
        elif kind in ("taint", "fd"):
            self._trace(d, kind, t)
            if kind == "taint":
                self.taint.add({"seq": d["seq"], "t": t, "reason": d.get("reason"), "client": d.get("client")})
        elif kind == "note":
            self.notes.add({"seq": d["seq"], "t": t, "text": d.get("text")})
        elif kind == "close":
            self.closes.add({"seq": d["seq"], "t": t, "reason": d.get("reason"), "detail": d.get("detail")})

    def _tx(self, d: dict[str, Any], t: float) -> None:
        action, tx = d.get("action"), d.get("tx")
        if action not in self.tx_counts or type(tx) is not int:
            return
        owner = d.get("owner")
        owner = owner if isinstance(owner, str) else "?"
        if action == "begin":
            self.tx_counts["begin"] += 1
            if len(self.tx_open) < MAX_KEYS:
                self.tx_open[tx] = (t, str(d.get("label", "")), owner)
            self.waits.begin(tx, owner, t)
            return
        began = self.tx_open.pop(tx, None)
        if began is not None:  # an end without its begin belongs to an earlier segment (or nothing)
            self.tx_counts[action] += 1
            self.waits.end(tx, t)
            self._hold(tx, began, t, action)

    def _hold(self, tx: int, began: tuple[float, str, str], t: float, status: str) -> None:
        hold = t - began[0]
        self.tx_hold += hold
        if self.tx_longest is None or hold > self.tx_longest["seconds"]:
            self.tx_longest = {"tx": tx, "label": began[1], "owner": began[2],
                               "start": began[0], "seconds": round(hold, 6), "status": status}

    def _wait(self, wait: Wait) -> None:
        self.waited += wait.seconds
        self.wait_count += 1
        item = (wait.seconds, self.wait_count, {"client": wait.client, "tx": wait.tx, "start": wait.start,
                                                "seconds": round(wait.seconds, 6)})
        if len(self.wait_longest) < MAX_EXAMPLES:
            heapq.heappush(self.wait_longest, item)
        else:
            heapq.heappushpop(self.wait_longest, item)

    def _unreplied(self, seq: int) -> None:
        acc, t, _, name, src = self.pending.pop(seq)
        acc.no_reply += 1
        self.unreplied.add({"seq": seq, "t": t, "command": name, "src": src})

    # -- combining and results ---------------------------------------------------------

    def merge(self, other: StatsBuilder) -> None:
        """Add *other*, the builder of the next segment (sealed, both of them)."""
        self.last_t = max(self.last_t, other.last_t)
        for name, acc in other.commands.items():
            _keyed(self.commands, name, _CommandAcc).merge(acc)
        for name, (count, errors) in other.local.items():
            entry = _keyed(self.local, name, lambda: [0, 0])
            entry[0] += count
            entry[1] += errors
        for name, n in other.events.items():
            _keyed_count(self.events, name, n)
        for name, client in other.clients.items():
            mine = self.clients.get(name)
            if mine is None and len(self.clients) < MAX_KEYS:
                self.clients[name] = client
            else:
                first = client.first
                (mine or _keyed(self.clients, name, lambda first=first: _ClientAcc("?", first))).merge(client)
        _add_counts(self.kinds, other.kinds)
        for ex in ("unreplied", "taint", "notes", "closes"):
            getattr(self, ex).merge(getattr(other, ex))
        self.orphan_replies += other.orphan_replies
        self.wait_count += other.wait_count
        self.waited += other.waited
        for item in other.wait_longest:
            if len(self.wait_longest) < MAX_EXAMPLES:
                heapq.heappush(self.wait_longest, item)
            else:
                heapq.heappushpop(self.wait_longest, item)
        self.tx_open.update(other.tx_open)
        _add_counts(self.tx_counts, other.tx_counts)
        self.tx_hold += other.tx_hold
        if other.tx_longest and (self.tx_longest is None or other.tx_longest["seconds"] > self.tx_longest["seconds"]):
            self.tx_longest = other.tx_longest
        if other.busiest is not None:
            self._compete(other.busiest)
        for second in other.edges:  # a second cut in two by the segments' border is one second
            if self.edges and self.edges[-1][0] == second[0]:
                last = self.edges.pop()
                second = (second[0], last[1] + second[1], last[2] + second[2], last[3] + second[3])
            self._second(second)

    def finish(self) -> dict[str, Any]:
        """The statistics as a JSON-ready dict (see docs/analysis.md for its fields)."""
        for seq in list(self.pending):
            self._unreplied(seq)
        for second in self.edges:
            self._compete(second)
        self.edges = []
        for tx, began in list(self.tx_open.items()):
            self._hold(tx, began, self.last_t, "open")
        commands = {}
        for name, acc in sorted(self.commands.items(), key=lambda kv: (-kv[1].count, kv[0])):
            h = acc.hist
            commands[name] = {
                "count": acc.count,
                "errors": dict(sorted(acc.errors.items())),
                "replies": h.count,
                "no_reply": acc.no_reply,
                "latency_ms": {**{k: _ms(h.quantile(q)) for k, q in PERCENTILES}, "max": _ms(h.max)},
            }
        busiest = self.busiest
        return {
            "records": sum(self.kinds.values()),
            "duration": self.last_t,
            "kinds": dict(sorted(self.kinds.items())),
            "commands": commands,
            "commands_total": sum(a.count for a in self.commands.values()),
            "errors_total": sum(sum(a.errors.values()) for a in self.commands.values()),
            "local": {name: {"count": c, "errors": e}
                      for name, (c, e) in sorted(self.local.items(), key=lambda kv: (-kv[1][0], kv[0]))},
            "events": dict(sorted(self.events.items(), key=lambda kv: (-kv[1], kv[0]))),
            "clients": {name: {"role": a.role, "commands": a.commands, "errors": a.errors,
                               "local": a.local, "first": a.first, "last": a.last}
                        for name, a in self.clients.items()},
            "taint": attrs.asdict(self.taint),
            "transactions": {
                "count": self.tx_counts["begin"],
                "ended": self.tx_counts["end"],
                "aborted": self.tx_counts["abort"],
                "open_at_end": len(self.tx_open),
                "held_seconds": round(self.tx_hold, 6),
                "longest": self.tx_longest,
                "waited_seconds": round(self.waited, 6),
                "waits": {"count": self.wait_count,
                          "longest": [w for _, _, w in sorted(self.wait_longest, reverse=True)]},
            },
            "busiest_second": None if busiest is None else {
                "start": float(busiest[0]), "messages": busiest[1], "commands": busiest[2], "events": busiest[3]},
            "without_reply": attrs.asdict(self.unreplied),
            "orphan_replies": self.orphan_replies,
            "notes": attrs.asdict(self.notes),
            "closes": attrs.asdict(self.closes),
        }
