"""The core's one-command-at-a-time fast path (``send_now``, ``receive_reply``) decides as ``ask``/``receive`` do.

Two worlds run the same interleavings of asks, replies, strays, events,
transactions, cancels, clock ticks and log failures: one through ``ask`` and
``receive`` only, one through the fast path wherever it applies (as the
channel drives it). Every step's effects and the whole log must be the same.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
import support
from qmprr import wire
from qmprr.channel_core import Answer, ChannelCore, Write
from qmprr.recording import Command, Event, Reply
from test_channel_core import Sink, World, op


class HotSink(Sink):
    """A sink with RecordWriter's hot methods (the core takes them when present), typed records inside."""

    def append_command(self, *, src: str, role: str, msg: dict[str, Any], client_id: Any, tx: int | None,
                       queued: float | None, encoded: bytes) -> int:
        return self.append(Command(src=src, role=role, msg=msg, client_id=client_id, tx=tx,  # type: ignore[arg-type]
                                   queued=queued)).seq

    def append_reply(self, *, cmd: int, msg: dict[str, Any]) -> int:
        return self.append(Reply(cmd=cmd, msg=msg)).seq

    def append_event(self, *, msg: dict[str, Any]) -> int:
        return self.append(Event(msg=msg)).seq

    def append_many(self, records: list[tuple[int | None, dict[str, Any]]]) -> list[int]:
        if self.failing:
            raise support.disk_full(self.path)
        return [self.append(Event(msg=m) if cmd is None else Reply(cmd=cmd, msg=m)).seq for cmd, m in records]


class ViaFastPath:
    """A core driven as :class:`qmprr.channel.Channel` drives it: the fast path first, else the general one."""

    def __init__(self, core: ChannelCore) -> None:
        self._core = core
        self.fast = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)

    def ask(self, token: Any, msg: dict[str, Any], *, now: float, tx: int | None = None, fds: int = 0,
            **kwargs: Any) -> list:
        if tx is None and not fds:
            data = self._core.send_now(token, msg, now=now, **kwargs)
            if data:
                self.fast += 1
                return [Write(token, data)]
            if data is not None:
                return self._core.take_effects()
        return self._core.ask(token, msg, now=now, tx=tx, fds=fds, **kwargs)

    def receive(self, data: bytes, *, now: float) -> list:
        answered = self._core.receive_reply(data, now=now)
        if answered is None:
            return self._core.take_effects()
        self.fast += 1
        return [Answer(*answered)]


class Recorded(World):
    """A world that keeps every step's effects, errors by type and text."""

    def __init__(self, fast: bool, hot: bool = False) -> None:
        super().__init__()
        if hot:
            self.sink = HotSink()
            self.core = ChannelCore(self.sink, now=0.0, wire_timeout=15, tx_idle_timeout=6, log_wait_timeout=10)
        if fast:
            self.core = ViaFastPath(self.core)  # type: ignore[assignment]
        self.steps: list[list[Any]] = []

    def apply(self, effects: list) -> None:
        self.steps.append([(type(e).__name__, *[
            (type(v).__name__, str(v)) if isinstance(v, Exception) else v for v in vars(e).values()
        ]) if hasattr(e, "__dict__") else (type(e).__name__, repr(e)) for e in effects])
        super().apply(effects)

    def run(self, op: tuple) -> None:
        if op[0] == "refuse":
            self.apply(self.core.refuse("qmprr is stopping", now=self.now))
        elif op[0] == "together" and self.qemu:  # the reply and an event in one read
            token, wid = self.qemu.pop(0)
            data = wire.encode({"return": {"tok": token}, "id": wid})
            event = wire.encode({"event": "X", "data": {"n": len(self.sink.records)}, "timestamp": {}})
            self.apply(self.core.receive(event + data if op[1] else data + event, now=self.now))
        elif op[0] not in ("refuse", "together"):
            super().run(op)
            return
        self.check()


#: The core's interleavings, and two more inputs: refusing new commands, a reply read with an event.
fast_op = st.one_of(op, st.tuples(st.just("together"), st.booleans()),
                    st.integers(0, 30).map(lambda n: ("refuse",) if n == 0 else ("together", n % 2 == 0)))


def _same(ops: list[tuple], hot: bool = False) -> tuple[Recorded, Recorded]:
    slow, fast = Recorded(fast=False, hot=hot), Recorded(fast=True, hot=hot)
    for o in ops:
        slow.run(o)
        fast.run(o)
    slow.finish()
    fast.finish()
    assert fast.steps == slow.steps
    assert [repr(r) for r in fast.sink.records] == [repr(r) for r in slow.sink.records]
    return slow, fast


@settings(max_examples=300)
@given(st.lists(fast_op, min_size=5, max_size=80), st.booleans())
def test_the_fast_path_gives_the_same_effects_and_log(ops: list[tuple], hot: bool) -> None:
    _same(ops, hot)


def test_the_fast_path_is_taken_for_one_command_at_a_time() -> None:
    ops = [("ask", "c0", False), ("answer", "return", 5), ("ask", "c1", False), ("answer", "error", 5)]
    _slow, fast = _same(ops)
    assert fast.core.fast == 4  # type: ignore[attr-defined]  # two sends and two replies


def test_a_reply_read_in_pieces_is_taken_once_whole_and_an_event_goes_the_general_way() -> None:
    ops = [("ask", "c0", False), ("answer", "return", 2), ("ask", "c0", False), ("event",), ("answer", "return", 5)]
    _slow, fast = _same(ops)
    assert fast.core.fast == 4  # type: ignore[attr-defined]  # both sends, both replies; not the event
