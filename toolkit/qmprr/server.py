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
from collections.abc import Callable, Coroutine
import typing
from typing import Any, Protocol

import attrs

from . import address, wire
from .errors import QmprrError
from .fdpass import READ_FDS, FdQueue, claim_fds
from .flow import WriteFlow
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
#: Bytes of a client's input decoded at a time (and read with recvmsg from an fd-passing client).
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
    creds = address.peer_credentials(sock)
    if creds is None:
        return None
    pid, uid = creds
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
    fake sends the events recorded after a reply there), and the callback
    pair ``submit(msg, ..., done=callback) -> token`` / ``withdraw(token)``
    (the channel's hot path: no task per command), used instead of ``execute``.
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


#: :attr:`_Connection._token` while ``submit`` runs (an answer given at once clears it).
_SUBMITTING = object()


class _Outbox:
    """Messages to one client, written straight to its transport, in order.

    Past *budget* bytes waiting in the transport the client is over budget:
    nothing more is written and the serve loop disconnects it. Events are
    dropped (counted by the subscription) past half the budget, so a slow
    reader loses events before it is cut off.
    """

    def __init__(self, transport: asyncio.WriteTransport, protocol: _ClientProtocol, budget: int,
                 over: Callable[[str], None]) -> None:
        self._transport = transport
        self._protocol = protocol
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
            await asyncio.wait_for(self._protocol.drained(), 2.0)
        with contextlib.suppress(Exception):
            self._transport.close()
            await asyncio.wait_for(asyncio.shield(self._protocol.lost), 2.0)


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
        self._clients: set[_Connection] = set()
        self._accepting: set[asyncio.Task[None]] = set()
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
        await self.serve_listener(sock, role, label=path, unlink=path if unix else None)

    async def serve_listener(self, sock: socket.socket, role: str = "primary", *, label: str,
                             pass_fds: bool = False, unlink: str | None = None) -> None:
        """Accept clients with *role* on the listening *sock* (ours, or inherited: ``--socket-fd``).

        *label* names it in notes; *unlink* is a socket file to remove on :meth:`close`.

        With *pass_fds* each client is read with ``recvmsg``, so the fds it
        sends with a command go to QEMU with that command (:mod:`qmprr.fdpass`).
        """
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._disconnect_all_when_closed())
        where = _Socket(label, role)
        self._sockets.append(where)
        loop = asyncio.get_running_loop()
        if pass_fds:
            sock.setblocking(False)
            task = asyncio.create_task(self._accept_passing_fds(sock, where), name="qmprr-fd-accept")
            self._accepting.add(task)
            return
        if sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(lambda: _ClientProtocol(self, where), sock=sock)
        else:  # tcp:HOST:PORT (qmprr.address)
            server = await loop.create_server(lambda: _ClientProtocol(self, where), sock=sock)
        self._servers.append((server, unlink))

    async def _accept_passing_fds(self, sock: socket.socket, where: _Socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                conn, _ = await loop.sock_accept(sock)
                with contextlib.suppress(OSError):
                    await loop.connect_accepted_socket(lambda: _ClientProtocol(self, where, pass_fds=True), conn)
        finally:
            sock.close()

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
        for task in self._accepting:
            task.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        for where in self._sockets:
            self._note_refusals(where)
        for conn in list(self._clients):
            conn.stop()  # each connection finishes what it is doing and cleans up
        finished = [conn.finished for conn in self._clients]
        if finished:
            await asyncio.wait(finished, timeout=5.0)
        self._servers.clear()

    async def _disconnect_all_when_closed(self) -> None:
        """When the backend is gone, stop every client; each flushes what it owes."""
        await self.backend.wait_closed()
        for conn in list(self._clients):
            conn.stop()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str = "primary") -> None:
        """Serve one client connection (opened as streams) until it, or the backend, goes.

        The streams step aside: the connection's transport is given the serve
        loop's protocol, as for the clients of :meth:`listen`.
        """
        protocol = _ClientProtocol(self, None, role)
        transport = writer.transport
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        buffered = bytes(getattr(reader, "_buffer", b""))
        if buffered:
            protocol.data_received(buffered)
        if reader.at_eof():
            protocol.eof_received()
        with contextlib.suppress(Exception):
            transport.resume_reading()  # type: ignore[attr-defined]  # the stream reader may have paused it
        conn = protocol.conn
        if conn is not None:
            try:
                await asyncio.shield(conn.finished)
            except asyncio.CancelledError:
                conn.stop()
                raise

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


class _ClientProtocol(WriteFlow, asyncio.Protocol):
    """One client's socket: bytes go to its :class:`_Connection` from ``data_received``.

    *where* counts the client against its socket's cap (None: served from
    elsewhere, :meth:`QmpServer.serve`). With *pass_fds* the socket is read
    with ``recvmsg`` (the transport only writes), so fds sent with a command
    are kept for it.
    """

    def __init__(self, server: QmpServer, where: _Socket | None, role: str | None = None, *,
                 pass_fds: bool = False) -> None:
        self.server = server
        self.where = where
        self.role = role if role is not None else where.role if where is not None else "primary"
        self.pass_fds = pass_fds
        self.conn: _Connection | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        WriteFlow.__init__(self)
        self._fd_reader: _FdReader | None = None
        self._early: list[bytes] = []

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, base)  # a stream transport (uvloop's are no subclasses)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        where = self.where
        if where is not None and not self.server.admit(where, transport.write, lambda: describe_peer(sock)):
            transport.close()
            return
        with contextlib.suppress(Exception):
            transport.set_write_buffer_limits(high=0)  # pause_writing says when anything waits
        if self.pass_fds:
            # uvloop starts reading after connection_made whatever it is told there: stop it
            # in the next callback, before the greeting (a client sends nothing before it).
            asyncio.get_running_loop().call_soon(self._start_passing_fds, sock)
            return
        self.conn = _Connection(self.server, self, transport, self.role)
        self.conn.start()

    def _start_passing_fds(self, sock: socket.socket) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            self._admitted_left()
            return
        transport.pause_reading()
        fds = FdQueue()
        self._fd_reader = _FdReader(sock, self, fds)
        self.conn = _Connection(self.server, self, transport, self.role, fds)
        self.conn.start()
        early, self._early = self._early, []
        for data in early:  # what the transport read before it was stopped (sent before the greeting)
            self.conn.received(data)
        self._fd_reader.resume()

    def _admitted_left(self) -> None:
        if self.where is not None:
            self.where.left()

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.received(data)
        elif self.pass_fds:
            self._early.append(data)

    def eof_received(self) -> bool:
        if self.conn is not None:
            self.conn.left()
        return True  # the connection closes once its replies are written

    def connection_lost(self, exc: Exception | None) -> None:
        if self._fd_reader is not None:
            self._fd_reader.close()
        if not self.lost.done():
            self.lost.set_result(None)
        self.resume_writing()
        if self.conn is not None:
            self.conn.left()

    def pause_reading(self) -> None:
        if self._fd_reader is not None:
            self._fd_reader.pause()
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._fd_reader is not None:
            self._fd_reader.resume()
        elif self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self.transport.resume_reading()

    async def drained(self) -> None:
        """Return once everything written has left the transport (or the connection is gone)."""
        if not self.lost.done():
            await self.wait_drained()


class _FdReader:
    """Reads a client's socket with ``recvmsg`` (a dup of it: the transport keeps writing)."""

    def __init__(self, sock: socket.socket, protocol: _ClientProtocol, fds: FdQueue) -> None:
        self.sock = socket.socket(fileno=os.dup(sock.fileno()))
        self.sock.setblocking(False)
        self.protocol = protocol
        self.fds = fds
        self.loop = asyncio.get_running_loop()
        self.reading = False
        self.closed = False

    def resume(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self.loop.add_reader(self.sock.fileno(), self._readable)

    def pause(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        if not self.closed:
            self.pause()
            self.closed = True
            self.sock.close()

    def _readable(self) -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(self.sock, READ_CHUNK, READ_FDS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds, flags = b"", [], 0
        if fds or flags & socket.MSG_CTRUNC:
            self.fds.fds.extend(fds)
            self.fds.truncated |= bool(flags & socket.MSG_CTRUNC)
        if data:
            self.protocol.data_received(data)
        else:
            self.pause()
            self.protocol.eof_received()


class _Connection:
    """One client: answers each message in turn, and withdraws what waits when it leaves.

    Everything happens in callbacks: a message is handled from the
    ``data_received`` that completed it; a forwarded command goes to the
    backend's ``submit`` (the channel: recorded and written to QEMU at once)
    and its reply is written to the client from the callback that read it
    from QEMU. Transactions, and backends with only ``execute`` (the fake),
    run in a task. The client leaving is seen at once (``connection_lost``).
    """

    def __init__(self, server: QmpServer, protocol: _ClientProtocol, transport: asyncio.Transport, role: str,
                 fds: FdQueue | None = None) -> None:
        self.server = server
        self.backend = server.backend
        self.protocol = protocol
        self.transport = transport
        self.role = role
        self.name = f"{role}-{next(server._names[role])}"
        self.peer = describe_peer(transport.get_extra_info("socket"))
        self.fds = fds  # an FdQueue when the client may pass fds
        self.gone = False  # the client left (or must go): withdraw what waits
        self.stopping = False  # the server or backend is closing: finish the item at hand, then stop
        self.reason: str | None = None  # why qmprr disconnected it
        self.detached = False  # qmprr-detach: its commands outlive its connection
        self.withdrawn = 0
        self.burst = _Burst()
        self.decoder = wire.StreamDecoder(server.limits.max_message_for(role))
        self.outbox = _Outbox(transport, protocol, server.limits.output_budget, self.left)
        self.greeting = client_greeting(self.backend.greeting)
        self.session = ClientSession(self.greeting, role=role, policy=server.policy)
        self.subscription: Any = None
        self.pending: collections.deque[dict[str, Any] | wire.FramingError] = collections.deque()
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submit = getattr(self.backend, "submit", None)
        self._after_reply = getattr(self.backend, "after_reply", None)
        self._busy: str | None = None  # "forward" (a token awaits its reply) or "task"
        self._token: Any = None  # the channel's, for the command forwarded (_SUBMITTING while it is)
        self._forwarded: Forward | None = None
        self._task: asyncio.Task[dict[str, Any] | None] | None = None
        self._withdrawing = False
        self._processing = False
        self._read_paused = False
        self._ended = False
        self._unread: collections.deque[bytes] = collections.deque()
        self._fds_in_use: list[int] = []

    def start(self) -> None:
        self.server._clients.add(self)
        self.server._record(Client(action="connect", name=self.name, role=self.role, peer=self.peer))  # type: ignore[arg-type]  # role strings are the sockets'; Record.role names the known ones
        self.outbox.send(self.greeting)
        if self.backend.closed_reason is not None:
            self.stop()

    # -- input -----------------------------------------------------------------

    def received(self, data: bytes) -> None:
        """Bytes from the client: decoded a chunk at a time, as its messages get their turn.

        While messages wait (a command in flight), the socket is not read: what
        a client has sent ahead costs at most a read's worth of bytes.
        """
        if self._ended or self.gone:
            return
        self._unread.append(data)
        self._process()

    def _decode_next(self) -> bool:
        """Decode the next chunk of what was read; False when nothing is left."""
        if not self._unread:
            return False
        chunk = self._unread.popleft()
        if len(chunk) > READ_CHUNK:
            self._unread.appendleft(chunk[READ_CHUNK:])
            chunk = chunk[:READ_CHUNK]
        self.pending.extend(self.decoder.feed(chunk))
        return True

    def _done(self) -> bool:
        return self.gone or self.stopping or self.outbox.overrun or self.backend.closed_reason is not None

    def _process(self) -> None:
        """Handle waiting messages in order until one has to wait; finish once the client is done."""
        if self._processing or self._ended:
            return
        self._processing = True
        try:
            while self._busy is None and not self._done() and (self.pending or self._decode_next()):
                if self.pending:
                    self._handle(self.pending.popleft())
        finally:
            self._processing = False
        if self._busy is None and self._done():
            self._finish()
        elif (self.pending or self._unread) and not self._read_paused:
            self._read_paused = True
            self.protocol.pause_reading()
        elif self._read_paused and not self.pending and not self._unread:
            self._read_paused = False
            self.protocol.resume_reading()

    def left(self, reason: str | None = None) -> None:
        """The client is gone (or must go): withdraw the command it waits for, unless detached."""
        if reason is not None and self.reason is None:
            self.reason = reason
        if self.gone:
            return
        self.gone = True
        while self._decode_next():
            pass
        self.withdrawn += _commands_in(list(self.pending))
        self.pending.clear()
        if not self.detached:
            if self._busy == "forward":
                self._busy = None
                self.backend.withdraw(self._token)  # type: ignore[attr-defined]  # backends with submit have it
                # (the channel notes a withdrawal, or keeps the wire for the reply of one already sent)
                fds, self._fds_in_use = self._fds_in_use, []
                if fds:  # closed once the channel has passed them on, if it was about to
                    when_written = getattr(self.backend, "when_written", None)
                    when_written(lambda: _close_fds(fds)) if when_written is not None else _close_fds(fds)
            elif self._busy == "task" and self._task is not None:
                self._withdrawing = True
                self._task.cancel()
                return  # the task ends, then finishes the connection
        self._process()

    def stop(self) -> None:
        """The server or backend is closing: finish the command at hand, then end."""
        self.stopping = True
        self._process()

    def _finish(self) -> None:
        if self._ended:
            return
        self._ended = True
        self.protocol.pause_reading()
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
        if self.fds is not None:
            left = self.fds.close()
            if left:
                self.server._note(f"{left} file descriptor(s) a client sent with no command were closed")
        self.server._record(
            Client(action="disconnect", name=self.name, role=self.role, peer=self.peer, reason=self.reason)  # type: ignore[arg-type]  # role strings are the sockets'; Record.role names the known ones
        )
        asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        try:
            await self.outbox.close()
        finally:
            self.server._clients.discard(self)
            if self.protocol.where is not None:
                self.protocol.where.left()
            if not self.finished.done():
                self.finished.set_result(None)

    # -- one item ----------------------------------------------------------------

    def _handle(self, item: dict[str, Any] | wire.FramingError) -> None:
        action = self.session.handle(item)
        if isinstance(action, Forward):  # the common case first
            if self.burst.active:
                self._finish_burst()
            self._forward(action)
        elif isinstance(action, Answer):
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
        elif isinstance(action, BeginTx):
            self._run_task(self._begin(action))
        elif isinstance(action, EndTx):
            self._run_task(self._end(action))

    def _forward(self, action: Forward) -> None:
        if self.role == "debug":
            try:
                self.server.taint(self.name)  # before its first command, or not at all
            except QmprrError as exc:
                self.outbox.send(self._refused(exc, action))
                return
        fds: list[int] = []
        extra: dict[str, Any] = {}
        if self.fds is not None:
            try:
                fds, extra = claim_fds(self.fds)
            except QmprrError as exc:
                self.outbox.send(self._refused(exc, action))
                return
        tx = self.server.tx_of.get(self.name)
        if self._submit is None:
            self._run_task(self._execute(action, tx, fds, extra), forward=True, fds=fds)
            return
        self._busy = "forward"
        self._fds_in_use = fds
        self._forwarded = action
        self._token = _SUBMITTING
        try:
            token = self._submit(action.msg, src=self.name, role=self.role, client_id=action.client_id, tx=tx,
                                 done=self._forward_done, body=action.body, **extra)
        except QmprrError as exc:
            _close_fds(fds)
            self._busy, self._fds_in_use, self._token, self._forwarded = None, [], None, None
            self._replied(self._refused(exc, action), forward=True)
            return
        if self._token is _SUBMITTING:  # else it was answered at once (and the next may be under way)
            self._token = token

    def _forward_done(self, reply: dict[str, Any] | None, error: QmprrError | None) -> None:
        """The channel answered the command :meth:`_forward` submitted (one at a time per client)."""
        self._token = None
        if self._fds_in_use:
            _close_fds(self._fds_in_use)
            self._fds_in_use = []
        if self._busy == "forward":
            self._busy = None
        action, self._forwarded = self._forwarded, None  # a large command is not kept until the next
        if error is not None:
            assert action is not None
            reply = self._refused(error, action)
        self._replied(reply, forward=True)

    def _replied(self, reply: dict[str, Any] | None, *, forward: bool = False) -> None:
        if reply is not None:
            self.outbox.send(reply)
            if forward and self._after_reply is not None:
                self._after_reply()
        if self.pending or self._unread or self._read_paused or self._done():
            self._process()  # (else it would find nothing to do)

    def _run_task(self, coro: Coroutine[Any, Any, dict[str, Any]], *, forward: bool = False,
                  fds: list[int] | None = None) -> None:
        """Run a command for the client in a task; withdrawn (never sent, if not yet) when it leaves.

        When the server stops meanwhile, the command is let finish (the backend
        fails it if it is closing) and its answer sent; after ``qmprr-detach``
        it runs to its end, its reply to the log only.
        """
        self._busy = "task"
        started = False

        async def run() -> dict[str, Any] | None:
            nonlocal started
            started = True
            try:
                return await coro
            except asyncio.CancelledError:
                if self._withdrawing:
                    return None
                raise

        def finished(task: asyncio.Task[dict[str, Any] | None]) -> None:
            self._busy, self._task = None, None
            reply = None
            if task.cancelled():
                if not started:  # cancelled before its first step: nothing reached the backend
                    coro.close()
                    _close_fds(fds or [])
            elif task.exception() is not None:
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"qmprr: serving {self.name} failed", "exception": task.exception()})
            else:
                reply = task.result()
            self._replied(reply, forward=forward)

        task = self._task = asyncio.get_running_loop().create_task(run())
        task.add_done_callback(finished)

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

    async def _execute(self, action: Forward, tx: Any, fds: list[int], extra: dict[str, Any]) -> dict[str, Any]:
        """A backend without ``submit`` (the fake): its ``execute``, in a task."""
        try:
            return await self.backend.execute(
                action.msg, src=self.name, role=self.role, client_id=action.client_id, tx=tx, **extra)
        except QmprrError as exc:  # the channel's errors, and a log that cannot be written
            return self._refused(exc, action)
        finally:
            _close_fds(fds)

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


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _commands_in(items: list[dict[str, Any] | wire.FramingError]) -> int:
    """Commands among decoded items (what a leaving client's unread input would have run)."""
    return sum(1 for i in items if isinstance(i, dict) and isinstance(i.get("execute"), str))
