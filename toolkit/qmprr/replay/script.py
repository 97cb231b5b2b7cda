"""A recording seen as a script: the exchanges a replay sends or a fake answers.

Each :class:`Exchange` is one command as QEMU ran it, its reply, and the
events QEMU sent between the command and its reply (``events_before``) and
between the reply and the next command (``events_after``); events no command
caused (an import's note ``data.external``: libvirt's signal) are kept apart
(``external_after``), out of every window. qmprr's own
negotiation is left out: every target negotiates for itself.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from .. import wire
from ..recording.pairs import Pending
from ..recording import Close, Command, Event, Fd, Greeting, Header, Note, RecordingReader, Reply


@attrs.define
class Exchange:
    """One recorded command and what came back."""

    command: str
    arguments: Any = None  # None when the command had none
    reply: dict[str, Any] | None = None  # None: no reply was recorded (in flight at the end)
    events_before: list[dict[str, Any]] = attrs.Factory(list)
    events_after: list[dict[str, Any]] = attrs.Factory(list)
    seq: int = -1  # the command record's seq (-1 for scripts built in code)
    t: float = 0.0  # when it was sent, seconds from the recording's start
    src: str = "script"
    role: str = "primary"
    fds: list[Fd] = attrs.Factory(list)
    # events after this exchange that no command caused (a signal: the import's "external" note)
    external_after: list[dict[str, Any]] = attrs.Factory(list)
    session: int = 1  # the monitor session (a .replies import's probe phase: a new negotiation)

    @property
    def msg(self) -> dict[str, Any]:
        """The command as a QMP message (without id)."""
        msg: dict[str, Any] = {"execute": self.command}
        if self.arguments is not None:
            msg["arguments"] = self.arguments
        return msg


@attrs.define
class Script:
    """Greeting, events before the first command, and the exchanges in order."""

    greeting: dict[str, Any]
    exchanges: list[Exchange] = attrs.Factory(list)
    initial_events: list[dict[str, Any]] = attrs.Factory(list)
    header: Header | None = None
    closed: str | None = None  # the recording's close reason, if it has one
    images: list[dict[str, Any]] = attrs.Factory(list)  # image descriptions from notes (qmprr.images)


DEFAULT_GREETING = {
    "QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "qmprr-fake"}, "capabilities": []}
}


def load_script(path: str | os.PathLike[str]) -> Script:
    """Read a recording into a :class:`Script` (raises on a corrupt recording)."""
    with RecordingReader(path, errors="raise") as reader:
        script = Script(greeting=DEFAULT_GREETING, header=reader.header)
        by_seq: Pending[Exchange] = Pending(limit=None)  # every exchange is kept anyway
        current: Exchange | None = None
        replied = False
        external = False  # the next event comes from outside the monitor
        session = 1
        for record in reader:
            if isinstance(record, Greeting):
                script.greeting = record.msg
            elif isinstance(record, Command):
                name = wire.command_name(record.msg) or ""
                if record.role == "internal" and name == "qmp_capabilities":
                    continue
                current = Exchange(
                    command=name,
                    arguments=record.msg.get("arguments"),
                    seq=record.seq,
                    t=record.t,
                    src=record.src,
                    role=record.role,
                    session=session,
                )
                replied = False
                by_seq.command(record.seq, current)
                script.exchanges.append(current)
            elif isinstance(record, Reply):
                exchange = by_seq.find(record.cmd)
                if exchange is not None:
                    exchange.reply = {k: v for k, v in record.msg.items() if k != "id"}
                    replied = exchange is current
            elif isinstance(record, Note) and record.data and isinstance(record.data.get("images"), list):
                script.images += record.data["images"]
            elif isinstance(record, Note) and record.data and record.data.get("external"):
                external = True
            elif isinstance(record, Note) and record.data and isinstance(record.data.get("session"), int):
                session = record.data["session"]
            elif isinstance(record, Event):
                if external and current is not None:
                    external = False
                    current.external_after.append(record.msg)
                elif current is None:
                    script.initial_events.append(record.msg)
                elif replied:
                    current.events_after.append(record.msg)
                else:
                    current.events_before.append(record.msg)
            elif isinstance(record, Fd):
                target = by_seq.find(record.cmd) if record.cmd is not None else current
                if target is not None:
                    target.fds.append(record)
            elif isinstance(record, Close):
                script.closed = record.reason
    return script
