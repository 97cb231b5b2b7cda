"""A :class:`~.model.Domain` as a QEMU 7.2 argv (and environment).

Order, as libvirt writes it: the emulator; the options generated from the
domain (machine, CPU, memory, then devices); then ``<qemu:commandline>``
arguments verbatim and in order. A *bare* domain (only an emulator and a
commandline, as ``from-argv`` writes) generates nothing of its own.
"""

from __future__ import annotations

from . import keyval
from .devices import DeviceBuilder, machine_family
from .errors import DomainError
from .model import Arg, Commandline, Domain
from .options import option_text

EMULATORS = {"x86_64": "qemu-system-x86_64", "i686": "qemu-system-i386"}


def emulator(domain: Domain) -> str:
    """``<devices><emulator>``, else the QEMU binary for the domain's architecture."""
    return domain.emulator if domain.emulator is not None else EMULATORS[domain.arch]


def commandline_argv(commandline: Commandline) -> list[str]:
    """The arguments of ``<qemu:commandline>``: ``<qemu:arg>`` verbatim, structured options joined."""
    out: list[str] = []
    for item in commandline.items:
        if isinstance(item, Arg):
            out.append(item.value)
        else:
            out += [f"-{item.name}", option_text(item.name, item.implied, list(item.props))]
    return out


def domain_argv(domain: Domain, source: str = "<xml>") -> list[str]:
    """The whole argv, emulator first."""
    generated = [] if domain.bare else _machine_options(domain, source) + DeviceBuilder(domain, source).build()
    return [emulator(domain), *generated, *commandline_argv(domain.commandline)]


def _machine_options(d: Domain, source: str) -> list[str]:
    out: list[str] = []
    if d.name is not None:
        out += ["-name", keyval.join([("guest", d.name)])]
    machine: list[tuple[str, str]] = [("type", d.machine)] if d.machine else []
    if "acpi" not in d.features and (machine_family(d.machine) != "other" or d.machine == "microvm"):
        machine.append(("acpi", "off"))
    if machine:
        out += ["-machine", keyval.join(machine, bare_first=d.machine is not None)]
    out += ["-accel", "kvm" if d.type == "kvm" else "tcg"]
    if d.cpu is not None:
        out += ["-cpu", _cpu_text(d)]
    if d.memory_kib is not None:
        if d.current_memory_kib is not None and d.current_memory_kib > d.memory_kib:
            raise DomainError(f"{source}: <currentMemory> is larger than <memory>")
        out += ["-m", f"size={d.memory_kib}k"]
    if d.vcpus is not None:
        out += ["-smp", str(d.vcpus)]
    if d.uuid is not None:
        out += ["-uuid", d.uuid]
    out += ["-no-user-config", "-nodefaults", "-display", "none"]
    if d.clock is not None:
        out += ["-rtc", f"base={d.clock}"]
    actions = _actions(d)
    if actions:
        out += ["-action", ",".join(actions)]
    return out


def _cpu_text(d: Domain) -> str:
    cpu = d.cpu
    assert cpu is not None
    if cpu.mode == "host-passthrough":
        return "host" if cpu.migratable else "host,migratable=off"
    on = {"require": "on", "force": "on", "disable": "off", "forbid": "off"}
    return ",".join([str(cpu.model), *(f"{name}={on[policy]}" for policy, name in cpu.features)])


def _actions(d: Domain) -> list[str]:
    """``-action`` items for lifecycle choices other than QEMU's defaults."""
    actions = []
    if d.on_reboot == "destroy":
        actions.append("reboot=shutdown")
    if d.on_poweroff == "preserve":
        actions.append("shutdown=pause")
    if d.on_crash == "preserve":
        actions.append("panic=pause")
    return actions
