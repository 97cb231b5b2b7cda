"""``qmprr events``: print a QMP socket's events as they come, like ``virsh qemu-monitor-event``.

One line per event, virsh's format without the domain:
``event STOP at 1764652054.184667: <null>`` (QEMU's timestamp, seconds and
microseconds; the data as compact JSON, ``<null>`` when there is none), or
the event message itself as one JSON line (``--json``). ``--filter`` globs
pick events by name (case-insensitive, repeatable: any may match). Stops
at the end of the connection, SIGINT, ``--count N`` events shown, or
``--timeout`` seconds. The server is untrusted: every line is printable
ASCII (the data is ASCII JSON; a name that is not printable text is shown
as a JSON string), a missing or malformed timestamp is ``?``.
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

import attrs

from . import codec
from .client import ConnectionClosed, QmpClient, ReplyTimeout

EXIT_OK, EXIT_TOO_FEW = 0, 1


@attrs.frozen
class EventsOptions:
    socket: str
    filters: tuple[str, ...] = ()
    json: bool = False
    count: int | None = None  # stop after this many events shown
    timeout: float | None = None  # stop after this many seconds
    connect_timeout: float = 30.0


def matches(name: object, filters: Sequence[str]) -> bool:
    """Whether an event called *name* passes the ``--filter`` globs (none: every event)."""
    if not filters:
        return True
    return isinstance(name, str) and any(fnmatch.fnmatchcase(name.upper(), f.upper()) for f in filters)


def _stamp(msg: dict[str, Any]) -> str:
    ts = msg.get("timestamp")
    if isinstance(ts, dict):
        seconds, micros = ts.get("seconds"), ts.get("microseconds")
        if type(seconds) is int and type(micros) is int and 0 <= micros < 1_000_000:
            return f"{seconds}.{micros:06d}"
    return "?"


def format_event(msg: dict[str, Any]) -> str:
    """virsh's line for one event (see the module docstring)."""
    name = msg.get("event")
    plain = isinstance(name, str) and name and name.isascii() and name.isprintable() and " " not in name
    shown = name if plain else json.dumps(name)
    data = msg.get("data")
    text = "<null>" if "data" not in msg else json.dumps(data, separators=(",", ":"))  # ASCII: no terminal escapes
    return f"event {shown} at {_stamp(msg)}: {text}"


def format_json(msg: dict[str, Any]) -> str:
    """``--json``'s line: the message as compact JSON, every character past ASCII (DEL, C1 controls
    such as CSI U+009B, bidi overrides) written as a ``\\u`` escape, so the line is the same JSON."""
    return _NOT_ASCII.sub(_escape, codec.dumps(msg).decode())


_NOT_ASCII = re.compile(r"[^\x20-\x7e]")


def _escape(m: re.Match[str]) -> str:
    return json.dumps(m.group())[1:-1]


def watch(options: EventsOptions, out: IO[str] | None = None) -> int:
    """Print events until EOF, SIGINT, --count or --timeout; 1 when --count was not reached (but SIGINT)."""
    out = out or sys.stdout
    shown = 0
    with QmpClient(options.socket, timeout=options.connect_timeout) as client:
        deadline = None if options.timeout is None else time.monotonic() + options.timeout
        try:
            while options.count is None or shown < options.count:
                msg = client.events.pop(0) if client.events else client.next_message(deadline)
                if "event" not in msg or not matches(msg.get("event"), options.filters):
                    continue
                print(format_json(msg) if options.json else format_event(msg), file=out, flush=True)
                shown += 1
        except (ReplyTimeout, ConnectionClosed):
            pass
        except KeyboardInterrupt:
            return EXIT_OK
    return EXIT_OK if options.count is None or shown >= options.count else EXIT_TOO_FEW
