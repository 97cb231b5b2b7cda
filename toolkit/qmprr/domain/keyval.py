"""QEMU option strings (``key=value,key=value``) split and joined exactly as QEMU reads them.

QEMU's option parser (QemuOpts and keyval alike) reads a key up to the first
``=`` or ``,``; a value runs to the next single ``,`` and a doubled ``,,``
stands for one comma inside it. When the first item has no ``=`` and the
option has an implied key (the driver of ``-device``, the type of
``-object``, ...), the whole item is that key's value. No I/O, no XML.
"""

from __future__ import annotations

Pair = tuple[str, str]


def escape(value: str) -> str:
    """*value* as QEMU reads it inside an option string (each ``,`` doubled)."""
    return value.replace(",", ",,")


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
    there is no implied key, and JSON (``{...}``).
    """
    if not text or text.startswith("{"):
        return None
    pairs: list[Pair] = []
    bare = False
    pos = 0
    while True:
        stop = _find_first(text, "=,", pos)
        if stop < len(text) and text[stop] == "=":
            key = text[pos:stop]
            if not key:
                return None
            value, pos = _read_value(text, stop + 1)
        elif pos == 0 and implied is not None:
            key, bare = implied, True
            value, pos = _read_value(text, 0)
            if not value:
                return None
        else:
            return None  # a flag, or an empty item
        pairs.append((key, value))
        if pos >= len(text):
            break
        pos += 1  # the single comma ending the value
        if pos >= len(text):
            return None  # a trailing comma: an empty last item
    return (pairs, bare) if join(pairs, bare) == text else None


def _find_first(text: str, chars: str, start: int) -> int:
    hits = [i for i in (text.find(c, start) for c in chars) if i >= 0]
    return min(hits, default=len(text))


def _read_value(text: str, pos: int) -> tuple[str, int]:
    """The value starting at *pos* (``,,`` read as ``,``) and the index of its ending comma."""
    out = []
    while pos < len(text):
        if text[pos] == ",":
            if text.startswith(",,", pos):
                out.append(",")
                pos += 2
                continue
            break
        out.append(text[pos])
        pos += 1
    return "".join(out), pos
