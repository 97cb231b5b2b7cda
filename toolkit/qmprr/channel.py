"""The one serialized upstream channel to QEMU.

A :class:`Channel` owns exactly one QMP connection to QEMU. Everyone who
talks to QEMU -- the management application, injected debug commands, qmprr
itself -- goes through :meth:`Channel.execute`, which:

* grants the wire to one command at a time, in FIFO order of asking, so the
  order of ``command`` records is the order QEMU executed them;
* gives each command a channel-unique wire id and restores the caller's own
  id (any JSON value, or none) on the reply it returns;
* logs the command before its bytes go to QEMU, and each reply and event
  before anyone sees it (write-ahead), events in wire order relative to
  replies.

Transactions hold the channel across several commands::

    async with channel.transaction("dump"):
        await channel.execute({"execute": "stop"})
        await channel.execute({"execute": "dump-guest-memory", ...})
        await channel.execute({"execute": "cont"})

A transaction idle for longer than ``tx_idle_timeout`` (or whose owner goes
away, see :meth:`Channel.abort_transactions_of`) is aborted and logged as
``tx abort``; waiting callers then proceed. When QEMU closes the connection or
dies, every waiting and in-flight caller gets a :class:`ChannelClosed` at once
(in flight: :class:`CommandInterrupted`, "may or may not have executed"), and
a ``close`` record ends the log.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import contextvars
import itertools
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import attrs

from . import wire
from .errors import QmprrError
from .recording import (
    ABSENT,
    Close,
    Command,
    Event,
    Fd,
    Greeting,
    Msg,
    Note,
    Record,
    RecordWriter,
    Reply,
    Tx,
)

DEFAULT_TX_IDLE_TIMEOUT = 30.0
DEFAULT_EVENT_QUEUE = 1000
INTERNAL_SRC = "qmprr"
READ_CHUNK = 256 * 1024
#: A command that waited longer than this for the wire records when it asked (``queued``).
QUEUED_THRESHOLD = 0.001
#: How long a cancelled caller's command keeps the wire waiting for QEMU's reply.
CANCELLED_REPLY_WAIT = 30.0


class ChannelError(QmprrError):
    """A command could not be run through the channel."""


class ChannelClosed(ChannelError):
    """The connection to QEMU is gone; nothing more can be sent."""


class CommandInterrupted(ChannelClosed):
    """The connection ended while the command was in flight: it may or may not have executed."""


class TransactionError(ChannelError):
    """A transaction cannot be begun or ended as asked."""


class TransactionAborted(TransactionError):
    """The transaction was aborted (idle too long, or its owner left)."""


class UpstreamProtocolError(ChannelError):
    """QEMU's side did not speak QMP as expected (no greeting, failed negotiation)."""


@attrs.define(eq=False)
class Transaction:
    """A hold on the channel by one owner; use :meth:`Channel.transaction`."""

    id: int
    label: str
    owner: str
    channel: Channel
    last_activity: float = attrs.field(factory=time.monotonic)
    busy: int = 0
    pending_abort: str | None = None  # abort asked while a command of it was in flight
    task: asyncio.Task[Any] | None = None  # the task whose commands join it implicitly
    ended: bool = False
    abort_reason: str | None = None

    async def execute(self, msg: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Run *msg* inside this transaction (see :meth:`Channel.execute`)."""
        return await self.channel.execute(msg, tx=self, **kwargs)


class Subscription:
    """Events delivered to one subscriber through a bounded queue.

    When the queue is full the event is dropped for this subscriber (never
    from the log); drops are counted and noted in the log.
    """

    def __init__(
        self,
        channel: Channel,
        name: str,
        maxsize: int,
        deliver: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.name = name
        self.channel = channel
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize)
        self.dropped = 0
        self._streak = 0
        self._deliver = deliver or self._enqueue

    def _enqueue(self, event: dict[str, Any]) -> bool:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True

    def offer(self, event: dict[str, Any]) -> None:
        """Deliver *event*, or count it as dropped for this subscriber."""
        if not self._deliver(event):
            self.dropped += 1
            self._streak += 1
            if self._streak == 1:
                self.channel.note(f"subscriber {self.name} is too slow: dropping events for it")
            return
        if self._streak:
            self.channel.note(
                f"subscriber {self.name} dropped {self._streak} events", {"dropped": self._streak}
            )
            self._streak = 0

    async def get(self) -> dict[str, Any]:
        """The next event; raises :class:`ChannelClosed` once the channel is closed."""
        event = await self.queue.get()
        if event is None:
            raise ChannelClosed(f"channel closed: {self.channel.closed_reason}")
        return event

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            try:
                yield await self.get()
            except ChannelClosed:
                return

    def close(self) -> None:
        """Stop delivering; a reader gets the end of the stream after what is queued."""
        self.channel._subscribers.discard(self)
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:  # make room: the end of the stream must get through
                self.queue.get_nowait()
                self.dropped += 1


_current_tx: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar(
    "qmprr_current_tx", default=None
)


class Channel:
    """One QMP connection to QEMU, serialized and recorded. Build with :meth:`open`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        log: RecordWriter,
        greeting: dict[str, Any],
        *,
        decoder: wire.StreamDecoder | None = None,
        tx_idle_timeout: float = DEFAULT_TX_IDLE_TIMEOUT,
    ) -> None:
        self.log = log
        self.greeting = greeting
        self.tx_idle_timeout = tx_idle_timeout
        self._reader = reader
        self._writer = writer
        self._decoder = decoder or wire.StreamDecoder(limits=None, strict=False)
        self._lock = asyncio.Lock()  # FIFO: the wire, or a transaction's hold on it
        self._tx_lock = asyncio.Lock()  # one command at a time inside a transaction
        self._tx: Transaction | None = None
        self._tx_ids = itertools.count(1)
        self._wire_ids = itertools.count(0)
        self._fd_ids = itertools.count(0)
        self._in_flight: tuple[str, Command, asyncio.Future[dict[str, Any]]] | None = None
        self._subscribers: set[Subscription] = set()
        self.closed_reason: str | None = None
        self._close_logged = False
        self._refusing: str | None = None
        self.closed = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    # -- opening -------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        make_log: Callable[[dict[str, Any]], RecordWriter],
        *,
        tx_idle_timeout: float = DEFAULT_TX_IDLE_TIMEOUT,
        greeting_timeout: float = 10.0,
    ) -> Channel:
        """Read QEMU's greeting, start the log with ``make_log(greeting)``, negotiate.

        The greeting and ``qmp_capabilities`` exchange are logged like
        everything else (``qmp_capabilities`` with role ``internal``).
        """
        decoder = wire.StreamDecoder(limits=None, strict=False)
        greeting: dict[str, Any] | None = None
        leftover: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(greeting_timeout):
                while greeting is None:
                    data = await reader.read(READ_CHUNK)
                    if not data:
                        raise UpstreamProtocolError("QEMU closed the monitor before its greeting")
                    for item in decoder.feed(data):
                        if greeting is None and isinstance(item, dict) and "QMP" in item:
                            greeting = item
                        elif isinstance(item, dict):
                            leftover.append(item)
        except TimeoutError:
            raise UpstreamProtocolError(
                f"no QMP greeting within {greeting_timeout:g} s: is this a QMP monitor socket?"
            ) from None
        try:
            log = make_log(greeting)
        except BaseException:
            writer.close()
            raise
        channel = cls(reader, writer, log, greeting, decoder=decoder, tx_idle_timeout=tx_idle_timeout)
        try:
            log.append(Greeting(msg=Msg(greeting)))
            channel._reader_task = asyncio.create_task(channel._read_loop(leftover), name="qmprr-upstream")
            async with asyncio.timeout(greeting_timeout):
                reply = await channel.execute(
                    {"execute": "qmp_capabilities"}, src=INTERNAL_SRC, role="internal"
                )
            if "error" in reply:
                raise UpstreamProtocolError(f"QEMU refused qmp_capabilities: {reply['error']}")
        except BaseException as exc:
            await channel.close()
            log.close()
            if isinstance(exc, TimeoutError):
                raise UpstreamProtocolError(
                    f"QEMU did not answer qmp_capabilities within {greeting_timeout:g} s"
                ) from None
            raise
        return channel

    @classmethod
    async def open_unix(
        cls, path: str, make_log: Callable[[dict[str, Any]], RecordWriter], **kwargs: Any
    ) -> Channel:
        """Connect to QEMU's QMP UNIX socket at *path* and :meth:`open` the channel."""
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=READ_CHUNK)
        except OSError as exc:
            raise ChannelError(f"cannot connect to QEMU's QMP socket {path}: {exc.strerror or exc}") from None
        return await cls.open(reader, writer, make_log, **kwargs)

    # -- commands ------------------------------------------------------------

    async def execute(
        self,
        msg: dict[str, Any],
        *,
        src: str = "library",
        role: str = "primary",
        client_id: Any = ABSENT,
        tx: Transaction | None = None,
        fds: Sequence[int] = (),
    ) -> dict[str, Any]:
        """Send one command to QEMU when its turn comes; return QEMU's reply.

        *fds* are passed with the command (SCM_RIGHTS), as ``getfd`` and
        ``add-fd`` need; the log gets an ``fd`` record for each, never the fd.

        *msg* is a command (``execute`` and optional ``arguments``; an ``id``
        in it is ignored, pass the caller's id as *client_id*). The reply
        carries *client_id* as its ``id`` (none when ABSENT). *tx* defaults
        to the transaction opened by :meth:`transaction` in this task.
        """
        asked = time.monotonic()
        if tx is None:
            tx = _current_tx.get()
            if tx is not None and tx.task is not asyncio.current_task():
                tx = None  # a task started inside the block is not part of it
        if tx is not None:
            if tx is not self._tx:
                self._raise_if_closed()
                reason = tx.abort_reason or "it has ended"
                raise TransactionAborted(f"transaction {tx.id} ({tx.label!r}) is over: {reason}")
            gate = self._tx_lock
        else:
            gate = self._lock
        async with gate:
            if tx is not None and (tx is not self._tx or tx.pending_abort is not None):
                self._raise_if_closed()
                raise TransactionAborted(f"transaction {tx.id} ({tx.label!r}) was aborted: {tx.abort_reason}")
            if tx is not None:
                tx.busy += 1
            try:
                reply = await self._send(msg, src, role, client_id, tx, asked, fds)
            finally:
                if tx is not None:
                    tx.busy -= 1
                    tx.last_activity = time.monotonic()
                    if tx.pending_abort is not None and tx.busy == 0:
                        self._release(tx, "abort", tx.pending_abort)
        out = {k: v for k, v in reply.items() if k != "id"}
        if client_id is not ABSENT:
            out["id"] = client_id
        return out

    def _raise_if_closed(self) -> None:
        if self.closed_reason is not None:
            raise ChannelClosed(f"the connection to QEMU is closed ({self.closed_reason}); command not sent")
        if self._refusing is not None:
            raise ChannelClosed(f"{self._refusing}; command not sent")

    def refuse_new_commands(self, reason: str) -> None:
        """From now on, fail every command not yet sent (the one in flight completes)."""
        self._refusing = reason
        self.abort_all_transactions(reason)

    async def _send(
        self,
        msg: dict[str, Any],
        src: str,
        role: str,
        client_id: Any,
        tx: Transaction | None,
        asked: float,
        fds: Sequence[int] = (),
    ) -> dict[str, Any]:
        self._raise_if_closed()
        wire_id = f"qmprr-{next(self._wire_ids)}"
        sent = {k: v for k, v in msg.items() if k != "id"}
        sent["id"] = wire_id
        record = Command(
            src=src,
            role=role,  # type: ignore[arg-type]
            msg=Msg(sent),
            client_id=client_id if client_id != wire_id else ABSENT,
            tx=tx.id if tx is not None else None,
            queued=self.log.offset(asked) if time.monotonic() - asked > QUEUED_THRESHOLD else None,
        )
        self.log.append(record)  # write-ahead: logged before QEMU sees it
        for _ in fds:
            self.log.append(Fd(src=src, placeholder=f"fd:{next(self._fd_ids)}", cmd=record.seq))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        # Its caller may be gone (cancelled) when QEMU's end fails it: that is not an error to log.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._in_flight = (wire_id, record, future)
        try:
            if fds:
                await self._send_with_fds(wire.encode(sent), fds)
            else:
                self._writer.write(wire.encode(sent))
            await self._writer.drain()
            return await future
        except asyncio.CancelledError:
            # The command is on the wire: hold it until QEMU answers, so the reply
            # is logged as this command's and no second command goes out meanwhile.
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(future), CANCELLED_REPLY_WAIT)
            raise
        except (ConnectionError, OSError) as exc:
            if isinstance(exc, (ConnectionResetError, BrokenPipeError)) or self._writer.is_closing():
                self._shutdown("eof", "QEMU closed the monitor connection")
            else:
                self._shutdown("error", f"write to QEMU failed: {exc}")
            raise CommandInterrupted(self._interrupted_text(record)) from None
        finally:
            self._in_flight = None

    async def _send_with_fds(self, data: bytes, fds: Sequence[int]) -> None:
        """Write *data* with *fds* attached, after anything the transport still holds."""
        transport = self._writer.transport
        for _ in range(1000):
            if transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.001)
        raw = transport.get_extra_info("socket")
        if raw is None:
            raise ChannelError("this connection to QEMU cannot pass file descriptors")
        with socket.socket(fileno=os.dup(raw.fileno())) as sock:
            sock.setblocking(True)
            sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            if sent < len(data):
                sock.sendall(data[sent:])

    @staticmethod
    def _interrupted_text(record: Command) -> str:
        name = wire.command_name(record.msg) or "?"
        return (
            f"the connection to QEMU ended while {name!r} (seq {record.seq}) was in flight:"
            " it may or may not have executed"
        )

    # -- transactions --------------------------------------------------------

    async def begin_transaction(self, label: str, owner: str) -> Transaction:
        """Wait for the channel (FIFO), then hold it for *owner* until ended or aborted."""
        if self._tx is not None and self._tx.owner == owner:
            raise TransactionError(f"{owner} already holds transaction {self._tx.id} ({self._tx.label!r})")
        await self._lock.acquire()
        try:
            self._raise_if_closed()
        except ChannelClosed:
            self._lock.release()
            raise
        tx = Transaction(id=next(self._tx_ids), label=label, owner=owner, channel=self)
        try:
            self.log.append(Tx(action="begin", tx=tx.id, label=label, owner=owner))
        except BaseException:
            self._lock.release()
            raise
        self._tx = tx
        self._watchdog = asyncio.create_task(self._watch(tx), name=f"qmprr-tx-{tx.id}")
        return tx

    async def end_transaction(self, tx: Transaction) -> None:
        """Release the channel. Raises :class:`TransactionAborted` if it was aborted."""
        if tx is not self._tx:
            if tx.abort_reason:
                raise TransactionAborted(f"transaction {tx.id} ({tx.label!r}) was aborted: {tx.abort_reason}")
            raise TransactionError(f"transaction {tx.id} ({tx.label!r}) is not open")
        async with self._tx_lock:  # let a command in flight inside it finish
            pass
        self._release(tx, "end", None)

    def abort_transactions_of(self, owner: str, reason: str) -> None:
        """Abort the transaction *owner* holds, if any (e.g. it disconnected)."""
        if self._tx is not None and self._tx.owner == owner:
            self._release(self._tx, "abort", reason)

    def abort_all_transactions(self, reason: str) -> None:
        """Abort whatever transaction holds the channel (e.g. qmprr is stopping)."""
        if self._tx is not None:
            self._release(self._tx, "abort", reason)

    @contextlib.asynccontextmanager
    async def transaction(self, label: str, *, owner: str = "library") -> AsyncIterator[Transaction]:
        """Hold the channel for the commands this task executes inside the block.

        Only commands of the task that entered the block join the transaction
        implicitly; other tasks (even ones started inside the block) wait, or
        pass the transaction explicitly with ``tx.execute(...)``.
        """
        tx = await self.begin_transaction(label, owner)
        tx.task = asyncio.current_task()
        token = _current_tx.set(tx)
        try:
            yield tx
        finally:
            _current_tx.reset(token)
            if tx is self._tx:
                await self.end_transaction(tx)

    def _release(self, tx: Transaction, action: str, reason: str | None) -> None:
        if tx is not self._tx:
            return
        if action == "abort" and tx.busy:
            # Its command is on the wire: the channel is released when the reply
            # is in, so two commands are never in flight at once.
            tx.pending_abort = reason
            return
        self._tx = None
        tx.ended = True
        if action == "abort":
            tx.abort_reason = reason
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        self._watchdog = None
        self.record(Tx(action=action, tx=tx.id, label=tx.label, owner=tx.owner, reason=reason))  # type: ignore[arg-type]
        self._lock.release()

    async def _watch(self, tx: Transaction) -> None:
        while tx is self._tx:
            idle_for = time.monotonic() - tx.last_activity
            if tx.busy == 0 and idle_for >= self.tx_idle_timeout:
                self._release(
                    tx, "abort", f"idle for more than {self.tx_idle_timeout:g} s"
                )
                return
            await asyncio.sleep(max(0.01, self.tx_idle_timeout - idle_for if tx.busy == 0 else self.tx_idle_timeout))

    # -- events --------------------------------------------------------------

    def subscribe(
        self,
        name: str,
        maxsize: int = DEFAULT_EVENT_QUEUE,
        *,
        deliver: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Subscription:
        """Receive every event from now on (see :class:`Subscription`).

        Events go to the subscription's bounded queue, or to *deliver*, which
        returns False when it had to drop the event.
        """
        sub = Subscription(self, name, maxsize, deliver)
        if self.closed_reason is not None:
            sub.queue.put_nowait(None)
        else:
            self._subscribers.add(sub)
        return sub

    # -- logging -------------------------------------------------------------

    def record(self, record: Record) -> Record | None:
        """Append *record* to the log, unless the log has ended with ``close``."""
        if self._close_logged or self.log.closed:
            return None
        return self.log.append(record)

    def note(self, text: str, data: dict[str, Any] | None = None) -> None:
        """Append a ``note`` record."""
        self.record(Note(text=text, data=Msg(data) if data is not None else None))

    # -- upstream reading and shutdown ---------------------------------------

    async def _read_loop(self, early: list[dict[str, Any]]) -> None:
        reason, detail = "eof", "QEMU closed the monitor connection"
        try:
            for msg in early:
                self._dispatch(msg)
            while True:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    break
                for item in self._decoder.feed(data):
                    if isinstance(item, wire.FramingError):
                        self.note(f"unparsable data from QEMU: {item!r}")
                    else:
                        self._dispatch(item)
        except ConnectionResetError:
            reason, detail = "eof", "QEMU closed the monitor connection (reset)"
        except (ConnectionError, OSError) as exc:
            reason, detail = "error", f"reading from QEMU failed: {exc}"
        except QmprrError as exc:  # the log cannot be written: nothing may pass unrecorded
            reason, detail = "error", f"cannot record QEMU's output: {exc}"
        except asyncio.CancelledError:
            reason, detail = "stopped", "qmprr closed the connection"
            self._shutdown(reason, detail)
            raise
        self._shutdown(reason, detail)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = wire.classify(msg)
        if kind is wire.MessageKind.EVENT:
            self.log.append(Event(msg=Msg(msg)))
            for sub in list(self._subscribers):
                sub.offer(msg)
            return
        if kind in (wire.MessageKind.RETURN, wire.MessageKind.ERROR) and self._in_flight:
            wire_id, command, future = self._in_flight
            if msg.get("id") == wire_id or "id" not in msg:
                self.log.append(Reply(cmd=command.seq, msg=Msg(msg)))
                if not future.done():
                    future.set_result(msg)
                return
        self.note("unexpected message from QEMU", {"msg": msg})

    def _shutdown(self, reason: str, detail: str) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        if self._in_flight is not None:
            _, command, future = self._in_flight
            if not future.done():
                future.set_exception(CommandInterrupted(self._interrupted_text(command)))
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        if self._tx is not None:
            tx = self._tx
            self._tx = None
            tx.ended = True
            tx.abort_reason = f"the connection to QEMU closed ({reason})"
            self._lock.release()
        if not self.log.closed:
            with contextlib.suppress(QmprrError, OSError):  # a failing log must not stop the shutdown
                self.log.append(Close(reason=reason, detail=detail))
        self._close_logged = True
        for sub in list(self._subscribers):
            sub.close()
        with contextlib.suppress(Exception):
            self._writer.close()
        self.closed.set()

    async def close(self) -> None:
        """Close the connection to QEMU (logged as ``close`` ``stopped``) and wait for it."""
        if self._reader_task is not None and not self._reader_task.done():
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._shutdown("stopped", "qmprr closed the connection")

    async def wait_closed(self) -> None:
        """Wait until the connection to QEMU has ended."""
        await self.closed.wait()
