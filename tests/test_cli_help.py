"""Every ``qmprr`` subcommand's help teaches: examples and exit statuses; option values are checked once."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from qmprr import cli
from qmprr.cli.base import Formatter


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    out = []
    for name, child in subs[0].choices.items():
        out.extend(_leaves(child, (*path, name)))
    return out


LEAVES = _leaves(cli.build_parser())


def test_there_are_all_the_commands() -> None:
    names = {" ".join(path) for path, _ in LEAVES}
    for expected in ("verify", "show", "stats", "report", "export", "diff", "query", "launch", "proxy",
                     "inject", "events", "replay", "fake", "bench log", "domain argv", "import libvirt", "libvirt install"):
        assert expected in names


@pytest.mark.parametrize("path", [p for p, _ in LEAVES], ids=" ".join)
def test_help_ends_with_examples_and_exit_statuses(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([*path, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    examples = out.index("\nExamples:\n")
    status = out.index("\nExit status: ")
    assert examples < status
    first = out[examples:].splitlines()[2]
    assert first.startswith("  qmprr ") or first.startswith("  ") and "qmprr " in first, first


def test_formatter_keeps_example_lines_and_fills_prose() -> None:
    f = Formatter("qmprr")
    text = f._fill_text("one two three four five\n\nExamples:\n  qmprr a --b\n  qmprr c", 12, "")
    assert text.split("\n\n") == ["one two\nthree four\nfive", "Examples:\n  qmprr a --b\n  qmprr c"]


@pytest.mark.parametrize("argv", [["fake", "x.jsonl", "--socket", "s", "--mode", "loose"],
                                  ["show", "x.jsonl", "--color", "sometimes"],
                                  ["proxy", "--record", "r.jsonl", "--socket", "s", "--upstream", "u", "--sync", "often"]])
def test_a_bad_choice_is_one_line_naming_the_choices(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "qmprr.cli", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("qmprr: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "choose from" in proc.stderr
