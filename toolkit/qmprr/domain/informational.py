"""The parts of libvirt's own expanded XML (``virsh dumpxml``, the status file) that say nothing to QEMU.

libvirt writes back what it decided or observed: device aliases and PCI
addresses, security labels, the cgroup partition, the running domain's id,
the backing chain it probed, the PS/2 input devices every x86 PC has. A
triager replays from the XML a bug report attaches, so these are dropped
before the schema check, each kind listed once in a note (its count and
first line), rather than refused.
"""

from __future__ import annotations

import collections

from lxml import etree

#: Elements dropped wherever they are, and why.
ELEMENTS = {
    "alias": "device names libvirt assigned (QEMU gets its own ids)",
    "address": "device addresses libvirt assigned (QEMU places the devices itself)",
    "seclabel": "libvirt's security labels (replay runs QEMU in its own sandbox)",
    "backingStore": "the backing chain libvirt probed (the image says it)",
    "resource": "libvirt's cgroup partition",
}
#: Attributes dropped, by (element, attribute).
ATTRIBUTES = {
    ("domain", "id"): "the id of the running domain",
    ("source", "index"): "libvirt's index of a disk source",
}


def _implicit(el: etree._Element) -> str | None:
    """What a device libvirt adds by itself is, or None: the PS/2 input of every x86 PC, no sound."""
    if len(el):
        return None
    if el.tag == "input" and el.get("bus") == "ps2" and el.get("type") in ("mouse", "keyboard"):
        return f"<input type='{el.get('type')}' bus='ps2'>"
    if el.tag == "audio" and el.get("type") == "none":
        return "<audio type='none'>"
    return None


IMPLICIT = "a device libvirt lists by itself (the machine has it, or it is nothing)"


def strip_informational(root: etree._Element, source: str = "<xml>") -> tuple[str, ...]:
    """Remove the informational parts from *root* (in place); one note per kind."""
    found: dict[str, list[int]] = collections.defaultdict(list)
    why: dict[str, str] = {}

    def drop(el: etree._Element, key: str, reason: str) -> None:
        found[key].append(el.sourceline or 0)
        why[key] = reason
        el.getparent().remove(el)

    def ours(el: etree._Element) -> bool:  # not comments, not the qemu: namespace (the user's own options)
        return isinstance(el.tag, str) and etree.QName(el).namespace is None

    for el in list(root.iter()):  # a list: elements are removed on the way
        if not ours(el):
            continue
        for (owner, attr), reason in ATTRIBUTES.items():
            if el.tag == owner and attr in el.attrib:
                found[f"attribute '{attr}' on <{owner}>"].append(el.sourceline or 0)
                why[f"attribute '{attr}' on <{owner}>"] = reason
                del el.attrib[attr]
        if el.tag in ELEMENTS and el is not root and el.getparent() is not None:
            drop(el, f"<{el.tag}>", ELEMENTS[el.tag])
    devices = root.find("devices")
    for el in list(devices) if devices is not None else []:
        key = _implicit(el) if ours(el) else None
        if key is not None:
            drop(el, key, IMPLICIT)
    return tuple(
        f"{source}:{lines[0]}: ignored {key}{f' (x{len(lines)})' if len(lines) > 1 else ''}: {why[key]}"
        for key, lines in found.items()
    )
