"""``qmprr stats`` for people: the statistics as rich tables.

Every string from the recording is untrusted: it is shown as plain text (no
rich markup) with control characters escaped.
"""

from __future__ import annotations

from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .show import escape_controls


def _t(value: Any, style: str = "") -> Text:
    return Text(escape_controls(str(value)), style=style)


def _ms(value: float) -> str:
    return f"{value:.3f}"


def _errors(errors: dict[str, int]) -> Text:
    return _t(", ".join(f"{cls} {n}" for cls, n in errors.items()), "bold red") if errors else _t("")


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", header_style="bold")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 or col in ("role", "errors", "client") else "right",
                         overflow="fold")
    return table


def overview(stats: dict[str, Any]) -> Table:
    """The recording at a glance."""
    table = Table(show_header=False, box=None, title="Recording", title_justify="left", title_style="bold")
    table.add_column(style="bold")
    table.add_column()
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
    if stats["taint"]["count"]:
        rows.append(("TAINTED", ", ".join(f"{x['reason']} by {x['client']}" for x in stats["taint"]["items"])))
    if stats["problems"]["count"]:
        rows.append(("problems", f"{stats['problems']['count']:,} unreadable lines skipped (see qmprr verify)"))
    for key, value in rows:
        table.add_row(key, _t(value, "bold magenta" if key == "TAINTED" else ""))
    return table


def commands(stats: dict[str, Any]) -> Table:
    table = _table("Commands (latency in ms)", "command", "count", "errors", "p50", "p95", "p99", "max", "no reply")
    for name, c in stats["commands"].items():
        lat = c["latency_ms"]
        table.add_row(_t(name), f"{c['count']:,}", _errors(c["errors"]),
                      *(_ms(lat[k]) for k in ("p50", "p95", "p99", "max")),
                      _t(c["no_reply"] or "", "bold red"))
    return table


def local(stats: dict[str, Any]) -> Table:
    table = _table("Answered by qmprr itself", "message", "count", "errors")
    for name, c in stats["local"].items():
        table.add_row(_t(name), f"{c['count']:,}", _t(c["errors"] or "", "bold red"))
    return table


def events(stats: dict[str, Any]) -> Table:
    table = _table("Events", "event", "count")
    for name, n in stats["events"].items():
        table.add_row(_t(name), f"{n:,}")
    return table


def clients(stats: dict[str, Any]) -> Table:
    table = _table("Clients", "client", "role", "commands", "local", "errors", "first", "last")
    for name, c in stats["clients"].items():
        style = "magenta" if c["role"] == "debug" else ""
        table.add_row(_t(name, style), _t(c["role"], style), f"{c['commands']:,}", f"{c['local']:,}",
                      _t(c["errors"] or "", "bold red"), f"+{c['first']:.6f}", f"+{c['last']:.6f}")
    return table


def transactions(stats: dict[str, Any]) -> Table:
    tx = stats["transactions"]
    table = Table(show_header=False, box=None, title="Transactions", title_justify="left", title_style="bold")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("count", _t(f"{tx['count']:,} ({tx['ended']:,} ended, {tx['aborted']:,} aborted, "
                              f"{tx['open_at_end']:,} open at the end)"))
    table.add_row("held", _t(f"{tx['held_seconds']:.6f} s in all"))
    longest = tx["longest"]
    if longest:
        table.add_row("longest", _t(f"tx {longest['tx']} {longest['label']!r} by {longest['owner']}: "
                                    f"{longest['seconds']:.6f} s from +{longest['start']:.6f} ({longest['status']})"))
    waits = tx["waits"]
    table.add_row("others waited", _t(f"{tx['waited_seconds']:.6f} s in all, {waits['count']:,} wait(s) seen "
                                      "(exact; a lower bound in logs without queued: see docs/analysis.md)"
                                      + ("; the longest:" if waits["longest"] else "")))
    for w in waits["longest"][:5]:
        table.add_row("", _t(f"{w['client']} waited {w['seconds']:.6f} s for tx {w['tx']} from +{w['start']:.6f}"))
    return table


def without_reply(stats: dict[str, Any]) -> Table:
    table = _table(f"Commands without a reply ({stats['without_reply']['count']:,})", "seq", "t", "command", "client")
    for c in stats["without_reply"]["items"]:
        table.add_row(str(c["seq"]), f"+{c['t']:.6f}", _t(c["command"]), _t(c["src"]))
    return table


def render(stats: dict[str, Any], out: TextIO, *, color: bool) -> None:
    """Print *stats* (from :func:`~qmprr.analysis.stats.compute`) as tables to *out*."""
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    console = Console(file=out, force_terminal=color, no_color=not color, highlight=False,
                      emoji=False, markup=False, width=None if tty else 120)
    console.print(overview(stats))
    sections = [commands(stats)]
    if stats["local"]:
        sections.append(local(stats))
    if stats["events"]:
        sections.append(events(stats))
    sections.append(clients(stats))
    if stats["transactions"]["count"]:
        sections.append(transactions(stats))
    if stats["without_reply"]["count"]:
        sections.append(without_reply(stats))
    for table in sections:
        console.print()
        console.print(table)
