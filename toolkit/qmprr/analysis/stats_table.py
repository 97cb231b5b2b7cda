"""``qmprr stats`` for people: the statistics as rich tables.

Every string from the recording is untrusted: it is shown as plain text (no
rich markup) with control characters escaped.
"""

from __future__ import annotations

from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import stats_view
from .show import escape_controls
from .stats_view import Section


#: How a view cell's look is drawn on a terminal.
STYLES = {"error": "bold red", "debug": "magenta", "taint": "bold magenta", "": ""}


def _t(value: Any, style: str = "") -> Text:
    return Text(escape_controls(str(value)), style=style)


def table(section: Section) -> Table:
    """One section as a rich table (a list of facts: no header, the names in bold)."""
    if section.facts:
        out = Table(show_header=False, box=None, title=section.title, title_justify="left", title_style="bold")
        out.add_column(style="bold")
        out.add_column()
    else:
        out = Table(title=section.title, title_justify="left", title_style="bold", header_style="bold")
        for i, col in enumerate(section.columns):
            out.add_column(col, justify="right" if i and col in section.numeric else "left", overflow="fold")
    for row in section.rows:
        out.add_row(*(_t(cell.text, STYLES[cell.style]) for cell in row))
    return out


def render(stats: dict[str, Any], out: TextIO, *, color: bool) -> None:
    """Print *stats* (from :func:`~qmprr.analysis.stats.compute`) as tables to *out*."""
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    console = Console(file=out, force_terminal=color, no_color=not color, highlight=False,
                      emoji=False, markup=False, width=None if tty else 120)
    console.print(table(stats_view.overview(stats)))
    for section in stats_view.sections(stats):
        console.print()
        console.print(table(section))
