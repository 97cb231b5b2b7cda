"""Comparing what QEMU said in two runs: replies field by field, events by key.

Shared by the replay engine (recorded against live) and ``qmprr diff``
(recording A against recording B). Everything here is pure: values in,
:class:`Difference` items out, after normalization by a
:class:`~qmprr.replay.normalize.Normalizer`.
"""

from __future__ import annotations

from typing import Any

import attrs

from .. import codec
from .normalize import Normalizer

#: Events QEMU rate-limits (coalesces): only their presence is compared.
RATE_LIMITED_EVENTS = frozenset(
    {"RTC_CHANGE", "BALLOON_CHANGE", "WATCHDOG", "ACPI_DEVICE_OST", "QUORUM_FAILURE",
     "QUORUM_REPORT_BAD", "VSERPORT_CHANGE", "MEMORY_DEVICE_SIZE_CHANGE", "MEMORY_FAILURE"}
)


@attrs.define
class Difference:
    """One way a step differed: ``what`` (reply, error-class, missing-event, extra-event), where, values."""

    what: str
    path: str
    recorded: Any
    actual: Any

    def __str__(self) -> str:
        return f"{self.what} {self.path}: recorded {short(self.recorded)}, got {short(self.actual)}"


def compare_replies(command: str, recorded: dict[str, Any], actual: dict[str, Any], norm: Normalizer) -> list[Difference]:
    """How *actual* differs from *recorded* after normalization: kind, error class, or each differing field."""
    if "return" in recorded and "return" in actual and recorded["return"] == actual["return"]:
        return []  # equal before normalization, so equal after: the common case costs no copy
    r_kind, r_value = norm.reply(command, recorded)
    a_kind, a_value = norm.reply(command, actual)
    if r_kind != a_kind:
        return [Difference("reply", f"{r_kind} vs {a_kind}", recorded.get(r_kind), actual.get(a_kind))]
    if r_kind == "error":
        return [] if r_value == a_value else [Difference("error-class", "error.class", r_value, a_value)]
    return [Difference("reply", path, r, a) for path, r, a in field_differences(r_value, a_value, "return")]


def event_key(norm: Normalizer, msg: dict[str, Any]) -> tuple[str, str]:
    """``(name, canonical JSON of the normalized data)``: what makes two events the same."""
    name, data = norm.event(msg)
    return name, codec.dumps(data, sort_keys=True).decode() if data is not None else "{}"


def field_differences(recorded: Any, actual: Any, path: str) -> list[tuple[str, Any, Any]]:
    """``(path, recorded, actual)`` for every leaf that differs (lists compared by position)."""
    out: list[tuple[str, Any, Any]] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in list(a) + [k for k in b if k not in a]:
                walk(a.get(key, MISSING), b.get(key, MISSING), f"{where}.{key}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{i}]")
        elif a != b:
            out.append((where, a, b))

    walk(recorded, actual, path)
    return out


class _Missing:
    """A field one side has and the other has not."""

    def __repr__(self) -> str:
        return "(absent)"


MISSING: Any = _Missing()


def short(value: Any, width: int = 80) -> str:
    """``repr`` of *value*, cut to *width* characters."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"
