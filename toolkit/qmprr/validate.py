"""Tables a user writes (rules files, test markers) checked by cattrs, with messages that name the field.

:func:`check` structures a table (a dict from TOML, a marker's keywords)
into an attrs class: no unknown keys, no missing ones, strings that are
strings (cattrs would turn ``5`` into ``"5"``). :class:`Invalid` says what is
wrong, a field at a time: ``'path' is required``, ``'action' must be one of
'ignore', 'pattern'``, ``unknown key(s) 'what'``.
"""

from __future__ import annotations

import types
import typing
from typing import Any, TypeVar

import cattrs
from cattrs.errors import ForbiddenExtraKeysError

T = TypeVar("T")


class Invalid(ValueError):
    """A table that does not fit its class; the message names each field that is wrong."""


def _strict_str(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _strict_bool(value: Any, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{value!r} is not true or false")
    return value


def _strict_list(value: Any, type_: Any) -> list[Any]:
    if not isinstance(value, (list, tuple)):  # a string is not a list of its characters
        raise TypeError(f"{value!r} is not a list")
    (item,) = typing.get_args(type_) or (Any,)
    return [_converter.structure(v, item) for v in value]


_converter = cattrs.Converter(forbid_extra_keys=True)
_converter.register_structure_hook(str, _strict_str)
_converter.register_structure_hook(bool, _strict_bool)


def _is_list(type_: Any) -> bool:
    origin: Any = typing.get_origin(type_)
    return origin is list


_converter.register_structure_hook_func(_is_list, _strict_list)


def _wanted(type_: Any) -> str:
    """What a value of *type_* is, in words."""
    args = [a for a in typing.get_args(type_) if a is not type(None)]
    if typing.get_origin(type_) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if args and typing.get_origin(type_) in (typing.Union, types.UnionType):
        return " or ".join(_wanted(a) for a in args)
    if _is_list(type_):
        return f"a list of {_wanted(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    return {str: "a string", bool: "true or false", int: "an integer", float: "a number"}.get(type_, "a table")


def _message(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "is required"
    if isinstance(exc, ForbiddenExtraKeysError):
        return "unknown key(s) " + ", ".join(repr(k) for k in sorted(exc.extra_fields))
    return f"must be {_wanted(type_)}" if type_ is not None else "must be a table"


def _describe(exc: BaseException) -> str:
    if not isinstance(exc, cattrs.BaseValidationError):
        return "must be a table"
    out = []
    for line in cattrs.transform_error(exc, format_exception=_message):
        text, _, where = line.rpartition(" @ ")
        field = where.removeprefix("$").lstrip(".")
        out.append(f"{field!r} {text}" if field else text)
    return "; ".join(out)


def check(data: Any, cls: type[T]) -> T:
    """*data* as a *cls*; raises :class:`Invalid`."""
    if not isinstance(data, dict):
        raise Invalid("must be a table")
    try:
        return _converter.structure(data, cls)
    except Exception as exc:  # cattrs raises ClassValidationError and friends
        raise Invalid(_describe(exc)) from None
