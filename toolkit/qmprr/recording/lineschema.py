"""The record schema as msgspec structs: check a line's JSON and fields without building it.

:func:`decode` validates a whole line (JSON syntax, the record's kind, every
field's type) the way the typed schema (:mod:`.convert`) would accept it, but
builds only a small struct: QMP messages are checked to be JSON objects and
skipped, ``Any`` values are skipped. It is only ever stricter than the typed
schema (cattrs turns ``"5"`` into 5; this refuses it): a line it refuses goes
to the typed schema for the verdict and the exact message, so its strictness
costs time, never a wrong answer.

msgspec does not check UTF-8 inside values it skips, so :func:`decode`
checks the line's UTF-8 itself (orjson refuses invalid UTF-8 and lone
surrogates, and so does this).
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, ClassVar, Literal

import attrs
import msgspec

from .model import RECORD_TYPES, Msg

#: What :func:`decode` raises for a line it does not accept (JSON, UTF-8 or schema, or nesting
#: deeper than msgspec's recursion allows: the slow path's parser reads any depth qmprr writes).
Refused = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


class _Object(msgspec.Struct, gc=False):
    """Any JSON object, its members skipped (a QMP message)."""


#: An integer as orjson reads one (msgspec bounds are i64: a larger u64 goes to the slow path).
_INT = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class LineRecord(msgspec.Struct, tag_field="kind", gc=False):
    """Fields every record has; each kind's struct adds its own, and ``K`` is its kind."""

    K: ClassVar[str]
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    t: float


def _spec(tp: Any) -> Any:
    """The msgspec type that accepts no more than cattrs accepts for attrs type *tp*."""
    if tp is Msg:
        return _Object
    if tp is Any:
        return msgspec.Raw  # any JSON value, skipped
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_spec(a) for a in typing.get_args(tp))]
    if origin is dict:
        key, value = typing.get_args(tp)
        return _Object if value is Any else dict[key, _spec(value)]  # type: ignore[valid-type, misc]  # a type built at run time for msgspec
    if origin is list:
        return list[_spec(typing.get_args(tp)[0])]  # type: ignore[misc]  # a type built at run time for msgspec
    if tp is int:  # orjson's range: a larger integer is read as a float (and cattrs makes another int of it)
        return _INT
    if origin is Literal or tp in (float, str, type(None)):
        return tp
    raise TypeError(f"no msgspec type for {tp!r}")  # pragma: no cover - a new field type in model.py


def _struct(kind: str, cls: type) -> type[LineRecord]:
    hints = typing.get_type_hints(cls)
    fields: list[tuple[Any, ...]] = []
    for a in attrs.fields(cls):
        if a.name in ("seq", "t", "kind"):
            continue
        spec = _spec(hints[a.name])
        fields.append((a.name, spec) if a.default is attrs.NOTHING else (a.name, spec, None))
    fields.sort(key=len)  # required fields first, as msgspec wants
    struct: type[LineRecord] = msgspec.defstruct(f"Line{cls.__name__}", fields, bases=(LineRecord,), tag=kind,
                                                 namespace={"K": kind}, gc=False)  # type: ignore[assignment]  # defstruct returns type[Struct]
    return struct


#: The struct of each kind.
STRUCTS: dict[str, type[LineRecord]] = {kind: _struct(kind, cls) for kind, cls in RECORD_TYPES.items()}
#: :func:`decode` without its UTF-8 check (a caller that checks it inline).
decode_unchecked = msgspec.json.Decoder(typing.Union[tuple(STRUCTS.values())]).decode


def decode(line: bytes) -> LineRecord:
    """The checked fields of a line; raises one of :data:`Refused` for what the fast path does not accept."""
    record: LineRecord = decode_unchecked(line)
    if not line.isascii():
        line.decode()  # strict UTF-8: no invalid sequences, no encoded surrogates
    return record
