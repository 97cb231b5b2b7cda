"""Whole-recording checks behind ``qmprr verify``.

On top of what the reader checks line by line (JSON, schema, ``seq``, hash
chain, torn tail) it checks that every reply names an earlier command that
had no reply yet, and lists the commands still waiting for one when the log
ends (in flight when QEMU or qmprr stopped: information, not a problem).
"""

from __future__ import annotations

import os

import attrs

from .model import Command, Header, Reply
from .reader import Problem, RecordingReader, Torn


@attrs.define
class VerifyReport:
    """The outcome of :func:`verify`."""

    path: str
    header: Header
    records: int = 0
    problems: list[Problem] = attrs.Factory(list)
    torn: Torn | None = None
    in_flight: list[Command] = attrs.Factory(list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong (in-flight commands are not wrong)."""
        return not self.problems


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Read *path* through and report every problem, with its line.

    Raises :class:`~qmprr.errors.NotARecording` (or another
    :class:`~qmprr.errors.RecordingError`) when the file cannot be read as a
    recording at all.
    """
    with RecordingReader(path, errors="skip") as reader:
        report = VerifyReport(path=reader.path, header=reader.header)
        answered: set[int] = set()  # commands that got their reply (to tell "second reply")
        pending: dict[int, Command] = {}
        problems: list[Problem] = []
        for record in reader:
            if isinstance(record, Command):
                pending[record.seq] = record
            elif isinstance(record, Reply):
                cmd = record.cmd
                if cmd in pending:
                    del pending[cmd]
                    answered.add(cmd)
                elif cmd >= record.seq:
                    problems.append(Problem(reader.line, f"reply names seq {cmd}, not an earlier record"))
                elif cmd in answered:
                    problems.append(Problem(reader.line, f"second reply to the command at seq {cmd}"))
                else:
                    problems.append(Problem(reader.line, f"reply names seq {cmd}, which is not a command"))
        report.records = reader.records_read
        report.problems = sorted(reader.problems + problems, key=lambda p: p.line)
        report.torn = reader.torn
        report.in_flight = list(pending.values())
    return report
