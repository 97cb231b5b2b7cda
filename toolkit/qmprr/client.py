"""A small blocking QMP client, for ``qmprr inject``, ``qmprr events`` and scripts.

Connects to a UNIX socket or ``tcp:HOST:PORT`` (QEMU's, or a qmprr proxy's;
see :mod:`qmprr.address`), negotiates, sends one command at a time and
returns its reply; events that arrive meanwhile are kept in
:attr:`QmpClient.events`. On a UNIX socket a command can carry file
descriptors (SCM_RIGHTS), as QEMU's ``getfd`` and ``add-fd`` want them.
"""

from __future__ import annotations

import itertools
import socket
import time
from typing import Any

from . import address, wire
from .errors import QmprrError


class ClientError(QmprrError):
    """Cannot connect to, or talk with, the QMP server."""


class ConnectionClosed(ClientError):
    """The server closed the connection (end of file)."""


class ReplyTimeout(ClientError):
    """The command was sent but its reply did not come in time: it may still run."""


class QmpClient:
    """Blocking QMP client over a UNIX or TCP socket; use as a context manager."""

    def __init__(self, path: str, *, timeout: float | None = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._decoder = wire.StreamDecoder()
        self._pending: list[dict[str, Any]] = []
        try:
            self._sock = address.connect(path, timeout)
        except address.AddressError as exc:
            raise ClientError(str(exc)) from None
        try:
            self.greeting = self._receive()
            if "QMP" not in self.greeting:
                raise ClientError(f"{path} did not greet with QMP: {self.greeting}")
            reply = self.execute("qmp_capabilities")
        except ReplyTimeout:
            self._sock.close()
            raise ClientError(f"no greeting or negotiation from {path} in time; nothing was sent") from None
        except ClientError:
            self._sock.close()
            raise
        if "error" in reply:
            raise ClientError(f"negotiation failed: {reply['error'].get('desc')}")

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run *command*; return the reply (``return`` or ``error``)."""
        msg: dict[str, Any] = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        return self.execute_msg(msg)

    @property
    def passes_fds(self) -> bool:
        """Whether fds can go with a command: a UNIX socket, not TCP."""
        return self._sock.family == socket.AF_UNIX

    def execute_msg(self, msg: dict[str, Any], *, fds: list[int] | None = None) -> dict[str, Any]:
        """Send a whole command message (its ``id`` is replaced), with *fds* (SCM_RIGHTS); return the reply."""
        cid = f"inject-{next(self._ids)}"
        self._send({**msg, "id": cid}, fds)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if "event" in reply:
                self.events.append(reply)
            elif reply.get("id") == cid or "id" not in reply:
                return reply

    def detach(self) -> bool:
        """Ask a qmprr server to run this client's commands even if it leaves first.

        By default qmprr withdraws a leaving client's commands that have not
        reached QEMU; after this they still run, their replies going only to the
        recording. False when the server is not qmprr (QEMU: ``CommandNotFound``).
        """
        self._send({"execute": "qmprr-detach", "id": "qmprr-detach"})
        while True:
            reply = self._receive(None if self.timeout is None else time.monotonic() + self.timeout)
            if "event" in reply:
                self.events.append(reply)
            elif reply.get("id") == "qmprr-detach":
                return "return" in reply

    def next_message(self, deadline: float | None = None) -> dict[str, Any]:
        """The next message from the server (an event, when no command is pending).

        :class:`ReplyTimeout` past *deadline* (``time.monotonic()``), :class:`ClientError`
        when the server closes the connection. With no *deadline* it waits for ever.
        """
        if deadline is None and not self._pending:
            self._sock.settimeout(None)
        return self._receive(deadline)

    def _send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        data = wire.encode(msg)
        try:
            if fds:
                if not self.passes_fds:
                    raise ClientError(f"{self.path}: file descriptors cannot be passed over TCP (no SCM_RIGHTS)")
                sent = socket.send_fds(self._sock, [data], fds)  # the fds go with the first byte
                data = data[sent:]
            self._sock.sendall(data)
        except OSError as exc:
            raise ClientError(f"lost the connection to {self.path}: {exc.strerror or exc}") from None

    def _receive(self, deadline: float | None = None) -> dict[str, Any]:
        """The next message; :class:`ReplyTimeout` past *deadline* (or the socket's timeout)."""
        while not self._pending:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReplyTimeout(f"no answer from {self.path} in time")
                self._sock.settimeout(left)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise ReplyTimeout(f"no answer from {self.path} in time") from None
            except OSError as exc:
                raise ClientError(f"lost the connection to {self.path}: {exc.strerror or exc}") from None
            if not data:
                raise ConnectionClosed(f"{self.path} closed the connection")
            for item in self._decoder.feed(data):
                if isinstance(item, wire.FramingError):
                    raise ClientError(f"unreadable data from {self.path}: {item!r}")
                self._pending.append(item)
        return self._pending.pop(0)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> QmpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
