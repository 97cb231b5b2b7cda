"""The one serialized upstream channel to QEMU: an asyncio driver for :class:`ChannelCore`.

A :class:`Channel` owns exactly one QMP connection to QEMU. Everyone who
talks to QEMU -- the management application, injected debug commands, qmprr
itself -- goes through :meth:`Channel.execute`. Every decision (FIFO order,
one command in flight, which message answers which command, transactions, the
wire timeout, a log that cannot be written) is made by the sans-IO
:class:`~qmprr.channel_core.ChannelCore`; this module only moves bytes between
the socket, the core and the callers' futures, and keeps the clock.

Transactions hold the channel across several commands::

    async with channel.transaction("dump"):
        await channel.execute({"execute": "stop"})
        await channel.execute({"execute": "dump-guest-memory", ...})
        await channel.execute({"execute": "cont"})

See ``docs/channel.md`` for what callers are told when a transaction is
aborted, QEMU stops answering (``wire_timeout``), the log cannot be written,
or QEMU goes away.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import contextvars
import itertools
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from typing import Any

import attrs

from . import address, wire
from .flow import WriteFlow
from .channel_core import (
    DEFAULT_LOG_WAIT_TIMEOUT,
    DEFAULT_TX_IDLE_TIMEOUT,
    DEFAULT_WIRE_TIMEOUT,
    QUEUED_THRESHOLD,
    Answer,
    Began,
    ChannelClosed,
    ChannelCore,
    ChannelError,
    ChannelWedged,
    Closed,
    CommandInterrupted,
    Effect,
    Fanout,
    LogUnavailable,
    ReplyNotRecorded,
    TransactionAborted,
    TransactionError,
    TxEnded,
    UpstreamProtocolError,
    Write,
)
from .recording import ABSENT, Greeting, Msg, Note, Record, RecordLog

__all__ = [
    "DEFAULT_LOG_WAIT_TIMEOUT",
    "DEFAULT_TX_IDLE_TIMEOUT",
    "DEFAULT_WIRE_TIMEOUT",
    "INTERNAL_SRC",
    "QUEUED_THRESHOLD",
    "Channel",
    "ChannelClosed",
    "ChannelError",
    "ChannelWedged",
    "CommandInterrupted",
    "LogUnavailable",
    "ReplyNotRecorded",
    "Subscription",
    "Transaction",
    "TransactionAborted",
    "TransactionError",
    "UpstreamProtocolError",
]

DEFAULT_EVENT_QUEUE = 1000
INTERNAL_SRC = "qmprr"
READ_CHUNK = 256 * 1024


@attrs.define(eq=False)
class Transaction:
    """A hold on the channel by one owner; use :meth:`Channel.transaction`."""

    id: int
    label: str
    owner: str
    channel: Channel
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


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_current_tx: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar(
    "qmprr_current_tx", default=None
)


class Channel:
    """One QMP connection to QEMU, serialized and recorded. Build with :meth:`open`.

    *wire_timeout*: how long QEMU may take to answer one command before its
    caller and every waiting caller get :class:`ChannelWedged` (and later ones
    too, until QEMU answers it). *log_wait_timeout*: how long a command waits
    for a log that cannot be written before it gets :class:`LogUnavailable`.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        log: RecordLog,
        greeting: dict[str, Any],
        *,
        decoder: wire.StreamDecoder | None = None,
        tx_idle_timeout: float = DEFAULT_TX_IDLE_TIMEOUT,
        wire_timeout: float = DEFAULT_WIRE_TIMEOUT,
        log_wait_timeout: float = DEFAULT_LOG_WAIT_TIMEOUT,
    ) -> None:
        self.log = log
        self.greeting = greeting
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        # With no high-water mark, drain() returns only once the buffer is empty:
        # the fd-passing path needs that, and one command is in flight at a time anyway.
        with contextlib.suppress(Exception):
            self._transport.set_write_buffer_limits(high=0)
        self._core = ChannelCore(
            log,
            now=time.monotonic(),
            decoder=decoder,
            wire_timeout=wire_timeout,
            tx_idle_timeout=tx_idle_timeout,
            log_wait_timeout=log_wait_timeout,
        )
        self._tokens = itertools.count()
        self._futures: dict[Hashable, asyncio.Future[Any]] = {}
        self._callbacks: dict[Hashable, Callable[[dict[str, Any] | None, ChannelError | None], None]] = {}
        self._fds: dict[Hashable, Sequence[int]] = {}
        self._txs: dict[int, Transaction] = {}
        self._subscribers: set[Subscription] = set()
        self._pending_writes: collections.deque[tuple[bytes, Sequence[int]]] = collections.deque()
        self._write_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.closed = asyncio.Event()
        self._upstream: _Upstream | None = None

    @property
    def peer_pid(self) -> int | None:
        """The pid of the process listening on QEMU's monitor socket, when the kernel tells (None on a socketpair's
        end qmprr made: that names qmprr)."""
        creds = address.peer_credentials(self._transport.get_extra_info("socket"))
        return creds[0] if creds is not None and creds[0] != os.getpid() else None

    @property
    def closed_reason(self) -> str | None:
        """``eof``, ``error`` or ``stopped`` once the connection to QEMU is over."""
        return self._core.closed_reason

    @property
    def tx_idle_timeout(self) -> float:
        return self._core.tx_idle_timeout

    @property
    def wire_timeout(self) -> float:
        return self._core.wire_timeout

    @property
    def core(self) -> ChannelCore:
        """The state machine behind this channel (read it; feed it only through the channel)."""
        return self._core

    # -- opening -------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        make_log: Callable[[dict[str, Any]], RecordLog],
        *,
        greeting_timeout: float = 10.0,
        **options: Any,
    ) -> Channel:
        """Read QEMU's greeting, start the log with ``make_log(greeting)``, negotiate.

        The greeting and ``qmp_capabilities`` exchange are logged like
        everything else (``qmp_capabilities`` with role ``internal``).
        *options* are :class:`Channel`'s (``tx_idle_timeout``, ``wire_timeout``,
        ``log_wait_timeout``).
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
        channel = cls(reader, writer, log, greeting, decoder=decoder, **options)
        try:
            log.append(Greeting(msg=Msg(greeting)))
            channel._apply(channel._core.receive_messages(leftover, now=time.monotonic()))
            channel._start_reading()
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
        cls, path: str, make_log: Callable[[dict[str, Any]], RecordLog], **kwargs: Any
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
        fd_info: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """Send one command to QEMU when its turn comes; return QEMU's reply.

        *fds* are passed with the command (SCM_RIGHTS), as ``getfd`` and
        ``add-fd`` need; the log gets an ``fd`` record for each, never the fd
        (with *fd_info*'s entry as its ``stat``, see :class:`~qmprr.recording.Fd`).

        *msg* is a command (``execute`` and optional ``arguments``; an ``id``
        in it is ignored, pass the caller's id as *client_id*). The reply
        carries *client_id* as its ``id`` (none when ABSENT). *tx* defaults
        to the transaction opened by :meth:`transaction` in this task.
        A caller cancelled before its command reached the wire withdraws it
        (a ``note`` says so); once on the wire, its reply is still recorded.
        """
        if tx is None:
            tx = _current_tx.get()
            if tx is not None and tx.task is not asyncio.current_task():
                tx = None  # a task started inside the block is not part of it
        token, future = self._new_future()
        if fds:
            self._fds[token] = tuple(fds)
        try:
            self._apply(self._core.ask(
                token, msg, now=time.monotonic(), src=src, role=role, client_id=client_id,
                tx=tx.id if tx is not None else None, fds=len(fds), fd_info=fd_info,
            ))
            reply: dict[str, Any] = await self._wait(token, future)
            return reply
        finally:
            self._fds.pop(token, None)

    def submit(
        self,
        msg: dict[str, Any],
        *,
        done: Callable[[dict[str, Any] | None, ChannelError | None], None],
        src: str = "library",
        role: str = "primary",
        client_id: Any = ABSENT,
        tx: Transaction | None = None,
        fds: Sequence[int] = (),
        fd_info: Sequence[dict[str, Any]] = (),
        body: bytes | None = None,
    ) -> Hashable:
        """:meth:`execute` with a callback: ``done(reply, None)`` or ``done(None, error)``.

        The hot path of the serve loop: no future and no task; *done* is called
        from the callback that read QEMU's reply (or at once, when the command
        is refused). Returns the token :meth:`withdraw` takes. *tx* is explicit
        (no transaction of the current task is looked up). *body*, when the
        caller has it, must be :func:`qmprr.session.command_body` of *msg*: it is
        what is sent (with qmprr's id), so the serve loop does not encode *msg* twice.
        """
        token = next(self._tokens)
        self._callbacks[token] = done
        if not fds and tx is None:  # the wire is free (else None): one command at a time, no effect list
            data = self._core.send_now(token, msg, now=time.monotonic(), src=src, role=role,
                                       client_id=client_id, body=body)
            if data is not None:
                if data:
                    self._write(data, ())
                    self._arm_timer()
                else:
                    self._apply(self._core.take_effects())
                return token
        if fds:
            self._fds[token] = tuple(fds)
        self._apply(self._core.ask(
            token, msg, now=time.monotonic(), src=src, role=role, client_id=client_id,
            tx=tx.id if tx is not None else None, fds=len(fds), fd_info=fd_info, body=body,
        ))
        return token

    def withdraw(self, token: Hashable) -> None:
        """The caller of :meth:`submit` gave up: withdrawn if not yet sent; *done* is not called."""
        if self._callbacks.pop(token, None) is not None:
            self._fds.pop(token, None)
            self._apply(self._core.cancel(token, now=time.monotonic()))

    def when_written(self, callback: Callable[[], None]) -> None:
        """Call *callback* once every write asked so far (fds included) has gone to QEMU, or failed."""
        task = self._write_task
        if task is None or task.done():
            callback()
        else:
            task.add_done_callback(lambda _task: callback())

    def refuse_new_commands(self, reason: str) -> None:
        """From now on, fail every command not yet sent (the one in flight completes)."""
        self._apply(self._core.refuse(reason, now=time.monotonic()))

    def _new_future(self) -> tuple[Hashable, asyncio.Future[Any]]:
        token = next(self._tokens)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        return token, future

    async def _wait(self, token: Hashable, future: asyncio.Future[Any]) -> Any:
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                result = future.result()
                if isinstance(result, Transaction):  # it began as its caller gave up
                    self.abort_transactions_of(result.owner, "its owner gave up")
            else:
                self._apply(self._core.cancel(token, now=time.monotonic()))
            raise
        finally:
            self._futures.pop(token, None)

    # -- transactions --------------------------------------------------------

    async def begin_transaction(
        self, label: str, owner: str, *, role: str = "primary", client_id: Any = ABSENT
    ) -> Transaction:
        """Wait for the channel (FIFO), then hold it for *owner* until ended or aborted.

        *role* and *client_id* describe the asking client in the ``local`` record
        of a refusal.
        """
        token, future = self._new_future()
        self._apply(self._core.begin(token, label, owner, now=time.monotonic(), role=role, client_id=client_id))
        tx: Transaction = await self._wait(token, future)
        return tx

    async def end_transaction(
        self, tx: Transaction, *, role: str = "primary", client_id: Any = ABSENT
    ) -> None:
        """Release the channel, after its commands in flight. Raises :class:`TransactionAborted` if aborted."""
        token, future = self._new_future()
        self._apply(self._core.end(
            token, tx.id, now=time.monotonic(), src=tx.owner, role=role, client_id=client_id))
        await self._wait(token, future)

    def abort_transactions_of(self, owner: str, reason: str) -> None:
        """Abort the transaction *owner* holds, if any (e.g. it disconnected)."""
        self._apply(self._core.abort_owner(owner, reason, now=time.monotonic()))

    def abort_all_transactions(self, reason: str) -> None:
        """Abort whatever transaction holds the channel (e.g. qmprr is stopping)."""
        self._apply(self._core.abort_all(reason, now=time.monotonic()))

    @contextlib.asynccontextmanager
    async def transaction(self, label: str, *, owner: str = "library") -> AsyncIterator[Transaction]:
        """Hold the channel for the commands this task executes inside the block.

        Only commands of the task that entered the block join the transaction
        implicitly; other tasks (even ones started inside the block) wait, or
        pass the transaction explicitly with ``tx.execute(...)``. A transaction
        aborted meanwhile has ended already: leaving the block says nothing more.
        """
        tx = await self.begin_transaction(label, owner)
        tx.task = asyncio.current_task()
        token = _current_tx.set(tx)
        try:
            yield tx
        finally:
            _current_tx.reset(token)
            if not tx.ended and self.closed_reason is None:
                with contextlib.suppress(TransactionAborted):
                    await self.end_transaction(tx)

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
        """Append *record* to the log; None once the log has ended with ``close``.

        A record that cannot be written is counted and reported in the ``note``
        written when the log works again (None is returned); it pauses the channel.
        """
        written = self._core.record(record, now=time.monotonic())
        self._apply(self._core.take_effects())
        return written

    def note(self, text: str, data: dict[str, Any] | None = None) -> None:
        """Append a ``note`` record."""
        self.record(Note(text=text, data=Msg(data) if data is not None else None))

    # -- the driver: effects, bytes, the clock ---------------------------------

    def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Write):
                self._write(effect.data, self._fds.pop(effect.token, ()) if effect.fds else ())
            elif isinstance(effect, Answer):
                self._answer(effect.token, effect.reply, effect.error)
            elif isinstance(effect, Fanout):
                for sub in list(self._subscribers):
                    sub.offer(effect.msg)
            elif isinstance(effect, Began):
                tx = Transaction(id=effect.tx, label=effect.label, owner=effect.owner, channel=self)
                self._txs[tx.id] = tx
                future = self._futures.get(effect.token)
                if future is not None and not future.done():
                    future.set_result(tx)
                else:  # its caller is gone: nobody will end it
                    self._apply(self._core.abort_owner(tx.owner, "its owner gave up", now=time.monotonic()))
            elif isinstance(effect, TxEnded):
                ended = self._txs.pop(effect.tx, None)
                if ended is not None:
                    ended.ended = True
                    if effect.action == "abort":
                        ended.abort_reason = effect.reason
            elif isinstance(effect, Closed):
                self._on_closed()
        self._arm_timer()

    def _answer(self, token: Hashable, reply: dict[str, Any] | None, error: ChannelError | None) -> None:
        """Give the caller of *token* (a callback of :meth:`submit`, or a future) its reply or error."""
        done = self._callbacks.pop(token, None)
        if done is not None:
            if self._fds:
                self._fds.pop(token, None)
            done(reply, error)
            return
        future = self._futures.get(token)
        if future is not None and not future.done():
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(reply)

    def _write(self, data: bytes, fds: Sequence[int]) -> None:
        """Every write goes through here, so bytes reach QEMU in the order they are given."""
        if not fds and not self._pending_writes and (self._write_task is None or self._write_task.done()):
            self._transport.write(data)
            return
        self._pending_writes.append((data, fds))
        if self._write_task is None or self._write_task.done():
            self._write_task = asyncio.get_running_loop().create_task(self._write_loop(), name="qmprr-fds")

    async def _write_loop(self) -> None:
        while self._pending_writes:
            data, fds = self._pending_writes.popleft()
            try:
                if fds:
                    await self._send_with_fds(data, fds)
                else:
                    self._transport.write(data)
            except (ConnectionResetError, BrokenPipeError):
                self._shutdown("eof", "QEMU closed the monitor connection")
            except (OSError, ChannelError) as exc:
                self._shutdown("error", f"write to QEMU failed: {exc}")

    async def _drained(self) -> None:
        upstream = self._upstream
        if upstream is not None:
            await upstream.drained()
        else:
            await self._writer.drain()

    async def _send_with_fds(self, data: bytes, fds: Sequence[int]) -> None:
        """Write *data* with *fds* attached, once everything before it has left the transport.

        The socket is shared with the transport, so it stays non-blocking: a full
        send buffer is waited for, never spun on, and the rest of a partial send
        follows through the (empty) transport, still in order.
        """
        while self._transport.get_write_buffer_size():
            await self._drained()  # returns once the buffer is empty (no high-water mark)
            if self._transport.get_write_buffer_size():
                await asyncio.sleep(0.001)  # a transport that ignored the limits: wait for it
        raw = self._transport.get_extra_info("socket")
        if raw is None:
            raise ChannelError("this connection to QEMU cannot pass file descriptors")
        loop = asyncio.get_running_loop()
        with socket.socket(fileno=os.dup(raw.fileno())) as sock:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            while True:
                try:
                    sent = sock.sendmsg([data], ancillary)
                    break
                except (BlockingIOError, InterruptedError):
                    writable: asyncio.Future[None] = loop.create_future()
                    loop.add_writer(sock.fileno(), _set_once, writable)
                    try:
                        await writable
                    finally:
                        loop.remove_writer(sock.fileno())
        if sent < len(data):
            self._transport.write(data[sent:])

    def _arm_timer(self) -> None:
        """Have :meth:`_on_timer` run by the core's next deadline.

        A timer already set to fire no later is kept (firing early ticks
        nothing and sets the next one), so the one-command-at-a-time rhythm
        does not cancel and set a timer per command.
        """
        at = self._core.next_deadline()
        if at is None or (self._timer_at is not None and self._timer_at <= at):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, at
        if at is not None:
            delay = max(0.0, at - time.monotonic()) + 0.001
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        self._apply(self._core.tick(time.monotonic()))

    def _start_reading(self) -> None:
        """From now on QEMU's bytes go straight from the transport to the core (:class:`_Upstream`).

        The stream reader that read the greeting steps aside: what it still
        holds is fed first, then its transport calls our protocol.
        """
        upstream = self._upstream = _Upstream(self)
        self._transport.set_protocol(upstream)
        buffered = bytes(getattr(self._reader, "_buffer", b""))  # read past the greeting, not yet consumed
        if buffered:
            upstream.data_received(buffered)
        if self._reader.at_eof() or self._transport.is_closing():
            upstream.connection_lost(self._reader.exception())
            return
        with contextlib.suppress(Exception):
            self._transport.resume_reading()  # type: ignore[attr-defined]  # a socket transport; the stream reader may have paused it

    def _shutdown(self, reason: str, detail: str) -> None:
        self._apply(self._core.eof(reason, detail, now=time.monotonic()))

    def _on_closed(self) -> None:
        for future in self._futures.values():  # the core answered everyone; this is a safety net
            if not future.done():
                future.set_exception(ChannelClosed(f"the connection to QEMU is closed ({self.closed_reason})"))
        callbacks, self._callbacks = self._callbacks, {}
        for done in callbacks.values():
            done(None, ChannelClosed(f"the connection to QEMU is closed ({self.closed_reason})"))
        for sub in list(self._subscribers):
            sub.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with contextlib.suppress(Exception):
            self._writer.close()
        self.closed.set()

    async def close(self) -> None:
        """Close the connection to QEMU (logged as ``close`` ``stopped``) and wait for it."""
        self._shutdown("stopped", "qmprr closed the connection")
        if self._write_task is not None and not self._write_task.done():
            self._write_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._write_task

    async def wait_closed(self) -> None:
        """Wait until the connection to QEMU has ended."""
        await self.closed.wait()


class _Upstream(WriteFlow, asyncio.Protocol):
    """QEMU's side of the channel: bytes go to the core from ``data_received``, no task hop.

    A reply is decoded, recorded and handed to its caller (a future, or the
    serve loop's callback, which writes it to the client) within the callback
    that read it.
    """

    def __init__(self, channel: Channel) -> None:
        WriteFlow.__init__(self)
        self.channel = channel

    def data_received(self, data: bytes) -> None:
        channel = self.channel
        answered = channel._core.receive_reply(data, now=time.monotonic())
        if answered is None:
            channel._apply(channel._core.take_effects())
        else:  # the reply to the command in flight, alone: no effect list
            channel._answer(*answered)
            channel._arm_timer()

    def eof_received(self) -> bool:
        self.channel._shutdown("eof", "QEMU closed the monitor connection")
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if exc is None:
            self.channel._shutdown("eof", "QEMU closed the monitor connection")
        elif isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            self.channel._shutdown("eof", "QEMU closed the monitor connection (reset)")
        else:
            self.channel._shutdown("error", f"reading from QEMU failed: {exc}")
        self.resume_writing()

    async def drained(self) -> None:
        """Return once the transport's buffer has drained (or the connection is gone)."""
        if not self.channel._transport.is_closing():
            await self.wait_drained()
