"""Records to JSON-ready dicts and back (cattrs), kept apart from the classes.

Optional fields at their default are left out of the on-disk form, so a
record carries only what it says. ``msg`` objects pass through untouched.
"""

from __future__ import annotations

from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .model import RECORD_TYPES, Msg, Record


class RecordSchemaError(ValueError):
    """A dict that is not a valid record; the message names the field."""


def _structure_msg(value: Any, _type: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


_ALWAYS = frozenset({"seq", "t", "kind", "format"})


def _as_is(value: Any) -> Any:
    return value


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_structure_hook(Msg, _structure_msg)
    conv.register_unstructure_hook(Msg, lambda v: v)
    for cls in RECORD_TYPES.values():
        # Fields on disk even at their default value.
        kept = {a.name: override(omit_if_default=False) for a in attrs.fields(cls) if a.name in _ALWAYS}
        # JSON values as they are: cattrs would walk them recursively (a client's
        # id may nest as deep as QEMU allows, 1024 levels).
        kept.update({a.name: override(unstruct_hook=_as_is) for a in attrs.fields(cls) if a.type in (Any, "Any")})
        conv.register_unstructure_hook(
            cls,
            make_dict_unstructure_fn(
                cls, conv, _cattrs_omit_if_default=True, _cattrs_include_init_false=True, **kept  # type: ignore[arg-type]  # kept's keys are field names, not _cattrs_ options
            ),
        )
        conv.register_structure_hook(cls, make_dict_structure_fn(cls, conv))
    return conv


converter = _make_converter()
_structure = converter.structure

_unstructure = converter.unstructure


def unstructure(record: Record) -> dict[str, Any]:
    """The on-disk dict of a record: seq, t, kind first, ``orig`` last, defaults left out."""
    d: dict[str, Any] = _unstructure(record)
    if "orig" in d:
        d["orig"] = d.pop("orig")
    return d


def structure(d: Any) -> Record:
    """Build the record a dict describes; :class:`RecordSchemaError` if it is not one."""
    if not isinstance(d, dict):
        raise RecordSchemaError("a record must be a JSON object")
    kind = d.get("kind")
    cls = RECORD_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RecordSchemaError(f"unknown record kind {kind!r}")
    for key in ("seq", "t"):
        if key not in d:
            raise RecordSchemaError(f"{kind} record has no {key!r}")
    if type(d["seq"]) is not int or d["seq"] < 0:
        raise RecordSchemaError(f"'seq' must be a non-negative integer, not {d['seq']!r}")
    if type(d["t"]) not in (int, float):
        raise RecordSchemaError(f"'t' must be a number, not {d['t']!r}")
    try:
        return _structure(d, cls)
    except Exception as exc:  # cattrs raises ClassValidationError and friends
        raise RecordSchemaError(f"invalid {kind} record: {describe_error(exc)}") from None


def describe_error(exc: BaseException) -> str:
    """A cattrs error in words, each naming the field (``invalid value for type, expected int @ $.seq``)."""
    if isinstance(exc, cattrs.ClassValidationError):
        notes = cattrs.transform_error(exc)
        return "; ".join(notes)
    return str(exc) or type(exc).__name__

