"""The domain as qmprr understands it (attrs), read from a checked, schema-valid tree."""

from __future__ import annotations

import attrs
from lxml import etree

from .errors import DomainError
from .options import IMPLIED_KEYS
from .schema import QEMU_NS

_Q = "{" + QEMU_NS + "}"

#: libvirt's memory units, in bytes.
UNITS = {
    "b": 1, "bytes": 1,
    "KB": 1000, "k": 1024, "KiB": 1024,
    "MB": 1000**2, "M": 1024**2, "MiB": 1024**2,
    "GB": 1000**3, "G": 1024**3, "GiB": 1024**3,
    "TB": 1000**4, "T": 1024**4, "TiB": 1024**4,
}  # fmt: skip


@attrs.frozen
class Arg:
    """``<qemu:arg value=...>``: one argument, verbatim."""

    value: str


@attrs.frozen
class Option:
    """A structured option: ``-NAME`` and its implied value and properties."""

    name: str
    implied: str | None
    props: tuple[tuple[str, str], ...]


Item = Arg | Option


@attrs.frozen
class Commandline:
    """The ``<qemu:commandline>`` content: environment, then arguments in order."""

    env: tuple[tuple[str, str], ...] = ()
    items: tuple[Item, ...] = ()


@attrs.frozen
class Disk:
    line: int
    device: str  # disk | cdrom
    format: str
    source: str | None
    dev: str
    bus: str
    readonly: bool


@attrs.frozen
class Controller:
    line: int
    type: str
    index: int
    model: str | None


@attrs.frozen
class Chardev:
    """A ``<serial>`` or ``<console>``."""

    line: int
    element: str  # serial | console
    type: str  # pty | file
    path: str | None
    append: bool | None
    target: str  # isa-serial (serial), serial | virtio (console)
    port: int | None


@attrs.frozen
class Cpu:
    mode: str  # host-passthrough | custom
    model: str | None = None
    features: tuple[tuple[str, str], ...] = ()  # (policy, name)
    migratable: bool = True


@attrs.frozen
class Domain:
    type: str
    bare: bool  # only <devices><emulator> (and <qemu:commandline>): the argv is exactly those
    name: str | None = None
    uuid: str | None = None
    memory_kib: int | None = None
    current_memory_kib: int | None = None
    vcpus: int | None = None
    arch: str = "x86_64"
    machine: str | None = None
    boot: tuple[str, ...] = ()
    features: frozenset[str] = frozenset()
    cpu: Cpu | None = None
    clock: str | None = None
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    emulator: str | None = None
    disks: tuple[Disk, ...] = ()
    controllers: tuple[Controller, ...] = ()
    chardevs: tuple[Chardev, ...] = ()
    memballoon: str | None = None
    commandline: Commandline = Commandline()


def _text(el: etree._Element | None) -> str | None:
    return None if el is None else "".join(el.itertext(with_tail=False))


def _word(el: etree._Element | None) -> str | None:
    text = _text(el)
    return None if text is None else text.strip()


def _uuid(text: str | None) -> str | None:
    """The dashed form QEMU's ``-uuid`` wants (libvirt also accepts 32 bare hex digits)."""
    if text is None:
        return None
    digits = text.replace("-", "")
    return "-".join(digits[a:b] for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32)))


def _attr(root: etree._Element, path: str, name: str) -> str | None:
    el = root.find(path)
    return None if el is None else el.get(name)


def _kib(el: etree._Element | None) -> int | None:
    if el is None:
        return None
    size = int(str(_word(el))) * UNITS[el.get("unit", "KiB")]
    return -(-size // 1024)  # round up to whole KiB


def read_domain(root: etree._Element, source: str = "<xml>") -> Domain:
    """The :class:`Domain` of a tree that passed :mod:`.check` and the schema."""
    os_type = root.find("os/type")
    cpu = root.find("cpu")
    devices = root.find("devices")
    libvirt_children = [c.tag for c in root if isinstance(c.tag, str) and not c.tag.startswith(_Q)]
    bare = libvirt_children == ["devices"] and devices is not None and [
        c.tag for c in devices if isinstance(c.tag, str)
    ] == ["emulator"]
    return Domain(
        type=str(root.get("type")),
        bare=bare,
        name=_text(root.find("name")),
        uuid=_uuid(_word(root.find("uuid"))),
        memory_kib=_kib(root.find("memory")),
        current_memory_kib=_kib(root.find("currentMemory")),
        vcpus=int(str(_word(root.find("vcpu")))) if root.find("vcpu") is not None else None,
        arch=os_type.get("arch", "x86_64") if os_type is not None else "x86_64",
        machine=os_type.get("machine") if os_type is not None else None,
        boot=tuple(str(b.get("dev")) for b in root.findall("os/boot")),
        features=frozenset(str(f.tag) for f in root.findall("features/*")),
        cpu=_read_cpu(cpu) if cpu is not None else None,
        clock=_attr(root, "clock", "offset"),
        on_poweroff=_word(root.find("on_poweroff")) or "destroy",
        on_reboot=_word(root.find("on_reboot")) or "restart",
        on_crash=_word(root.find("on_crash")) or "destroy",
        emulator=_text(root.find("devices/emulator")),
        disks=tuple(_read_disk(d) for d in root.findall("devices/disk")),
        controllers=tuple(_read_controller(c) for c in root.findall("devices/controller")),
        chardevs=tuple(_read_chardev(c) for c in root.xpath("devices/serial | devices/console")),
        memballoon=_attr(root, "devices/memballoon", "model"),
        commandline=read_commandline(root.find(_Q + "commandline"), source),
    )


def _read_cpu(cpu: etree._Element) -> Cpu:
    mode = cpu.get("mode", "custom")
    return Cpu(
        mode=mode,
        model=_word(cpu.find("model")),
        features=tuple((str(f.get("policy")), str(f.get("name"))) for f in cpu.findall("feature")),
        migratable=cpu.get("migratable", "on") == "on",
    )


_DEFAULT_BUS = {"vd": "virtio", "sd": "scsi", "hd": "ide"}


def _read_disk(disk: etree._Element) -> Disk:
    target = disk.find("target")
    assert target is not None  # required by the schema
    dev = str(target.get("dev"))
    source = disk.find("source")
    driver = disk.find("driver")
    return Disk(
        line=disk.sourceline or 0,
        device=disk.get("device", "disk"),
        format=(driver.get("type") if driver is not None else None) or "raw",
        source=source.get("file") if source is not None else None,
        dev=dev,
        bus=target.get("bus") or _DEFAULT_BUS[dev[:2]],
        readonly=disk.find("readonly") is not None,
    )


def _read_controller(ctl: etree._Element) -> Controller:
    return Controller(ctl.sourceline or 0, str(ctl.get("type")), int(ctl.get("index", "0")), ctl.get("model"))


def _read_chardev(el: etree._Element) -> Chardev:
    source, target = el.find("source"), el.find("target")
    element = str(el.tag)
    default_target = "isa-serial" if element == "serial" else "serial"
    append = source.get("append") if source is not None else None
    port = target.get("port") if target is not None else None
    return Chardev(
        line=el.sourceline or 0,
        element=element,
        type=str(el.get("type")),
        path=source.get("path") if source is not None else None,
        append=None if append is None else append == "on",
        target=(target.get("type") if target is not None else None) or default_target,
        port=int(port) if port is not None else None,
    )


def read_commandline(cmdline: etree._Element | None, source: str = "<xml>") -> Commandline:
    """The environment and arguments of a ``<qemu:commandline>`` (None: empty)."""
    if cmdline is None:
        return Commandline()
    env: dict[str, tuple[str, int]] = {}
    items: list[Item] = []
    for el in cmdline:
        if not isinstance(el.tag, str):
            continue
        local = etree.QName(el).localname
        if local == "env":
            name = str(el.get("name"))
            if name in env:
                raise DomainError(
                    f"{source}:{el.sourceline}: qemu:env {name} given twice (first at line {env[name][1]})"
                )
            env[name] = (el.get("value", ""), el.sourceline or 0)
        elif local == "arg":
            items.append(Arg(str(el.get("value"))))
        else:
            implied_key = IMPLIED_KEYS[local]
            implied = el.get(implied_key) if implied_key else None
            props = tuple((etree.QName(p).localname, str(p.xpath("string()")))
                          for p in el if isinstance(p.tag, str))  # fmt: skip
            items.append(Option(local, implied, props))
    return Commandline(tuple((k, v) for k, (v, _) in env.items()), tuple(items))
