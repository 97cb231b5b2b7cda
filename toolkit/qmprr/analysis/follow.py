"""Complete lines of a file, optionally as ``tail -f`` sees a growing one.

A writer appends each record with one ``write()``, but a reader can still see
half a line: the write is in progress, or the writer crashed mid-record. An
incomplete last line is held back until its newline arrives. If the held-back
bytes change under us (``qmprr repair`` truncated the torn line and appended a
note), they are dropped and reading goes on from the last complete line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ..errors import RecordingError

#: Seconds between looks at a followed file that has not grown.
POLL_INTERVAL = 0.1


class LineTail:
    """Iterate over the complete lines of *file* from *offset*.

    Without *follow*, iteration ends at the end of the file and an incomplete
    last line is left in :attr:`torn` as ``(offset, size)``. With *follow*, it
    waits for more data, polling every *poll* seconds, until *should_stop*
    returns true (then it reads what is there once more and ends).
    """

    def __init__(
        self,
        file: BinaryIO,
        path: str,
        offset: int = 0,
        *,
        follow: bool = False,
        poll: float = POLL_INTERVAL,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self._file = file
        self.path = path
        #: Where reading starts; once iteration ends, just after the last complete line.
        self.offset = offset
        self.follow = follow
        self.poll = poll
        self.should_stop = should_stop
        self.torn: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[bytes]:
        f = self._file
        if self.offset or f.seekable():  # a .zst stream reads from its start, and cannot seek
            f.seek(self.offset)
        partial = b""
        while True:
            stopping = not self.follow or (self.should_stop is not None and self.should_stop())
            for raw in f:
                if partial:
                    raw, partial = partial + raw, b""
                if not raw.endswith(b"\n"):
                    partial = raw
                    break
                yield raw
            if stopping:
                break
            time.sleep(self.poll)
            partial = self._check_tail(partial)
        self.offset = f.tell() - len(partial)
        self.torn = (self.offset, len(partial)) if partial else None

    def _check_tail(self, partial: bytes) -> bytes:
        """Drop *partial* if the file no longer holds it; fail if the file shrank."""
        f = self._file
        fd = f.fileno()
        done = f.tell() - len(partial)  # just after the last complete line
        if os.fstat(fd).st_size < done:
            raise RecordingError(
                f"{self.path}: the file shrank below what was already read"
                " (truncated or rewritten while followed); follow it again"
            )
        if partial and os.pread(fd, len(partial), done) != partial:
            f.seek(done)  # the torn line was replaced (repair)
            return b""
        return partial
