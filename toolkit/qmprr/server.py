"""QMP endpoint for clients: UNIX sockets in front of a :class:`Backend`.

One serve loop for every client, whatever answers its commands: the proxy's
backend is the :class:`~qmprr.channel.Channel` to QEMU, the fake's a recording
(:mod:`qmprr.fake`). Each client gets QEMU's greeting (its real version; no
``oob`` capability, since every command is serialized), negotiates with
``qmp_capabilities`` (answered here), and then talks QMP as if to QEMU;
:mod:`qmprr.session` decides what each message is, this module does the I/O
and records every answer it gives itself (a ``local`` record). Sockets are
created with mode 0600. Clients on the debug socket have role ``debug``:
their commands pass the policy, and the first one taints the recording.

Each client is bounded (:class:`Limits`): bytes queued to it (a client that
does not read is disconnected, with a ``client`` record saying why), the size
of one message (a partial message is never held past it; debug clients get a
much smaller limit), and the number of clients per socket. A burst of errors
answered locally (garbage, refusals) is recorded once, then counted in a
``note``, so a client cannot multiply the log. When a client leaves, its
commands still waiting for the wire are withdrawn (never sent), unless it
sent ``qmprr-detach``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs

from . import address, wire
from .errors import QmprrError
from .recording import Client, Local, Msg, Record, Taint
from .session import (
    Answer,
    BeginTx,
    ClientSession,
    Detach,
    EndTx,
    Forward,
    Policy,
    client_greeting,
    qmp_error,
    qmp_return,
)

MiB = 1024 * 1024
#: Bytes of output queued to one client past which it is disconnected.
DEFAULT_OUTPUT_BUDGET = 8 * MiB
#: Clients connected at once on one socket.
DEFAULT_MAX_CLIENTS = 64
#: Largest message from a primary client (and so the largest partial message held).
DEFAULT_MAX_MESSAGE = 8 * MiB
#: Largest message from a debug client: QEMU parses big arguments at seconds per
#: MiB, and the wire is everyone's meanwhile.
DEFAULT_DEBUG_MAX_MESSAGE = 16 * 1024
#: In a long burst of local errors, a ``note`` with the count every this many.
BURST_NOTE_EVERY = 10_000
#: Bytes read from a client at a time (and the StreamReader's buffer limit).
READ_CHUNK = 64 * 1024


class SocketPathError(QmprrError):
    """A socket path cannot be used (taken by a live server, or not a socket)."""


def check_socket_path(path: str) -> None:
    """Raise :class:`SocketPathError` unless a server can be created at *path*.

    A stale socket file (nobody listening) is removed; a live one, a file that
    is not a socket, or a missing folder is an error.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SocketPathError(f"{path}: folder {folder} does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathError(f"{path}: exists and is not a socket; choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # stale: its server is gone
    else:
        raise SocketPathError(f"{path}: another program is listening on this socket")
    finally:
        probe.close()


def bind_unix(path: str) -> socket.socket:
    """A listening UNIX socket at *path* with mode 0600 (see :func:`check_socket_path`)."""
    check_socket_path(path)
    # Bind under a temporary name and rename once listening, so the path never
    # exists without a listener behind it (a client polling for it can connect).
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temporary = f"{path}.{os.getpid()}.tmp"
    old_umask = os.umask(0o177)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        sock.bind(temporary)
        os.chmod(temporary, 0o600)
        sock.listen(16)
        os.rename(temporary, path)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise SocketPathError(f"{path}: cannot create socket: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    return sock


def bind_listener(path: str, *, listen_any: bool = False) -> socket.socket:
    """A listening socket: a UNIX path (:func:`bind_unix`), or ``tcp:HOST:PORT``, loopback unless *listen_any*."""
    where = address.parse(path)
    if isinstance(where, address.TcpAddress):
        return address.bind_tcp(where, listen_any=listen_any)
    return bind_unix(path)


def describe_peer(sock: socket.socket | None) -> str | None:
    """``pid N uid N (command)`` of a UNIX socket peer, when the kernel tells; ``tcp HOST:PORT`` of a TCP one."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            host, port = sock.getpeername()[:2]
            return f"tcp {host}:{port}"
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, _gid = struct.unpack("3i", creds)
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        comm = "?"
    return f"pid {pid} uid {uid} ({comm})"


@attrs.frozen
class Limits:
    """What one client may cost (see the module docstring); options of ``launch``/``proxy``."""

    output_budget: int = DEFAULT_OUTPUT_BUDGET
    max_clients: int = DEFAULT_MAX_CLIENTS
    max_message: int = DEFAULT_MAX_MESSAGE
    debug_max_message: int = DEFAULT_DEBUG_MAX_MESSAGE

    def max_message_for(self, role: str) -> int:
        return self.debug_max_message if role == "debug" else self.max_message


class Backend(Protocol):
    """What answers the commands the serve loop forwards: the channel, or a recording.

    :class:`~qmprr.channel.Channel` is one as it is. A backend may also have
    ``after_reply()``, called right after each forwarded reply is written (the
    fake sends the events recorded after a reply there).
    """

    greeting: dict[str, Any]

    @property
    def closed_reason(self) -> str | None: ...

    def record(self, record: Record) -> object: ...

    def note(self, text: str, data: dict[str, Any] | None = None) -> None: ...

    async def execute(
        self, msg: dict[str, Any], *, src: str, role: str, client_id: Any, tx: Any
    ) -> dict[str, Any]: ...

    async def begin_transaction(self, label: str, owner: str, *, role: str, client_id: Any) -> Any: ...

    async def end_transaction(self, tx: Any, *, role: str, client_id: Any) -> None: ...

    def abort_transactions_of(self, owner: str, reason: str) -> None: ...

    def subscribe(self, name: str, *, deliver: Callable[[dict[str, Any]], bool]) -> Any: ...

    async def wait_closed(self) -> None: ...


class _Outbox:
    """Messages to one client, written straight to its transport, in order.

    Past *budget* bytes waiting in the transport the client is over budget:
    nothing more is written and the serve loop disconnects it. Events are
    dropped (counted by the subscription) past half the budget, so a slow
    reader loses events before it is cut off.
    """

    def __init__(self, writer: asyncio.StreamWriter, budget: int, over: Callable[[str], None]) -> None:
        self._writer = writer
        self._transport = writer.transport
        self.budget = budget
        self._over = over
        self.overrun = False

    def _write(self, msg: dict[str, Any]) -> None:
        self._transport.write(wire.encode(msg))
        queued = self._transport.get_write_buffer_size()
        if queued > self.budget and not self.overrun:
            self.overrun = True
            self._over(
                f"it does not read its output: {queued} bytes queued, over the budget of"
                f" {self.budget} (--client-output-budget)"
            )

    def send(self, msg: dict[str, Any]) -> None:
        if not self._transport.is_closing() and not self.overrun:
            self._write(msg)

    def offer_event(self, msg: dict[str, Any]) -> bool:
        if self._transport.is_closing() or self.overrun:
            return True  # the client is leaving; nothing is lost but its copy
        if self._transport.get_write_buffer_size() > self.budget // 2:
            return False
        self._write(msg)
        return True

    async def close(self) -> None:
        """Write what is buffered (briefly; not for a client over budget), then close."""
        if self.overrun:
            self._transport.abort()
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.drain(), 2.0)
        with contextlib.suppress(Exception):
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)


class _Burst:
    """Consecutive errors answered locally: the first is recorded in full, the rest counted."""

    def __init__(self, every: int = BURST_NOTE_EVERY) -> None:
        self.every = every
        self.counted = 0
        self.kinds: collections.Counter[str] = collections.Counter()
        self.active = False

    def error(self, desc: str) -> bool:
        """Count one error; True when it is the first of a burst (record it in full)."""
        if not self.active:
            self.active = True
            return True
        self.counted += 1
        if desc in self.kinds or len(self.kinds) < 10:
            self.kinds[desc] += 1
        return False

    def take(self) -> tuple[int, dict[str, int]] | None:
        """The errors counted but not recorded (if any); the burst goes on."""
        if not self.counted:
            return None
        out = (self.counted, dict(self.kinds))
        self.counted = 0
        self.kinds.clear()
        return out

    def end(self) -> tuple[int, dict[str, int]] | None:
        self.active = False
        return self.take()


class _Socket:
    """One listening socket: its role and the clients connected to it."""

    def __init__(self, path: str, role: str) -> None:
        self.path = path
        self.role = role
        self.clients = 0
        self.refusals = _Burst()

    def left(self) -> None:
        """One of its clients went away."""
        self.clients -= 1


class QmpServer:
    """Serves QMP clients on UNIX sockets, all through one backend (see :class:`Backend`)."""

    def __init__(
        self,
        backend: Backend,
        *,
        policy: Policy | None = None,
        limits: Limits | None = None,
        max_message: int | None = None,
    ) -> None:
        self.backend = backend
        self.policy = policy or Policy()
        if max_message is not None:  # one limit for both roles (tests, library use)
            limits = attrs.evolve(limits or Limits(), max_message=max_message, debug_max_message=max_message)
        self.limits = limits or Limits()
        self._servers: list[tuple[asyncio.AbstractServer, str | None]] = []  # with its UNIX path
        self._names: collections.defaultdict[str, itertools.count[int]] = collections.defaultdict(
            lambda: itertools.count(1)
        )
        self._tainted = False
        self._connections: set[asyncio.Task[None]] = set()
        self._clients: set[_Connection] = set()
        self._sockets: list[_Socket] = []
        self.tx_of: dict[str, Any] = {}
        self._watcher: asyncio.Task[None] | None = None

    @property
    def channel(self) -> Backend:
        """The backend (the proxy's channel), under its old name."""
        return self.backend

    async def listen(self, path: str, role: str = "primary", *, listen_any: bool = False) -> None:
        """Accept clients with *role* on a new UNIX socket at *path* (mode 0600), or ``tcp:HOST:PORT``.

        TCP is unauthenticated: loopback only unless *listen_any* (see :mod:`qmprr.address`).
        """
        sock = bind_listener(path, listen_any=listen_any)
        unix = sock.family == socket.AF_UNIX
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._disconnect_all_when_closed())
        where = _Socket(path, role)
        self._sockets.append(where)

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not self.admit(where, writer.transport.write, lambda: describe_peer(writer.get_extra_info("socket"))):
                with contextlib.suppress(Exception):
                    writer.close()
                return
            try:
                await self.serve(reader, writer, role)
            finally:
                where.left()

        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.StreamReaderProtocol:
            return asyncio.StreamReaderProtocol(_WatchedReader(limit=READ_CHUNK), accept)

        if unix:
            server = await loop.create_unix_server(protocol, sock=sock)
        else:
            server = await loop.create_server(protocol, sock=sock)
        self._servers.append((server, path if unix else None))

    def add_socket(self, label: str, role: str) -> _Socket:
        """A listening socket served from elsewhere (an inherited fd): counted and capped like ours."""
        where = _Socket(label, role)
        self._sockets.append(where)
        return where

    def admit(self, where: _Socket, send: Callable[[bytes], Any], peer: Callable[[], str | None]) -> bool:
        """Count a new client of *where*; over the cap, refuse it (an error through *send*, a record)."""
        if where.clients >= self.limits.max_clients:
            self._refuse(where, send, peer)
            return False
        self._note_refusals(where)
        where.clients += 1
        return True

    def _refuse(self, where: _Socket, send: Callable[[bytes], Any], peer: Callable[[], str | None]) -> None:
        """A connection over the cap: a QMP error instead of a greeting (the caller closes it)."""
        desc = (
            f"qmprr: too many clients on this socket ({self.limits.max_clients}, the limit;"
            " see --max-clients): try again later"
        )
        with contextlib.suppress(Exception):
            send(wire.encode(qmp_error(desc)))
        if where.refusals.error(desc):
            name = f"{where.role}-{next(self._names[where.role])}"
            self._record(Client(action="refuse", name=name, role=where.role, peer=peer(), reason=desc))  # type: ignore[arg-type]  # role strings are the sockets'; Record.role names the known ones
        elif where.refusals.counted >= where.refusals.every:
            self._note_refusals(where, ending=False)

    def _note_refusals(self, where: _Socket, ending: bool = True) -> None:
        taken = where.refusals.end() if ending else where.refusals.take()
        if taken is not None:
            self._note(
                f"refused {taken[0]} more connection(s) on {where.path}: over the limit of"
                f" {self.limits.max_clients} clients",
                {"socket": where.path, "refused": taken[0]},
            )

    async def close(self) -> None:
        """Stop accepting, disconnect every client, remove the socket files."""
        for server, path in self._servers:
            server.close()
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        if self._watcher is not None:
            self._watcher.cancel()
        for where in self._sockets:
            self._note_refusals(where)
        for conn in list(self._clients):
            conn.stop()  # each connection finishes what it is doing and cleans up
        if self._connections:
            _, pending = await asyncio.wait(list(self._connections), timeout=5.0)
            for task in pending:
                task.cancel()
        self._servers.clear()

    async def _disconnect_all_when_closed(self) -> None:
        """When the backend is gone, stop every client; each flushes what it owes."""
        await self.backend.wait_closed()
        for conn in list(self._clients):
            conn.stop()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str = "primary") -> None:
        """Serve one client connection until it, or the backend, goes."""
        task = asyncio.current_task()
        assert task is not None
        name = f"{role}-{next(self._names[role])}"
        conn = _Connection(self, reader, writer, role, name)
        self._connections.add(task)
        self._clients.add(conn)
        try:
            await conn.run()
        except asyncio.CancelledError:
            pass  # server closing; run() has logged the disconnect
        finally:
            self._clients.discard(conn)
            self._connections.discard(task)

    # -- recording: a log that cannot be written must not stop serving ---------

    def _record(self, record: Record) -> None:
        with contextlib.suppress(QmprrError, OSError):
            self.backend.record(record)

    def _note(self, text: str, data: dict[str, Any] | None = None) -> None:
        with contextlib.suppress(QmprrError, OSError):
            self.backend.note(text, data)

    def taint(self, name: str) -> None:
        if not self._tainted:
            self._tainted = True
            self.backend.record(Taint(reason="custom-monitor", client=name))


class _WatchedReader(asyncio.StreamReader):
    """A StreamReader that says when the client's side ends, even while nobody reads."""

    on_end: Callable[[], None] | None = None

    def feed_eof(self) -> None:
        super().feed_eof()
        if self.on_end is not None:
            self.on_end()

    def set_exception(self, exc: Exception) -> None:
        super().set_exception(exc)
        if self.on_end is not None:
            self.on_end()


class _Connection:
    """One client: reads, answers each item in turn, and withdraws what waits when it leaves.

    The client leaving is seen at once when its reader is a :class:`_WatchedReader`
    (the sockets :meth:`QmpServer.listen` serves); with another reader, at the next read.
    """

    def __init__(
        self, server: QmpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str, name: str
    ) -> None:
        self.server = server
        self.backend = server.backend
        self.reader = reader
        self.role = role
        self.name = name
        self.peer = describe_peer(writer.get_extra_info("socket"))
        self.gone = False  # the client left (or must go): withdraw what waits
        self.stopping = False  # the server or backend is closing: finish the item at hand, then stop
        self.reason: str | None = None  # why qmprr disconnected it
        self.detached = False  # qmprr-detach: its commands outlive its connection
        self.withdrawn = 0
        self.burst = _Burst()
        self.decoder = wire.StreamDecoder(server.limits.max_message_for(role))
        self.outbox = _Outbox(writer, server.limits.output_budget, self._left)
        self.greeting = client_greeting(self.backend.greeting)
        self.session = ClientSession(self.greeting, role=role, policy=server.policy)
        self.subscription: Any = None
        self._task: asyncio.Task[Any] | None = None
        self._in_command = False
        self._withdrawing = False

    async def run(self) -> None:
        self._task = asyncio.current_task()
        if isinstance(self.reader, _WatchedReader):
            self.reader.on_end = self._left
        self.server._record(Client(action="connect", name=self.name, role=self.role, peer=self.peer))  # type: ignore[arg-type]  # role strings are the sockets'; Record.role names the known ones
        self.outbox.send(self.greeting)
        try:
            while not self._done():
                try:
                    data = await self.reader.read(READ_CHUNK)
                except (ConnectionError, OSError):
                    break
                if not data:
                    break
                items = self.decoder.feed(data)
                for index, item in enumerate(items):
                    if self._done():
                        if self.gone:
                            self.withdrawn += _commands_in(items[index:])
                        break
                    await self._handle(item)
        finally:
            if isinstance(self.reader, _WatchedReader):
                self.reader.on_end = None
            self._finish_burst()
            if self.subscription is not None:
                self.subscription.close()
            tx = self.server.tx_of.get(self.name)
            if tx is not None and not tx.ended:
                with contextlib.suppress(QmprrError):
                    self.backend.abort_transactions_of(self.name, "its owner disconnected")
            if self.withdrawn:
                self.server._note(
                    f"{self.name} disconnected: withdrew {self.withdrawn} more command(s) it had sent,"
                    " never passed on to QEMU",
                    {"client": self.name, "withdrawn": self.withdrawn},
                )
            self.server._record(
                Client(action="disconnect", name=self.name, role=self.role, peer=self.peer, reason=self.reason)  # type: ignore[arg-type]  # role strings are the sockets'; Record.role names the known ones
            )
            await self.outbox.close()

    def _done(self) -> bool:
        return self.gone or self.stopping or self.outbox.overrun or self.backend.closed_reason is not None

    def _wake(self) -> None:
        """End a read in progress (the loop then sees why it must stop)."""
        asyncio.StreamReader.feed_eof(self.reader)  # not the watched hook: this is no client EOF

    def _left(self, reason: str | None = None) -> None:
        """The client is gone (or must go): withdraw the command it waits for, unless detached."""
        if reason is not None and self.reason is None:
            self.reason = reason
        if self.gone:
            return
        self.gone = True
        if self._in_command:
            if not self.detached and self._task is not None:
                self._withdrawing = True
                self._task.cancel()
        else:
            self._wake()

    def stop(self) -> None:
        """The server or backend is closing: finish the command at hand, then end."""
        self.stopping = True
        if not self._in_command:
            self._wake()

    async def _run_command(self, coro: Awaitable[dict[str, Any]]) -> dict[str, Any] | None:
        """Run a command for the client; None when it was withdrawn because the client left.

        A command still waiting for the wire is then never sent; one already
        sent completes (the channel holds the wire for its reply). When the
        server stops meanwhile, the command is let finish (the backend fails it
        if it is closing) and its answer sent; after ``qmprr-detach`` it runs
        to its end, its reply to the log only.
        """
        self._in_command = True
        try:
            return await coro
        except asyncio.CancelledError:
            if self._withdrawing:
                self._withdrawing = False
                task = asyncio.current_task()
                if task is not None and task.uncancel() == 0:
                    return None  # the channel notes the withdrawal (it alone knows it was not sent)
            raise
        finally:
            self._in_command = False

    # -- one item ----------------------------------------------------------------

    async def _handle(self, item: dict[str, Any] | wire.FramingError) -> None:
        action = self.session.handle(item)
        if isinstance(action, Answer):
            answer = action.reply
            if isinstance(item, wire.MessageTooLarge) and self.role == "debug":
                answer = qmp_error(
                    f"{item.desc} (qmprr accepts at most {self.decoder.max_message} bytes per message"
                    " from debug clients; see --debug-max-message)"
                )
            self._answer(answer, action.msg, action.input)
            if self.subscription is None and self.session.negotiated:
                self.subscription = self.backend.subscribe(self.name, deliver=self.outbox.offer_event)
        elif isinstance(action, Detach):
            self.detached = True
            self._answer(qmp_return(id=action.client_id), action.msg)  # kept for the rest of the connection
        elif isinstance(action, Forward):
            self._finish_burst()
            reply = await self._run_command(self._forward(action))
            if reply is not None:
                self.outbox.send(reply)
                after = getattr(self.backend, "after_reply", None)
                if after is not None:
                    after()
        elif isinstance(action, BeginTx):
            reply = await self._run_command(self._begin(action))
            if reply is not None:
                self.outbox.send(reply)
        elif isinstance(action, EndTx):
            reply = await self._run_command(self._end(action))
            if reply is not None:
                self.outbox.send(reply)

    def _answer(self, reply: dict[str, Any], msg: dict[str, Any] | None = None, raw: bytes | None = None) -> None:
        """Send a reply qmprr gives itself; record it (an error burst: the first, then a count)."""
        error = reply.get("error")
        if not isinstance(error, dict):
            self._finish_burst()
            self._record_local(reply, msg, raw)
        elif self.burst.error(str(error.get("desc"))):
            self._record_local(reply, msg, raw)
        elif self.burst.counted >= self.burst.every:
            self._note_burst(self.burst.take())
        self.outbox.send(reply)

    def _record_local(self, reply: dict[str, Any], msg: dict[str, Any] | None, raw: bytes | None) -> None:
        self.server._record(
            Local(
                src=self.name,
                role=self.role,  # type: ignore[arg-type]  # role strings are the sockets'; Record.role names the known ones
                msg=Msg(msg) if msg is not None else None,
                input=raw.decode("utf-8", "backslashreplace") if raw is not None else None,
                reply=Msg(reply),
            )
        )

    def _finish_burst(self) -> None:
        self._note_burst(self.burst.end())

    def _note_burst(self, taken: tuple[int, dict[str, int]] | None) -> None:
        if taken is not None:
            count, kinds = taken
            self.server._note(
                f"{self.name}: {count} more error(s) answered locally in the same burst, not recorded one by one",
                {"client": self.name, "count": count, "errors": kinds},
            )

    def _refused(self, error: QmprrError, action: Forward | BeginTx | EndTx) -> dict[str, Any]:
        """The error for a command qmprr could not run, recorded as a local answer.

        Unless the backend recorded it already (the channel records the refusals
        it makes: ``error.recorded``).
        """
        reply = qmp_error(str(error), id=action.client_id)
        self._finish_burst()
        if not getattr(error, "recorded", False):
            self._record_local(reply, action.msg, None)
        return reply

    async def _forward(self, action: Forward) -> dict[str, Any]:
        try:
            if self.role == "debug":
                self.server.taint(self.name)  # before its first command, or not at all
            return await self.backend.execute(
                action.msg, src=self.name, role=self.role, client_id=action.client_id,
                tx=self.server.tx_of.get(self.name),
            )
        except QmprrError as exc:  # the channel's errors, and a log that cannot be written
            return self._refused(exc, action)

    async def _begin(self, action: BeginTx) -> dict[str, Any]:
        held = self.server.tx_of.get(self.name)
        if held is not None and not held.ended:
            return self._refused(QmprrError(f"{self.name} already holds transaction {held.id}"), action)
        try:
            tx = await self.backend.begin_transaction(
                action.label, owner=self.name, role=self.role, client_id=action.client_id
            )
        except QmprrError as exc:
            return self._refused(exc, action)
        self.server.tx_of[self.name] = tx
        return qmp_return({"tx": tx.id}, id=action.client_id)

    async def _end(self, action: EndTx) -> dict[str, Any]:
        tx = self.server.tx_of.pop(self.name, None)
        if tx is None:
            return self._refused(
                QmprrError("no transaction is open for this client (it may have been aborted; see the log)"), action
            )
        try:
            await self.backend.end_transaction(tx, role=self.role, client_id=action.client_id)
        except QmprrError as exc:
            return self._refused(exc, action)
        return qmp_return({"tx": tx.id}, id=action.client_id)


def _commands_in(items: list[dict[str, Any] | wire.FramingError]) -> int:
    """Commands among decoded items (what a leaving client's unread input would have run)."""
    return sum(1 for i in items if isinstance(i, dict) and isinstance(i.get("execute"), str))
