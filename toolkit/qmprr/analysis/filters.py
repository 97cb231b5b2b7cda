"""Selecting records for ``qmprr show``: filters that combine.

Different filters must all match (AND); values of one filter are
alternatives (OR). ``--command`` and ``--event`` together select commands
*or* events by name. A reply counts as its command's: it has that command's
client, role, name and transaction.

Positions for ``--from``/``--to`` (both inclusive): a plain integer is a
``seq`` (``--from 120``); a time offset since the recording started has a
``+`` or a unit (``+1.5``, ``+1.5s``, ``250ms``, ``+2m``, ``1h``, ``+30us``).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ..errors import QmprrError
from .context import CommandInfo, Tracker, command_name, error_class
from .source import KINDS


class FilterError(QmprrError):
    """A filter option has a value that cannot be used."""


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_POSITION = re.compile(r"(\+)?(\d+(?:\.\d*)?|\.\d+)(us|ms|s|m|h)?")


@attrs.frozen
class Position:
    """A point in a recording: a ``seq``, or a time offset in seconds."""

    seq: int | None = None
    t: float | None = None

    def before(self, d: dict[str, Any]) -> bool:
        """True when record *d* comes before this position."""
        return bool(d["seq"] < self.seq if self.seq is not None else d["t"] < self.t)

    def after(self, d: dict[str, Any]) -> bool:
        """True when record *d* comes after this position."""
        return bool(d["seq"] > self.seq if self.seq is not None else d["t"] > self.t)


def parse_position(text: str) -> Position:
    """``120`` is seq 120; ``+1.5``, ``1.5s``, ``+250ms``, ``2m``, ``1h``, ``+30us`` are time offsets."""
    m = _POSITION.fullmatch(text.strip())
    if m is None:
        raise FilterError(
            f"position {text!r} is neither a seq (120) nor a time offset (+1.5s, 250ms, +2m)"
        )
    plus, number, unit = m.groups()
    if plus is None and unit is None:
        if "." in number:
            raise FilterError(f"position {text!r}: a seq is a whole number; for seconds write +{number}s")
        return Position(seq=int(number))
    return Position(t=float(number) * _UNITS[unit or "s"])


def _glob_matcher(patterns: Iterable[str]) -> Callable[[str], bool] | None:
    """A cached matcher for shell globs (fnmatch, case-sensitive), or None if no patterns."""
    pats = list(patterns)
    if not pats:
        return None
    regex = re.compile("|".join(fnmatch.translate(p) for p in pats))
    cache: dict[str, bool] = {}

    def match(name: str) -> bool:
        hit = cache.get(name)
        if hit is None:
            hit = regex.match(name) is not None
            if len(cache) < 4096:
                cache[name] = hit
        return hit

    return match


def _split(values: Iterable[str]) -> list[str]:
    return [v for value in values for v in value.split(",") if v]


@attrs.define
class Filter:
    """The records to keep; build with :meth:`build`, test with :meth:`matches`."""

    kinds: frozenset[str] | None = None
    src: Callable[[str], bool] | None = None
    roles: frozenset[str] | None = None
    command: Callable[[str], bool] | None = None
    event: Callable[[str], bool] | None = None
    errors: bool = False
    tx: int | None = None
    start: Position | None = None
    end: Position | None = None
    grep: bytes | None = None

    @classmethod
    def build(
        cls,
        *,
        kinds: Iterable[str] = (),
        src: Iterable[str] = (),
        roles: Iterable[str] = (),
        command: Iterable[str] = (),
        event: Iterable[str] = (),
        errors: bool = False,
        tx: int | None = None,
        start: str | None = None,
        end: str | None = None,
        grep: str | None = None,
    ) -> Filter:
        """A filter from option values (lists may hold comma-separated items)."""
        kind_set = frozenset(_split(kinds))
        unknown = kind_set - KINDS
        if unknown:
            raise FilterError(f"unknown record kind(s) {', '.join(sorted(unknown))}; "
                              f"kinds are {', '.join(sorted(KINDS))}")
        return cls(
            kinds=kind_set or None,
            src=_glob_matcher(_split(src)),
            roles=frozenset(_split(roles)) or None,
            command=_glob_matcher(_split(command)),
            event=_glob_matcher(_split(event)),
            errors=errors,
            tx=tx,
            start=parse_position(start) if start is not None else None,
            end=parse_position(end) if end is not None else None,
            grep=os.fsencode(grep) if grep else None,  # bytes as given, even not UTF-8
        )

    @property
    def kinds_only(self) -> bool:
        """Only kinds (and ``--grep``) are asked: no record needs its context to be judged."""
        return self.kinds is not None and not self.errors and all(
            v is None for v in (self.src, self.roles, self.command, self.event, self.tx, self.start, self.end))

    def past_end(self, d: dict[str, Any]) -> bool:
        """True once the stream is beyond ``--to``: nothing later can match."""
        return self.end is not None and self.end.after(d)

    def matches(self, d: dict[str, Any], raw: bytes, info: CommandInfo | None, tracker: Tracker) -> bool:
        """Does record *d* (line *raw*; *info* its command, for commands and replies) pass?"""
        kind = d["kind"]
        if self.kinds is not None and kind not in self.kinds:
            return False
        if self.start is not None and self.start.before(d):
            return False
        if self.end is not None and self.end.after(d):
            return False
        if self.grep is not None and self.grep not in raw:
            return False
        if (self.command is not None or self.event is not None) and not self._name_matches(d, kind, info):
            return False
        if self.errors and not _is_error(d, kind):
            return False
        if self.src is not None or self.roles is not None:
            name, role = tracker.owner(d, info)
            if name is None:
                return False
            if self.src is not None and not self.src(name):
                return False
            if self.roles is not None and role not in self.roles:
                return False
        return self.tx is None or self._in_tx(d, kind, tracker)

    def _name_matches(self, d: dict[str, Any], kind: str, info: CommandInfo | None) -> bool:
        if kind == "event":
            if self.event is None:
                return False
            msg = d.get("msg")
            name = msg.get("event") if isinstance(msg, dict) else None
            return isinstance(name, str) and self.event(name)
        if self.command is None:
            return False
        if kind in ("command", "reply"):
            return info is not None and self.command(info.name)
        if kind == "local" and d.get("msg") is not None:
            return self.command(command_name(d.get("msg")))
        return False

    def _in_tx(self, d: dict[str, Any], kind: str, tracker: Tracker) -> bool:
        if kind == "tx":
            return d.get("tx") == self.tx
        return tracker.open_tx is not None and tracker.open_tx.tx == self.tx


def _is_error(d: dict[str, Any], kind: str) -> bool:
    if kind == "reply":
        return error_class(d.get("msg")) is not None
    if kind == "local":
        return error_class(d.get("reply")) is not None
    if kind == "tx":
        return d.get("action") == "abort"
    if kind == "close":
        return d.get("reason") == "error"
    return False
