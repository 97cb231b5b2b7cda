"""QEMU option strings (``key=value,key=value``) split and joined exactly as QEMU reads them.

QEMU's option parser (QemuOpts and keyval alike) reads a key up to the first
``=`` or ``,``; a value runs to the next single ``,`` and a doubled ``,,``
stands for one comma inside it. When the first item has no ``=`` and the
option has an implied key (the driver of ``-device``, the type of
``-object``, ...), the whole item is that key's value. No I/O, no XML.
"""

from __future__ import annotations

from .. import qemuopts
from ..qemuopts import escape as escape  # re-exported: it used to live here

Pair = tuple[str, str]


def can_be_bare(value: str) -> bool:
    """Whether *value* can be written as an implied first item (QEMU would read a key in ``a=b``)."""
    return bool(value) and "=" not in value


def join(pairs: list[Pair], bare_first: bool = False) -> str:
    """The option string for *pairs*; with *bare_first*, the first value goes without its key.

    A first value that cannot be bare (see :func:`can_be_bare`) keeps its ``key=``.
    """
    items = []
    for index, (key, value) in enumerate(pairs):
        if index == 0 and bare_first and can_be_bare(value):
            items.append(escape(value))
        else:
            items.append(f"{key}={escape(value)}")
    return ",".join(items)


def split(text: str, implied: str | None = None) -> tuple[list[Pair], bool] | None:
    """(pairs, whether the first was bare) as QEMU reads *text*; None when they would not join back.

    None covers what has no exact key/value form: an empty string, empty
    items, flags without ``=`` (``server``, ``nowait``), a bare first item when
    there is no implied key, and JSON (``{...}``). The reading itself is
    :func:`qmprr.qemuopts.parse`.
    """
    if not text or text.startswith("{"):
        return None
    items = qemuopts.parse(text, implied=implied is not None)
    if any(item.flag or item.key == "" for item in items) or (items and items[0].key is None and not items[0].value):
        return None
    pairs = [(item.key if item.key is not None else implied or "", item.value) for item in items]
    bare = bool(items) and items[0].key is None
    return (pairs, bare) if join(pairs, bare) == text else None
