"""``qmprr libvirt install|uninstall DOMAIN``: put the emulator wrapper in a domain's XML, or take it out.

Both go through ``virsh`` (``dumpxml --inactive --security-info``, then
``define``) and refuse a domain that is running or paused: its live XML is
never touched, the change takes effect at the next start. ``install`` keeps
the domain's original ``<emulator>`` in the wrapper's configuration
(``[emulators]``), which the wrapper runs and ``uninstall`` puts back.

Exit status: 0 done (or nothing to do); 2 cannot (virsh failed, domain
active, not installed by qmprr, bad configuration).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from ..errors import QmprrError
from . import config as configuration


class LibvirtError(QmprrError):
    """A libvirt domain cannot be changed."""


def _virsh(uri: str | None, *args: str) -> str:
    virsh = shutil.which("virsh")
    if virsh is None:
        raise LibvirtError("virsh is missing (Debian: apt-get install libvirt-clients)")
    cmd = [virsh, *(("-c", uri) if uri else ()), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        text = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise LibvirtError(f"virsh {args[0]}: {text}")
    return done.stdout


def _inactive(uri: str | None, domain: str) -> None:
    state = _virsh(uri, "domstate", domain).strip()
    if state not in ("shut off", "crashed"):
        raise LibvirtError(f"domain {domain} is {state}: its live XML is not changed; shut it down first")


def _default_wrapper(config_path: str) -> str:
    """The wrapper a domain names: the console script, or a script that passes a non-default --config."""
    script = os.path.join(os.path.dirname(sys.executable), "qmprr-libvirt-emulator")
    if os.path.abspath(config_path) == configuration.DEFAULT_PATH and os.access(script, os.X_OK):
        return script
    path = os.path.join(os.path.dirname(os.path.abspath(config_path)), "qmprr-libvirt-emulator")
    text = (f'#!/bin/sh\n# qmprr-libvirt-emulator with the configuration {config_path} (qmprr libvirt install)\n'
            f'exec {sys.executable} -m qmprr.libvirt.emulator --config {os.path.abspath(config_path)} -- "$@"\n')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def _set_emulator(uri: str | None, domain: str, emulator: str) -> str:
    """Define *domain* again with *emulator*; the emulator it had."""
    from lxml import etree

    xml = _virsh(uri, "dumpxml", "--inactive", "--security-info", domain)
    root = etree.fromstring(xml.encode())
    node = root.find("devices/emulator")
    if node is None:
        devices = root.find("devices")
        if devices is None:
            devices = etree.SubElement(root, "devices")
        node = etree.SubElement(devices, "emulator")
    old = (node.text or "").strip()
    node.text = emulator
    with tempfile.NamedTemporaryFile("wb", suffix=".xml", delete=False) as f:
        f.write(etree.tostring(root))
    try:
        os.chmod(f.name, 0o600)
        _virsh(uri, "define", f.name)
    finally:
        os.unlink(f.name)
    return old


def cmd_install(args: argparse.Namespace) -> int:
    conf = args.config or configuration.config_path()
    try:
        current = configuration.load(conf)
    except configuration.ConfigError as exc:
        raise LibvirtError(str(exc)) from None
    _inactive(args.connect, args.domain)
    wrapper = os.path.abspath(args.wrapper) if args.wrapper else _default_wrapper(conf)
    if args.domain in current.get("emulators", {}):
        print(f"qmprr: domain {args.domain} already records through {wrapper}", file=sys.stderr)
        return 0
    old = _set_emulator(args.connect, args.domain, wrapper)
    if not old:
        old = str(current.get("qemu", configuration.DEFAULT_QEMU))
    try:
        configuration.set_emulator(conf, args.domain, old)
    except (OSError, configuration.ConfigError) as exc:
        _set_emulator(args.connect, args.domain, old)  # undo: never leave a domain without its QEMU
        raise LibvirtError(f"{conf}: cannot keep the original emulator ({exc}); domain left unchanged") from None
    print(f"domain {args.domain}: <emulator> {wrapper} (was {old}, kept in {conf}); "
          f"recordings go to {current.get('folder', configuration.DEFAULT_FOLDER)}/{args.domain}/")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    conf = args.config or configuration.config_path()
    try:
        current = configuration.load(conf)
    except configuration.ConfigError as exc:
        raise LibvirtError(str(exc)) from None
    old = current.get("emulators", {}).get(args.domain)
    if not isinstance(old, str):
        raise LibvirtError(f"domain {args.domain}: not installed by qmprr ({conf} keeps no emulator for it)")
    _inactive(args.connect, args.domain)
    _set_emulator(args.connect, args.domain, old)
    configuration.set_emulator(conf, args.domain, None)
    print(f"domain {args.domain}: <emulator> {old} again")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "libvirt",
        help="record a libvirt domain's monitor: install or uninstall the emulator wrapper",
        description="Make a libvirt domain run QEMU through qmprr-libvirt-emulator, which records its "
        "monitor (docs/libvirt.md), or undo it. The domain must be shut off.",
        epilog="Exit status: 0 done; 2 cannot (virsh failed, domain active, not installed, bad configuration).",
    )
    kinds = p.add_subparsers(dest="libvirt_action", metavar="ACTION", required=True)
    for name, func, text in (("install", cmd_install, "name the wrapper as the domain's <emulator>"),
                             ("uninstall", cmd_uninstall, "put the domain's original <emulator> back")):
        q = kinds.add_parser(name, help=text, description=text + ".")
        q.add_argument("domain", metavar="DOMAIN")
        q.add_argument("-c", "--connect", metavar="URI", help="libvirt URI (virsh -c; default: virsh's)")
        q.add_argument("--config", metavar="PATH",
                       help=f"the wrapper's configuration (default {configuration.DEFAULT_PATH})")
        if name == "install":
            q.add_argument("--wrapper", metavar="PATH", help="the emulator to name (default: qmprr's wrapper)")
        q.set_defaults(func=func)
