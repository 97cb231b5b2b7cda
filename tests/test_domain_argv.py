"""Domain XML to QEMU argv: generated options, devices, the qemu namespace, semantic errors."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from qmprr.domain import DomainError, build_launch
from qmprr.domain.devices import disk_index

Q = 'xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"'
ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "domain" / "lab.xml"


def argv_of(body: str, head: str = "<domain type='qemu'>") -> list[str]:
    return build_launch(f"{head}{body}</domain>").argv


def options(argv: list[str], name: str) -> list[str]:
    """The values of every ``name`` option in argv."""
    return [argv[i + 1] for i, word in enumerate(argv) if word == name]


def test_example_argv() -> None:
    spec = build_launch(EXAMPLE)
    assert spec.env == {"LC_ALL": "C"}
    assert spec.argv == [
        "qemu-system-x86_64", "-name", "guest=replay-lab", "-machine", "q35", "-accel", "tcg",
        "-cpu", "qemu64", "-m", "size=262144k", "-smp", "1", "-uuid", "c7a5fdbd-cdaf-9455-926a-d65c16db1809",
        "-no-user-config", "-nodefaults", "-display", "none", "-rtc", "base=utc",
        "-device", "qemu-xhci,id=usb",
        "-blockdev", "driver=qcow2,node-name=disk-vda,file.driver=file,file.filename=lab-root.qcow2",
        "-device", "virtio-blk-pci,id=virtio-disk0,drive=disk-vda,bootindex=1",
        "-blockdev", "driver=raw,node-name=disk-sda,read-only=on,file.driver=file,file.filename=lab-seed.img",
        "-device", "ide-cd,bus=ide.0,id=sata0-0-0,drive=disk-sda",
        "-chardev", "file,id=charserial0,path=lab-serial.log",
        "-device", "isa-serial,index=0,chardev=charserial0,id=serial0",
        "-device", "virtio-balloon-pci,id=balloon0",
        # <qemu:commandline>: after everything generated, in document order
        "-msg", "timestamp=on",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0,id=rng-dev0",
        "-blockdev", "file,node-name=scratch-file,filename=scratch,, the 2nd.img",
        "-blockdev", "raw,node-name=scratch,file=scratch-file",
        "-device", "virtio-blk-pci,drive=scratch,id=scratch-disk,serial=lab,,scratch",
    ]  # fmt: skip


def test_minimal_domain_gets_libvirt_fixed_options() -> None:
    assert argv_of("") == ["qemu-system-x86_64", "-machine", "acpi=off", "-accel", "tcg",
                           "-no-user-config", "-nodefaults", "-display", "none"]  # fmt: skip


def test_machine_cpu_memory_lifecycle() -> None:
    argv = argv_of("""
      <name>a,b c</name><memory unit='GiB'>1</memory><currentMemory unit='MiB'>512</currentMemory>
      <vcpu placement='auto'>4</vcpu>
      <os><type arch='i686' machine='pc-i440fx-7.2'>hvm</type></os>
      <cpu><model>qemu32</model><feature policy='require' name='pae'/><feature policy='disable' name='svm'/></cpu>
      <clock offset='localtime'/>
      <on_poweroff>preserve</on_poweroff><on_reboot>destroy</on_reboot><on_crash>preserve</on_crash>""")
    assert argv[0] == "qemu-system-i386"
    assert options(argv, "-name") == ["guest=a,,b c"]
    assert options(argv, "-machine") == ["pc-i440fx-7.2,acpi=off"]
    assert options(argv, "-cpu") == ["qemu32,pae=on,svm=off"]
    assert options(argv, "-m") == ["size=1048576k"]
    assert options(argv, "-smp") == ["4"]
    assert options(argv, "-rtc") == ["base=localtime"]
    assert options(argv, "-action") == ["reboot=shutdown,shutdown=pause,panic=pause"]


@pytest.mark.parametrize(
    ("memory", "kib"),
    [("<memory>1024</memory>", "1024"), ("<memory unit='b'>1000</memory>", "1"),
     ("<memory unit='KB'>1000</memory>", "977"), ("<memory unit='M'>3</memory>", "3072"),
     ("<memory unit='TiB'>1</memory>", str(1 << 30))],  # fmt: skip
)
def test_memory_units(memory: str, kib: str) -> None:
    assert options(argv_of(memory), "-m") == [f"size={kib}k"]


def test_host_passthrough_and_kvm() -> None:
    argv = argv_of("<cpu mode='host-passthrough' check='none' migratable='off'/><features><acpi/></features>",
                   "<domain type='kvm'>")  # fmt: skip
    assert options(argv, "-cpu") == ["host,migratable=off"]
    assert options(argv, "-accel") == ["kvm"]
    assert "-machine" not in argv  # acpi stays on: nothing to say


def test_pc_disks_controllers_and_boot_order() -> None:
    argv = argv_of("""
      <os><type machine='pc'>hvm</type><boot dev='cdrom'/><boot dev='hd'/></os>
      <devices>
        <disk type='file' device='disk'><source file='/i/h,a.img'/><target dev='hda'/></disk>
        <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
        <disk type='file'><driver type='qcow2'/><source file='/i/s.qcow2'/><target dev='sdb' bus='sata'/></disk>
        <controller type='scsi' index='0' model='lsilogic'/>
        <disk type='file'><source file='/i/c.img'/><target dev='sdc'/><readonly/></disk>
        <disk type='file'><source file='/i/u.img'/><target dev='sdd' bus='usb'/></disk>
        <controller type='ide' index='0'/>
        <controller type='pci' index='0' model='pci-root'/>
      </devices>""")
    assert options(argv, "-device") == [
        "lsi53c895a,id=scsi0",
        "ich9-ahci,id=sata0",
        "qemu-xhci,id=usb",
        "ide-hd,bus=ide.0,unit=0,id=ide0-0-0,drive=disk-hda,bootindex=2",
        "ide-cd,bus=ide.1,unit=0,id=ide0-1-0,bootindex=1",  # empty tray: no drive
        "ide-hd,bus=sata0.1,id=sata0-0-1,drive=disk-sdb",
        "scsi-hd,bus=scsi0.0,scsi-id=2,id=scsi0-0-2-0,drive=disk-sdc",
        "usb-storage,bus=usb.0,id=usb-disk3,drive=disk-sdd",
    ]
    assert options(argv, "-blockdev") == [
        "driver=raw,node-name=disk-hda,file.driver=file,file.filename=/i/h,,a.img",
        "driver=qcow2,node-name=disk-sdb,file.driver=file,file.filename=/i/s.qcow2",
        "driver=raw,node-name=disk-sdc,read-only=on,file.driver=file,file.filename=/i/c.img",
        "driver=raw,node-name=disk-sdd,file.driver=file,file.filename=/i/u.img",
    ]


def test_q35_scsi_sata_serials_consoles() -> None:
    argv = argv_of("""
      <os><type machine='pc-q35-7.2'>hvm</type></os><features><acpi/></features>
      <devices>
        <disk type='file'><source file='/i/a'/><target dev='vdb'/><readonly/></disk>
        <disk type='file' device='cdrom'><source file='/i/cd.iso'/><target dev='sdh'/></disk>
        <disk type='file'><source file='/i/s'/><target dev='sdg' bus='sata'/></disk>
        <serial type='file'><source path='/tmp/s,1.log' append='on'/><target port='1'/></serial>
        <serial type='pty'/>
        <console type='pty'><target type='serial' port='0'/></console>
        <console type='pty'><target type='serial' port='3'/></console>
        <console type='file'><source path='/tmp/c.log'/><target type='virtio'/></console>
        <controller type='usb' model='none'/>
        <memballoon model='none'/>
      </devices>""")
    assert options(argv, "-machine") == ["pc-q35-7.2"]
    assert options(argv, "-device") == [
        "virtio-scsi-pci,id=scsi1",
        "ich9-ahci,id=sata1",
        "virtio-serial-pci,id=virtio-serial0",
        "virtio-blk-pci,id=virtio-disk1,drive=disk-vdb",
        "scsi-cd,bus=scsi1.0,channel=0,scsi-id=0,lun=0,id=scsi1-0-0-0,drive=disk-sdh",
        "ide-hd,bus=sata1.0,id=sata1-0-0,drive=disk-sdg",
        "virtconsole,bus=virtio-serial0.0,chardev=charconsole2,id=console2",
        "isa-serial,index=0,chardev=charserial0,id=serial0",
        "isa-serial,index=1,chardev=charserial1,id=serial1",
        "isa-serial,index=3,chardev=charserial3,id=serial3",
    ]
    assert options(argv, "-chardev") == [
        "file,id=charconsole2,path=/tmp/c.log",
        "pty,id=charserial0",
        "file,id=charserial1,path=/tmp/s,,1.log,append=on",
        "pty,id=charserial3",
    ]
    assert "driver=raw,node-name=disk-vdb,read-only=on,file.driver=file,file.filename=/i/a" in argv


def test_commandline_comes_last_in_order_and_env_is_separate() -> None:
    spec = build_launch(f"""<domain type='qemu' {Q}>
      <qemu:commandline>
        <qemu:arg value='-S'/>
        <qemu:env name='A' value='1 2'/>
        <qemu:drive><file>foo,1.img</file><if>virtio</if><cache>writeback</cache></qemu:drive>
        <qemu:env name='B'/>
        <qemu:device driver='virtio-blk-pci'><drive>d0</drive><serial>a b,c</serial></qemu:device>
        <qemu:object qom-type='memory-backend-ram'><id>mem0</id><size>64M</size></qemu:object>
        <qemu:global><ICH9-LPC.disable_s3>1</ICH9-LPC.disable_s3></qemu:global>
        <qemu:device><driver>x</driver><id/><!-- a comment --><k> spaced <!-- c --> value </k></qemu:device>
        <qemu:arg value='--'/>
      </qemu:commandline>
      <memory>1024</memory>
    </domain>""")
    assert spec.env == {"A": "1 2", "B": ""}
    expected = [
        "-S",
        "-drive", "file=foo,,1.img,if=virtio,cache=writeback",
        "-device", "virtio-blk-pci,drive=d0,serial=a b,,c",
        "-object", "memory-backend-ram,id=mem0,size=64M",
        "-global", "ICH9-LPC.disable_s3=1",
        "-device", "driver=x,id=,k= spaced  value ",
        "--",
    ]  # fmt: skip
    assert spec.argv[-len(expected):] == expected
    assert spec.argv.index("-S") > spec.argv.index("-m")


def test_docs_structured_example_is_exact() -> None:
    docs = (ROOT / "docs" / "domain.md").read_text(encoding="utf-8")
    block = re.search(r"```xml\n(<qemu:commandline>.*?</qemu:commandline>)\n```\n\ngives\n\n```\n(.*?)```", docs, re.S)
    assert block is not None
    argv = build_launch(f"<domain type='qemu' {Q}><devices><emulator>q</emulator></devices>{block[1]}</domain>").argv
    assert argv[1:] == shlex.split(block[2])


def test_bare_domain_is_exactly_emulator_and_commandline() -> None:
    argv = argv_of("<devices><emulator>/opt/q</emulator></devices><qemu:commandline><qemu:arg value='-S'/>"
                   "</qemu:commandline>", f"<domain type='kvm' {Q}>")  # fmt: skip
    assert argv == ["/opt/q", "-S"]


def test_disk_index() -> None:
    assert [disk_index(d) for d in ("vda", "vdz", "vdaa", "sdab", "hdb")] == [0, 25, 26, 27, 1]


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("<disk type='file' device='cdrom'><target dev='vda'/></disk>", "a cdrom cannot be on bus 'virtio'"),
        ("<disk type='file' device='cdrom'><target dev='sda' bus='usb'/></disk>", "a cdrom on bus 'usb' is not supported"),
        ("<disk type='file'><target dev='vda'/></disk>", "disk 'vda' needs <source file='...'/>"),
        ("<disk type='file'><source file='a'/><target dev='hda'/><readonly/></disk>",
         "a read-only disk on bus 'ide' is not possible in QEMU"),
        ("<disk type='file'><source file='a'/><target dev='hde'/></disk>", "'hde' is past the 4 IDE places"),
        ("<disk type='file'><source file='a'/><target dev='vda'/></disk>\n"
         "<disk type='file'><source file='b'/><target dev='vda'/></disk>", "target dev 'vda' is used twice (first at line 3)"),
        ("<controller type='usb' model='none'/><disk type='file'><source file='a'/><target dev='sda' bus='usb'/></disk>",
         "needs a usb controller, but controller index 0 has model 'none'"),
        ("<controller type='scsi' model='qemu-xhci'/>", "controller type='scsi' takes model virtio-scsi, lsilogic, not 'qemu-xhci'"),
        ("<controller type='sata' model='none'/>", "controller type='sata' takes model none (leave model out), not 'none'"),
        ("<controller type='scsi'/>\n<controller type='scsi' index='0'/>", "controller type='scsi' index='0' is declared twice"),
        ("<controller type='pci' index='1'/>", "only the machine's root PCI bus is supported (pci-root index 0)"),
        ("<controller type='ide' index='1'/>", "only the built-in IDE controller of pc (i440fx) machines"),
        ("<serial type='pty'><target port='4'/></serial>", "serial port 4: an isa-serial port is 0..3"),
        ("<serial type='pty'/>\n<serial type='pty'><target port='0'/></serial>", "serial port 0 is used twice (first at line 3)"),
        ("<serial type='file'/>", "<serial type='file'> needs <source path='...'/>"),
    ],
)
def test_device_combinations_qemu_cannot_do(devices: str, message: str) -> None:
    with pytest.raises(DomainError) as info:
        build_launch(f"<domain type='qemu'>\n<devices>\n{devices}</devices></domain>")
    assert re.match(r"<xml>:\d+: ", str(info.value)) and message in str(info.value)


def test_ide_on_q35_and_memory_check() -> None:
    with pytest.raises(DomainError, match="<xml>:1: IDE disks need a pc .i440fx. machine; use bus='sata' on q35"):
        build_launch("<domain type='qemu'><os><type machine='q35'>hvm</type></os><devices>"
                     "<disk type='file'><source file='a'/><target dev='hda'/></disk></devices></domain>")  # fmt: skip
    with pytest.raises(DomainError, match="<currentMemory> is larger than <memory>"):
        argv_of("<memory>1024</memory><currentMemory>2048</currentMemory>")


def test_uuid_without_dashes_is_dashed_for_qemu() -> None:
    assert options(argv_of("<uuid>C7A5FDBDcdaf9455926ad65c16db1809</uuid>"), "-uuid") == [
        "C7A5FDBD-cdaf-9455-926a-d65c16db1809"
    ]
