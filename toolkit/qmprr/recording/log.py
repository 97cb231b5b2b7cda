"""What a recording is written through: the interface :class:`~.writer.RecordWriter` and
:class:`~.rotate.SegmentedWriter` (a set of segments) share.

Code that takes either (a channel's log, a log factory) names :class:`RecordLog`.
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

from .model import Record

R = TypeVar("R", bound=Record)


@runtime_checkable
class RecordLog(Protocol):
    """An open recording that records are appended to, in order."""

    @property
    def path(self) -> str:
        """The file written now (a segment set: its current segment)."""
        ...

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next record will get."""
        ...

    @property
    def closed(self) -> bool: ...

    def offset(self, monotonic: float) -> float:
        """A ``time.monotonic()`` reading as a ``t`` of this recording."""
        ...

    def append(self, record: R) -> R:
        """Write *record* as the next line; return it with ``seq`` and ``t`` set."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
