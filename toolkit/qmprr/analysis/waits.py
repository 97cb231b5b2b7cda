"""Who waited for a transaction, and how long, from what the log shows.

A ``qmprr/1`` log records when a command was *sent* to QEMU, not when it
reached qmprr, so a wait is measurable only when the waiting client left a
trace while the transaction held the channel: a ``taint`` record (written when
a debug client's first command arrives) or an ``fd`` record (written when a
descriptor arrives with a command). Such a client waited from that trace to
its next command on the wire (a client that disconnects first is dropped).
Clients that left no trace waited invisibly and are not counted: the figures
are lower bounds.
"""

from __future__ import annotations

import attrs

#: Record kinds that show a client had a command waiting.
TRACE_KINDS = frozenset({"taint", "fd"})


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
        #: Clients that left a trace during a transaction that has ended: client -> (tx, since).
        self.waiting: dict[str, tuple[int, float]] = {}

    def begin(self, tx: int, owner: str) -> None:
        self._tx, self._owner, self._traces = tx, owner, {}

    def end(self, tx: int) -> None:
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

    def command(self, src: str, t: float) -> Wait | None:
        """A command from *src* went out at *t*: the wait it ends, if any."""
        if not self.waiting:
            return None
        found = self.waiting.pop(src, None)
        return Wait(src, found[0], found[1], t) if found else None
