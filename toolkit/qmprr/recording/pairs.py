"""Which command a reply answers: the one rule, for every reader of records.

A ``reply`` (or an ``fd``) record names its command by that command's ``seq``
in its ``cmd`` field. :class:`Pending` holds what a reader keeps for each
command until its reply comes, bounded (the oldest dropped beyond *limit*,
since a recording is untrusted input); a ``cmd`` that is not an int answers
nothing.

``qmprr verify`` keeps its own fast loop (``recording/verify.py``): it reports
orphans and second replies too, over a set of segments scanned in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

#: Commands awaiting a reply a reader keeps at most (one at a time on a serialized channel).
MAX_PENDING = 10_000


class Pending(Generic[T]):
    """Commands awaiting their reply, by seq, each with what the reader keeps for it.

    *limit*: at most this many (None: no bound, for a reader that keeps every
    command anyway); *on_drop* hears of each one dropped unanswered.
    """

    def __init__(self, limit: int | None = MAX_PENDING, on_drop: Callable[[T], None] | None = None) -> None:
        self._by_seq: dict[int, T] = {}
        self._limit = limit
        self._on_drop = on_drop

    def command(self, seq: int, value: T) -> None:
        """A command at *seq* now awaits its reply."""
        self._by_seq[seq] = value
        if self._limit is not None and len(self._by_seq) > self._limit:
            dropped = self._by_seq.pop(next(iter(self._by_seq)))
            if self._on_drop is not None:
                self._on_drop(dropped)

    def reply(self, cmd: object) -> T | None:
        """What was kept for the command a reply names (no longer pending), None for none."""
        return self._by_seq.pop(cmd, None) if type(cmd) is int else None

    def find(self, cmd: object) -> T | None:
        """What is kept for the command *cmd* names, left pending (an ``fd`` record, a reread reply)."""
        return self._by_seq.get(cmd) if type(cmd) is int else None

    def values(self) -> list[T]:
        """What is kept for the commands still unanswered, oldest first."""
        return list(self._by_seq.values())

    def __len__(self) -> int:
        return len(self._by_seq)

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_seq)
