"""``qmprr report``: the HTML file itself (the browser test is test_report_browser.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from qmprr.cli import main
from qmprr.analysis.report import write_report
from qmprr.bench.analysis import write_records

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
TX = RECORDINGS / "inject-during-transaction.jsonl"
HOSTILE = '</script><script>document.title="pwned"</script><img src=x onerror=alert(1)><!--'


def header() -> dict[str, Any]:
    return {"seq": 0, "t": 0.0, "kind": "header", "format": "qmprr/1", "started": "2026-01-01T00:00:00+00:00",
            "started_epoch": 1767225600.0, "host": "test", "qmprr_version": "0.1.0"}


def hostile_recording(path: Path) -> None:
    """Untrusted strings wherever a recording can carry them."""
    write_records(path, [
        header(),
        {"seq": 1, "t": 0.001, "kind": "client", "action": "connect", "name": HOSTILE, "role": "debug"},
        {"seq": 2, "t": 0.002, "kind": "command", "src": HOSTILE, "role": "debug",
         "msg": {"execute": HOSTILE, "arguments": {"x": HOSTILE}}},
        {"seq": 3, "t": 0.003, "kind": "event", "msg": {"event": HOSTILE, "data": {"y": HOSTILE}}},
        {"seq": 4, "t": 0.004, "kind": "reply", "cmd": 2, "msg": {"error": {"class": HOSTILE, "desc": HOSTILE}}},
        {"seq": 5, "t": 0.005, "kind": "taint", "reason": HOSTILE, "client": HOSTILE},
        {"seq": 6, "t": 0.006, "kind": "tx", "action": "begin", "tx": 1, "label": HOSTILE, "owner": HOSTILE},
        {"seq": 7, "t": 0.007, "kind": "tx", "action": "abort", "tx": 1, "label": HOSTILE, "owner": HOSTILE,
         "reason": HOSTILE},
        {"seq": 8, "t": 0.008, "kind": "note", "text": HOSTILE},
    ])


def test_report_is_one_self_contained_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(TX), "-o", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert err == ""
    assert printed == f"{out}: 7 command spans, 4 events, 1 transactions, 4 lanes\n"
    html = out.read_text()
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "Content-Security-Policy" in html and "default-src 'none'" in html  # nothing loads from anywhere
    assert re.search(r"<(script|link|img|iframe|object|embed)\b[^>]*\b(src|href)=", html) is None
    assert "http://" not in html and "https://" not in html
    # the summary table (from stats) sits above the timeline
    assert html.index('id="summary"') < html.index('id="timeline"')
    for text in ("dump-guest-memory", "116.873", "TAINTED: custom-monitor by debug-1", "DUMP_COMPLETED"):
        assert text in html, text


def test_untrusted_strings_cannot_break_out(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    hostile_recording(path)
    out = tmp_path / "report.html"
    summary = write_report(path, out, title=HOSTILE)
    assert (summary.spans, summary.events, summary.transactions) == (1, 1, 1)
    html = out.read_text()
    assert "<img" not in html and "<!--" not in html
    # every <script> is one of ours: untrusted text reaches them only as JSON with "<" escaped
    ours = len(re.findall(r"<script>P\(|<script>Q\.meta=", html)) + 2  # data, meta; set-up and timeline
    assert html.count("<script>") == html.count("</script>") == ours
    assert "\\u003c/script>\\u003cscript>document.title" in html
    assert "&lt;/script&gt;&lt;script&gt;document.title" in html  # escaped in the summary and the title


def test_output_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(TX), "-o", str(tmp_path / "no" / "such" / "dir.html")]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("qmprr: ") and "cannot write" in err
    assert main(["report", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "r.html")]) == 2
    assert list(tmp_path.iterdir()) == []


def test_the_report_and_stats_show_the_same_sections(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One view model: every table ``qmprr stats`` prints is a card of the report, cell for cell."""
    import html as html_lib

    from qmprr.analysis.stats import compute
    from qmprr.analysis.stats_view import sections

    out = tmp_path / "report.html"
    assert main(["report", str(TX), "-o", str(out)]) == 0
    assert main(["stats", str(TX)]) == 0
    printed = capsys.readouterr().out
    page = out.read_text()
    summary = page[page.index('id="summary"'):page.index('id="timeline-section"')]
    shown = sections(compute(TX))
    assert {s.key for s in shown} >= {"commands", "local", "events", "clients", "transactions"}
    for section in shown:
        assert f"<h3>{html_lib.escape(section.title)}</h3>" in summary and section.title in printed
        for row in section.rows:
            assert all(f">{html_lib.escape(c.text)}</td>" in summary for c in row), section.key
            assert all(c.text[:20] in printed for c in row if c.text), section.key
