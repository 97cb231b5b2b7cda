"""``qmprr libvirt install|uninstall DOMAIN``: make a libvirt domain record through qmprr, or undo it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ..libvirt import config, install
from .base import command, group


def _configuration(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The wrapper's configuration file (``--config`` or the default) and what it holds."""
    conf = args.config or config.config_path()
    try:
        return conf, config.load(conf)
    except config.ConfigError as exc:
        raise install.LibvirtError(str(exc)) from None


def cmd_install(args: argparse.Namespace) -> int:
    conf, current = _configuration(args)
    install.inactive(args.connect, args.domain)
    wrapper = os.path.abspath(args.wrapper) if args.wrapper else install.default_wrapper(conf)
    if args.domain in current.get("emulators", {}):
        print(f"qmprr: domain {args.domain} already records through {wrapper}", file=sys.stderr)
        return 0
    old = install.set_emulator(args.connect, args.domain, wrapper)
    if not old:
        old = str(current.get("qemu", config.DEFAULT_QEMU))
    try:
        config.set_emulator(conf, args.domain, old)
    except (OSError, config.ConfigError) as exc:
        install.set_emulator(args.connect, args.domain, old)  # undo: never leave a domain without its QEMU
        raise install.LibvirtError(f"{conf}: cannot keep the original emulator ({exc}); domain left unchanged") from None
    print(f"domain {args.domain}: <emulator> {wrapper} (was {old}, kept in {conf}); "
          f"recordings go to {current.get('folder', config.DEFAULT_FOLDER)}/{args.domain}/")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    conf, current = _configuration(args)
    old = current.get("emulators", {}).get(args.domain)
    if not isinstance(old, str):
        raise install.LibvirtError(f"domain {args.domain}: not installed by qmprr ({conf} keeps no emulator for it)")
    install.inactive(args.connect, args.domain)
    install.set_emulator(args.connect, args.domain, old)
    config.set_emulator(conf, args.domain, None)
    print(f"domain {args.domain}: <emulator> {old} again")
    return 0


def register(sub: Any) -> None:
    kinds = group(sub, "libvirt",
                  help="record a libvirt domain's monitor: install or uninstall the emulator wrapper",
                  description="Make a libvirt domain run QEMU through qmprr-libvirt-emulator, which records "
                  "its monitor (docs/libvirt.md), or undo it. The domain must be shut off.",
                  dest="libvirt_action", metavar="ACTION")
    exits = "0 done (or nothing to do); 2 cannot (virsh failed, domain active, not installed, bad configuration)."
    for name, func, text, example in (
            ("install", cmd_install, "name the wrapper as the domain's <emulator>", "qmprr libvirt install vm1"),
            ("uninstall", cmd_uninstall, "put the domain's original <emulator> back",
             "qmprr libvirt uninstall vm1 -c qemu:///system")):
        q = command(kinds, name, help=text, description=text + ". Both go through virsh (dumpxml --inactive "
                    "--security-info, then define) and refuse a running or paused domain: the change takes "
                    "effect at its next start.", examples=[example], exits=exits, func=func)
        q.add_argument("domain", metavar="DOMAIN")
        q.add_argument("-c", "--connect", metavar="URI", help="libvirt URI (virsh -c; default: virsh's)")
        q.add_argument("--config", metavar="PATH", help=f"the wrapper's configuration (default {config.DEFAULT_PATH})")
        if name == "install":
            q.add_argument("--wrapper", metavar="PATH", help="the emulator to name (default: qmprr's wrapper)")
