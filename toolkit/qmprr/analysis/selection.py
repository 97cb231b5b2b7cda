"""The records a :class:`~qmprr.analysis.filters.Filter` keeps, with their context.

Every record passes through the :class:`~qmprr.analysis.context.Tracker`
(so a reply knows its command even when the command was filtered out); only
the kept ones come out. Reading stops early once past ``--to``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from .context import CommandInfo, Tracker
from .filters import Filter


@attrs.define(slots=True)
class Selected:
    """A kept record: its dict, its line as on disk, its command, and whether a transaction was open."""

    record: dict[str, Any]
    raw: bytes
    command: CommandInfo | None
    in_tx: bool


def select(lines: Iterable[tuple[dict[str, Any], bytes]], flt: Filter,
           tracker: Tracker | None = None) -> Iterator[Selected]:
    """The records of *lines* (``(dict, raw)`` pairs from a Scanner) that *flt* keeps."""
    tracker = tracker or Tracker()
    update, matches = tracker.update, flt.matches
    for d, raw in lines:
        info = update(d)
        if matches(d, raw, info, tracker):
            yield Selected(d, raw, info, tracker.open_tx is not None)
        elif flt.past_end(d):
            return
