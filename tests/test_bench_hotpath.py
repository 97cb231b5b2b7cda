"""``qmprr bench hotpath`` drives the proxy's real objects end to end (the figures are for people)."""

from __future__ import annotations

import re

import pytest
from qmprr import cli


def test_bench_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "hotpath", "--commands", "200", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"warm \(back to back\) +\d+\.\d us/command", out)
    assert re.search(r"cold/warm: \d+\.\d\d", out)
    match = re.search(r"([\d,]+) bytecodes and (\d+) Python calls per command", out)
    assert match is not None and int(match.group(1).replace(",", "")) > 500
    assert "channel_core.py:_send" in out
