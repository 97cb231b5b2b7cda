"""Options several subcommands take, each declared once (its flag, help, default and converter).

A declaration (``add_*``) puts the option on a parser; its reader (``load_*``,
``normalizer``, ...) turns the parsed value into what the lower layers take.
"""

from __future__ import annotations

import argparse
import enum
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from .base import UsageError, choice, count, duration, pairs, seconds, size

if TYPE_CHECKING:
    from ..recording.chain import SealKey
    from ..replay.engine import ReplayOptions
    from ..replay.normalize import Normalizer
    from ..service import ServiceOptions


class Color(enum.StrEnum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


class Sync(enum.StrEnum):
    ALWAYS = "always"
    BATCH = "batch"
    NONE = "none"


class Compress(enum.StrEnum):
    ZSTD = "zstd"


class FakeMode(enum.StrEnum):
    STRICT = "strict"
    ORDERED = "ordered"
    LENIENT = "lenient"


class HostDifferences(enum.StrEnum):
    WARN = "warn"
    DIVERGE = "diverge"


# -- colour -------------------------------------------------------------------------------


def add_color(p: Any) -> None:
    choice(p, "--color", Color, Color.AUTO, "colour output (auto: on a terminal, unless NO_COLOR is set)")


def use_color(stream: TextIO) -> bool:
    """Colour on a terminal, unless NO_COLOR is set and not empty (no-color.org) or TERM=dumb."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def color(args: argparse.Namespace, stream: TextIO) -> bool:
    """Whether to colour *stream*, by ``--color``."""
    return use_color(stream) if args.color is Color.AUTO else args.color is Color.ALWAYS


# -- keys ---------------------------------------------------------------------------------


def add_seal_key(p: Any, help: str | None = None) -> None:
    """``--seal-key FILE``: every command that writes a recording (and repair, which may seal its end)."""
    p.add_argument("--seal-key", metavar="KEYFILE", help=help or (
        "seal the recording: key its hash chain with this file's bytes (16 or more; the key "
        "is never written, the header names its fingerprint); check with 'qmprr verify --key'"))


def load_key(path: str | None) -> SealKey | None:
    """The key in *path* (None: no key)."""
    from ..recording.chain import SealKey

    return SealKey.from_file(path) if path else None


# -- rules, domain XML --------------------------------------------------------------------


def add_rules(p: Any, help: str = "normalization rules (TOML), on top of the built-in ones") -> None:
    p.add_argument("--rules", metavar="FILE", help=help)


def normalizer(args: argparse.Namespace) -> Normalizer:
    """The built-in normalization, with ``--rules`` on top."""
    from ..replay.normalize import Normalizer, load_rules

    base = Normalizer()
    return base.with_rules(load_rules(args.rules)) if args.rules else base


# -- replaying (replay, minimize) ----------------------------------------------------------


def add_replay(p: Any) -> None:
    """What ``replay`` and ``minimize`` (whose tries are replays) share: the target and how to replay."""
    p.add_argument("--target", default="qemu", help="qemu (default), fake, or socket:PATH")
    p.add_argument("--qemu", metavar="BINARY", help="QEMU binary instead of the recorded one")
    choice(p, "--host-differences", HostDifferences, HostDifferences.WARN,
           "differences that depend on the host (CPU model expansion, modules, the monitor): "
           "warnings (default) or divergences")
    add_rules(p)
    p.add_argument("--map-path", action="append", default=[], metavar="FROM=TO",
                   help="rewrite recorded paths under FROM to TO (argv and arguments); TO is an allowed root")
    p.add_argument("--secret", action="append", default=[], metavar="ID=VALUE",
                   help="value of a redacted secret (by object id, protocol or command)")
    p.add_argument("--allow-unsafe", action="store_true",
                   help="no sandbox and no checks: run the recording's command line and commands as they are")
    p.add_argument("--event-timeout", type=seconds, default=3.0, metavar="SECONDS",
                   help="how long to wait for a window's recorded events (default 3)")


def replay_options(args: argparse.Namespace, **fields: Any) -> ReplayOptions:
    """The :class:`~qmprr.replay.engine.ReplayOptions` :func:`add_replay`'s options describe, and *fields*."""
    from ..replay.engine import ReplayOptions
    from ..replay.safety import PathMap

    try:
        path_map = PathMap.parse(args.map_path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return ReplayOptions(
        allow_unsafe=args.allow_unsafe,
        path_map=path_map,
        secrets=pairs(args.secret, "--secret"),
        normalizer=normalizer(args),
        event_timeout=args.event_timeout,
        host_differences=args.host_differences.value,
        **fields,
    )


def add_domain(p: Any) -> None:
    """``--domain XML`` and ``--ignore-unsupported`` (launch, replay)."""
    p.add_argument("--domain", metavar="DOMAIN.xml",
                   help="build the QEMU command line from libvirt domain XML (see 'qmprr domain argv')")
    p.add_argument("--ignore-unsupported", action="store_true",
                   help="with --domain: drop unsupported parts of the XML with a warning instead of failing")


# -- outputs ------------------------------------------------------------------------------


def check_new_output(path: str) -> None:
    """Refuse a recording output that exists or whose folder does not (before anything runs)."""
    from ..errors import RecordingError

    if os.path.lexists(path):
        raise RecordingError(f"{path}: file exists; recordings are never overwritten, choose another name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RecordingError(f"{path}: folder {folder} does not exist")


def bytes_writer(out: TextIO) -> Callable[[bytes], object]:
    """Writes bytes to *out* as they are (JSON lines), also when it is a text stream without a buffer."""
    return out.buffer.write if hasattr(out, "buffer") else (lambda data: out.write(data.decode()))


def write_bytes(data: bytes) -> None:
    """*data* to stdout as it is."""
    bytes_writer(sys.stdout)(data)


# -- the recording services (launch, proxy) ---------------------------------------------------


def add_listen_any(p: Any) -> None:
    """``--listen-any``: tcp: sockets may listen beyond loopback (launch, proxy, fake)."""
    p.add_argument("--listen-any", action="store_true",
                   help="let tcp: sockets listen on a non-loopback address (tcp:0.0.0.0:4444); QMP over TCP "
                   "has no authentication: whoever reaches the port controls QEMU")


SERVICE_NOTE = (
    "Sockets are created with mode 0600. Debug clients' commands are recorded with role "
    "'debug' and taint the recording; the default policy refuses them quit (QMP and HMP). "
    "Proxy-local commands: qmprr-transaction-begin {\"label\": ...} and "
    "qmprr-transaction-end hold the channel for one client; qmprr-detach keeps a client's "
    "commands running after it leaves (otherwise those not yet sent are withdrawn). "
    "A tcp:HOST:PORT socket is unauthenticated (anyone who can connect controls QEMU) and passes "
    "no fds; it binds loopback addresses only unless --listen-any."
)


def add_service(p: Any) -> None:
    """What ``launch`` and ``proxy`` share: the recording, the sockets, the limits, the segments."""
    p.add_argument("--record", required=True, metavar="FILE", help="recording to write (must not exist)")
    p.add_argument("--socket", metavar="PATH",
                   help="QMP socket for the management application: a UNIX socket path, or tcp:HOST:PORT "
                   "(unauthenticated: loopback only unless --listen-any)")
    p.add_argument("--socket-fd", type=int, metavar="N",
                   help="serve the management application on the listening UNIX socket inherited as fd N "
                   "(instead of --socket; its clients may pass fds with commands, SCM_RIGHTS)")
    p.add_argument("--debug-socket", metavar="PATH",
                   help="QMP socket for injected (debug) commands: a path, or tcp:HOST:PORT")
    add_listen_any(p)
    choice(p, "--sync", Sync, Sync.BATCH, "when records are forced to disk (default batch: at most every 100 ms)")
    p.add_argument("--deny", action="append", default=[], metavar="CMD",
                   help="refuse CMD (glob; hmp:WORD for HMP) to debug clients; repeatable")
    p.add_argument("--allow", action="append", default=[], metavar="CMD",
                   help="permit CMD to debug clients even if denied by default; repeatable")
    p.add_argument("--tx-timeout", type=seconds, default=30.0, metavar="SECONDS",
                   help="abort a transaction idle this long (default 30)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                   help="label stored in the recording's header; repeatable")
    add_seal_key(p)
    p.add_argument("--keep-input", action="store_true",
                   help="log the first bytes of unparsable client input as text (default: only their "
                   "SHA-256 and length, since they may hold a secret)")
    p.add_argument("--max-clients", type=count, default=64, metavar="N",
                   help="clients connected at once per socket; more are refused (default 64)")
    p.add_argument("--client-output-budget", type=size, default="8M", metavar="SIZE",
                   help="bytes queued to a client that does not read before it is disconnected "
                   "(default 8M; K, M, G suffixes are powers of 1024)")
    p.add_argument("--max-message", type=size, default="8M", metavar="SIZE",
                   help="largest message from a primary client (default 8M)")
    p.add_argument("--debug-max-message", type=size, default="16K", metavar="SIZE",
                   help="largest message from a debug client (default 16K: QEMU parses big "
                   "arguments slowly, holding the wire for everyone)")
    g = p.add_argument_group("segments (any of these records a set NAME.000001.jsonl, ...; SIGHUP rotates)")
    g.add_argument("--rotate-size", type=size, metavar="SIZE", help="start a new segment at this size (64M, 1G)")
    g.add_argument("--rotate-age", type=duration, metavar="DURATION",
                   help="start a new segment after this long (30s, 15m, 6h, 1d)")
    choice(g, "--compress", Compress, None, "compress closed segments in the background")
    g.add_argument("--keep", type=count, metavar="N", help="keep the newest N segments (the live one included)")
    g.add_argument("--keep-age", type=duration, metavar="DURATION",
                   help="delete closed segments older than this")


def service(args: argparse.Namespace) -> ServiceOptions:
    """The :class:`~qmprr.service.ServiceOptions` that :func:`add_service`'s options describe."""
    from ..recording import Redactor, SyncPolicy
    from ..recording.rotate import Rotation
    from ..server import Limits
    from ..service import ServiceOptions
    from ..session import Policy

    if (args.socket is None) == (args.socket_fd is None):
        raise UsageError("give --socket PATH or --socket-fd N (an inherited listening socket), one of them")
    if args.socket_fd is not None and args.socket_fd < 3:
        raise UsageError(f"--socket-fd {args.socket_fd}: must be an inherited fd, 3 or more")
    limits = Limits(
        output_budget=args.client_output_budget,
        max_clients=args.max_clients,
        max_message=args.max_message,
        debug_max_message=args.debug_max_message,
    )
    return ServiceOptions(
        limits=limits,
        record=args.record,
        socket=args.socket,
        socket_fd=args.socket_fd,
        debug_socket=args.debug_socket,
        listen_any=args.listen_any,
        sync=SyncPolicy(str(args.sync)),
        policy=Policy.build(deny=args.deny, allow=args.allow),
        tx_idle_timeout=args.tx_timeout,
        labels=pairs(args.label, "--label"),
        seal_key=load_key(args.seal_key),
        redactor=Redactor(keep_input=args.keep_input),
        rotation=Rotation(size=args.rotate_size, age=args.rotate_age,
                          compress=str(args.compress) if args.compress else None,
                          keep=args.keep, keep_age=args.keep_age),
    )
