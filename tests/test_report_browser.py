"""``qmprr report`` in a real headless browser (Debian's chromium).

The page writes what it drew into ``#qmprr-status`` (data attributes), and
JavaScript errors into its ``data-errors``; ``--dump-dom`` gives the DOM after
the scripts ran. Chromium is required: ``apt-get install -y chromium`` (the
Makefile's setup does it). Without it these tests fail rather than skip.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from qmprr.analysis.report import write_report
from qmprr.analysis.stats import compute
from qmprr.bench.analysis import write_recording

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
CHROMIUM = os.environ.get("QMPRR_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000"]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run 'apt-get install -y chromium' (as root; 'make setup' does it)")
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=90)


class _Find(HTMLParser):
    """Attributes and text of the elements with the given ids."""

    def __init__(self, *ids: str) -> None:
        super().__init__()
        self.ids = set(ids)
        self.found: dict[str, dict[str, str]] = {}
        self._open: str | None = None
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if a.get("id") in self.ids:
            self._open = a["id"]
            self.found[self._open] = {**a, "#text": ""}
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._open = None
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._open:
            self.found[self._open]["#text"] += data
        if self._in_title:
            self.title += data


def load(tmp_path: Path, html: Path, fragment: str = "") -> _Find:
    """Open *html* in chromium; the parsed DOM after the page's scripts ran."""
    res = chromium(tmp_path, "--dump-dom", html.resolve().as_uri() + fragment)
    assert res.returncode == 0, res.stderr[-2000:]
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console  # no uncaught error, no refused load, nothing logged
    dom = _Find("qmprr-status", "detail-title", "detail-json")
    dom.feed(res.stdout)
    assert "qmprr-status" in dom.found, res.stdout[-2000:]
    status = dom.found["qmprr-status"]
    assert status["data-ready"] == "1" and status["data-errors"] == "0", status
    return dom


@pytest.mark.parametrize("name", sorted(p.name for p in RECORDINGS.glob("*.jsonl")))
def test_each_real_recording_draws_every_span(tmp_path: Path, name: str) -> None:
    recording = RECORDINGS / name
    html = tmp_path / "report.html"
    summary = write_report(recording, html)
    stats = compute(recording)
    status = load(tmp_path, html).found["qmprr-status"]
    assert int(status["data-spans"]) == summary.spans == stats["commands_total"]
    assert int(status["data-events"]) == summary.events == sum(stats["events"].values())
    assert int(status["data-transactions"]) == summary.transactions == stats["transactions"]["count"]
    assert int(status["data-waits"]) == summary.waits == stats["transactions"]["waits"]["count"]
    assert int(status["data-markers"]) == summary.markers
    assert int(status["data-lanes"]) == summary.lanes == len(stats["clients"]) + 1
    assert int(status["data-failed"]) == stats["errors_total"]  # error replies, drawn in red


def test_a_larger_recording_and_a_link_to_one_record(tmp_path: Path) -> None:
    recording = tmp_path / "r.jsonl"
    write_recording(recording, 20_000)
    html = tmp_path / "report.html"
    summary = write_report(recording, html)
    dom = load(tmp_path, html, "#seq=1001")
    status = dom.found["qmprr-status"]
    assert int(status["data-spans"]) == summary.spans == compute(recording)["commands_total"]
    assert summary.transactions > 5 and int(status["data-transactions"]) == summary.transactions
    detail = dom.found["detail-json"]["#text"]  # report.html#seq=N shows that record's JSON
    assert '"seq": 1001' in detail or '"reply_seq": 1001' in detail, detail


def test_hostile_strings_stay_text(tmp_path: Path) -> None:
    from test_analysis_report import HOSTILE, hostile_recording

    recording = tmp_path / "r.jsonl"
    hostile_recording(recording)
    html = tmp_path / "report.html"
    write_report(recording, html, title=HOSTILE)
    dom = load(tmp_path, html, "#seq=2")
    assert dom.title == f"qmprr report: {HOSTILE}"  # still ours: no injected script ran
    assert int(dom.found["qmprr-status"]["data-spans"]) == 1
    assert HOSTILE.replace('"', '\\"') in dom.found["detail-json"]["#text"]  # shown as JSON text


def test_screenshot_renders(tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    write_report(RECORDINGS / "inject-during-transaction.jsonl", html)
    png = tmp_path / "shot.png"
    res = chromium(tmp_path, "--hide-scrollbars", "--window-size=1280,900", f"--screenshot={png}", html.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def _libvirt_vm_recording(tmp_path: Path) -> Path:
    from import_support import LOG, QEMU_LOG, run_import

    out = tmp_path / "vm.jsonl"
    status, text = run_import("libvirt", LOG, "--monitor", "4", "--qemu-log", QEMU_LOG, "-o", out)
    assert status == 0, text
    return out


def test_libvirts_lane_is_drawn_with_its_commands_role(tmp_path: Path) -> None:
    """A taint record opens libvirt's lane before its first command: the lane still says primary."""
    html = tmp_path / "report.html"
    write_report(_libvirt_vm_recording(tmp_path), html)
    labels = load(tmp_path, html).found["qmprr-status"]["data-lane-labels"].split("|")
    assert labels[1:] == ["libvirt (primary)", "qemu-monitor-command (debug)"], labels


@pytest.mark.parametrize("view", ["0,6", "0,0.004", "-2,1", "-30,-10", "2.5,2.50002"])
def test_every_major_tick_is_labelled_with_its_unit_and_none_before_zero(tmp_path: Path, view: str) -> None:
    html = tmp_path / "report.html"
    write_report(_libvirt_vm_recording(tmp_path), html)
    ticks = load(tmp_path, html, f"#view={view}").found["qmprr-status"]["data-ticks"].split("|")
    assert len(ticks) >= 3, ticks
    for tick in ticks:
        assert tick.startswith("+") and not tick.startswith("+-"), ticks
        assert tick.endswith((" s", " ms", " µs")), ticks
