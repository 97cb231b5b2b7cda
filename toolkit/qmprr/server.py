"""QMP endpoint for clients: UNIX sockets in front of a :class:`~qmprr.channel.Channel`.

Each client gets QEMU's greeting (its real version; no ``oob`` capability,
since every command is serialized), negotiates with ``qmp_capabilities``
(answered here), and then talks QMP as if to QEMU; :mod:`qmprr.session`
decides what each message is, this module does the I/O. Sockets are created
with mode 0600. Clients on the debug socket have role ``debug``: their
commands pass the policy, and the first one taints the recording.
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
from typing import Any

from . import wire
from .channel import Channel, ChannelClosed, ChannelError, Transaction, TransactionError
from .errors import QmprrError
from .recording import Client, Local, Msg, Taint
from .session import (
    Answer,
    BeginTx,
    ClientSession,
    EndTx,
    Forward,
    Policy,
    client_greeting,
    qmp_error,
    qmp_return,
)

#: Bytes of unread output a client may have before events to it are dropped.
DEFAULT_CLIENT_EVENT_BACKLOG = 4 * 1024 * 1024


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


def describe_peer(sock: socket.socket | None) -> str | None:
    """``pid N uid N (command)`` of a UNIX socket peer, when the kernel tells."""
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


class _Outbox:
    """Messages to one client, written straight to its transport, in order.

    Replies always go out; an event is dropped (counted) when more than
    *backlog* bytes already wait in the transport's buffer, so a client that
    stops reading never holds up the channel or grows memory without bound.
    """

    def __init__(self, writer: asyncio.StreamWriter, backlog: int) -> None:
        self._writer = writer
        self._transport = writer.transport
        self.backlog = backlog
        self.dropped = 0

    def send(self, msg: dict[str, Any]) -> None:
        if not self._transport.is_closing():
            self._transport.write(wire.encode(msg))

    def offer_event(self, msg: dict[str, Any]) -> bool:
        if self._transport.is_closing():
            return True  # the client is leaving; nothing is lost but its copy
        if self._transport.get_write_buffer_size() > self.backlog:
            self.dropped += 1
            return False
        self._transport.write(wire.encode(msg))
        return True

    async def close(self) -> None:
        """Write what is buffered (briefly), then close the connection."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.drain(), 2.0)
        with contextlib.suppress(Exception):
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)


class QmpServer:
    """Serves QMP clients on UNIX sockets, all through one channel."""

    def __init__(
        self,
        channel: Channel,
        *,
        policy: Policy | None = None,
        max_message: int = wire.DEFAULT_MAX_MESSAGE,
        event_backlog: int = DEFAULT_CLIENT_EVENT_BACKLOG,
    ) -> None:
        self.channel = channel
        self.policy = policy or Policy()
        self.max_message = max_message
        self.event_backlog = event_backlog
        self._servers: list[tuple[asyncio.AbstractServer, str]] = []
        self._names = collections.defaultdict(lambda: itertools.count(1))
        self._tainted = False
        self._connections: set[asyncio.Task[None]] = set()
        self._tx_of: dict[str, Transaction] = {}
        self._readers: set[asyncio.StreamReader] = set()
        self._watcher: asyncio.Task[None] | None = None

    async def listen(self, path: str, role: str = "primary") -> None:
        """Accept clients with *role* on a new UNIX socket at *path* (mode 0600)."""
        sock = bind_unix(path)
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._disconnect_all_when_closed())

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                await self._serve(reader, writer, role)
            except asyncio.CancelledError:
                pass  # server closing; _serve has logged the disconnect
            finally:
                self._connections.discard(task)

        server = await asyncio.start_unix_server(accept, sock=sock, limit=wire.DEFAULT_MAX_MESSAGE)
        self._servers.append((server, path))

    async def close(self) -> None:
        """Stop accepting, disconnect every client, remove the socket files."""
        for server, path in self._servers:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if self._watcher is not None:
            self._watcher.cancel()
        for reader in list(self._readers):
            reader.feed_eof()  # each connection ends its read loop and cleans up
        if self._connections:
            _, pending = await asyncio.wait(list(self._connections), timeout=5.0)
            for task in pending:
                task.cancel()
        self._servers.clear()

    async def _disconnect_all_when_closed(self) -> None:
        """When QEMU is gone, end every client's read loop; each flushes what it owes."""
        await self.channel.wait_closed()
        for reader in list(self._readers):
            reader.feed_eof()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str) -> None:
        channel = self.channel
        name = f"{role}-{next(self._names[role])}"
        peer = describe_peer(writer.get_extra_info("socket"))
        channel.record(Client(action="connect", name=name, role=role, peer=peer))  # type: ignore[arg-type]
        outbox = _Outbox(writer, self.event_backlog)
        greeting = client_greeting(channel.greeting)
        session = ClientSession(greeting, role=role, policy=self.policy)
        decoder = wire.StreamDecoder(self.max_message)
        subscription = None
        outbox.send(greeting)
        self._readers.add(reader)
        try:
            while channel.closed_reason is None:
                data = await reader.read(256 * 1024)
                if not data:
                    break
                for item in decoder.feed(data):
                    action = session.handle(item)
                    if isinstance(action, Answer):
                        self._log_local(name, role, action)
                        outbox.send(action.reply)
                        if subscription is None and session.negotiated:
                            subscription = channel.subscribe(name, deliver=outbox.offer_event)
                    elif isinstance(action, Forward):
                        outbox.send(await self._forward(name, role, action))
                    elif isinstance(action, BeginTx):
                        outbox.send(await self._begin(name, role, action))
                    elif isinstance(action, EndTx):
                        outbox.send(await self._end(name, role, action))
                    if channel.closed_reason is not None:
                        break
        except (ConnectionError, OSError):
            pass
        finally:
            self._readers.discard(reader)
            if subscription is not None:
                subscription.close()
            if name in self._tx_of and not self._tx_of[name].ended:
                channel.abort_transactions_of(name, "its owner disconnected")
            channel.record(Client(action="disconnect", name=name, role=role, peer=peer))  # type: ignore[arg-type]
            await outbox.close()

    def _log_local(self, name: str, role: str, action: Answer) -> None:
        self.channel.record(
            Local(
                src=name,
                role=role,  # type: ignore[arg-type]
                msg=Msg(action.msg) if action.msg is not None else None,
                input=action.input.decode("utf-8", "backslashreplace") if action.input is not None else None,
                reply=Msg(action.reply),
            )
        )

    async def _forward(self, name: str, role: str, action: Forward) -> dict[str, Any]:
        if role == "debug" and not self._tainted:
            self._tainted = True
            self.channel.record(Taint(reason="custom-monitor", client=name))
        try:
            return await self.channel.execute(
                action.msg, src=name, role=role, client_id=action.client_id, tx=self._tx_of.get(name)
            )
        except QmprrError as exc:  # the channel's errors, and a log that cannot be written
            return qmp_error(str(exc), id=action.client_id)

    async def _begin(self, name: str, role: str, action: BeginTx) -> dict[str, Any]:
        held = self._tx_of.get(name)
        if held is not None and not held.ended:
            reply = qmp_error(f"{name} already holds transaction {held.id}", id=action.client_id)
            self._log_local(name, role, Answer(reply, action.msg))
            return reply
        try:
            tx = await self.channel.begin_transaction(
                action.label, owner=name, role=role, client_id=action.client_id
            )
        except ChannelError as exc:
            return qmp_error(str(exc), id=action.client_id)
        self._tx_of[name] = tx
        return qmp_return({"tx": tx.id}, id=action.client_id)

    async def _end(self, name: str, role: str, action: EndTx) -> dict[str, Any]:
        tx = self._tx_of.pop(name, None)
        if tx is None:
            reply = qmp_error(
                "no transaction is open for this client (it may have been aborted; see the log)",
                id=action.client_id,
            )
            self._log_local(name, role, Answer(reply, action.msg))
            return reply
        try:
            await self.channel.end_transaction(tx, role=role, client_id=action.client_id)
        except (TransactionError, ChannelClosed) as exc:
            reply = qmp_error(str(exc), id=action.client_id)
            if not exc.recorded:  # the channel records the refusals it makes
                self._log_local(name, role, Answer(reply, action.msg))
            return reply
        return qmp_return({"tx": tx.id}, id=action.client_id)
