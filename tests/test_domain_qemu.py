"""QEMU 7.2 accepts the argv built from domain XML, and shows the disks the XML describes."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import support
from qmprr.client import QmpClient
from qmprr.domain import build_launch, from_argv

pytestmark = pytest.mark.qemu

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "domain" / "lab.xml"


_SOCKETS = itertools.count()


def images(folder: Path, *specs: tuple[str, str]) -> None:
    for fmt, name in specs:
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(folder / name), "1M"], check=True)


@contextlib.contextmanager
def started(xml: str | Path, cwd: Path) -> Iterator[QmpClient]:
    """QEMU from *xml* (paused with -S, TCG), in *cwd*, with a QMP socket; yields a client."""
    support.require_qemu()
    spec = build_launch(xml)
    sock = str(cwd / f"qmp-{next(_SOCKETS)}.sock")
    argv = [*spec.argv, "-S", "-qmp", f"unix:{sock},server=on,wait=off"]
    proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **spec.env},
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        support.wait_for_socket(sock, proc=proc)
        with QmpClient(sock) as client:
            yield client
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def blocks(client: QmpClient) -> list[tuple[Any, ...]]:
    """(qdev, node, file, read-only, removable, tray open) for each block device."""
    out = []
    for b in client.execute("query-block")["return"]:
        inserted = b.get("inserted", {})
        out.append((b.get("qdev"), inserted.get("node-name"), inserted.get("file"), inserted.get("ro"),
                    b["removable"], b.get("tray_open")))  # fmt: skip
    return sorted(out, key=str)


def status(client: QmpClient) -> str:
    return str(client.execute("query-status")["return"]["status"])


def test_example_domain_and_its_from_argv_twin_run_the_same(tmp_path: Path) -> None:
    images(tmp_path, ("qcow2", "lab-root.qcow2"), ("raw", "lab-seed.img"), ("raw", "scratch, the 2nd.img"))
    with started(EXAMPLE, tmp_path) as client:
        assert status(client) == "prelaunch"
        assert client.execute("query-name")["return"] == {"name": "replay-lab"}
        assert client.execute("query-uuid")["return"]["UUID"] == "c7a5fdbd-cdaf-9455-926a-d65c16db1809"
        serial = client.execute("qom-get", {"path": "/machine/peripheral/scratch-disk", "property": "serial"})
        assert serial["return"] == "lab,scratch"  # the doubled comma reached QEMU as one
        assert client.execute("qom-get", {"path": "/machine/peripheral/rng-dev0", "property": "rng"})["return"]
        lab = blocks(client)
    assert lab == sorted([
        ("/machine/peripheral/scratch-disk/virtio-backend", "scratch", "scratch, the 2nd.img", False, False, None),
        ("/machine/peripheral/virtio-disk0/virtio-backend", "disk-vda", "lab-root.qcow2", False, False, None),
        ("sata0-0-0", "disk-sda", "lab-seed.img", True, True, False),
    ], key=str)  # fmt: skip
    assert (tmp_path / "lab-serial.log").exists()

    spec = build_launch(EXAMPLE)
    twin = from_argv([f"{k}={v}" for k, v in spec.env.items()] + spec.argv)
    with started(twin, tmp_path) as client:
        assert blocks(client) == lab


PC_DOMAIN = """<domain type='qemu'>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='cdrom'/><boot dev='hd'/></os>
  <clock offset='localtime'/>
  <on_reboot>destroy</on_reboot><on_crash>preserve</on_crash>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='hda.qcow2'/><target dev='hda'/></disk>
    <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
    <disk type='file' device='disk'><source file='sata,b.img'/><target dev='sdb' bus='sata'/></disk>
    <controller type='scsi' model='lsilogic'/>
    <disk type='file' device='disk'><source file='scsi.img'/><target dev='sdc' bus='scsi'/><readonly/></disk>
    <disk type='file' device='disk'><source file='usb.img'/><target dev='sdd' bus='usb'/></disk>
    <serial type='pty'/>
    <memballoon model='virtio'/>
  </devices>
</domain>"""


def test_pc_machine_with_every_disk_bus(tmp_path: Path) -> None:
    images(tmp_path, ("qcow2", "hda.qcow2"), ("raw", "sata,b.img"), ("raw", "scsi.img"), ("raw", "usb.img"))
    with started(PC_DOMAIN, tmp_path) as client:
        assert status(client) == "prelaunch"
        assert blocks(client) == sorted([
            ("ide0-0-0", "disk-hda", "hda.qcow2", False, False, None),
            ("ide0-1-0", None, None, None, True, False),  # empty cdrom
            ("sata0-0-1", "disk-sdb", "sata,b.img", False, False, None),
            ("scsi0-0-2-0", "disk-sdc", "scsi.img", True, False, None),
            ("/machine/peripheral/usb-disk3/usb-disk3.0/legacy[0]", "disk-sdd", "usb.img", False, False, None),
        ], key=str)  # fmt: skip
        machine = client.execute("qom-get", {"path": "/machine", "property": "acpi"})["return"]
        assert machine == "off"  # no <features><acpi/>
        bootindex = client.execute("qom-get", {"path": "/machine/peripheral/ide0-1-0", "property": "bootindex"})
        assert bootindex["return"] == 1
        chardevs = {c["label"]: c["filename"] for c in client.execute("query-chardev")["return"]}
        assert chardevs["charserial0"].startswith("pty:")


Q35_DOMAIN = """<domain type='qemu'>
  <os><type machine='q35'>hvm</type></os>
  <features><acpi/></features>
  <cpu mode='custom'><model>qemu64</model><feature policy='disable' name='svm'/></cpu>
  <vcpu>2</vcpu>
  <devices>
    <disk type='file'><driver type='qcow2'/><source file='ro.qcow2'/><target dev='vdb'/><readonly/></disk>
    <disk type='file' device='cdrom'><source file='cd.img'/><target dev='sda'/></disk>
    <disk type='file'><source file='sata.img'/><target dev='sdg' bus='sata'/></disk>
    <serial type='file'><source path='s1.log' append='on'/><target port='1'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <console type='file'><source path='console.log'/><target type='virtio'/></console>
  </devices>
</domain>"""


def test_q35_with_scsi_second_ahci_and_consoles(tmp_path: Path) -> None:
    images(tmp_path, ("qcow2", "ro.qcow2"), ("raw", "cd.img"), ("raw", "sata.img"))
    with started(Q35_DOMAIN, tmp_path) as client:
        assert status(client) == "prelaunch"
        assert blocks(client) == sorted([
            ("/machine/peripheral/virtio-disk1/virtio-backend", "disk-vdb", "ro.qcow2", True, False, None),
            ("scsi0-0-0-0", "disk-sda", "cd.img", True, True, False),
            ("sata1-0-0", "disk-sdg", "sata.img", False, False, None),
        ], key=str)  # fmt: skip
        assert len(client.execute("query-cpus-fast")["return"]) == 2
        chardevs = {c["label"]: c["filename"] for c in client.execute("query-chardev")["return"]}
        assert chardevs["charserial1"] == "file"
        assert chardevs["charserial0"].startswith("pty:") and chardevs["charconsole1"] == "file"
    assert (tmp_path / "s1.log").exists() and (tmp_path / "console.log").exists()


def test_example_script_launches_the_domain_through_qmprr() -> None:
    support.require_qemu()
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "domain" / "launch_lab.py")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "status: running" in run.stdout and "name: replay-lab" in run.stdout
    assert "file 'scratch, the 2nd.img' read-only False" in run.stdout
    assert "recording header keeps the argv: True" in run.stdout
