"""Structured QEMU options: which ``-OPTION``s have an element form, and their implied keys.

``<qemu:device driver="virtio-rng-pci"><id>rng0</id></qemu:device>`` stands for
``-device virtio-rng-pci,id=rng0``: the element is named after the option, the
attribute (if any) is the option's implied first key, each child is one
``key=value``. The schema (``domain.rng``) lists the same names; a test keeps
the two in step.
"""

from __future__ import annotations

import re

from . import keyval
from .keyval import Pair

#: Option name -> its implied first key (None: every item needs ``key=``), as QEMU 7.2 parses it.
IMPLIED_KEYS: dict[str, str | None] = {
    "accel": "accel",
    "action": None,
    "add-fd": None,
    "audiodev": "driver",
    "blockdev": "driver",
    "boot": "order",
    "chardev": "backend",
    "compat": None,
    "device": "driver",
    "display": "type",
    "drive": None,
    "fsdev": "fsdriver",
    "fw_cfg": None,
    "global": None,
    "icount": "shift",
    "m": "size",
    "machine": "type",
    "mon": "chardev",
    "msg": None,
    "name": "guest",
    "netdev": "type",
    "nic": "type",
    "numa": "type",
    "object": "qom-type",
    "overcommit": None,
    "rtc": None,
    "sandbox": "enable",
    "smbios": "type",
    "smp": "cpus",
    "spice": None,
    "tpmdev": "type",
    "vnc": "vnc",
}

# An XML NCName restricted to what QEMU property names use, so every key is an element name.
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


def is_key(name: str) -> bool:
    """Whether *name* can be a property element (and is a plausible QEMU key)."""
    return bool(_KEY.match(name))


def option_text(option: str, implied_value: str | None, props: list[Pair]) -> str:
    """The argument QEMU gets for a structured option (commas in values doubled)."""
    implied = IMPLIED_KEYS[option]
    if implied_value is None:
        return keyval.join(list(props))
    assert implied is not None, option
    return keyval.join([(implied, implied_value), *props], bare_first=True)


def parse_option(option: str, text: str) -> tuple[str | None, list[Pair]] | None:
    """(implied value, properties) for ``-OPTION TEXT``, or None when it has no exact element form."""
    if option not in IMPLIED_KEYS:
        return None
    parsed = keyval.split(text, IMPLIED_KEYS[option])
    if parsed is None:
        return None
    pairs, bare = parsed
    if not all(is_key(key) for key, _ in pairs):
        return None
    return (pairs[0][1], pairs[1:]) if bare else (None, pairs)
