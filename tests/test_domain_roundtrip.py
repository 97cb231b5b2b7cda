"""argv -> XML -> argv and XML -> argv -> XML are identities (through the whole pipeline)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmprr.domain import DomainError, build_launch, from_argv, load
from qmprr.domain.fromargv import domain_xml
from qmprr.domain.model import Arg, Commandline, Option
from qmprr.domain.options import IMPLIED_KEYS

NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Values with commas, equals signs, quotes, spaces, leading dashes, non-ASCII, line ends.
TRICKY = st.sampled_from([",", ",,", "=", "'", '"', " ", "-", "--", "é", "漢", "🙂", "\t", "\n", "\r", "a", "Z", "0"])
VALUE = st.lists(TRICKY | st.text(max_size=4), max_size=6).map("".join).filter(lambda v: not NOT_XML.search(v))
KEY = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,10}", fullmatch=True)
OPTION = st.sampled_from(sorted(IMPLIED_KEYS))
ENV = st.lists(st.tuples(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True), VALUE),
               max_size=3, unique_by=lambda kv: kv[0])  # fmt: skip
EMULATOR = st.sampled_from(["qemu-system-x86_64", "/usr/bin/qemu-system-x86_64", "./my qemu", "/opt/q,1/é"])


@st.composite
def structured(draw: st.DrawFn) -> Option:
    """A structured option in from-argv's form: valid keys; implied value non-empty without '='."""
    name = draw(OPTION)
    implied = None
    if IMPLIED_KEYS[name] is not None and draw(st.booleans()):
        implied = draw(VALUE.filter(lambda v: v != "" and "=" not in v))
    props = draw(st.lists(st.tuples(KEY, VALUE), min_size=0 if implied else 1, max_size=4))
    return Option(name, implied, tuple(props))


# Words that from-argv keeps as <qemu:arg>: never an option name that takes a structured value.
PLAIN_ARG = VALUE.filter(lambda w: not (w.startswith("-") and w[1:] in IMPLIED_KEYS))


@st.composite
def commandlines(draw: st.DrawFn) -> Commandline:
    items = draw(st.lists(structured() | PLAIN_ARG.map(Arg), max_size=8))
    return Commandline(tuple(draw(ENV)), tuple(items))


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    """Any command line: env words, a binary, then option-like and arbitrary words."""
    words = [f"{k}={v}" for k, v in draw(ENV)] + [draw(EMULATOR)]
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 2))
        if kind == 0:  # an option with a key=value string (maybe with an implied first item)
            option = draw(structured())
            text = ",".join(([option.implied.replace(",", ",,")] if option.implied else [])
                            + [f"{k}={v.replace(',', ',,')}" for k, v in option.props])  # fmt: skip
            words += [f"-{option.name}", text]
        elif kind == 1:  # an option name before an arbitrary word (flags, JSON, anything)
            words += [f"-{draw(OPTION)}", draw(VALUE)]
        else:
            words.append(draw(VALUE))
    return words


def launch_words(xml: str) -> list[str]:
    spec = build_launch(xml)
    return [f"{k}={v}" for k, v in spec.env.items()] + spec.argv


@given(argvs())
def test_argv_to_xml_to_argv_is_identity(words: list[str]) -> None:
    assert launch_words(from_argv(words)) == words


@given(EMULATOR, commandlines())
def test_xml_to_argv_to_xml_is_identity(emulator: str, commandline: Commandline) -> None:
    xml = domain_xml(emulator, commandline)
    assert load(xml).domain.commandline == commandline  # the XML holds the values exactly
    assert from_argv(launch_words(xml)) == xml


def test_structured_form_is_used_where_it_reads_back() -> None:
    xml = from_argv(["q", "-device", "virtio-blk-pci,drive=d,,0", "-drive", "file=a", "-S",
                     "-blockdev", '{"driver":"null-co","node-name":"n0"}', "-chardev", "socket,id=c,server,nowait",
                     "-netdev", "user,id=n,hostfwd=tcp::2222-:22"])  # fmt: skip
    assert '<qemu:device driver="virtio-blk-pci">' in xml and "<drive>d,0</drive>" in xml
    assert "<qemu:drive>" in xml and "<file>a</file>" in xml
    assert '<qemu:arg value="-S"/>' in xml
    assert '<qemu:arg value="{&quot;driver&quot;:&quot;null-co&quot;,&quot;node-name&quot;:&quot;n0&quot;}"/>' in xml
    assert '<qemu:arg value="socket,id=c,server,nowait"/>' in xml  # flags have no element form
    assert "<hostfwd>tcp::2222-:22</hostfwd>" in xml


def test_libvirt_log_command_line_round_trips() -> None:
    words = ["LC_ALL=C", "PATH=/usr/bin", "HOME=/var/lib/libvirt/qemu/domain-1-deb", "/usr/bin/qemu-system-x86_64",
             "-name", "guest=deb,debug-threads=on", "-S", "-object",
             '{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/master-key.aes"}',
             "-machine", "pc-q35-7.2,usb=off,vmport=off,dump-guest-core=off,memory-backend=pc.ram",
             "-accel", "kvm", "-cpu", "host,migratable=on", "-m", "2048", "-smp", "2,sockets=2,cores=1,threads=1",
             "-chardev", "socket,id=charmonitor,fd=31,server=on,wait=off", "-mon", "chardev=charmonitor,id=monitor,mode=control",
             "-rtc", "base=utc,driftfix=slew", "-global", "kvm-pit.lost_tick_policy=delay", "-no-hpet", "-no-shutdown",
             "-boot", "strict=on", "-msg", "timestamp=on"]  # fmt: skip
    xml = from_argv(words)
    assert '<qemu:env name="LC_ALL" value="C"/>' in xml and "<guest>deb</guest>" in xml
    assert launch_words(xml) == words


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["q", "-name", "a\x01b"], r"word 3 \('a\\x01b'\) holds character U\+0001, which XML cannot hold"),
        (["A=1"], "give the QEMU command line, binary first"),
        (["A=1", "A=2", "q"], "environment variable A is given twice"),
        (["", "-S"], "the QEMU binary is an empty word"),
    ],
)
def test_unrepresentable_command_lines(words: list[str], message: str) -> None:
    with pytest.raises(DomainError, match=message):
        from_argv(words)
