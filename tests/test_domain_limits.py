"""Domain XML size limits: linear checks, the size checked before reading, bounded reads.

Times are never asserted: a quadratic checker is caught by the timeout
marker (it ran for minutes on these inputs), an unbounded read by the memory
of a child process or by a writer that never stops.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from lxml import etree

from qmprr.domain import UnsafeXMLError, _grammar, build_launch
from qmprr.domain.check import check_tree
from qmprr.domain.safe import MAX_ATTRIBUTES, MAX_BYTES, MAX_ELEMENTS

N = 200_000


def many_attributes(n: int = N) -> bytes:
    attrs = " ".join(f'a{i}="x"' for i in range(n))
    return f"<domain type='kvm' {attrs}><name>x</name></domain>".encode()


@pytest.mark.timeout(60)
def test_200k_attributes_are_refused_by_the_parser() -> None:
    with pytest.raises(UnsafeXMLError, match=r"<domain> has 200,001 attributes \(more than 64\)"):
        build_launch(many_attributes())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("drop", [False, True], ids=["report", "drop"])
def test_the_checker_is_linear_in_attributes(drop: bool) -> None:
    """Past the parser's limit too (a tree built by plain lxml): each attribute is looked at once."""
    root = etree.fromstring(many_attributes())
    problems = check_tree(root, _grammar(), drop_unsupported=drop)
    assert len(problems) == N and all(p.unsupported for p in problems)
    assert problems[0].message == "unsupported attribute 'a0' on <domain>"
    assert len(root.attrib) == (1 if drop else N + 1)  # (len() is linear; items() is not)
    if drop:
        assert root.get("type") == "kvm"


def test_dropping_keeps_the_known_attributes_and_their_values() -> None:
    xml = "<domain a='1' type='qemu' b='2'><name>x</name><memory unit='MiB' zz='3'>64</memory></domain>"
    spec = build_launch(xml, ignore_unsupported=True)
    assert spec.argv[spec.argv.index("-m") + 1] == "size=65536k" and "-name" in spec.argv
    assert [w.split(": ", 1)[1] for w in spec.warnings] == [
        "unsupported attribute 'a' on <domain>; ignored", "unsupported attribute 'b' on <domain>; ignored",
        "unsupported attribute 'zz' on <memory>; ignored"]


@pytest.mark.timeout(60)
def test_too_many_elements_are_refused() -> None:
    """libxml2's RelaxNG validation is quadratic in an element's children (<metadata> takes any)."""
    xml = "<domain type='kvm'><name>x</name><metadata>" + "<m/>" * MAX_ELEMENTS + "</metadata></domain>"
    with pytest.raises(UnsafeXMLError, match="more than 10,000 elements"):
        build_launch(xml)
    at_limit = "<domain type='kvm'><name>x</name><metadata>" + "<m/>" * (MAX_ELEMENTS - 3) + "</metadata></domain>"
    build_launch(at_limit)
    one = "<m " + " ".join(f'a{i}="x"' for i in range(MAX_ATTRIBUTES)) + "/>"
    build_launch(f"<domain type='kvm'><name>x</name><metadata>{one}</metadata></domain>")


def test_a_sparse_100_mb_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """Peak memory of a child process stays far below the file's size."""
    big = tmp_path / "big.xml"
    with open(big, "wb") as f:
        f.truncate(100 * 1024 * 1024)
    code = (
        "import sys\n"
        "from qmprr.domain import build_launch, UnsafeXMLError\n"
        "try:\n    build_launch(sys.argv[1])\n"
        "except UnsafeXMLError as exc:\n    print(exc)\n"
        # VmHWM: this process's peak (ru_maxrss would carry the forking parent's peak across exec)
        "print([ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, timeout=60,
                         check=True).stdout.splitlines()
    assert out[0] == f"{big}: 104,857,600 bytes is more than a domain XML needs ({MAX_BYTES:,} at most)"
    assert int(out[1]) < 60 * 1024  # KiB: the interpreter and lxml, not the file


@pytest.mark.timeout(60)
def test_dev_zero_and_an_endless_fifo_are_read_to_the_limit_only(tmp_path: Path) -> None:
    with pytest.raises(UnsafeXMLError, match="/dev/zero: over 4,194,304 bytes"):
        build_launch("/dev/zero")
    fifo = tmp_path / "domain.xml"
    os.mkfifo(fifo)
    stop, opened = threading.Event(), threading.Event()

    def endless_writer() -> None:
        try:
            with open(fifo, "wb") as f:
                opened.set()
                while not stop.is_set():
                    f.write(b"<domain>" * 4096)
        except BrokenPipeError:
            pass  # the reader gave up: what we want

    # A reader end held open lets the writer connect first (a FIFO without a writer reads as empty).
    held = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = threading.Thread(target=endless_writer, daemon=True)
    writer.start()
    assert opened.wait(10)
    try:
        with pytest.raises(UnsafeXMLError, match="over 4,194,304 bytes"):
            build_launch(str(fifo))
    finally:
        stop.set()
        os.close(held)
        writer.join(10)
    assert not writer.is_alive()


def test_a_fifo_without_writer_reads_as_empty(tmp_path: Path) -> None:
    fifo = tmp_path / "domain.xml"
    os.mkfifo(fifo)
    with pytest.raises(Exception, match="not well-formed XML"):
        build_launch(str(fifo))


def test_standard_input_is_bounded(tmp_path: Path) -> None:
    with open("/dev/zero", "rb") as zero:
        res = subprocess.run([sys.executable, "-m", "qmprr.cli", "domain", "argv", "-"], stdin=zero,
                             capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr == "qmprr: standard input: over 4,194,304 bytes is more than a domain XML needs\n"
