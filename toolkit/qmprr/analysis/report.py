"""``qmprr report``: one self-contained HTML file with a zoomable timeline.

Two streaming passes: :func:`~qmprr.analysis.stats.compute` for the summary
table, then the timeline's items written out as they are found, in chunks of
inline ``<script>`` (so memory stays flat; the file grows with the recording).
The page loads nothing from anywhere (a Content-Security-Policy forbids it),
so it works offline. Strings from the recording reach the page only as JSON
data, with ``<`` escaped, and are shown with ``textContent``.

Timeline items (JSON arrays; ``lane`` 0 is QEMU's events and qmprr's notes):

* ``["L", lane, name, role]`` a client's lane (again, with the role of its commands, when a
  taint or the negotiation opened it)
* ``["S", seq, lane, t0, t1|null, name, flags, command, reply|null, reply_seq|null, tx|null]`` a command
* ``["E", seq, t, name, msg]`` an event
* ``["M", seq, lane, t, kind, label, flags, record]`` a marker (local answer, taint, fd, client, note, close)
* ``["T", tx, label, owner, t0, t1, status]`` a transaction (``ended``, ``aborted``, or ``open`` to the end)
* ``["W", lane, t0, t1, tx]`` a client seen waiting for a transaction

``flags``: 1 error, 2 debug client, 4 qmprr's own, 8 no reply, 16 in a transaction.
"""

from __future__ import annotations

import os
from html import escape
from importlib import resources
from typing import Any, BinaryIO

import attrs
import orjson

from ..files import check_output, display_name
from .context import CommandInfo, Tracker, command_name, error_class
from .output import clip, replace_file
from .report_summary import summary_html
from .source import Scanner
from .stats import compute
from .waits import WaitTracker, queued_of as _queued

ERROR, DEBUG, INTERNAL, NO_REPLY, IN_TX = 1, 2, 4, 8, 16
CHUNK = 1000

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "img-src data:; base-uri 'none'; form-action 'none'")


@attrs.define
class ReportSummary:
    """What :func:`write_report` drew."""

    spans: int = 0
    events: int = 0
    markers: int = 0
    transactions: int = 0
    waits: int = 0
    lanes: int = 1


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _json(value: Any) -> bytes:
    """JSON safe inside an inline <script>: no '<', so no '</script>' nor '<!--'."""
    return orjson.dumps(value).replace(b"<", b"\\u003c")


class _Items:
    """Buffers timeline items and writes them in <script> chunks."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.items: list[list[Any]] = []

    def add(self, item: list[Any]) -> None:
        self.items.append(item)
        if len(self.items) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.items:
            self.out.write(b"<script>P(" + _json(self.items) + b")</script>\n")
            self.items = []


class _Timeline:
    """Turns record dicts into timeline items."""

    def __init__(self, items: _Items) -> None:
        self.items = items
        self.summary = ReportSummary()
        self.lanes: dict[str, int] = {}
        self.lane_roles: dict[str, str] = {}  # the role each lane was last drawn with
        self.tracker = Tracker(on_drop=self._unanswered)
        self.waits = WaitTracker()
        self.tx_open: dict[int, tuple[str, str, float]] = {}

    def lane(self, name: str, role: str | None) -> int:
        lane = self.lanes.get(name)
        if lane is None:
            lane = self.lanes[name] = len(self.lanes) + 1
            shown = self.lane_roles[name] = role or self.tracker.roles.get(name, "?")
            self.items.add(["L", lane, name, shown])
        elif role not in (None, "internal", "?") and self.lane_roles[name] in ("?", "internal"):
            # a taint or the negotiation opened the lane: the client's role is its commands' role
            self.lane_roles[name] = role
            self.items.add(["L", lane, name, role])
        return lane

    def _span(self, info: CommandInfo, t1: float | None, reply: Any, reply_seq: int | None) -> None:
        flags = NO_REPLY if reply_seq is None else 0
        if error_class(reply) is not None:
            flags |= ERROR
        flags |= DEBUG if info.role == "debug" else INTERNAL if info.role == "internal" else 0
        if info.tx is not None:
            flags |= IN_TX
        self.items.add(["S", info.seq, self.lane(info.src, info.role), info.t, t1, info.name, flags,
                        clip(info.msg), clip(reply) if reply is not None else None, reply_seq, info.tx])
        self.summary.spans += 1

    def _unanswered(self, info: CommandInfo) -> None:
        self._span(info, None, None, None)

    def _marker(self, d: dict[str, Any], lane: int, label: str, flags: int = 0) -> None:
        record = {k: v for k, v in d.items() if k != "h"}
        self.items.add(["M", d["seq"], lane, d["t"], d["kind"], label, flags, clip(record)])
        self.summary.markers += 1

    def add(self, d: dict[str, Any]) -> None:
        info = self.tracker.update(d)
        kind, t = d["kind"], d["t"]
        if kind == "command":
            self.lane(info.src, info.role)  # type: ignore[union-attr]  # a command record always has its client
            wait = self.waits.command(info.src, t, _queued(d))  # type: ignore[union-attr]  # a command record always has its client
            if wait is not None:
                self.items.add(["W", self.lane(wait.client, None), wait.start, wait.end, wait.tx])
                self.summary.waits += 1
        elif kind == "reply":
            if info is not None:
                self._span(info, t, d.get("msg"), d["seq"])
        elif kind == "event":
            msg = d.get("msg")
            name = msg.get("event") if isinstance(msg, dict) else None
            self.items.add(["E", d["seq"], t, name if isinstance(name, str) else "?", clip(msg)])
            self.summary.events += 1
        elif kind == "tx":
            self._tx(d, t)
        else:
            self._other(d, kind, t)

    def _tx(self, d: dict[str, Any], t: float) -> None:
        tx, action = d.get("tx"), d.get("action")
        if type(tx) is not int:
            return
        label, owner = str(d.get("label", "")), str(d.get("owner", "?"))
        if action == "begin":
            self.tx_open[tx] = (label, owner, t)
            self.waits.begin(tx, owner, t)
            self.lane(owner, None)
        elif tx in self.tx_open:
            label, owner, t0 = self.tx_open.pop(tx)
            self.waits.end(tx, t)
            self.items.add(["T", tx, label, owner, t0, t, "aborted" if action == "abort" else "ended"])
            self.summary.transactions += 1

    def _other(self, d: dict[str, Any], kind: str, t: float) -> None:
        if kind == "local":
            src = str(d.get("src", "?"))
            failed = error_class(d.get("reply")) is not None
            msg = d.get("msg")
            name = command_name(msg) if isinstance(msg, dict) else "unparsable input"
            self._marker(d, self.lane(src, d.get("role")), f"{name} (answered by qmprr)", ERROR if failed else 0)
        elif kind in ("taint", "fd"):
            client = str(d.get("client" if kind == "taint" else "src", "?"))
            self.waits.trace(client, t)
            label = f"TAINTED {d.get('reason')}" if kind == "taint" else f"fd {d.get('placeholder')}"
            self._marker(d, self.lane(client, None), label)
        elif kind == "client":
            name = str(d.get("name", "?"))
            if d.get("action") == "disconnect":
                self.waits.gone(name)
            self._marker(d, self.lane(name, d.get("role")), f"{d.get('action')} {name}")
        elif kind in ("note", "close", "greeting"):
            label = {"note": f"note: {d.get('text')}", "close": f"connection closed ({d.get('reason')})",
                     "greeting": "greeting"}[kind]
            self._marker(d, 0, label, ERROR if kind == "close" and d.get("reason") == "error" else 0)

    def finish(self) -> None:
        for info in self.tracker.pending.values():
            self._unanswered(info)
        end = self.tracker.last_t
        for tx, (label, owner, t0) in self.tx_open.items():
            self.items.add(["T", tx, label, owner, t0, end, "open"])
            self.summary.transactions += 1
        self.summary.lanes = len(self.lanes) + 1
        self.items.flush()


def write_report(path: str | os.PathLike[str], output: str | os.PathLike[str], *,
                 title: str | None = None) -> ReportSummary:
    """Write the HTML report of recording *path* to *output* (replaced atomically, mode 0600)."""
    check_output(output, inputs=[path])  # before the work, not after it
    stats = compute(path)
    title = title or os.path.basename(os.fspath(path))
    title = display_name(title)  # argv and file names may be bytes that are not UTF-8
    with Scanner(path, check_chain=False) as scanner, replace_file(output) as out:
        _head(out, title, stats)
        timeline = _Timeline(_Items(out))
        for d, _ in scanner:
            timeline.add(d)
        timeline.finish()
        meta = {"title": title, "end": timeline.tracker.last_t, "started": stats["started"],
                "expected": attrs.asdict(timeline.summary)}
        out.write(b"<script>Q.meta=" + _json(meta) + b"</script>\n")
        out.write(b"<script>" + _asset("report.js").encode() + b"</script>\n</body>\n</html>\n")
    return timeline.summary


def _head(out: BinaryIO, title: str, stats: dict[str, Any]) -> None:
    t = escape(title)
    qemu = escape(stats["qemu"] or "unknown")
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="qmprr report">
<title>qmprr report: {t}</title>
<style>{_asset("report.css")}</style>
</head>
<body>
<header><h1>{t}</h1><p>recorded {escape(stats["started"])} on {escape(stats["host"])}, QEMU {qemu}</p></header>
<section id="summary">{summary_html(stats)}</section>
<section id="timeline-section">
<div id="toolbar">
<button id="fit" title="fit the whole recording (double-click, 0)">Fit</button>
<button id="zoom-in" title="zoom in (wheel, +)">+</button>
<button id="zoom-out" title="zoom out (wheel, -)">&minus;</button>
<span id="range"></span>
<span class="legend"><i class="primary"></i>primary <i class="debug"></i>debug (injected)
<i class="internal"></i>qmprr <i class="error"></i>error <i class="noreply"></i>no reply
<i class="event"></i>event <i class="tx"></i>transaction <i class="wait"></i>waiting</span>
</div>
<div id="timeline"><canvas id="canvas"></canvas><div id="tip" hidden></div></div>
<div id="detail"><h3 id="detail-title">Click a command, event or marker to see its JSON.</h3>
<pre id="detail-json"></pre></div>
</section>
<div id="qmprr-status" data-ready="0" data-errors="0"></div>
<script>
"use strict";
const Q = {{items: [], errors: []}};
function P(a) {{ for (let i = 0; i < a.length; i++) Q.items.push(a[i]); }}
window.addEventListener("error", function (e) {{
  Q.errors.push(String(e.message));
  const s = document.getElementById("qmprr-status");
  s.dataset.errors = String(Q.errors.length);
  s.dataset.errorText = Q.errors.join(" | ");
}});
</script>
"""
    out.write(page.encode())
