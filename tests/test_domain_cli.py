"""``qmprr domain argv`` / ``from-argv``: output forms, warnings, one-line errors and exit status."""

from __future__ import annotations

import io
import json
import shlex
import sys
from pathlib import Path

import pytest

from qmprr import cli

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "domain" / "lab.xml"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``qmprr ARGV`` in process: (exit status, stdout, stderr)."""
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_argv_prints_env_then_one_word_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(["domain", "argv", str(EXAMPLE)], capsys)
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[:3] == ["LC_ALL=C", "qemu-system-x86_64", "-name"]
    assert "file,node-name=scratch-file,filename=scratch,, the 2nd.img" in lines
    assert lines[-1] == "virtio-blk-pci,drive=scratch,id=scratch-disk,serial=lab,,scratch"


def test_argv_shell_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(["domain", "argv", str(EXAMPLE), "--shell"], capsys)
    words = shlex.split(out)
    _, out, _ = run(["domain", "argv", "--json", str(EXAMPLE)], capsys)
    data = json.loads(out)
    assert words == [f"{k}={v}" for k, v in data["env"].items()] + data["argv"]
    assert data["env"] == {"LC_ALL": "C"} and data["argv"][0] == "qemu-system-x86_64"


def test_argv_reads_standard_input(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"<domain type='kvm'><name>x</name></domain>"))
    monkeypatch.setattr(sys, "stdin", stdin)
    status, out, _ = run(["domain", "argv", "-", "--shell"], capsys)
    assert status == 0
    assert out == "qemu-system-x86_64 -name guest=x -machine acpi=off -accel kvm -no-user-config -nodefaults -display none\n"


def test_unsupported_is_one_line_exit_2_or_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "d.xml"
    doc.write_text("<domain type='qemu'>\n  <devices>\n    <graphics type='vnc'/>\n  </devices>\n</domain>\n")
    status, out, err = run(["domain", "argv", str(doc)], capsys)
    assert (status, out) == (2, "")
    assert err == (f"qmprr: {doc}:3: unsupported element <graphics> in <devices>;"
                   " --ignore-unsupported drops unsupported parts with a warning\n")  # fmt: skip
    status, out, err = run(["domain", "argv", "--ignore-unsupported", str(doc)], capsys)
    assert status == 0 and out.splitlines()[-2:] == ["-display", "none"]
    assert err == f"qmprr: warning: {doc}:3: unsupported element <graphics> in <devices>; ignored\n"


def test_unsafe_and_missing_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "xxe.xml"
    doc.write_text('<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><domain type="qemu"><name>&x;</name></domain>')
    status, _, err = run(["domain", "argv", str(doc)], capsys)
    assert status == 2 and err.startswith(f"qmprr: {doc}: has a DOCTYPE") and err.count("\n") == 1
    status, _, err = run(["domain", "argv", str(tmp_path / "none.xml")], capsys)
    assert status == 2 and "cannot read" in err


def test_from_argv_and_back(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    words = ["LC_ALL=C", "qemu-system-x86_64", "-machine", "q35", "-device", "virtio-rng-pci,id=r,,1", "-S"]
    status, xml, err = run(["domain", "from-argv", "--", *words], capsys)
    assert status == 0 and err == ""
    assert '<qemu:device driver="virtio-rng-pci">' in xml and "<id>r,1</id>" in xml
    doc = tmp_path / "back.xml"
    doc.write_text(xml, encoding="utf-8")
    _, out, _ = run(["domain", "argv", str(doc)], capsys)
    assert out.splitlines() == words


def test_from_argv_needs_a_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(["domain", "from-argv"], capsys)
    assert (status, out) == (2, "")
    assert err == "qmprr: give the QEMU command line after '--', e.g. -- qemu-system-x86_64 -machine q35\n"
    status, _, err = run(["domain", "from-argv", "--", "qemu", "-name", "a\x07"], capsys)
    assert status == 2 and "U+0007, which XML cannot hold" in err
