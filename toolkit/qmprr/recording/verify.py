"""Whole-recording checks behind ``qmprr verify``.

On top of what the reader checks line by line (JSON, schema, ``seq``, hash
chain, torn tail) it checks that every reply names an earlier command that
had no reply yet, and lists the commands still waiting for one when the log
ends (in flight when QEMU or qmprr stopped: information, not a problem).

With a key (``verify --key``) it proves the recording was sealed by a holder
of that key: the header must name the key, every keyed link must match, and
the last record must be the writer's end seal (else the file was cut short,
or its writer crashed: ``qmprr repair --seal-key`` seals a crashed one).
"""

from __future__ import annotations

import os

import attrs

from ..errors import RecordingError
from .chain import SealKey
from .encode import END_SEAL_TEXT
from .model import Command, Header, Note, Reply
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
    #: False when the chain could not be checked (sealed, and no key given).
    chain_checked: bool = True
    #: With a key: the end seal was found (the file is whole).
    end_sealed: bool = False

    @property
    def ok(self) -> bool:
        """True when nothing is wrong (in-flight commands are not wrong)."""
        return not self.problems


class NotSealed(RecordingError):
    """``verify --key`` on a recording that has no seal, or another key's."""

    exit_code = 1


def verify(path: str | os.PathLike[str], *, key: SealKey | None = None) -> VerifyReport:
    """Read *path* through and report every problem, with its line.

    Raises :class:`~qmprr.errors.NotARecording` (or another
    :class:`~qmprr.errors.RecordingError`) when the file cannot be read as a
    recording at all, and :class:`NotSealed` when *key* is given and the
    recording is not sealed with it.
    """
    try:
        reader = RecordingReader(path, errors="skip", key=key)
    except RecordingError as exc:
        if key is not None and "sealed with" in str(exc):
            raise NotSealed(str(exc)) from None
        raise
    if key is not None and reader.header.seal is None:
        reader.close()
        raise NotSealed(
            f"{reader.path}: not sealed (no keyed chain): nothing proves who wrote it"
            + (" (it was rechained without --seal-key)" if reader.header.derived_from else "")
        )
    with reader:
        report = VerifyReport(path=reader.path, header=reader.header, chain_checked=reader.chain_checked)
        last = None
        answered: set[int] = set()  # commands that got their reply (to tell "second reply")
        pending: dict[int, Command] = {}
        problems: list[Problem] = []
        for record in reader:
            last = record
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
        if key is not None:
            report.end_sealed = isinstance(last, Note) and last.text == END_SEAL_TEXT and not reader.torn
            if not report.end_sealed:
                problems.append(Problem(reader.line + 1, "the sealed chain has no end seal: the file was cut"
                                        " short, or its writer crashed ('qmprr repair --seal-key' seals it)"))
        report.records = reader.records_read
        report.problems = sorted(reader.problems + problems, key=lambda p: p.line)
        report.torn = reader.torn
        report.in_flight = list(pending.values())
    return report
