"""Errors a user can hit. Each says what went wrong and what to do about it.

The CLI prints ``qmprr: <message>`` on one line and exits with ``exit_code``.
"""

from __future__ import annotations


class QmprrError(Exception):
    """Base class for every error qmprr reports to a user."""

    #: Process exit status the CLI uses for this error.
    exit_code = 2


class RecordingError(QmprrError):
    """A recording cannot be opened, read or written as asked."""


class NotARecording(RecordingError):
    """The file is not a ``qmprr/1`` recording (no valid header line)."""


class RecordingLocked(RecordingError):
    """Another process holds the recording open for writing."""


class TornTail(RecordingError):
    """The recording's last line is incomplete: a writer died mid-record."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        super().__init__(
            f"{path}: last line is torn ({size} bytes at offset {offset} without a newline,"
            " a writer crashed mid-record); run 'qmprr repair' to truncate it"
        )
        self.path = path
        self.offset = offset
        self.size = size


class CorruptRecord(RecordingError):
    """A complete line of a recording is not a valid record."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason
