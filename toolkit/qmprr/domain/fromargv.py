"""A QEMU command line as a (bare) domain XML that turns back into exactly that command line.

Words before the binary of the form ``NAME=VALUE`` (as libvirt's log writes
``LC_ALL=C ... /usr/bin/qemu-system-x86_64 ...``) become ``<qemu:env>``; the
binary becomes ``<emulator>``; each ``-OPTION VALUE`` with an element form
becomes a structured option, every other word a ``<qemu:arg>``.
"""

from __future__ import annotations

import re

from lxml import etree

from .errors import DomainError
from .model import Arg, Commandline, Item, Option
from .options import IMPLIED_KEYS, parse_option
from .schema import QEMU_NS

_ENV_WORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)\Z", re.S)
# Characters XML 1.0 cannot hold, even escaped.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def split_env(words: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Leading ``NAME=VALUE`` words, and the rest (binary first)."""
    env: list[tuple[str, str]] = []
    for index, word in enumerate(words):
        match = _ENV_WORD.match(word)
        if match is None:
            return env, words[index:]
        if any(name == match[1] for name, _ in env):
            raise DomainError(f"environment variable {match[1]} is given twice before the QEMU binary")
        env.append((match[1], match[2]))
    return env, []


def read_argv(words: list[str]) -> tuple[str, Commandline]:
    """(emulator, commandline) for ``[NAME=VALUE...] QEMU ARGS...``."""
    for position, word in enumerate(words):
        bad = _NOT_XML.search(word)
        if bad is not None:
            raise DomainError(
                f"word {position + 1} ({word[:30]!r}) holds character U+{ord(bad[0]):04X}, which XML cannot hold"
            )
    env, rest = split_env(list(words))
    if not rest:
        raise DomainError("give the QEMU command line, binary first (e.g. qemu-system-x86_64 -machine q35)")
    if not rest[0]:
        raise DomainError("the QEMU binary is an empty word")
    items: list[Item] = []
    index = 1
    while index < len(rest):
        word = rest[index]
        name = word[1:]
        if word.startswith("-") and name in IMPLIED_KEYS and index + 1 < len(rest):
            parsed = parse_option(name, rest[index + 1])
            if parsed is not None:
                items.append(Option(name, parsed[0], tuple(parsed[1])))
                index += 2
                continue
        items.append(Arg(word))
        index += 1
    return rest[0], Commandline(tuple(env), tuple(items))


def domain_xml(emulator: str, commandline: Commandline) -> str:
    """The bare domain XML for *emulator* and *commandline* (pretty-printed)."""
    q = "{" + QEMU_NS + "}"
    root = etree.Element("domain", {"type": "qemu"}, nsmap={"qemu": QEMU_NS})
    devices = etree.SubElement(root, "devices")
    etree.SubElement(devices, "emulator").text = emulator
    cmdline = etree.SubElement(root, q + "commandline")
    for name, value in commandline.env:
        etree.SubElement(cmdline, q + "env", {"name": name, "value": value})
    for item in commandline.items:
        if isinstance(item, Arg):
            etree.SubElement(cmdline, q + "arg", {"value": item.value})
            continue
        el = etree.SubElement(cmdline, q + item.name)
        implied_key = IMPLIED_KEYS[item.name]
        if item.implied is not None and implied_key is not None:
            el.set(implied_key, item.implied)
        for key, value in item.props:
            etree.SubElement(el, key).text = value
    text: str = etree.tostring(root, pretty_print=True, encoding="unicode")
    return text


def from_argv(words: list[str]) -> str:
    """Domain XML for a QEMU command line; ``argv`` of it gives *words* back."""
    return domain_xml(*read_argv(words))
