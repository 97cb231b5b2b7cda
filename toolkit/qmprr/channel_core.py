"""The channel's decisions, without I/O: a sans-IO state machine in the style of h11.

:class:`ChannelCore` owns everything :class:`~qmprr.channel.Channel` used to
keep in loose fields: the FIFO of callers, the one command in flight, the
transaction holding the wire, the wire timeout, a log that cannot be written.
A driver feeds it *inputs* (a client asks, cancels, begins or ends a
transaction; bytes or messages from QEMU; the clock; QEMU's EOF) with the time
passed in, and carries out the *effects* it returns, in order:
:class:`Write` (bytes to QEMU), :class:`Answer` (a client's reply or error),
:class:`Fanout` (an event), :class:`Began` and :class:`TxEnded`
(transactions), :class:`Closed`.

Records are the one effect the core performs itself, through the log *sink*
it is given (a :class:`~qmprr.recording.RecordWriter`, or a list in tests):
every step after a record depends on whether it was written (write-ahead: a
command is recorded before its bytes go out, a reply before anyone sees it),
so the core must know at once. A failed append pauses the channel (see
:meth:`ChannelCore.tick`); nothing is lost silently.

The rules are data: :data:`ATTRIBUTION` (which message answers what),
:data:`TX_RULES` (transaction transitions). An input the tables do not allow
is never an exception: it is answered as an error and recorded as a ``note``.
"""

from __future__ import annotations

import collections
import enum
import itertools
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol

import attrs

from . import wire
from .errors import QmprrError
from .recording import (
    ABSENT,
    Close,
    Command,
    Event,
    Fd,
    Local,
    Msg,
    Note,
    Record,
    Reply,
    Tx,
)

DEFAULT_TX_IDLE_TIMEOUT = 30.0
#: How long QEMU may take to answer one command before the channel is declared wedged.
DEFAULT_WIRE_TIMEOUT = 300.0
#: How long a command waits for a log that cannot be written before it is refused.
DEFAULT_LOG_WAIT_TIMEOUT = 60.0
#: A command that waited longer than this for the wire records when it asked (``queued``).
QUEUED_THRESHOLD = 0.001
#: Retry delays for a log that cannot be written: doubling from the first to the last.
LOG_RETRY_FIRST, LOG_RETRY_MAX = 0.05, 2.0
INTERNAL_ROLE = "internal"


# -- errors a client can be answered with -------------------------------------------


class ChannelError(QmprrError):
    """A command could not be run through the channel.

    ``recorded`` is True when the channel has already written the refusal to
    the log (as a ``local`` record): whoever passes the error on need not.
    """

    recorded: bool = False


class ChannelClosed(ChannelError):
    """The connection to QEMU is gone; nothing more can be sent."""


class CommandInterrupted(ChannelClosed):
    """The connection ended while the command was in flight: it may or may not have executed."""


class ChannelWedged(ChannelError):
    """QEMU has not answered the command in flight within the wire timeout."""


class LogUnavailable(ChannelError):
    """The log cannot be written; the channel pauses until it can."""


class ReplyNotRecorded(LogUnavailable):
    """QEMU ran the command, but its reply could not be recorded, so it is withheld."""


class TransactionError(ChannelError):
    """A transaction cannot be begun or ended as asked."""


class TransactionAborted(TransactionError):
    """The transaction was aborted (idle too long, or its owner left)."""


class UpstreamProtocolError(ChannelError):
    """QEMU's side did not speak QMP as expected (no greeting, failed negotiation)."""


# -- effects ------------------------------------------------------------------------------


# Effects are built for every command: plain (not frozen) attrs classes, 3x cheaper to build.


@attrs.define
class Write:
    """Send *data* to QEMU (with the fds the caller of *token* passed, if *fds*)."""

    token: Hashable
    data: bytes
    fds: bool = False


@attrs.define
class Answer:
    """Give the caller of *token* its *reply* (the client's id restored) or *error*."""

    token: Hashable
    reply: dict[str, Any] | None = None
    error: ChannelError | None = None


@attrs.frozen
class Fanout:
    """Hand an event (already recorded) to the subscribers."""

    msg: dict[str, Any]


@attrs.frozen
class Began:
    """Transaction *tx* (recorded) now holds the channel for the caller of *token*."""

    token: Hashable
    tx: int
    label: str
    owner: str


@attrs.frozen
class TxEnded:
    """Transaction *tx* no longer holds the channel; *reason* when it was aborted."""

    tx: int
    action: str
    reason: str | None


@attrs.frozen
class Closed:
    """The connection to QEMU is over: close the socket, end the subscriptions."""

    reason: str
    detail: str


Effect = Write | Answer | Fanout | Began | TxEnded | Closed


class LogSink(Protocol):
    """Where records go: a :class:`~qmprr.recording.RecordLog` is one."""

    @property
    def path(self) -> Any: ...

    def append(self, record: Any) -> Any: ...


# -- the rules, as data -------------------------------------------------------------------


class IdMatch(enum.Enum):
    """How a reply's ``id`` relates to the command in flight."""

    __hash__ = object.__hash__  # a key of ATTRIBUTION: hashed in C (members are singletons)

    IN_FLIGHT = "the in-flight command's wire id"
    ABSENT = "no id"
    OTHER = "an id no command in flight has"


class Route(enum.Enum):
    REPLY = "reply"
    EVENT = "event"
    UNEXPECTED = "unexpected"


_ID_LESS = (
    "a reply without an id: QEMU 7.2 copies the id of every JSON object it is sent"
    " (qapi/qmp-dispatch.c) and answers without one only input that is not a JSON object"
    " or breaks its parser, which qmprr never sends; so it answers no command"
)
_WRONG_ID = "a reply whose id is not the in-flight command's"

#: (message kind, id relation) -> where the message goes, and why, for the note.
#: Pairs not listed (greetings, commands, unknown kinds) are unexpected.
ATTRIBUTION: dict[tuple[wire.MessageKind, IdMatch], tuple[Route, str]] = {
    **{(kind, m): (Route.EVENT, "") for kind in (wire.MessageKind.EVENT,) for m in IdMatch},
    **{
        (kind, m): route
        for kind in (wire.MessageKind.RETURN, wire.MessageKind.ERROR)
        for m, route in (
            (IdMatch.IN_FLIGHT, (Route.REPLY, "")),
            (IdMatch.ABSENT, (Route.UNEXPECTED, _ID_LESS)),
            (IdMatch.OTHER, (Route.UNEXPECTED, _WRONG_ID)),
        )
    },
}


class TxState(enum.Enum):
    IDLE = "idle"  # holds the channel, nothing of it in flight
    BUSY = "busy"  # a command of it is in flight
    ABORTING = "aborting"  # abort asked while busy: released when the reply is in


class TxInput(enum.Enum):
    SEND = "send"
    REPLY = "reply"
    END = "end"
    ABORT = "abort"
    IDLE_TIMEOUT = "idle-timeout"


class Release(enum.Enum):
    END = "end"
    ABORT = "abort"


#: (state, input) -> next state, or the release of the channel. An END is queued
#: behind the transaction's commands, so it never meets BUSY; what is missing is impossible.
TX_RULES: dict[tuple[TxState, TxInput], TxState | Release] = {
    (TxState.IDLE, TxInput.SEND): TxState.BUSY,
    (TxState.BUSY, TxInput.REPLY): TxState.IDLE,
    (TxState.IDLE, TxInput.END): Release.END,
    (TxState.IDLE, TxInput.ABORT): Release.ABORT,
    (TxState.IDLE, TxInput.IDLE_TIMEOUT): Release.ABORT,
    (TxState.BUSY, TxInput.ABORT): TxState.ABORTING,
    (TxState.ABORTING, TxInput.ABORT): TxState.ABORTING,
    (TxState.ABORTING, TxInput.REPLY): Release.ABORT,
}


class Runstate(enum.Enum):
    """The channel as a whole (qemu.qmp's ``Runstate``); :attr:`ChannelCore.runstate`."""

    RUNNING = "running"
    PAUSED = "paused"  # the log cannot be written: client commands wait
    WEDGED = "wedged"  # QEMU has not answered the command in flight in time
    REFUSING = "refusing"  # qmprr is stopping: nothing new is sent
    CLOSED = "closed"


# -- what the core tracks ------------------------------------------------------------------


@attrs.define(eq=False)
class _Ask:
    token: Hashable
    msg: dict[str, Any]
    src: str
    role: str
    client_id: Any
    tx: int | None
    fds: int
    asked: float
    fd_info: tuple[dict[str, Any], ...] = ()
    body: bytes | None = None  # msg without its id, encoded (the serve loop has it)

    @property
    def name(self) -> str:
        return wire.command_name(self.msg) or "?"

    def as_received(self) -> dict[str, Any]:
        msg = {k: v for k, v in self.msg.items() if k != "id"}
        if self.client_id is not ABSENT:
            msg["id"] = self.client_id
        return msg


@attrs.define(eq=False)
class _Begin:
    token: Hashable
    label: str
    owner: str
    role: str
    asked: float
    client_id: Any = ABSENT
    src: str = ""
    tx: None = None

    def as_received(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"execute": "qmprr-transaction-begin", "arguments": {"label": self.label}}
        if self.client_id is not ABSENT:
            msg["id"] = self.client_id
        return msg


@attrs.define(eq=False)
class _End:
    token: Hashable
    tx: int
    src: str
    role: str
    asked: float
    client_id: Any = ABSENT

    def as_received(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"execute": "qmprr-transaction-end"}
        if self.client_id is not ABSENT:
            msg["id"] = self.client_id
        return msg


_Item = _Ask | _Begin | _End


@attrs.define(eq=False)
class _InFlight:
    ask: _Ask
    wire_id: str
    seq: int | None  # its command record's, None when it went out unrecorded (internal only)
    sent: float
    answered: bool = False  # its caller has been told (wedged) or left (cancelled)


@attrs.define(eq=False)
class _Hold:
    id: int
    label: str
    owner: str
    state: TxState = TxState.IDLE
    last_activity: float = 0.0
    abort_reason: str | None = None


def qmp_error(desc: str, client_id: Any = ABSENT) -> dict[str, Any]:
    reply: dict[str, Any] = {"error": {"class": "GenericError", "desc": desc}}
    if client_id is not ABSENT:
        reply["id"] = client_id
    return reply


class ChannelCore:
    """The serialized channel's state machine. All times are ``time.monotonic()`` readings."""

    def __init__(
        self,
        log: LogSink,
        *,
        now: float,
        decoder: wire.StreamDecoder | None = None,
        wire_timeout: float = DEFAULT_WIRE_TIMEOUT,
        tx_idle_timeout: float = DEFAULT_TX_IDLE_TIMEOUT,
        log_wait_timeout: float = DEFAULT_LOG_WAIT_TIMEOUT,
        offset: Callable[[float], float] | None = None,
    ) -> None:
        self.log = log
        self.wire_timeout = wire_timeout
        self.tx_idle_timeout = tx_idle_timeout
        self.log_wait_timeout = log_wait_timeout
        self._offset = offset or getattr(log, "offset", None) or (lambda t: t)
        self._decoder = decoder or wire.StreamDecoder(limits=None, strict=False)  # QEMU's output: no client limits
        self._queue: collections.deque[_Ask | _Begin] = collections.deque()
        self._tx_queue: collections.deque[_Ask | _End] = collections.deque()
        self._in_flight: _InFlight | None = None
        self._hold: _Hold | None = None
        self._ended: dict[int, tuple[str, str, str | None]] = {}  # tx -> (label, action, reason)
        self._tokens: set[Hashable] = set()
        self._wire_ids = itertools.count(0)
        self._tx_ids = itertools.count(1)
        self._fd_ids = itertools.count(0)
        self.closed_reason: str | None = None
        self.refusing: str | None = None
        self.wedged: str | None = None  # the error text while wedged
        # A log that cannot be written: since when, the first error, retry schedule, what was lost.
        self.paused_since: float | None = None
        self._log_error = ""
        self._retry_at = 0.0
        self._retry_delay = LOG_RETRY_FIRST
        self.lost: collections.Counter[str] = collections.Counter()
        self._out: list[Effect] = []
        self._now = now

    # -- introspection -----------------------------------------------------------------

    @property
    def runstate(self) -> Runstate:
        if self.closed_reason is not None:
            return Runstate.CLOSED
        if self.refusing is not None:
            return Runstate.REFUSING
        if self.wedged is not None:
            return Runstate.WEDGED
        if self.paused_since is not None:
            return Runstate.PAUSED
        return Runstate.RUNNING

    @property
    def in_flight(self) -> Hashable | None:
        """The token of the command on the wire, if any."""
        return self._in_flight.ask.token if self._in_flight is not None else None

    @property
    def tx(self) -> int | None:
        """The transaction holding the channel, if any."""
        return self._hold.id if self._hold is not None else None

    def waiting(self) -> list[Hashable]:
        """Tokens waiting for their turn, transaction members first."""
        return [i.token for i in (*self._tx_queue, *self._queue)]

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do next (None: only an input can change things)."""
        if self.closed_reason is not None:
            return None
        flight = self._in_flight
        if self._hold is None and self.paused_since is None:  # the common case: only the wire timeout
            return flight.sent + self.wire_timeout if flight is not None and self.wedged is None else None
        times: list[float] = []
        if flight is not None and self.wedged is None:
            times.append(flight.sent + self.wire_timeout)
        if self._hold is not None and self._hold.state is TxState.IDLE and not self._tx_queue:
            times.append(self._hold.last_activity + self.tx_idle_timeout)
        if self.paused_since is not None:
            times.append(self._retry_at)
            waiting = [max(i.asked, self.paused_since) for i in (*self._queue, *self._tx_queue)]
            if waiting:
                times.append(min(waiting) + self.log_wait_timeout)
        return min(times) if times else None

    # -- inputs ------------------------------------------------------------------------

    def ask(
        self,
        token: Hashable,
        msg: dict[str, Any],
        *,
        now: float,
        src: str = "library",
        role: str = "primary",
        client_id: Any = ABSENT,
        tx: int | None = None,
        fds: int = 0,
        fd_info: Sequence[dict[str, Any]] = (),
        body: bytes | None = None,
    ) -> list[Effect]:
        """A client asks to run *msg* (in transaction *tx*, with *fds* file descriptors).

        *fd_info* (one per fd, when given) goes into each ``fd`` record's ``stat``.
        *body* is *msg* without its ``id``, encoded, when the caller has it
        (:func:`qmprr.session.command_body`): it is sent as it is, with the wire id.
        """
        self._now = now
        item = _Ask(token, msg, src, role, client_id, tx, fds, now, tuple(fd_info) if fd_info else (), body)
        if self._new_token(item):
            error = self._gate(item)
            if error is not None:
                self._refuse(item, error)
            else:
                (self._tx_queue if tx is not None else self._queue).append(item)
                self._pump()
        return self._flush()

    def send_now(
        self, token: Hashable, msg: dict[str, Any], *, now: float, src: str = "library", role: str = "primary",
        client_id: Any = ABSENT, body: bytes | None = None,
    ) -> bytes | None:
        """:meth:`ask` (no transaction, no fds) when the wire is free: the bytes to write to QEMU.

        The hot path of one command at a time: when nothing is in flight, nothing
        waits or holds the wire and the channel is open and recording, the command
        is sent as :meth:`ask` would send it (recorded, given the wire id) and its
        bytes are returned for the driver to write, with no effect list. ``None``
        when that is not the case: nothing was done, call :meth:`ask`. ``b""`` when
        the command was refused meanwhile (it could not be encoded or recorded):
        the refusal waits in :meth:`take_effects`.
        """
        if (self._in_flight is not None or self._queue or self._hold is not None or self._out
                or self.closed_reason is not None or self.refusing is not None or self.wedged is not None
                or self.paused_since is not None or token in self._tokens):
            return None
        self._now = now
        self._tokens.add(token)
        self._send(_Ask(token, msg, src, role, client_id, None, 0, now, (), body))
        out = self._out
        if len(out) == 1 and type(out[0]) is Write:
            self._out = []
            return out[0].data
        return b""

    def begin(
        self, token: Hashable, label: str, owner: str, *, now: float, role: str = "primary",
        client_id: Any = ABSENT,
    ) -> list[Effect]:
        """*owner* asks to hold the channel (FIFO with commands) for a transaction."""
        self._now = now
        item = _Begin(token, label, owner, role, now, client_id, owner)
        if self._new_token(item):
            error = self._gate(item)
            if error is None and self._hold is not None and self._hold.owner == owner:
                error = TransactionError(f"{owner} already holds transaction {self._hold.id} ({self._hold.label!r})")
            if error is not None:
                self._refuse(item, error)
            else:
                self._queue.append(item)
                self._pump()
        return self._flush()

    def end(
        self, token: Hashable, tx: int, *, now: float, src: str = "library", role: str = "primary",
        client_id: Any = ABSENT,
    ) -> list[Effect]:
        """The owner of *tx* releases the channel, after the commands it already asked."""
        self._now = now
        item = _End(token, tx, src, role, now, client_id)
        if self._new_token(item):
            hold = self._hold
            if hold is None or hold.id != tx:
                label, action, reason = self._ended.get(tx, ("?", "end", None))
                if action == "abort":
                    self._refuse(item, TransactionAborted(f"transaction {tx} ({label!r}) was aborted: {reason}"))
                elif self.closed_reason is not None:
                    self._refuse(item, self._closed_error())
                else:
                    self._refuse(item, TransactionError(f"transaction {tx} ({label!r}) is not open"))
            elif hold.state is TxState.ABORTING:
                self._refuse(item, TransactionAborted(
                    f"transaction {tx} ({hold.label!r}) was aborted: {hold.abort_reason}"))
            else:
                self._tx_queue.append(item)
                self._pump()
        return self._flush()

    def cancel(self, token: Hashable, *, now: float) -> list[Effect]:
        """The caller of *token* gives up: withdrawn if it has not reached the wire.

        A withdrawn command is recorded as a ``note`` (its name, who asked, never
        its arguments); one already on the wire keeps it until QEMU answers, and
        its reply is recorded as usual but handed to no one.
        """
        self._now = now
        for queue in (self._queue, self._tx_queue):
            for item in queue:
                if item.token == token:
                    queue.remove(item)  # type: ignore[arg-type]  # item was found in this queue
                    self._tokens.discard(token)
                    self._withdrawn(item)
                    self._pump()
                    return self._flush()
        if self._in_flight is not None and self._in_flight.ask.token == token:
            self._in_flight.answered = True
        return self._flush()

    def abort_owner(self, owner: str, reason: str, *, now: float) -> list[Effect]:
        """Abort the transaction *owner* holds, if any (e.g. it disconnected)."""
        self._now = now
        if self._hold is not None and self._hold.owner == owner:
            self._tx_input(TxInput.ABORT, reason)
            self._pump()
        return self._flush()

    def abort_all(self, reason: str, *, now: float) -> list[Effect]:
        """Abort whatever transaction holds the channel."""
        self._now = now
        if self._hold is not None:
            self._tx_input(TxInput.ABORT, reason)
            self._pump()
        return self._flush()

    def refuse(self, reason: str, *, now: float) -> list[Effect]:
        """From now on refuse every command not yet sent (the one in flight completes)."""
        self._now = now
        if self.refusing is None and self.closed_reason is None:
            self.refusing = reason
            self._refuse_waiting(lambda item: ChannelClosed(f"{reason}; command not sent"))
            if self._hold is not None:
                self._tx_input(TxInput.ABORT, reason)
            self._pump()
        return self._flush()

    def receive(self, data: bytes, *, now: float) -> list[Effect]:
        """Bytes from QEMU.

        Several messages read at once (a reply and the events around it) are
        recorded with one write when the log can (``append_many``), before
        any effect of theirs is returned: write-ahead holds for each.
        """
        self._now = now
        self._receive_items(self._decoder.feed(data))
        return self._flush()

    def receive_reply(
        self, data: bytes, *, now: float
    ) -> tuple[Hashable, dict[str, Any] | None, ChannelError | None] | None:
        """:meth:`receive` for the common read: the reply to the command in flight, alone.

        When *data* completes exactly that reply and nothing waits for the wire,
        it is handled as :meth:`receive` would (recorded first) and its answer,
        ``(token, reply, error)``, is returned for the driver to deliver, with no
        effect list. Otherwise ``None``, and the effects of *data* wait in
        :meth:`take_effects`.
        """
        self._now = now
        items = self._decoder.feed(data)
        flight = self._in_flight
        if (len(items) == 1 and flight is not None and not flight.answered and flight.seq is not None
                and not self._queue and self._hold is None and self.wedged is None and not self._out
                and self.closed_reason is None and type(items[0]) is dict
                and self._route(items[0], flight)[0] is Route.REPLY):
            self._reply(flight, items[0])
            out = self._out
            if len(out) == 1 and type(out[0]) is Answer:
                self._out = []
                return out[0].token, out[0].reply, out[0].error
            return None
        self._receive_items(items)
        return None

    def _receive_items(self, items: list[dict[str, Any] | wire.FramingError]) -> None:
        if len(items) > 1 and self.closed_reason is None:
            many = getattr(self.log, "append_many", None)
            plan = self._plan(items) if many is not None else None
            if plan is not None and many is not None:
                self._receive_batch(plan, many)
                return
        for item in items:
            if isinstance(item, wire.FramingError):
                self._note(f"unparsable data from QEMU: {item!r}")
            else:
                self._message(item)

    def receive_messages(self, msgs: Iterable[dict[str, Any]], *, now: float) -> list[Effect]:
        """Messages from QEMU already decoded (e.g. read together with the greeting)."""
        self._now = now
        for msg in msgs:
            self._message(msg)
        return self._flush()

    def tick(self, now: float) -> list[Effect]:
        """The clock: wire timeout, idle transactions, retrying a log that failed."""
        self._now = now
        if self.closed_reason is not None:
            return self._flush()
        flight = self._in_flight
        if flight is not None and self.wedged is None and now - flight.sent >= self.wire_timeout:
            self._wedge(flight)
        hold = self._hold
        if (hold is not None and hold.state is TxState.IDLE and not self._tx_queue
                and now - hold.last_activity >= self.tx_idle_timeout):
            self._tx_input(TxInput.IDLE_TIMEOUT, f"idle for more than {self.tx_idle_timeout:g} s")
        if self.paused_since is not None:
            if now >= self._retry_at:
                self._retry_log()
            if self.paused_since is not None:
                since = self.paused_since
                self._refuse_waiting(
                    lambda item: self._log_error_for(item),
                    lambda item: now - max(item.asked, since) >= self.log_wait_timeout,
                )
        self._pump()
        return self._flush()

    def eof(self, reason: str, detail: str, *, now: float) -> list[Effect]:
        """The connection to QEMU ended (``eof``, ``error``, or ``stopped`` by qmprr)."""
        self._now = now
        if self.closed_reason is not None:
            return self._flush()
        self.closed_reason = reason
        flight, self._in_flight = self._in_flight, None
        if flight is not None and not flight.answered:
            self._answer(flight.ask.token, error=CommandInterrupted(self._interrupted_text(flight)))
        closed = self._closed_error()
        for item in (*self._tx_queue, *self._queue):
            self._answer(item.token, error=closed)
        self._tx_queue.clear()
        self._queue.clear()
        if self._hold is not None:
            hold, self._hold = self._hold, None
            why = f"the connection to QEMU closed ({reason})"
            self._ended[hold.id] = (hold.label, "abort", why)
            self._out.append(TxEnded(hold.id, "abort", why))
        self._append(Close(reason=reason, detail=detail))
        self._out.append(Closed(reason, detail))
        return self._flush()

    def record(self, record: Record, *, now: float) -> Record | None:
        """Append a record from outside (clients connecting, notes); None if not written."""
        self._now = now
        if self.closed_reason is not None:
            return None
        return record if self._append(record) else None

    def take_effects(self) -> list[Effect]:
        """Effects produced outside an input (by :meth:`record`)."""
        return self._flush()

    # -- the machine -------------------------------------------------------------------

    def _flush(self) -> list[Effect]:
        out, self._out = self._out, []
        return out

    def _new_token(self, item: _Item) -> bool:
        if item.token in self._tokens:
            # Answering it would answer the caller already waiting with that token.
            self._note("impossible input: a token already waiting asked again", {"token": repr(item.token)})
            return False
        self._tokens.add(item.token)
        return True

    def _closed_error(self) -> ChannelClosed:
        return ChannelClosed(f"the connection to QEMU is closed ({self.closed_reason}); command not sent")

    def _gate(self, item: _Ask | _Begin) -> ChannelError | None:
        """Whether *item* may wait for the wire: the first rule that refuses it wins."""
        if self.closed_reason is not None:
            return self._closed_error()
        if self.refusing is not None:
            return ChannelClosed(f"{self.refusing}; command not sent")
        if self.wedged is not None:
            return ChannelWedged(self.wedged)
        if item.tx is not None and (self._hold is None or self._hold.id != item.tx):
            label, _action, reason = self._ended.get(item.tx, ("?", "end", None))
            return TransactionAborted(f"transaction {item.tx} ({label!r}) is over: {reason or 'it has ended'}")
        if item.tx is not None and self._hold is not None and self._hold.state is TxState.ABORTING:
            return TransactionAborted(
                f"transaction {item.tx} ({self._hold.label!r}) was aborted: {self._hold.abort_reason}")
        return None

    def _pump(self) -> None:
        """Give the wire to the next in line, as long as nothing is in flight."""
        while self._in_flight is None and self.closed_reason is None and self.wedged is None:
            if self._hold is not None:
                if not self._tx_queue or self.paused_since is not None:
                    return
                item = self._tx_queue.popleft()
                if isinstance(item, _End):
                    self._tokens.discard(item.token)
                    if self._tx_input(TxInput.END, None):
                        self._answer(item.token, reply={"tx": item.tx})
                    continue
                self._send(item)
                continue
            if not self._queue:
                return
            if self.paused_since is not None:
                # The log cannot be written: only qmprr's own commands (quit) go ahead.
                internal = next((i for i in self._queue if isinstance(i, _Ask) and i.role == INTERNAL_ROLE), None)
                if internal is None:
                    return
                self._queue.remove(internal)
                self._send(internal)
                continue
            head = self._queue.popleft()
            if isinstance(head, _Begin):
                self._open_tx(head)
            else:
                self._send(head)

    def _open_tx(self, item: _Begin) -> None:
        self._tokens.discard(item.token)
        tx = next(self._tx_ids)
        if not self._append(Tx(action="begin", tx=tx, label=item.label, owner=item.owner)):
            self._refuse(item, self._log_error_for(item), record=False)
            return
        self._hold = _Hold(tx, item.label, item.owner, last_activity=self._now)
        self._out.append(Began(item.token, tx, item.label, item.owner))

    def _send(self, item: _Ask) -> None:
        wire_id = f"qmprr-{next(self._wire_ids)}"
        sent = dict(item.msg)
        sent.pop("id", None)
        sent["id"] = wire_id  # last, as the wire bytes have it
        try:
            data = wire.encode(sent) if item.body is None or len(item.body) < 3 else wire.encode_with_id(item.body, wire_id)
        except Exception as exc:  # noqa: BLE001 - anything the encoder refuses is refused here
            self._refuse(item, ChannelError(f"cannot encode {item.name!r} for QEMU: {exc}"))
            return
        queued = self._offset(item.asked) if self._now - item.asked > QUEUED_THRESHOLD else None
        client_id = item.client_id if item.client_id != wire_id else ABSENT
        seq = self._append_command(item.src, item.role, sent, client_id, item.tx, queued, data[:-2])
        ok = written = seq is not None
        for index in range(item.fds) if item.fds else ():
            info = Msg(item.fd_info[index]) if index < len(item.fd_info) else None
            ok = ok and bool(self._append(
                Fd(src=item.src, placeholder=f"fd:{next(self._fd_ids)}", cmd=seq, stat=info)))
        if not ok and item.role != INTERNAL_ROLE:
            self._refuse(item, LogUnavailable(
                f"{self.log.path}: cannot record {item.name!r} ({self._log_error}): command not sent;"
                " the channel waits until the log can be written"), record=False)
            return
        if not ok:
            self.lost["command sent unrecorded"] += 1
        self._in_flight = _InFlight(item, wire_id, seq if written else None, self._now)
        if item.tx is not None:
            self._tx_input(TxInput.SEND, None)
        self._out.append(Write(item.token, data, item.fds > 0))

    @staticmethod
    def _route(msg: dict[str, Any], flight: _InFlight | None) -> tuple[Route, str]:
        """Where a message from QEMU goes (:data:`ATTRIBUTION`), and why, for a note."""
        kind = wire.classify(msg)
        if "id" not in msg:
            match = IdMatch.ABSENT
        elif flight is not None and msg["id"] == flight.wire_id:
            match = IdMatch.IN_FLIGHT
        else:
            match = IdMatch.OTHER
        return ATTRIBUTION.get((kind, match), (Route.UNEXPECTED, f"a message of kind {kind.value}"))

    def _plan(self, items: list[Any]) -> list[tuple[int | None, dict[str, Any]]] | None:
        """The records of messages read together, when each is an event or the one awaited reply.

        ``(cmd, msg)`` for the reply, ``(None, msg)`` for an event; None when
        anything else is among them (a note to write, a wedged channel): those
        go one by one.
        """
        flight = self._in_flight
        if self.wedged is not None:
            return None
        plan: list[tuple[int | None, dict[str, Any]]] = []
        for item in items:
            if not isinstance(item, dict):
                return None
            route, _why = self._route(item, flight)
            if route is Route.EVENT:
                plan.append((None, item))
            elif route is Route.REPLY and flight is not None and flight.seq is not None:
                plan.append((flight.seq, item))
                flight = None  # a second reply with its id would be unexpected
            else:
                return None
        return plan

    def _receive_batch(self, plan: list[tuple[int | None, dict[str, Any]]], many: Callable[..., Any]) -> None:
        try:
            many(plan)
            recorded = True
        except Exception as exc:  # noqa: BLE001 - a log that fails must not stop the channel
            recorded = False
            for cmd, _msg in plan:
                self._log_failed("event" if cmd is None else "reply", exc)
        for cmd, msg in plan:
            if cmd is None:
                if recorded:
                    self._out.append(Fanout(msg))
            elif self._in_flight is not None:
                self._reply(self._in_flight, msg, recorded)

    def _message(self, msg: dict[str, Any]) -> None:
        if self.closed_reason is not None:
            return
        flight = self._in_flight
        route, why = self._route(msg, flight)
        if route is Route.EVENT:
            if self._append_event(msg):
                self._out.append(Fanout(msg))
        elif route is Route.REPLY and flight is not None:
            self._reply(flight, msg)
        else:
            self._note(f"unexpected message from QEMU ({why}); given to no client", {"msg": msg})

    def _reply(self, flight: _InFlight, msg: dict[str, Any], recorded: bool | None = None) -> None:
        """QEMU answered *flight* (its reply already written when *recorded* is given)."""
        self._in_flight = None
        ask = flight.ask
        self._tokens.discard(ask.token)
        if recorded is None and flight.seq is not None:
            recorded = self._append_reply(flight.seq, msg)
        elif recorded is None:  # qmprr's own command went out unrecorded: a reply record would name no command
            recorded = self._note(f"QEMU's reply to {ask.name!r}, sent unrecorded by qmprr", {"msg": msg})
        if self.wedged is not None:
            self.wedged = None
            self._note(
                f"QEMU answered {ask.name!r} (seq {flight.seq}) after {self._now - flight.sent:.3g} s:"
                " the channel is no longer wedged",
                {"cmd": flight.seq},
            )
        answer: tuple[dict[str, Any] | None, ChannelError | None] | None = None
        if not flight.answered:
            if recorded:
                out = dict(msg)
                out.pop("id", None)
                if ask.client_id is not ABSENT:
                    out["id"] = ask.client_id
                answer = out, None
            else:
                answer = None, ReplyNotRecorded(
                    f"{self.log.path}: QEMU ran {ask.name!r} (seq {flight.seq}), but its reply could not"
                    f" be recorded ({self._log_error}), so it is withheld: the command DID run")
        if ask.tx is not None and self._hold is not None and self._hold.id == ask.tx:
            self._hold.last_activity = self._now
            self._tx_input(TxInput.REPLY, None)
        # The next command goes to QEMU before this reply goes to its caller: QEMU works
        # on it meanwhile (both are recorded already; they are for different sockets).
        self._pump()
        if answer is not None:
            self._answer(ask.token, reply=answer[0], error=answer[1])

    def _wedge(self, flight: _InFlight) -> None:
        waited = self._now - flight.sent
        text = (
            f"QEMU has not answered {flight.ask.name!r} (seq {flight.seq}) for {waited:.3g} s:"
            " the channel is wedged (commands are refused until QEMU answers it)"
        )
        self.wedged = text
        self._note(text, {"cmd": flight.seq, "waited": round(waited, 3)})
        if not flight.answered:
            flight.answered = True
            self._answer(flight.ask.token, error=ChannelWedged(
                f"{text}; {flight.ask.name!r} may still complete"))
        self._refuse_waiting(lambda item: ChannelWedged(text))

    def _tx_input(self, what: TxInput, reason: str | None) -> bool:
        """Apply a transaction input through :data:`TX_RULES`; False if the table refuses it."""
        hold = self._hold
        if hold is None:
            self._note(f"impossible transaction input {what.value}: no transaction holds the channel")
            return False
        outcome = TX_RULES.get((hold.state, what))
        if outcome is None:
            self._note(f"impossible transaction input {what.value} in state {hold.state.value}", {"tx": hold.id})
            return False
        if what in (TxInput.ABORT, TxInput.IDLE_TIMEOUT) and hold.abort_reason is None:
            hold.abort_reason = reason
        if isinstance(outcome, TxState):
            hold.state = outcome
            if outcome is TxState.ABORTING:
                self._refuse_tx_queue(hold)
            return True
        action = outcome.value
        why = hold.abort_reason if outcome is Release.ABORT else None
        if outcome is Release.ABORT:
            self._refuse_tx_queue(hold)
        elif self._tx_queue:  # asked in it after its end was queued: over for them too
            self._refuse_tx_queue(hold, f"transaction {hold.id} ({hold.label!r}) is over: it has ended")
        self._hold = None
        self._ended[hold.id] = (hold.label, action, why)
        self._append(Tx(action=action, tx=hold.id, label=hold.label, owner=hold.owner, reason=why))  # type: ignore[arg-type]  # Release values are the Tx actions
        self._out.append(TxEnded(hold.id, action, why))
        return True

    def _refuse_tx_queue(self, hold: _Hold, text: str | None = None) -> None:
        items = list(self._tx_queue)
        self._tx_queue.clear()
        for item in items:
            self._tokens.discard(item.token)
            self._refuse(item, TransactionAborted(
                text or f"transaction {hold.id} ({hold.label!r}) was aborted: {hold.abort_reason}"))

    def _refuse_waiting(
        self, error: Callable[[_Item], ChannelError], which: Callable[[_Item], bool] = lambda item: True
    ) -> None:
        for queue in (self._tx_queue, self._queue):
            for item in [i for i in queue if which(i)]:
                queue.remove(item)  # type: ignore[arg-type]  # item was found in this queue
                self._tokens.discard(item.token)
                self._refuse(item, error(item))

    def _log_error_for(self, item: _Item) -> LogUnavailable:
        return LogUnavailable(
            f"{self.log.path}: the log cannot be written ({self._log_error}); nothing was sent to QEMU")

    # -- answering and recording -----------------------------------------------------------

    def _answer(self, token: Hashable, *, reply: dict[str, Any] | None = None,
                error: ChannelError | None = None) -> None:
        self._tokens.discard(token)
        self._out.append(Answer(token, reply, error))

    def _refuse(self, item: _Item, error: ChannelError, *, record: bool = True) -> None:
        """Answer *item* with *error*, recorded first as a ``local`` record (every refusal is)."""
        if record:
            error.recorded = self._record_refusal(item, str(error))
        self._answer(item.token, error=error)

    def _record_refusal(self, item: _Item, text: str) -> bool:
        if self.closed_reason is not None:
            return False  # the log has ended with ``close``
        return self._append(Local(
            src=item.src, role=item.role,  # type: ignore[arg-type]  # role strings are the callers'; Record.role names the known ones
            msg=Msg(item.as_received()), reply=Msg(qmp_error(text, item.client_id)),
        ))

    def _withdrawn(self, item: _Item) -> None:
        name = item.name if isinstance(item, _Ask) else item.as_received()["execute"]
        data: dict[str, Any] = {"src": item.src, "command": name}
        if item.client_id is not ABSENT:
            data["client_id"] = item.client_id
        self._note(f"withdrawn: {item.src} gave up on {name!r} before it reached QEMU", data)

    def _note(self, text: str, data: dict[str, Any] | None = None) -> bool:
        return self._append(Note(text=text, data=Msg(data) if data is not None else None))

    # The hot path: a sink with append_command/reply/event (RecordWriter) builds those
    # records straight to bytes, the same lines; any other sink gets the typed records.

    def _append_command(
        self, src: str, role: str, msg: dict[str, Any], client_id: Any, tx: int | None, queued: float | None,
        encoded: bytes,
    ) -> int | None:
        """Write a ``command`` record (*encoded*: *msg*'s JSON); its seq, or None if it was not written."""
        hot = getattr(self.log, "append_command", None)
        if hot is None:
            record = Command(src=src, role=role, msg=Msg(msg), client_id=client_id, tx=tx, queued=queued)  # type: ignore[arg-type]  # role strings are the callers'; Record.role names the known ones
            return record.seq if self._append(record) else None
        if self.closed_reason is not None:
            return None
        try:
            seq: int = hot(src=src, role=role, msg=msg, client_id=client_id, tx=tx, queued=queued, encoded=encoded)
            return seq
        except Exception as exc:  # noqa: BLE001 - a log that fails must not stop the channel
            self._log_failed("command", exc)
            return None

    def _append_reply(self, cmd: int, msg: dict[str, Any]) -> bool:
        hot = getattr(self.log, "append_reply", None)
        if hot is None:
            return self._append(Reply(cmd=cmd, msg=Msg(msg)))
        if self.closed_reason is not None:
            return False
        try:
            hot(cmd=cmd, msg=msg)
            return True
        except Exception as exc:  # noqa: BLE001 - a log that fails must not stop the channel
            self._log_failed("reply", exc)
            return False

    def _append_event(self, msg: dict[str, Any]) -> bool:
        hot = getattr(self.log, "append_event", None)
        if hot is None:
            return self._append(Event(msg=Msg(msg)))
        if self.closed_reason is not None:
            return False
        try:
            hot(msg=msg)
            return True
        except Exception as exc:  # noqa: BLE001 - a log that fails must not stop the channel
            self._log_failed("event", exc)
            return False

    def _append(self, record: Record) -> bool:
        """Write *record*; on failure count it as lost and pause (see :meth:`tick`)."""
        if self.closed_reason is not None and not isinstance(record, Close):
            return False
        try:
            self.log.append(record)
            return True
        except Exception as exc:  # noqa: BLE001 - a log that fails must not stop the channel
            self._log_failed(record.kind, exc)
            return False

    def _log_failed(self, kind: str, exc: Exception) -> None:
        """A record could not be written: count it as lost and pause (see :meth:`tick`)."""
        self.lost[kind] += 1
        if isinstance(exc, (QmprrError, OSError)) and self.paused_since is None:
            self.paused_since = self._now
            self._log_error = str(exc)
            self._retry_delay = LOG_RETRY_FIRST
            self._retry_at = self._now + self._retry_delay

    def _retry_log(self) -> None:
        """Try the ``note`` that says the log works again; resume if it is written."""
        lost = dict(sorted(self.lost.items()))
        text = (
            f"the log is writable again after {self._now - (self.paused_since or self._now):.3g} s;"
            f" {sum(lost.values())} records could not be written meanwhile"
            f" ({', '.join(f'{n} {k}' for k, n in lost.items()) or 'none'})"
        )
        try:
            self.log.append(Note(text=text, data=Msg({"lost": lost, "error": self._log_error})))
        except Exception:  # noqa: BLE001 - still failing: back off
            self._retry_delay = min(self._retry_delay * 2, LOG_RETRY_MAX)
            self._retry_at = self._now + self._retry_delay
            return
        self.paused_since = None
        self.lost.clear()

    @staticmethod
    def _interrupted_text(flight: _InFlight) -> str:
        return (
            f"the connection to QEMU ended while {flight.ask.name!r} (seq {flight.seq}) was in flight:"
            " it may or may not have executed"
        )
