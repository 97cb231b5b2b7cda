"""The summary above the report's timeline: ``qmprr stats`` as static HTML.

The facts at the top, then the sections of :mod:`~qmprr.analysis.stats_view`
(the same as ``qmprr stats`` prints) as cards.

Every string from the recording is escaped (it is untrusted input).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from .stats_view import Section, sections


def _cell(value: Any, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{escape(str(value))}</td>"


def _table(title: str, head: Sequence[str], rows: Iterable[str], cls: str = "") -> str:
    ths = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(rows)
    return (f'<div class="card {cls}"><h3>{escape(title)}</h3><table><thead><tr>{ths}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


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


def card(section: Section) -> str:
    """One section as an HTML card: a table (a list of facts: no header)."""
    rows = []
    for row in section.rows:
        cls = f' class="role-{escape(row[1].text)}"' if section.key == "clients" else ""
        cells = (_cell(cell.text, " ".join(filter(None, (
            "n" if i and col in section.numeric else "", "err" if cell.style == "error" else ""))))
            for i, (col, cell) in enumerate(zip(section.columns or ("", ""), row)))
        rows.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return _table(section.title, section.columns or ("", ""), rows, "wide" if section.key == "commands" else "")


def summary_html(stats: dict[str, Any]) -> str:
    """The whole summary section's inner HTML."""
    return "".join([overview(stats), '<div class="cards">', *(card(s) for s in sections(stats)), "</div>"])
