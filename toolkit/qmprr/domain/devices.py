"""Devices of a domain as QEMU 7.2 options: controllers, disks (``-blockdev`` + ``-device``), chardevs.

Naming follows libvirt where it has a convention (``virtio-disk0``,
``sata0-0-1``, ``charserial0``, ``usb``, ``scsi0``); block nodes are
``disk-<target dev>``. Bus addresses come from the target name as libvirt
derives them (``sdb`` is index 1). Controllers a disk or console needs and
the XML does not declare are added (virtio-scsi, qemu-xhci, ich9-ahci,
virtio-serial).
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from . import keyval
from .errors import DomainError
from .model import Chardev, Controller, Disk, Domain

#: Controller type -> {model: QEMU device} (first: the default). Empty: built-in only.
CONTROLLER_MODELS: dict[str, dict[str, str | None]] = {
    "scsi": {"virtio-scsi": "virtio-scsi-pci", "lsilogic": "lsi53c895a"},
    "usb": {"qemu-xhci": "qemu-xhci", "nec-xhci": "nec-usb-xhci", "piix3-uhci": "piix3-usb-uhci",
            "ich9-ehci1": "ich9-usb-ehci1", "none": None},  # fmt: skip
    "sata": {},
    "ide": {},
    "pci": {"pcie-root": None, "pci-root": None},
    "virtio-serial": {},
}
#: Disks per controller, by bus (libvirt's drive addresses).
PER_CONTROLLER = {"sata": 6, "ide": 4, "scsi": 7}


def machine_family(machine: str | None) -> str:
    """``pc`` (i440fx, QEMU's default), ``q35``, or ``other``."""
    if machine is None or machine == "pc" or machine.startswith(("pc-i440fx", "pc-1.", "pc-0.")):
        return "pc"
    if machine == "q35" or machine.startswith("pc-q35"):
        return "q35"
    return "other"


def disk_index(dev: str) -> int:
    """libvirt's index of a target name: ``vda`` 0, ``vdz`` 25, ``vdaa`` 26."""
    index = 0
    for ch in dev[2:]:
        index = index * 26 + (ord(ch) - ord("a") + 1)
    return index - 1


def _opt(pairs: list[tuple[str, str]], bare_first: bool = False) -> str:
    return keyval.join(pairs, bare_first)


@attrs.define
class DeviceBuilder:
    """Turns a domain's devices into arguments; errors name the source and line."""

    domain: Domain
    source: str
    family: str = ""
    controllers: dict[tuple[str, int], Controller | None] = attrs.field(factory=dict)
    argv: list[str] = attrs.field(factory=list)

    def build(self) -> list[str]:
        self.family = machine_family(self.domain.machine)
        ctl: Controller | None
        for ctl in self.domain.controllers:
            self._declare(ctl)
        disks = self._disk_options()
        chardevs = list(self._chardev_options())
        for (kind, index), ctl in self.controllers.items():
            self.argv += self._controller_option(kind, index, ctl)
        self.argv += disks + chardevs
        if self.domain.memballoon == "virtio":
            self.argv += ["-device", "virtio-balloon-pci,id=balloon0"]
        return self.argv

    def _fail(self, line: int, message: str) -> DomainError:
        return DomainError(f"{self.source}:{line}: {message}")

    # -- controllers ---------------------------------------------------------

    def _declare(self, ctl: Controller) -> None:
        key = (ctl.type, ctl.index)
        if key in self.controllers:
            raise self._fail(ctl.line, f"controller type='{ctl.type}' index='{ctl.index}' is declared twice")
        models = CONTROLLER_MODELS[ctl.type]
        if ctl.model is not None and ctl.model not in models:
            fits = ", ".join(models) or "none (leave model out)"
            raise self._fail(ctl.line, f"controller type='{ctl.type}' takes model {fits}, not '{ctl.model}'")
        if ctl.type == "pci" and (ctl.index != 0 or ctl.model not in (None, self._pci_root())):
            raise self._fail(ctl.line, f"only the machine's root PCI bus is supported ({self._pci_root()} index 0)")
        if ctl.type == "ide" and not (self.family == "pc" and ctl.index == 0):
            raise self._fail(ctl.line, "only the built-in IDE controller of pc (i440fx) machines is supported")
        self.controllers[key] = ctl

    def _pci_root(self) -> str:
        return "pcie-root" if self.family == "q35" else "pci-root"

    def _need(self, kind: str, index: int, line: int) -> str:
        """Bus name prefix of controller (*kind*, *index*), adding the controller when undeclared."""
        if (kind, index) not in self.controllers:
            if kind == "ide" and self.family != "pc":
                raise self._fail(line, "IDE disks need a pc (i440fx) machine; use bus='sata' on q35")
            self.controllers[(kind, index)] = None
        ctl = self.controllers[(kind, index)]
        if ctl is not None and ctl.model == "none":
            raise self._fail(line, f"needs a {kind} controller, but controller index {index} has model 'none'")
        return self._bus_id(kind, index)

    def _bus_id(self, kind: str, index: int) -> str:
        if kind == "usb":
            return "usb" if index == 0 else f"usb{index}"
        if kind == "sata" and index == 0 and self.family == "q35":
            return "ide"  # the ICH9 AHCI built into q35
        if kind == "ide":
            return "ide"
        return f"{kind}{index}"

    def _controller_option(self, kind: str, index: int, ctl: Controller | None) -> list[str]:
        bus_id = self._bus_id(kind, index)
        if kind in ("pci", "ide") or (kind == "sata" and bus_id == "ide"):
            return []  # built into the machine
        if kind == "sata":
            return ["-device", f"ich9-ahci,id={bus_id}"]
        if kind == "virtio-serial":
            return ["-device", f"virtio-serial-pci,id={bus_id}"]
        models = CONTROLLER_MODELS[kind]
        qemu_device = models[ctl.model] if ctl is not None and ctl.model is not None else next(iter(models.values()))
        return [] if qemu_device is None else ["-device", f"{qemu_device},id={bus_id}"]

    # -- disks ---------------------------------------------------------------

    def _disk_options(self) -> list[str]:
        boot = self._boot_indexes()
        seen: dict[str, int] = {}
        out: list[str] = []
        for disk in self.domain.disks:
            if disk.dev in seen:
                raise self._fail(disk.line, f"target dev '{disk.dev}' is used twice (first at line {seen[disk.dev]})")
            seen[disk.dev] = disk.line
            node = f"disk-{disk.dev}"
            if disk.source is not None:
                pairs = [("driver", disk.format), ("node-name", node)]
                if disk.readonly or disk.device == "cdrom":
                    pairs.append(("read-only", "on"))
                pairs += [("file.driver", "file"), ("file.filename", disk.source)]
                out += ["-blockdev", _opt(pairs)]
            elif disk.device == "disk":
                raise self._fail(disk.line, f"disk '{disk.dev}' needs <source file='...'/> (only a cdrom may be empty)")
            device = self._disk_device(disk)
            if disk.source is not None:
                device.append(("drive", node))
            if disk in boot:
                device.append(("bootindex", str(boot[disk])))
            out += ["-device", _opt(device, bare_first=True)]
        return out

    def _boot_indexes(self) -> dict[Disk, int]:
        """libvirt's reading of ``<os><boot dev=...>``: the first disk of each kind, in order."""
        kinds = {"hd": "disk", "cdrom": "cdrom"}
        indexes: dict[Disk, int] = {}
        for order, dev in enumerate(self.domain.boot, start=1):
            first = next((d for d in self.domain.disks if d.device == kinds.get(dev)), None)
            if first is not None and first not in indexes:
                indexes[first] = order
        return indexes

    def _disk_device(self, disk: Disk) -> list[tuple[str, str]]:
        index = disk_index(disk.dev)
        cd = disk.device == "cdrom"
        if disk.bus == "virtio":
            if cd:
                raise self._fail(disk.line, "a cdrom cannot be on bus 'virtio'; use sata, ide or scsi")
            return [("driver", "virtio-blk-pci"), ("id", f"virtio-disk{index}")]
        if disk.bus == "usb":
            if cd:
                raise self._fail(disk.line, "a cdrom on bus 'usb' is not supported; use sata, ide or scsi")
            return [("driver", "usb-storage"), ("bus", f"{self._need('usb', 0, disk.line)}.0"),
                    ("id", f"usb-disk{index}")]  # fmt: skip
        per = PER_CONTROLLER[disk.bus]
        controller, unit = divmod(index, per)
        if disk.readonly and not cd and disk.bus in ("sata", "ide"):
            raise self._fail(
                disk.line, f"a read-only disk on bus '{disk.bus}' is not possible in QEMU; use virtio or scsi"
            )
        if disk.bus == "ide":
            if controller > 0:
                raise self._fail(disk.line, f"'{disk.dev}' is past the 4 IDE places (hda..hdd)")
            bus = self._need("ide", 0, disk.line)
            return [("driver", "ide-cd" if cd else "ide-hd"), ("bus", f"{bus}.{unit // 2}"),
                    ("unit", str(unit % 2)), ("id", f"ide0-{unit // 2}-{unit % 2}")]  # fmt: skip
        bus = self._need(disk.bus, controller, disk.line)
        if disk.bus == "sata":
            return [("driver", "ide-cd" if cd else "ide-hd"), ("bus", f"{bus}.{unit}"),
                    ("id", f"sata{controller}-0-{unit}")]  # fmt: skip
        ctl = self.controllers.get(("scsi", controller))
        pairs = [("driver", "scsi-cd" if cd else "scsi-hd"), ("bus", f"{bus}.0")]
        if ctl is None or ctl.model in (None, "virtio-scsi"):
            pairs += [("channel", "0"), ("scsi-id", str(unit)), ("lun", "0")]
        else:
            pairs += [("scsi-id", str(unit))]
        return pairs + [("id", f"scsi{controller}-0-{unit}-0")]

    # -- serial ports and consoles ------------------------------------------

    def _chardev_options(self) -> Iterator[str]:
        serials = [c for c in self.domain.chardevs if c.element == "serial"]
        ports: dict[int, Chardev] = {}
        for serial in serials:
            self._serial_port(serial, ports)
        consoles = [c for c in self.domain.chardevs if c.element == "console"]
        for number, console in enumerate(consoles):
            if console.target == "serial":
                port = console.port if console.port is not None else 0
                if port not in ports:  # libvirt: a serial console without its serial port makes one
                    self._serial_port(attrs.evolve(console, port=port), ports)
                continue
            bus = self._need("virtio-serial", 0, console.line)
            yield from ["-chardev", self._chardev_text(console, f"charconsole{number}")]
            yield from ["-device", f"virtconsole,bus={bus}.0,chardev=charconsole{number},id=console{number}"]
        for port in sorted(ports):
            yield from ["-chardev", self._chardev_text(ports[port], f"charserial{port}")]
            yield from ["-device", f"isa-serial,index={port},chardev=charserial{port},id=serial{port}"]

    def _serial_port(self, serial: Chardev, ports: dict[int, Chardev]) -> None:
        port = serial.port if serial.port is not None else next(p for p in range(99) if p not in ports)
        if port > 3:
            raise self._fail(serial.line, f"serial port {port}: an isa-serial port is 0..3")
        if port in ports:
            raise self._fail(serial.line, f"serial port {port} is used twice (first at line {ports[port].line})")
        ports[port] = serial

    def _chardev_text(self, dev: Chardev, ident: str) -> str:
        if dev.type == "pty":
            return _opt([("backend", "pty"), ("id", ident)], bare_first=True)
        if dev.path is None:
            raise self._fail(dev.line, f"<{dev.element} type='file'> needs <source path='...'/>")
        pairs = [("backend", "file"), ("id", ident), ("path", dev.path)]
        if dev.append is not None:
            pairs.append(("append", "on" if dev.append else "off"))
        return _opt(pairs, bare_first=True)
