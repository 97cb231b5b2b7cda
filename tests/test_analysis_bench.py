"""``qmprr bench analysis`` runs end to end on a small recording (the figures are for people)."""

from __future__ import annotations

import re
import shutil

import pytest
from qmprr.bench import analysis


def test_bench_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    analysis.run(records=3_000)
    out = capsys.readouterr().out
    assert "qmprr bench analysis: 3,000 records" in out
    assert re.search(r"wall time: \d+\.\d\d s computing", out)
    assert re.search(r"peak memory: \d+\.\d MiB max RSS", out)
    assert re.search(r"qmprr show --command query-block --json: [\d,]+ lines", out)
    if shutil.which("jq"):
        assert "(the same selection)" in out and "COUNTS DIFFER" not in out


def test_bench_is_a_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    from qmprr import cli

    assert cli.main(["bench", "analysis", "--records", "500"]) == 0
    assert "qmprr bench analysis: 500 records" in capsys.readouterr().out
