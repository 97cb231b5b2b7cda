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
from qmprr.channel_core import Answer, ChannelCore, Write
from test_channel_core import World, op


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

    def __init__(self, fast: bool) -> None:
        super().__init__()
        if fast:
            self.core = ViaFastPath(self.core)  # type: ignore[assignment]
        self.steps: list[list[Any]] = []

    def apply(self, effects: list) -> None:
        self.steps.append([(type(e).__name__, *[
            (type(v).__name__, str(v)) if isinstance(v, Exception) else v for v in vars(e).values()
        ]) if hasattr(e, "__dict__") else (type(e).__name__, repr(e)) for e in effects])
        super().apply(effects)


def _same(ops: list[tuple]) -> tuple[Recorded, Recorded]:
    slow, fast = Recorded(fast=False), Recorded(fast=True)
    for o in ops:
        slow.run(o)
        fast.run(o)
    slow.finish()
    fast.finish()
    assert fast.steps == slow.steps
    assert [repr(r) for r in fast.sink.records] == [repr(r) for r in slow.sink.records]
    return slow, fast


@settings(max_examples=300)
@given(st.lists(op, min_size=5, max_size=80))
def test_the_fast_path_gives_the_same_effects_and_log(ops: list[tuple]) -> None:
    _same(ops)


def test_the_fast_path_is_taken_for_one_command_at_a_time() -> None:
    ops = [("ask", "c0", False), ("answer", "return", 5), ("ask", "c1", False), ("answer", "error", 5)]
    _slow, fast = _same(ops)
    assert fast.core.fast == 4  # type: ignore[attr-defined]  # two sends and two replies


def test_a_reply_read_in_pieces_is_taken_once_whole_and_an_event_goes_the_general_way() -> None:
    ops = [("ask", "c0", False), ("answer", "return", 2), ("ask", "c0", False), ("event",), ("answer", "return", 5)]
    _slow, fast = _same(ops)
    assert fast.core.fast == 4  # type: ignore[attr-defined]  # both sends, both replies; not the event
