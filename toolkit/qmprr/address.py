"""Socket addresses as users write them: a UNIX socket path, or ``tcp:HOST:PORT``.

``tcp:127.0.0.1:4444``, ``tcp:localhost:4444``, ``tcp:[::1]:4444`` (QEMU's own
``-qmp tcp:...`` spelling). Anything else is a UNIX socket path (a path that
really begins with ``tcp:`` is written ``./tcp:...``).

QMP over TCP is unauthenticated: whoever reaches the port controls QEMU. So a
listener binds only a loopback address unless the caller says otherwise
(``--listen-any``), and binds an IP address, never a name that resolves to
who knows what. fds cannot cross TCP (no SCM_RIGHTS).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import attrs

from .errors import QmprrError

TCP_PREFIX = "tcp:"


class AddressError(QmprrError):
    """A socket address cannot be used as given."""


@attrs.frozen
class TcpAddress:
    """``tcp:HOST:PORT``; *host* is as written (``localhost``, an IPv4 or IPv6 literal)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{TCP_PREFIX}{host}:{self.port}"

    def ip(self) -> str:
        """The IP address to bind: ``localhost`` is 127.0.0.1; a name is refused."""
        if self.host == "localhost":
            return "127.0.0.1"
        try:
            return str(ipaddress.ip_address(self.host))
        except ValueError:
            raise AddressError(f"{self}: a listening socket takes an IP address (or localhost), not a name") from None

    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.ip()).is_loopback


def parse(text: str) -> str | TcpAddress:
    """A UNIX socket path (returned as it is), or a :class:`TcpAddress` for ``tcp:HOST:PORT``."""
    if not text.startswith(TCP_PREFIX):
        return text
    rest = text[len(TCP_PREFIX):]
    host, sep, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise AddressError(f"{text}: write an IPv6 address in brackets, e.g. tcp:[::1]:4444")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"{text}: not tcp:HOST:PORT with a port from 1 to 65535 (e.g. tcp:127.0.0.1:4444)")
    return TcpAddress(host, int(port))


def check_listen(text: str, *, listen_any: bool = False) -> str | TcpAddress:
    """:func:`parse`, and for TCP refuse a non-loopback address unless *listen_any*."""
    where = parse(text)
    if isinstance(where, TcpAddress) and not where.is_loopback() and not listen_any:
        raise AddressError(
            f"{where}: not a loopback address; QMP over TCP is unauthenticated (whoever reaches the"
            " port controls QEMU): give --listen-any to listen there anyway"
        )
    return where


def bind_tcp(where: TcpAddress, *, listen_any: bool = False) -> socket.socket:
    """A listening TCP socket at *where* (loopback only unless *listen_any*)."""
    check_listen(str(where), listen_any=listen_any)
    ip = where.ip()
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((ip, where.port))
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise AddressError(f"{where}: cannot listen: {exc.strerror or exc}") from None
    return sock


def connect(text: str, timeout: float | None) -> socket.socket:
    """A stream socket connected to *text* (a UNIX path or ``tcp:HOST:PORT``); :class:`AddressError` if not."""
    where = parse(text)
    try:
        if isinstance(where, TcpAddress):
            return socket.create_connection((where.host, where.port), timeout=timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(where)
        except BaseException:
            sock.close()
            raise
        return sock
    except OSError as exc:
        raise AddressError(f"cannot connect to {text}: {exc.strerror or exc}") from None


def peer_credentials(sock: socket.socket | None) -> tuple[int, int] | None:
    """``(pid, uid)`` of a UNIX socket's peer when the kernel tells (``SO_PEERCRED``); else None.

    For a socket connected to a listener, the listener's process; for one end of
    a ``socketpair``, the process that made the pair (not who holds the other end).
    """
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, _gid = struct.unpack("3i", creds)
    return (pid, uid) if pid > 0 else None
