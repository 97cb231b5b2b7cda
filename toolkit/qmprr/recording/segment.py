"""Where a recording ends, for the segment that continues it (``qmprr proxy --reattach``).

A recorder that was SIGKILLed leaves its file as it was: complete records,
perhaps a torn last line. The next segment's header names the file and the
``h`` of its last complete record (``previous``), so the two chains join
without either file being rewritten.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

import attrs

from ..errors import RecordingLocked
from .model import Header
from .reader import RecordingReader
from .writer import _read_tail


@attrs.frozen
class SegmentEnd:
    """The last complete record of a recording, and what follows it."""

    path: str
    header: Header
    final_seq: int
    final_hash: str
    torn_bytes: int  # bytes of a torn last line after it (0: the file ends cleanly)
    final_t: float = 0.0

    def continuation(self, relative_to: str) -> dict[str, Any]:
        """Header fields of the segment continuing this one: same recording id, next number, ``previous``."""
        from .rotate import new_recording_id

        return {
            "previous": self.previous(relative_to),
            "recording": self.header.recording or new_recording_id(),
            "segment": (self.header.segment or 1) + 1,
        }

    def previous(self, relative_to: str) -> dict[str, Any]:
        """The header's ``previous`` member for a segment written at *relative_to*.

        ``file`` is relative to that segment's folder, so both files can move together.
        """
        folder = os.path.dirname(os.path.abspath(relative_to))
        out: dict[str, Any] = {
            "file": os.path.relpath(os.path.abspath(self.path), folder),
            "final_seq": self.final_seq,
            "final_hash": self.final_hash,
        }
        if self.torn_bytes:
            out["torn_bytes"] = self.torn_bytes
        return out


def segment_end(path: str | os.PathLike[str]) -> SegmentEnd:
    """Read where *path* ends without changing it.

    Raises :class:`RecordingLocked` while a writer still holds it (its
    recorder is alive), and the reader's errors when it is not a recording.
    """
    path = os.fspath(path)
    with RecordingReader(path) as reader:
        header = reader.header
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecordingLocked(
                f"{path}: a qmprr process is still recording it; stop that recorder first"
            ) from None
        tail = _read_tail(fd, path)
    finally:
        os.close(fd)
    return SegmentEnd(path, header, tail.last_seq, tail.last_hash, tail.torn_size, tail.last_t)
