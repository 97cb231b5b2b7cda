"""What a record means in context: which command a reply answers, who a record
belongs to, whether a transaction holds the channel.

:class:`Tracker` follows a stream of record dicts. Memory holds only commands
awaiting a reply (a :class:`~qmprr.recording.pairs.Pending`, bounded) and
client roles (at most :data:`MAX_CLIENTS`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .. import wire
from ..recording.pairs import MAX_PENDING, Pending

MAX_CLIENTS = 10_000


def command_name(msg: Any) -> str:
    """The command a QMP message runs (``execute`` or ``exec-oob``), or ``?``."""
    if isinstance(msg, dict):
        name = wire.command_name(msg)
        if isinstance(name, str):
            return name
    return "?"


def error_class(msg: Any) -> str | None:
    """The ``class`` of an error reply, ``?`` for an odd error, None for a return."""
    if not isinstance(msg, dict) or "error" not in msg:
        return None
    err = msg["error"]
    cls = err.get("class") if isinstance(err, dict) else None
    return cls if isinstance(cls, str) else "?"


@attrs.define(slots=True)
class CommandInfo:
    """A command seen in the stream, kept until its reply."""

    seq: int
    t: float
    name: str
    src: str
    role: str
    tx: int | None
    msg: dict[str, Any]


@attrs.define(slots=True)
class TxInfo:
    """A transaction holding the channel."""

    tx: int
    label: str
    owner: str
    t: float
    seq: int


def _str(value: Any, default: str = "?") -> str:
    return value if isinstance(value, str) else default


class Tracker:
    """Follows commands in flight, client roles and the open transaction.

    Call :meth:`update` with every record in order. *on_drop* hears of
    commands dropped unanswered when more than :data:`MAX_PENDING` wait.
    """

    def __init__(self, on_drop: Callable[[CommandInfo], None] | None = None) -> None:
        self.pending: Pending[CommandInfo] = Pending(MAX_PENDING, on_drop)
        self.roles: dict[str, str] = {}
        self.open_tx: TxInfo | None = None
        self.last_t = 0.0

    def update(self, d: dict[str, Any]) -> CommandInfo | None:
        """Take in one record; for a command or a reply, the command's info."""
        kind = d["kind"]
        self.last_t = d["t"]
        if kind == "command":
            src, role = _str(d.get("src")), _str(d.get("role"))
            tx = d.get("tx")
            msg = d.get("msg")
            info = CommandInfo(d["seq"], d["t"], command_name(msg), src, role,
                               tx if type(tx) is int else None, msg if isinstance(msg, dict) else {})
            self.pending.command(info.seq, info)
            self._role(src, role)
            return info
        if kind == "reply":
            return self.pending.reply(d.get("cmd"))
        if kind == "tx":
            tx = d.get("tx")
            if d.get("action") == "begin" and type(tx) is int:
                self.open_tx = TxInfo(tx, _str(d.get("label"), ""), _str(d.get("owner")), d["t"], d["seq"])
            elif self.open_tx is not None and tx == self.open_tx.tx:
                self.open_tx = None
        elif kind in ("client", "local"):
            self._role(_str(d.get("name" if kind == "client" else "src")), _str(d.get("role")))
        return None

    def _role(self, name: str, role: str) -> None:
        if name not in self.roles and len(self.roles) < MAX_CLIENTS:
            self.roles[name] = role

    def owner(self, d: dict[str, Any], info: CommandInfo | None) -> tuple[str | None, str | None]:
        """The client a record belongs to and its role; (None, None) for QEMU's and qmprr's own."""
        kind = d["kind"]
        if info is not None:
            return info.src, info.role
        if kind in ("local", "fd"):
            name = d.get("src")
        elif kind == "client":
            name = d.get("name")
        elif kind == "taint":
            name = d.get("client")
        elif kind == "tx":
            name = d.get("owner")
        else:
            return None, None
        if not isinstance(name, str):
            return None, None
        role = d.get("role")
        return name, role if isinstance(role, str) else self.roles.get(name)
