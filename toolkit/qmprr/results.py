"""Typed results as JSON-ready data and back: one cattrs converter for ``diff`` and ``replay``.

:func:`unstructure` gives a result class's JSON form (its fields, and the
figures a class derives, registered with :func:`derived`); :func:`structure`
reads that form back into the class (derived keys are ignored), checked by
cattrs. JSON values in a result (replies, arguments) stay as they are; a value
one side lacks (:data:`~qmprr.replay.compare.MISSING`) is written ``"(absent)"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import cattrs
from cattrs.gen import make_dict_unstructure_fn

from .recording.convert import describe_error
from .replay.compare import MISSING

T = TypeVar("T")

converter = cattrs.Converter(forbid_extra_keys=False)
converter.register_unstructure_hook(type(MISSING), lambda _: "(absent)")


def derived(cls: type[T], **figures: Callable[[T], Any]) -> None:
    """Write *cls* with its fields and then *figures* (name: how it is derived from the object)."""
    base = make_dict_unstructure_fn(cls, converter)

    def hook(obj: T) -> dict[str, Any]:
        d = base(obj)
        for name, figure in figures.items():
            d[name] = converter.unstructure(figure(obj))
        return d

    converter.register_unstructure_hook(cls, hook)


def unstructure(obj: Any) -> Any:
    """*obj*'s JSON form."""
    return converter.unstructure(obj)


class ResultError(ValueError):
    """Data that is not the JSON form of a result; the message names each field that is wrong."""


def structure(data: Any, cls: type[T]) -> T:
    """*data* (a JSON form) as a *cls*; raises :class:`ResultError`."""
    try:
        return converter.structure(data, cls)
    except Exception as exc:  # cattrs raises ClassValidationError and friends
        raise ResultError(f"not a {cls.__name__}: {describe_error(exc)}") from None
