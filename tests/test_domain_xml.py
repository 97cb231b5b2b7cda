"""Reading domain XML: safe parsing, unsupported parts, schema errors with lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from qmprr.domain import (
    DomainError,
    MalformedXMLError,
    SchemaError,
    UnsafeXMLError,
    UnsupportedError,
    build_launch,
    load,
    schema_text,
)
from qmprr.errors import QmprrError

Q = 'xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"'
EXAMPLE = Path(__file__).parent.parent / "examples" / "domain" / "lab.xml"

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE domain [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<domain type="qemu"><name>&lol9;</name><title a="&lol9;"/></domain>
"""


def errors_of(xml: str, **kwargs: bool) -> str:
    with pytest.raises(DomainError) as info:
        build_launch(xml, **kwargs)
    assert isinstance(info.value, QmprrError) and info.value.exit_code == 2
    assert "\n" not in str(info.value)
    return str(info.value)


# -- safety -----------------------------------------------------------------


def test_billion_laughs_is_refused_before_expansion() -> None:
    with pytest.raises(UnsafeXMLError, match=r"<xml>: has a DOCTYPE; DTDs and entity declarations are refused"):
        build_launch(BILLION_LAUGHS)


def test_external_entity_file_is_refused_and_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    doc = tmp_path / "evil.xml"
    doc.write_text(f'<!DOCTYPE domain [<!ENTITY x SYSTEM "file://{secret}">]>'
                   '<domain type="qemu"><name>&x;</name></domain>')  # fmt: skip
    with pytest.raises(UnsafeXMLError) as info:
        build_launch(doc)
    assert str(info.value).startswith(f"{doc}: has a DOCTYPE")
    assert "TOP-SECRET" not in str(info.value)


@pytest.mark.parametrize(
    "doctype",
    ['<!DOCTYPE domain SYSTEM "http://127.0.0.1:9/domain.dtd">', '<!DOCTYPE domain>',
     '<!DOCTYPE domain PUBLIC "-//x//y" "file:///etc/passwd">'],  # fmt: skip
)
def test_any_doctype_is_refused(doctype: str) -> None:
    with pytest.raises(UnsafeXMLError, match="DOCTYPE"):
        build_launch(f'{doctype}<domain type="qemu"/>')


def test_undeclared_entity_is_a_syntax_error_with_line() -> None:
    with pytest.raises(MalformedXMLError, match=r"<xml>:2: not well-formed XML: Entity 'x' not defined"):
        build_launch('<domain type="qemu">\n<name>&x;</name></domain>')


def test_oversized_document_is_refused() -> None:
    with pytest.raises(UnsafeXMLError, match="more than a domain XML needs"):
        build_launch("<domain type='qemu'><description>" + "x" * (5 << 20) + "</description></domain>")


def test_malformed_and_missing_file() -> None:
    assert errors_of('<domain type="qemu">\n<name>a</name') == "<xml>:2: not well-formed XML: expected '>'"
    with pytest.raises(DomainError, match=r"cannot read /nonexistent/d\.xml: No such file"):
        build_launch("/nonexistent/d.xml")


# -- unsupported parts --------------------------------------------------------

VIRSH_LIKE = """<domain type='kvm' id='3'>
  <name>deb</name>
  <memory unit='KiB'>2097152</memory>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
  </clock>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/i/a.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' bus='0x04' slot='0x00'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/sdz'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <graphics type='spice'/>
    <controller type='pci' index='1' model='pcie-root-port'/>
  </devices>
</domain>
"""

#: libvirt's informational parts are dropped with a note, --ignore-unsupported or not.
EXPECTED_NOTES = [
    "<xml>:1: ignored attribute 'id' on <domain>: the id of the running domain",
    "<xml>:13: ignored <address>: device addresses libvirt assigned (QEMU places the devices itself)",
]
EXPECTED_UNSUPPORTED = EXPECTED_NOTES + [
    "<xml>:6: unsupported element <timer> in <clock>; ignored",
    "<xml>:10: unsupported attribute 'discard' on <driver>; ignored",
    "<xml>:15: unsupported value type='block' on <disk> (supported: file); ignored with its whole <disk>",
    "<xml>:19: unsupported element <graphics> in <devices>; ignored",
    "<xml>:20: unsupported value model='pcie-root-port' on <controller> (supported: ich9-ehci1, lsilogic, "
    "nec-xhci, none, pci-root, pcie-root, piix3-uhci, qemu-xhci, virtio-scsi); ignored with its whole <controller>",
]


def test_unsupported_parts_are_errors_naming_each_and_its_line() -> None:
    message = errors_of(VIRSH_LIKE)
    assert message.startswith("<xml>:6: unsupported element <timer> in <clock>; <xml>:10: unsupported attribute")
    assert "'id' on <domain>" not in message and "<address>" not in message  # informational: dropped, noted
    assert message.endswith("virtio-scsi); --ignore-unsupported drops unsupported parts with a warning")
    with pytest.raises(UnsupportedError):
        build_launch(VIRSH_LIKE)


def test_ignore_unsupported_drops_them_with_warnings() -> None:
    spec = build_launch(VIRSH_LIKE, ignore_unsupported=True)
    assert list(spec.warnings) == EXPECTED_UNSUPPORTED
    assert "-accel" in spec.argv and spec.argv[spec.argv.index("-accel") + 1] == "kvm"
    assert "driver=qcow2,node-name=disk-vda,file.driver=file,file.filename=/i/a.qcow2" in spec.argv
    assert not any("vdb" in word for word in spec.argv)  # the block disk went whole
    assert spec.xml == VIRSH_LIKE  # the header keeps the XML as given


def test_unsupported_value_on_the_root_cannot_be_ignored() -> None:
    message = errors_of("<domain type='xen'/>", ignore_unsupported=True)
    assert message == "<xml>:1: unsupported value type='xen' on <domain> (supported: kvm, qemu)"


def test_dropping_a_required_part_leaves_an_invalid_domain() -> None:
    xml = "<domain type='qemu'>\n<os>\n<type arch='aarch64'>hvm</type></os></domain>"
    assert errors_of(xml, ignore_unsupported=True) == "<xml>:2: <os> needs a <type> element"
    assert errors_of(xml).startswith("<xml>:3: unsupported value arch='aarch64' on <type>")


def test_unknown_qemu_namespace_elements_are_unsupported() -> None:
    xml = f"<domain type='qemu' {Q}>\n<qemu:commandline>\n<qemu:frobnicate/>\n</qemu:commandline>\n" \
          "<qemu:capabilities/></domain>"  # fmt: skip
    message = errors_of(xml)
    assert "<xml>:3: unsupported element <qemu:frobnicate> in <qemu:commandline>" in message
    assert "<xml>:5: unsupported element <qemu:capabilities> in <domain>" in message


# -- invalid documents ----------------------------------------------------------


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<foo/>", "<xml>:1: root element is <foo>, not <domain>: not a domain XML"),
        ("<domain/>", "<xml>:1: <domain> needs attribute 'type'"),
        ("<domain type='qemu'>\n<memory unit='MiB'>\n12x</memory></domain>",
         "<xml>:2: <memory> must be a positive integer, not '12x'"),
        ("<domain type='qemu'><name>a</name>\n<name>b</name></domain>",
         "<xml>:2: <name> given again (first at line 1); only one is allowed"),
        ("<domain type='qemu'><devices>\n<disk type='file'><source file='x'/></disk></devices></domain>",
         "<xml>:2: <disk> needs a <target> element"),
        ("<domain type='qemu'><devices>\n<disk type='file'><target dev='xda'/></disk></devices></domain>",
         "<xml>:2: attribute dev='xda' on <target> must match (vd|sd|hd)[a-z]+"),
        ("<domain type='qemu'>\n<features>acpi</features></domain>",
         "<xml>:2: text 'acpi' is not allowed in <features>"),
        (f"<domain type='qemu' {Q}><qemu:commandline>\n<qemu:env name='1A' value='x'/></qemu:commandline></domain>",
         "<xml>:2: attribute name='1A' on <qemu:env> must match [A-Za-z_][A-Za-z_0-9]*"),
        (f"<domain type='qemu' {Q}><qemu:commandline>\n<qemu:device driver='a=b'/></qemu:commandline></domain>",
         "<xml>:2: attribute driver='a=b' on <qemu:device> must match [^=]+"),
        (f"<domain type='qemu' {Q}><qemu:commandline>\n<qemu:drive/></qemu:commandline></domain>",
         "<xml>:2: <qemu:drive> does not match qmprr's domain schema: a structured option needs its "
         "implied-key attribute or at least one property element"),
        (f"<domain type='qemu' {Q}><qemu:commandline>\n<qemu:drive file='x'/></qemu:commandline></domain>",
         "<xml>:2: unsupported attribute 'file' on <qemu:drive>"),
        ("<domain type='qemu'>\n<cpu mode='host-passthrough'>\n<model>qemu64</model></cpu></domain>",
         "<xml>:2: <cpu> does not match qmprr's domain schema: Invalid attribute mode for element cpu"),
        (f"<domain type='qemu' {Q}><qemu:commandline>\n<qemu:env name='A'/>\n<qemu:env name='A'/>"
         "</qemu:commandline></domain>", "<xml>:3: qemu:env A given twice (first at line 2)"),
    ],
)
def test_invalid_documents_name_the_line(xml: str, message: str) -> None:
    assert errors_of(xml).startswith(message)


def test_schema_errors_are_schema_errors() -> None:
    with pytest.raises(SchemaError):
        build_launch("<domain type='qemu'><memory>x</memory></domain>")


# -- the schema itself ------------------------------------------------------------


def test_schema_is_shipped_and_validates_the_example_with_lxml() -> None:
    schema = etree.RelaxNG(etree.fromstring(schema_text()))
    assert schema.validate(etree.parse(str(EXAMPLE)))


def test_example_loads_without_warnings() -> None:
    loaded = load(EXAMPLE)
    assert loaded.warnings == ()
    assert loaded.domain.name == "replay-lab" and loaded.domain.memory_kib == 256 * 1024
    assert dict(loaded.domain.commandline.env) == {"LC_ALL": "C"}


def test_text_bytes_and_path_sources_agree(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    copy = tmp_path / "d.xml"
    copy.write_text(text, encoding="utf-8")
    specs = [build_launch(text), build_launch(text.encode()), build_launch(copy), build_launch(str(copy))]
    assert all(s.argv == specs[0].argv and s.xml == text for s in specs)


def test_declared_encoding_is_honoured() -> None:
    xml = "<?xml version='1.0' encoding='ISO-8859-1'?>\n<domain type='qemu'><name>caf\xe9</name></domain>"
    spec = build_launch(xml.encode("latin-1"))
    assert spec.argv[1:3] == ["-name", "guest=café"]
    assert spec.xml == xml
