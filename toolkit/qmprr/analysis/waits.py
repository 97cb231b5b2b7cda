"""Who waited for a transaction, and how long, from what the log shows.

A command that had to wait for the wire carries ``queued`` (when it asked):
it waited for a transaction that ended between then and when it was sent,
from the later of its ``queued`` and the transaction's begin to the end.
Logs written before ``queued`` existed only show waits through traces a
waiting client left while the transaction held the channel (a ``taint`` or
``fd`` record); for those, the figures are lower bounds.
"""

from __future__ import annotations

import attrs

def queued_of(record: dict[str, object]) -> float | None:
    """A command record's ``queued`` time, when it has a valid one."""
    queued = record.get("queued")
    return float(queued) if type(queued) in (int, float) else None  # type: ignore[arg-type]  # the type() test (not bool) is one mypy cannot narrow


@attrs.frozen
class Wait:
    """*client* waited from *start* to *end* because transaction *tx* held the channel."""

    client: str
    tx: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


class WaitTracker:
    """Feed it transaction begins/ends, traces and commands; it returns waits."""

    def __init__(self) -> None:
        self._tx: int | None = None
        self._owner = ""
        self._traces: dict[str, float] = {}  # client -> first trace during the open transaction
        self._began = 0.0
        #: Ended transactions, newest last: (tx, owner, began, ended).
        self._ended: list[tuple[int, str, float, float]] = []
        #: Clients that left a trace during a transaction that has ended: client -> (tx, since).
        self.waiting: dict[str, tuple[int, float]] = {}

    def begin(self, tx: int, owner: str, t: float = 0.0) -> None:
        self._tx, self._owner, self._traces, self._began = tx, owner, {}, t

    def end(self, tx: int, t: float | None = None) -> None:
        if tx == self._tx and t is not None:
            self._ended = [*self._ended[-7:], (tx, self._owner, self._began, t)]
        if tx == self._tx:
            for client, since in self._traces.items():
                self.waiting[client] = (tx, since)
            self._tx, self._traces = None, {}

    def trace(self, client: str, t: float) -> None:
        """*client* left a trace at *t* (a taint or fd record)."""
        if self._tx is not None and client != self._owner:
            self._traces.setdefault(client, t)

    def gone(self, client: str) -> None:
        """*client* disconnected: whatever it waited for, it waits no more."""
        self._traces.pop(client, None)
        self.waiting.pop(client, None)

    def command(self, src: str, t: float, queued: float | None = None) -> Wait | None:
        """A command from *src* went out at *t* (asked at *queued*): the wait it ends, if any."""
        if queued is not None:
            self.waiting.pop(src, None)
            for tx, owner, began, ended in reversed(self._ended):
                if owner != src and queued < ended <= t:
                    return Wait(src, tx, max(queued, began), ended)
            return None
        if not self.waiting:
            return None
        found = self.waiting.pop(src, None)
        return Wait(src, found[0], found[1], t) if found else None
