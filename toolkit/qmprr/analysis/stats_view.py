"""What ``qmprr stats`` shows, once: sections of cells, drawn by the terminal tables and the HTML report.

:func:`sections` turns the statistics (from :func:`~qmprr.analysis.stats.compute`)
into :class:`Section` objects; :mod:`~qmprr.analysis.stats_table` draws them
with rich, :mod:`~qmprr.analysis.report_summary` as HTML. A cell's text is
the recording's untrusted text, unescaped: each drawer escapes it its way.
"""

from __future__ import annotations

from typing import Any

import attrs

#: A cell's look: ``error`` (an error count or class), ``debug`` (a debug client), ``taint``, or none.
Style = str


@attrs.frozen
class Cell:
    """One cell: its text and its look."""

    text: str
    style: Style = ""


@attrs.frozen
class Section:
    """One table: a *title*, its *columns* (none: a two-column list of facts), its rows of cells.

    *numeric*: the columns that hold figures (right-aligned).
    """

    key: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    numeric: frozenset[str] = frozenset()

    @property
    def facts(self) -> bool:
        """A list of facts (a name and its value a row), not a table with a header."""
        return not self.columns


def _c(value: Any, style: Style = "") -> Cell:
    return Cell(str(value), style)


def _errors(errors: dict[str, int]) -> Cell:
    return _c(", ".join(f"{cls} {n}" for cls, n in errors.items()), "error" if errors else "")


def overview(stats: dict[str, Any]) -> Section:
    """The recording at a glance."""
    tx = stats["transactions"]
    rows = [
        ("file", stats["file"]),
        ("started", f"{stats['started']} on {stats['host']}"),
        ("QEMU", stats["qemu"] or "unknown"),
        ("duration", f"{stats['duration']:.6f} s"),
        ("records", f"{stats['records']:,}"),
        ("commands", f"{stats['commands_total']:,} ({stats['errors_total']:,} errors)"),
        ("events", f"{sum(stats['events'].values()):,}"),
        ("clients", f"{len(stats['clients']):,}"),
        ("transactions", f"{tx['count']:,}"),
    ]
    busiest = stats["busiest_second"]
    if busiest:
        rows.append(("busiest second", f"+{busiest['start']:.0f} s: {busiest['messages']:,} messages "
                     f"({busiest['commands']:,} commands, {busiest['events']:,} events)"))
    cells = [(_c(k), _c(v)) for k, v in rows]
    if stats["taint"]["count"]:
        cells.append((_c("TAINTED"), _c(", ".join(f"{x['reason']} by {x['client']}" for x in stats["taint"]["items"]),
                                        "taint")))
    if stats["problems"]["count"]:
        cells.append((_c("problems"), _c(f"{stats['problems']['count']:,} unreadable lines skipped (see qmprr verify)")))
    return Section("overview", "Recording", (), tuple(cells))


def commands(stats: dict[str, Any]) -> Section:
    rows = []
    for name, c in stats["commands"].items():
        lat = c["latency_ms"]
        rows.append((_c(name), _c(f"{c['count']:,}"), _errors(c["errors"]),
                     *(_c(f"{lat[k]:.3f}") for k in ("p50", "p95", "p99", "max")),
                     _c(c["no_reply"] or "", "error")))
    return Section("commands", "Commands (latency in ms)",
                   ("command", "count", "errors", "p50", "p95", "p99", "max", "no reply"), tuple(rows),
                   frozenset({"count", "p50", "p95", "p99", "max", "no reply"}))


def local(stats: dict[str, Any]) -> Section:
    rows = tuple((_c(name), _c(f"{c['count']:,}"), _c(c["errors"] or "", "error")) for name, c in stats["local"].items())
    return Section("local", "Answered by qmprr itself", ("message", "count", "errors"), rows, frozenset({"count"}))


def events(stats: dict[str, Any]) -> Section:
    rows = tuple((_c(name), _c(f"{n:,}")) for name, n in stats["events"].items())
    return Section("events", "Events", ("event", "count"), rows, frozenset({"count"}))


def clients(stats: dict[str, Any]) -> Section:
    rows = []
    for name, c in stats["clients"].items():
        style = "debug" if c["role"] == "debug" else ""
        rows.append((_c(name, style), _c(c["role"], style), _c(f"{c['commands']:,}"), _c(f"{c['local']:,}"),
                     _c(c["errors"] or "", "error"), _c(f"+{c['first']:.6f}"), _c(f"+{c['last']:.6f}")))
    return Section("clients", "Clients", ("client", "role", "commands", "local", "errors", "first", "last"),
                   tuple(rows), frozenset({"commands", "local", "first", "last"}))


def transactions(stats: dict[str, Any]) -> Section:
    tx = stats["transactions"]
    rows = [
        ("count", f"{tx['count']:,} ({tx['ended']:,} ended, {tx['aborted']:,} aborted, "
                  f"{tx['open_at_end']:,} open at the end)"),
        ("held", f"{tx['held_seconds']:.6f} s in all"),
    ]
    longest = tx["longest"]
    if longest:
        rows.append(("longest", f"tx {longest['tx']} {longest['label']!r} by {longest['owner']}: "
                                f"{longest['seconds']:.6f} s from +{longest['start']:.6f} ({longest['status']})"))
    waits = tx["waits"]
    rows.append(("others waited", f"{tx['waited_seconds']:.6f} s in all, {waits['count']:,} wait(s) seen "
                                  "(exact; a lower bound in logs without queued: see docs/analysis.md)"
                                  + ("; the longest:" if waits["longest"] else "")))
    for w in waits["longest"][:5]:
        rows.append(("", f"{w['client']} waited {w['seconds']:.6f} s for tx {w['tx']} from +{w['start']:.6f}"))
    return Section("transactions", "Transactions", (), tuple((_c(k), _c(v)) for k, v in rows))


def without_reply(stats: dict[str, Any]) -> Section:
    rows = tuple((_c(c["seq"]), _c(f"+{c['t']:.6f}"), _c(c["command"]), _c(c["src"]))
                 for c in stats["without_reply"]["items"])
    return Section("without_reply", f"Commands without a reply ({stats['without_reply']['count']:,})",
                   ("seq", "t", "command", "client"), rows, frozenset({"seq", "t"}))


def sections(stats: dict[str, Any]) -> list[Section]:
    """The tables below the overview, those with something to show."""
    out = [commands(stats)]
    if stats["local"]:
        out.append(local(stats))
    if stats["events"]:
        out.append(events(stats))
    out.append(clients(stats))
    if stats["transactions"]["count"]:
        out.append(transactions(stats))
    if stats["without_reply"]["count"]:
        out.append(without_reply(stats))
    return out
