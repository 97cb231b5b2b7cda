"""The summary above the report's timeline: ``qmprr stats`` as static HTML.

Every string from the recording is escaped (it is untrusted input).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any


def _cell(value: Any, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{escape(str(value))}</td>"


def _table(title: str, head: Sequence[str], rows: Iterable[str], cls: str = "") -> str:
    ths = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(rows)
    return (f'<div class="card {cls}"><h3>{escape(title)}</h3><table><thead><tr>{ths}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{cls} {n}" for cls, n in errors.items())


def overview(stats: dict[str, Any]) -> str:
    tx = stats["transactions"]
    facts = [
        ("duration", f"{stats['duration']:.6f} s"),
        ("records", f"{stats['records']:,}"),
        ("commands", f"{stats['commands_total']:,}"),
        ("errors", f"{stats['errors_total']:,}"),
        ("events", f"{sum(stats['events'].values()):,}"),
        ("clients", f"{len(stats['clients']):,}"),
        ("transactions", f"{tx['count']:,}"),
        ("no reply", f"{stats['without_reply']['count']:,}"),
    ]
    busiest = stats["busiest_second"]
    if busiest:
        facts.append(("busiest second", f"+{busiest['start']:.0f} s: {busiest['messages']:,} messages"))
    items = "".join(
        f'<div class="fact{" bad" if k in ("errors", "no reply") and v != "0" else ""}">'
        f"<span>{escape(v)}</span><small>{escape(k)}</small></div>"
        for k, v in facts
    )
    taint = "".join(
        f'<div class="taint">TAINTED: {escape(str(x["reason"]))} by {escape(str(x["client"]))} '
        f'at +{x["t"]:.6f} s (seq {x["seq"]})</div>'
        for x in stats["taint"]["items"]
    )
    problems = ""
    if stats["problems"]["count"]:
        problems = (f'<div class="taint">{stats["problems"]["count"]:,} unreadable line(s) skipped; '
                    "run qmprr verify</div>")
    return f'<div class="facts">{items}</div>{taint}{problems}'


def commands(stats: dict[str, Any]) -> str:
    rows = []
    for name, c in stats["commands"].items():
        lat = c["latency_ms"]
        rows.append(
            "<tr>" + _cell(name) + _cell(f"{c['count']:,}", "n") + _cell(_errors(c["errors"]), "err")
            + "".join(_cell(f"{lat[k]:.3f}", "n") for k in ("p50", "p95", "p99", "max"))
            + _cell(c["no_reply"] or "", "n err") + "</tr>"
        )
    return _table("Commands (latency in ms)", ["command", "count", "errors", "p50", "p95", "p99", "max",
                                               "no reply"], rows, "wide")


def events(stats: dict[str, Any]) -> str:
    rows = ("<tr>" + _cell(name) + _cell(f"{n:,}", "n") + "</tr>" for name, n in stats["events"].items())
    return _table("Events", ["event", "count"], rows)


def clients(stats: dict[str, Any]) -> str:
    rows = (
        f'<tr class="role-{escape(c["role"])}">' + _cell(name) + _cell(c["role"]) + _cell(f"{c['commands']:,}", "n")
        + _cell(f"{c['local']:,}", "n") + _cell(c["errors"] or "", "n err") + "</tr>"
        for name, c in stats["clients"].items()
    )
    return _table("Clients", ["client", "role", "commands", "answered by qmprr", "errors"], rows)


def transactions(stats: dict[str, Any]) -> str:
    tx = stats["transactions"]
    rows = [
        "<tr>" + _cell("count") + _cell(f"{tx['count']:,} ({tx['ended']:,} ended, {tx['aborted']:,} aborted, "
                                         f"{tx['open_at_end']:,} open)") + "</tr>",
        "<tr>" + _cell("held") + _cell(f"{tx['held_seconds']:.6f} s") + "</tr>",
    ]
    longest = tx["longest"]
    if longest:
        rows.append("<tr>" + _cell("longest") + _cell(
            f"tx {longest['tx']} {longest['label']!r} by {longest['owner']}: {longest['seconds']:.6f} s") + "</tr>")
    rows.append("<tr>" + _cell("others waited") + _cell(
        f"{tx['waited_seconds']:.6f} s ({tx['waits']['count']:,} wait(s) seen; exact, a lower bound in logs without queued)") + "</tr>")
    return _table("Transactions", ["", ""], rows)


def summary_html(stats: dict[str, Any]) -> str:
    """The whole summary section's inner HTML."""
    parts = [overview(stats), '<div class="cards">', commands(stats)]
    if stats["events"]:
        parts.append(events(stats))
    parts.append(clients(stats))
    if stats["transactions"]["count"]:
        parts.append(transactions(stats))
    parts.append("</div>")
    return "".join(parts)
