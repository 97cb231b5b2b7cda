"""A fake QEMU that serves a recording (or a script built in code).

It is served by the proxy's own serve loop (:class:`~qmprr.server.QmpServer`,
with this script as its backend): it greets with the recorded greeting,
negotiates like QEMU, answers ``qmprr-transaction-*`` as the proxy does, has
the proxy's per-client bounds, then answers each command from the script and sends the recorded events at their recorded
positions (those QEMU sent before a reply, before it). Matching modes:

``strict``
    exactly the recorded command sequence (libvirt's qemumonitortest style).
``ordered``
    recorded order, but recorded commands may be skipped (reported unused).
``lenient``
    consume-once matching by command name and normalized arguments, first
    unconsumed match in recorded order (VCR style); with ``reuse``, an
    already consumed command may be answered again (its last reply, no events).

An unmatched command gets a QMP ``GenericError`` that says what was expected
next or which recorded command comes closest, with the differing fields;
"already consumed" is told apart from "never recorded". :meth:`FakeQemu.report`
lists unused exchanges and unmatched commands.

What may be answered at all is the replay policy's decision
(:meth:`~qmprr.replay.policy.ReplayPolicy.for_fake`: qmprr's own commands
are not served, a command recorded without a reply is refused). Python
matchers (:func:`register_matcher`, ``matchers=[...]``) may replace or add to
the argument comparison (see :mod:`qmprr.replay.matchers`).

In code::

    fake = (FakeQemu.builder()
            .expect("query-status").returns({"status": "running", "running": True})
            .expect("stop").emits("STOP").returns({})
            .build())
"""

from __future__ import annotations

import asyncio
import collections
import difflib
import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs

from . import codec, fake_chaos, wire
from .fake_chaos import Chaos
from .recording import ABSENT, Client, Record
from .replay import matchers as _matchers
from .replay.matchers import MatchError, Matcher, register_matcher, unregister_matcher
from .replay.normalize import Normalizer
from .replay.policy import ReplayPolicy
from .replay.script import DEFAULT_GREETING, Exchange, Script, load_script
from .server import Limits, QmpServer
from .session import qmp_error, qmp_return

Mode = Literal["strict", "ordered", "lenient"]
MODES = ("strict", "ordered", "lenient")
__all__ = ["FakeQemu", "FakeReport", "MatchError", "Matcher", "register_matcher", "unregister_matcher"]


@attrs.define
class Unmatched:
    """A command the fake could not answer from its script."""

    msg: dict[str, Any]
    reason: str


@attrs.define
class FakeReport:
    """What a fake session used of its script."""

    answered: int = 0
    unused: list[Exchange] = attrs.Factory(list)
    unmatched: list[Unmatched] = attrs.Factory(list)

    def ok(self, mode: str) -> bool:
        """Strict mode fails on anything unmatched or unused; others on unmatched only."""
        return not self.unmatched and (mode != "strict" or not self.unused)

    def lines(self, limit: int | None = None) -> list[str]:
        """The report as text; with *limit*, at most that many unused commands (and how many more)."""
        out = [f"answered {self.answered} command(s)"]
        for u in self.unmatched:
            out.append(f"unmatched: {wire.command_name(u.msg)}: {u.reason}")
        shown = self.unused if limit is None else self.unused[:limit]
        for e in shown:
            out.append(f"unused: seq {e.seq} {e.command} from {e.src}")
        if len(shown) < len(self.unused):
            out.append(f"unused: {len(self.unused) - len(shown)} more of {len(self.unused)} not shown (--report FILE lists all)")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "answered": self.answered,
            "unmatched": [{"command": wire.command_name(u.msg), "msg": u.msg, "reason": u.reason} for u in self.unmatched],
            "unused": [{"seq": e.seq, "command": e.command, "src": e.src} for e in self.unused],
        }


@attrs.define
class Response:
    """What the fake sends for one command, in order."""

    events_before: list[dict[str, Any]]
    reply: dict[str, Any]
    events_after: list[dict[str, Any]]
    seq: int | None = None  # the recorded exchange answered (None: a reuse, or built in code)
    refused: str | None = None  # the policy's reason when the recorded exchange cannot be answered
    external: int = 0  # how many of events_after (the last ones) no command caused


class FakeQemu:
    """Serves a :class:`Script`; see the module docstring."""

    def __init__(
        self,
        script: Script,
        *,
        mode: Mode = "strict",
        reuse: bool = False,
        normalizer: Normalizer | None = None,
        internal: bool = False,
        external_events: bool = False,
        limits: Limits | None = None,
        policy: ReplayPolicy | None = None,
        matchers: Sequence[str | Matcher] = (_matchers.ARGUMENTS,),
        chaos: Chaos | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.policy = policy if policy is not None else ReplayPolicy.for_fake(internal=internal)
        decided = [(e, self.policy.decide(e)) for e in script.exchanges]  # once: the policy never changes
        decided = [(e, d) for e, d in decided if d.action != "skip"]
        script = attrs.evolve(script, exchanges=[e for e, _ in decided])
        self._refusals = {i: d.reason for i, (_, d) in enumerate(decided) if d.action == "refuse"}
        self.matchers = _matchers.resolve(matchers)
        self._custom = any(fn is not None for _, fn in self.matchers)
        self._by_arguments = any(fn is None for _, fn in self.matchers)
        self._miss: str | None = None  # why the closest candidate was refused by a matcher
        self.script = script
        self.mode = mode
        self.reuse = reuse
        self.external_events = external_events  # send events no command caused (libvirt's signal), after their exchange
        self.normalizer = normalizer or Normalizer()
        self._consumed = [False] * len(script.exchanges)
        self._next = 0  # strict/ordered: first exchange not yet passed
        self._answered = 0
        self._unmatched: list[Unmatched] = []
        self.limits = limits or Limits()
        self.chaos = chaos  # chaos mode (qmprr.fake_chaos): legal reorderings, delays, cut output
        self._server: QmpServer | None = None
        self._chaos_server: fake_chaos.Listener | None = None
        self._session_ended: asyncio.Event | None = None
        self._keys = [self._key(e.command, e.arguments) for e in script.exchanges]
        # Unconsumed exchanges per key, in recorded order (lenient/ordered matching in O(1)).
        self._pending: dict[tuple[str | None, str], collections.deque[int]] = collections.defaultdict(collections.deque)
        for i, k in enumerate(self._keys):
            self._pending[k].append(i)
        self._last: dict[tuple[str | None, str], int] = {}  # reuse: last consumed exchange with a reply, per key

    @classmethod
    def from_recording(cls, path: str | os.PathLike[str], **kwargs: Any) -> FakeQemu:
        """A fake serving the recording at *path*."""
        return cls(load_script(path), **kwargs)

    @classmethod
    def builder(cls, greeting: dict[str, Any] | None = None) -> ScriptBuilder:
        """Build a script in code: ``expect(...).returns(...)``, ``.fails(...)``, ``.emits(...)``."""
        return ScriptBuilder(greeting or DEFAULT_GREETING)

    # -- matching (no I/O) ------------------------------------------------------

    def _key(self, command: str | None, arguments: Any) -> tuple[str | None, str]:
        normalized = self.normalizer.arguments(command, arguments)
        return command, codec.dumps(normalized, sort_keys=True).decode() if normalized else ""

    def respond(self, msg: dict[str, Any]) -> Response:
        """The events and reply (without id) for one command from a client."""
        found = self.match(msg)
        if isinstance(found, Unmatched):
            self._unmatched.append(found)
            return Response([], qmp_error(f"qmprr fake: {found.reason}"), [])
        return found

    def match(self, msg: dict[str, Any]) -> Response | Unmatched:
        """What the recording answers to *msg* (consuming it), or why it has no answer (not counted unmatched)."""
        name = wire.command_name(msg)
        key = self._key(name, msg.get("arguments"))
        actual = {k: v for k, v in msg.items() if k != "id"} if self._custom else msg
        self._miss = None
        index = self._match_custom(name, key, actual) if self._custom else self._match(key)
        if index is not None:
            self._consumed[index] = True
            exchange = self.script.exchanges[index]
            if exchange.reply is not None:
                self._last[key] = max(index, self._last.get(key, -1))
            self._answered += 1
            refused = self._refusals.get(index)
            if refused is not None:
                return Response([], qmp_error(f"qmprr fake: {refused}"), [], exchange.seq, refused)
            reply = exchange.reply or {}
            external = exchange.external_after if self.external_events else []
            return Response(exchange.events_before, reply, exchange.events_after + external, exchange.seq,
                            external=len(external))
        again = self._reused(name, key, actual)
        if again is not None:
            self._answered += 1
            return Response([], self.script.exchanges[again].reply, [])  # type: ignore[arg-type]  # _last holds only exchanges with a reply
        return Unmatched(msg, self._explain(name, msg.get("arguments"), key))

    def _reused(self, name: str | None, key: tuple[str | None, str], actual: dict[str, Any]) -> int | None:
        if not self.reuse:
            return None
        if not self._custom:
            return self._last.get(key)
        for index in sorted(self._last.values(), reverse=True):
            if self._accepts(index, name, key, actual):
                return index
        return None

    def _accepts(self, index: int, name: str | None, key: tuple[str | None, str], actual: dict[str, Any]) -> bool:
        """Python matchers: does recorded exchange *index* answer *actual*? (Keeps the first refusal's reason.)"""
        exchange = self.script.exchanges[index]
        if exchange.command != name:
            return False
        if self._by_arguments and self._keys[index] != key:
            return False
        why = _matchers.refusal(self.matchers, exchange.msg, actual)
        if why is not None and self._miss is None:
            self._miss = f"{name} was recorded (seq {exchange.seq}), but {why}"
        return why is None

    def _match_custom(self, name: str | None, key: tuple[str | None, str], actual: dict[str, Any]) -> int | None:
        if self.mode == "strict":
            if self._next < len(self._keys) and self._accepts(self._next, name, key, actual):
                self._next += 1
                return self._next - 1
            return None
        start = self._next if self.mode == "ordered" else 0
        for index in range(start, len(self._keys)):
            if not self._consumed[index] and self._accepts(index, name, key, actual):
                self._pending[self._keys[index]].remove(index)
                if self.mode == "ordered":
                    self._next = index + 1
                return index
        return None

    def _match(self, key: tuple[str | None, str]) -> int | None:
        if self.mode == "strict":
            if self._next < len(self._keys) and self._keys[self._next] == key:
                self._next += 1
                return self._next - 1
            return None
        queue = self._pending.get(key)
        if self.mode == "ordered":
            while queue and queue[0] < self._next:  # passed over: ordered never goes back
                queue.popleft()
        if not queue:
            return None
        index = queue.popleft()
        if self.mode == "ordered":
            self._next = index + 1
        return index

    def _explain(self, name: str | None, arguments: Any, key: tuple[str | None, str]) -> str:
        exchanges = self.script.exchanges
        if self._miss is not None:
            return self._miss
        if any(c and k == key for c, k in zip(self._consumed, self._keys)):
            return f"{name} was recorded, but its recorded answers are already consumed (use reuse to repeat)"
        if self.mode == "strict" and self._next < len(exchanges):
            expected = exchanges[self._next]
            if expected.command == name:
                diff = _differences(expected.arguments, arguments)
                return f"expected {name} (recorded seq {expected.seq}) with other arguments: {diff}"
            return f"expected {expected.command} next (recorded seq {expected.seq}), got {name}"
        same_name = [e for e, c in zip(exchanges, self._consumed) if e.command == name and not c]
        if same_name:
            closest = same_name[0]
            return (
                f"{name} was recorded (seq {closest.seq}) with other arguments: "
                f"{_differences(closest.arguments, arguments)}"
            )
        if self.mode == "strict":
            return f"{name} was never recorded here (the recording has no more commands)"
        names = sorted({e.command for e in exchanges})
        close = difflib.get_close_matches(name or "", names, n=1)
        hint = f"; closest recorded command: {close[0]}" if close else ""
        return f"{name} was never recorded{hint}"

    def report(self) -> FakeReport:
        """Commands answered, exchanges never used, commands not matched."""
        unused = [e for e, c in zip(self.script.exchanges, self._consumed) if not c]
        return FakeReport(self._answered, unused, list(self._unmatched))

    # -- serving: the proxy's serve loop, with this fake as its backend --------

    @property
    def server(self) -> QmpServer:
        """The :class:`~qmprr.server.QmpServer` that serves this fake's clients."""
        if self._server is None:
            self._server = QmpServer(_FakeBackend(self), limits=self.limits)
        return self._server

    async def serve_unix(self, path: str, *, listen_any: bool = False) -> None:
        """Accept clients on a new UNIX socket at *path* (mode 0600), or ``tcp:HOST:PORT`` (loopback
        only unless *listen_any*: unauthenticated, see :mod:`qmprr.address`)."""
        if self.chaos is not None:
            self._chaos_server = await fake_chaos.listen(path, self.handle, listen_any)
            return
        await self.server.listen(path, "primary", listen_any=listen_any)

    async def close(self) -> None:
        if self._chaos_server is not None:
            await self._chaos_server.close()
        if self._server is not None:
            await self._server.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection until it closes (through the chaos relay in chaos mode)."""
        if self.chaos is not None:
            await fake_chaos.relay(reader, writer, self.chaos, self._serve)
        else:
            await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.server.serve(reader, writer, "primary")

    def _ended_event(self) -> asyncio.Event:
        if self._session_ended is None:
            self._session_ended = asyncio.Event()
        return self._session_ended

    async def wait_session_end(self) -> None:
        """Wait until a client session has ended."""
        await self._ended_event().wait()


@attrs.define(eq=False)
class _FakeTx:
    id: int
    label: str
    owner: str
    ended: bool = False


class _FakeBackend:
    """A :class:`~qmprr.server.Backend` answering from a :class:`FakeQemu`'s script.

    Transactions behave as the proxy's (ids, one per client, an ``-end`` with
    none open refused) but hold nothing: the fake answers in script order anyway.
    """

    closed_reason: str | None = None

    def __init__(self, fake: FakeQemu) -> None:
        self.fake = fake
        self.greeting = fake.script.greeting  # the serve loop strips oob: as clients saw it through qmprr
        self._subscribers: dict[str, Callable[[dict[str, Any]], bool]] = {}
        self._after: list[dict[str, Any]] = []
        self._tx_ids = itertools.count(1)
        self._closed = asyncio.Event()

    def record(self, record: Record) -> None:
        if isinstance(record, Client) and record.action == "disconnect":
            self.fake._ended_event().set()

    def note(self, text: str, data: dict[str, Any] | None = None) -> None:
        pass

    async def execute(self, msg: dict[str, Any], *, src: str, role: str, client_id: Any, tx: Any) -> dict[str, Any]:
        response = self.fake.respond(msg)
        before, after, delay = response.events_before, response.events_after, 0.0
        if self.fake.chaos is not None:  # events the command caused move across its reply; the reply waits
            caused = len(after) - response.external
            before, moved, delay = self.fake.chaos.place(wire.command_name(msg), before, after[:caused])
            after = moved + after[caused:]
        for event in before:
            self._broadcast(event)
        if delay:
            await asyncio.sleep(delay)
        self._after = list(after)
        reply = dict(response.reply)
        if client_id is not ABSENT:
            reply["id"] = client_id
        return reply

    def after_reply(self) -> None:
        after, self._after = self._after, []
        for event in after:
            self._broadcast(event)

    async def begin_transaction(self, label: str, owner: str, **_client: Any) -> _FakeTx:
        return _FakeTx(next(self._tx_ids), label, owner)

    async def end_transaction(self, tx: _FakeTx, **_client: Any) -> None:
        tx.ended = True

    def abort_transactions_of(self, owner: str, reason: str) -> None:
        pass

    def subscribe(self, name: str, *, deliver: Callable[[dict[str, Any]], bool]) -> _FakeSubscription:
        self._subscribers[name] = deliver
        for event in self.fake.script.initial_events:
            self._broadcast(event)
        return _FakeSubscription(self, name)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _broadcast(self, event: dict[str, Any]) -> None:
        for deliver in list(self._subscribers.values()):
            deliver(event)


@attrs.define
class _FakeSubscription:
    backend: _FakeBackend
    name: str

    def close(self) -> None:
        self.backend._subscribers.pop(self.name, None)


def _differences(recorded: Any, actual: Any, path: str = "arguments") -> str:
    """Field-level differences between two JSON values, for error messages."""
    diffs: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if key not in b:
                    diffs.append(f"{where}.{key} missing (recorded {a[key]!r})")
                elif key not in a:
                    diffs.append(f"{where}.{key} not recorded (got {b[key]!r})")
                else:
                    walk(a[key], b[key], f"{where}.{key}")
        elif a != b:
            diffs.append(f"{where}: recorded {a!r}, got {b!r}")

    walk(recorded, actual, path)
    return "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "") or "none"


class ScriptBuilder:
    """Builds a :class:`Script` in code, in the spirit of libvirt's qemumonitortestutils."""

    def __init__(self, greeting: dict[str, Any]) -> None:
        self._script = Script(greeting=greeting)
        self._pending: Exchange | None = None

    def event(self, name: str, data: dict[str, Any] | None = None) -> ScriptBuilder:
        """An event sent right after negotiation (before any command)."""
        self._script.initial_events.append(_event(name, data))
        return self

    def expect(self, command: str, arguments: dict[str, Any] | None = None) -> ScriptBuilder:
        """The next command the client must send."""
        self._flush()
        self._pending = Exchange(command=command, arguments=arguments, seq=len(self._script.exchanges))
        return self

    def emits(self, name: str, data: dict[str, Any] | None = None, *, after: bool = False) -> ScriptBuilder:
        """An event the expected command causes (before its reply, or *after* it)."""
        exchange = self._require()
        (exchange.events_after if after else exchange.events_before).append(_event(name, data))
        return self

    def returns(self, value: Any = None) -> ScriptBuilder:
        """The expected command succeeds with *value* (``{}`` by default)."""
        self._require().reply = qmp_return(value)
        return self

    def fails(self, desc: str, cls: str = "GenericError") -> ScriptBuilder:
        """The expected command fails with a QMP error."""
        self._require().reply = qmp_error(desc, cls)
        return self

    def build(self, **kwargs: Any) -> FakeQemu:
        """The fake (keyword arguments as for :class:`FakeQemu`)."""
        self._flush()
        return FakeQemu(self._script, **kwargs)

    def _require(self) -> Exchange:
        if self._pending is None:
            raise ValueError("call expect(...) first")
        return self._pending

    def _flush(self) -> None:
        if self._pending is not None:
            if self._pending.reply is None:
                self._pending.reply = qmp_return()
            self._script.exchanges.append(self._pending)
            self._pending = None


def _event(name: str, data: dict[str, Any] | None) -> dict[str, Any]:
    msg: dict[str, Any] = {"event": name, "timestamp": {"seconds": 0, "microseconds": 0}}
    if data is not None:
        msg["data"] = data
    return msg
