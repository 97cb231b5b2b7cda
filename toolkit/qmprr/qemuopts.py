"""QEMU option strings (``key=value,key=value``) read exactly as QEMU 7.2 reads them.

The one parser for QEMU's option language, shared by replay's checks
(:mod:`qmprr.replay.safety`), the domain builder (:mod:`qmprr.domain.keyval`)
and redaction. It follows ``util/qemu-option.c`` (``get_opt_name_value``,
``get_opt_value``) and ``util/keyval.c`` (``keyval_parse_one``), which agree
on how text splits:

* a key runs to the first ``=`` or ``,``;
* a value runs to the next *single* ``,``; a doubled ``,,`` is one literal
  comma, so ``serial=a,,,file=/x`` is ``serial`` = ``a,`` then ``file`` = ``/x``;
* an item with no ``=`` is the implied key's value when it comes first and
  the option has one (the driver of ``-device``, the type of ``-object``), else
  a flag (QemuOpts reads ``foo`` as ``foo=on`` and ``nofoo`` as ``foo=off``;
  keyval refuses it: here it is an :class:`Item` with ``flag`` set).

No I/O; nothing above :mod:`qmprr.codec` is imported.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Item:
    """One item of an option string: *key* is None for a bare first value (the implied key's)."""

    key: str | None
    value: str
    flag: bool = False  # no '=' and not first: QEMU reads key=on (QemuOpts) or refuses it (keyval)


def escape(value: str) -> str:
    """*value* as QEMU reads it inside an option string (each ``,`` doubled)."""
    return value.replace(",", ",,")


def read_value(text: str, pos: int) -> tuple[str, int]:
    """The value starting at *pos* (``,,`` read as ``,``) and the index of the single comma ending it.

    QEMU's ``get_opt_value``: the index is ``len(text)`` when the value runs to the end.
    """
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


def parse(text: str, implied: bool = False) -> list[Item]:
    """Every item of *text* as QEMU reads it; never fails (empty items are flags named '')."""
    items: list[Item] = []
    pos = 0
    while pos < len(text):
        stop = min((i for i in (text.find("=", pos), text.find(",", pos)) if i >= 0), default=len(text))
        if stop < len(text) and text[stop] == "=":
            key = text[pos:stop]
            value, pos = read_value(text, stop + 1)
            items.append(Item(key, value))
        elif pos == 0 and implied:
            value, pos = read_value(text, 0)
            items.append(Item(None, value))
        else:
            # get_opt_name: a flag's name ends at the next ',' with no unescaping
            items.append(Item(text[pos:stop], "on", flag=True))
            pos = stop
        pos += 1  # the single comma ending the item
    return items


def unparse(items: list[Item]) -> str:
    """*items* as an option string that :func:`parse` reads back the same."""
    return ",".join(
        escape(i.value) if i.key is None else i.key if i.flag else f"{i.key}={escape(i.value)}" for i in items
    )


def values(text: str) -> list[str]:
    """Every key and value of *text* as QEMU reads them (for scanning, keys included)."""
    out: list[str] = []
    for item in parse(text, implied=True):
        if item.key:
            out.append(item.key)
        if not item.flag:
            out.append(item.value)
    return out
