"""Putting the emulator wrapper in a libvirt domain's XML, and taking it out (``qmprr libvirt``).

Both go through ``virsh`` (``dumpxml --inactive --security-info``, then
``define``) and refuse a domain that is running or paused: its live XML is
never touched, the change takes effect at the next start. ``install`` keeps
the domain's original ``<emulator>`` in the wrapper's configuration
(``[emulators]``), which the wrapper runs and ``uninstall`` puts back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from ..errors import QmprrError
from . import config as configuration


class LibvirtError(QmprrError):
    """A libvirt domain cannot be changed."""


def virsh(uri: str | None, *args: str) -> str:
    virsh = shutil.which("virsh")
    if virsh is None:
        raise LibvirtError("virsh is missing (Debian: apt-get install libvirt-clients)")
    cmd = [virsh, *(("-c", uri) if uri else ()), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        text = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise LibvirtError(f"virsh {args[0]}: {text}")
    return done.stdout


def inactive(uri: str | None, domain: str) -> None:
    state = virsh(uri, "domstate", domain).strip()
    if state not in ("shut off", "crashed"):
        raise LibvirtError(f"domain {domain} is {state}: its live XML is not changed; shut it down first")


def default_wrapper(config_path: str) -> str:
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


def set_emulator(uri: str | None, domain: str, emulator: str) -> str:
    """Define *domain* again with *emulator*; the emulator it had."""
    from lxml import etree

    xml = virsh(uri, "dumpxml", "--inactive", "--security-info", domain)
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
        virsh(uri, "define", f.name)
    finally:
        os.unlink(f.name)
    return old
