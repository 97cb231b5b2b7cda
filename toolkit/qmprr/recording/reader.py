"""Streaming reader for ``qmprr/1`` recordings (constant memory).

It checks each line as it goes: the hash chain, JSON, the record schema and
``seq`` continuity. A torn last line (a writer crashed mid-record) is kept
apart from corruption elsewhere: it is never an exception, it is reported in
:attr:`RecordingReader.torn`. What happens at a corrupt line is the caller's
choice (``errors``): ``"raise"`` a :class:`~qmprr.errors.CorruptRecord`,
``"stop"`` reading there, or ``"skip"`` it and go on; every problem is listed
in :attr:`RecordingReader.problems` either way.

A sealed recording's chain is keyed: with its key (``key``) the reader checks
it; without, it checks everything but the chain (:attr:`chain_checked` False).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO, Literal

import attrs

from .. import codec
from ..errors import CorruptRecord, NotARecording, RecordingError
from ..files import open_regular
from . import chain, convert
from .model import FORMAT, Header, Record

#: Longest header line read (it holds the QEMU argv and a domain XML of at most 4 MiB).
MAX_HEADER_BYTES = 16 * 1024 * 1024

ErrorMode = Literal["raise", "stop", "skip"]


@attrs.frozen
class Problem:
    """Something wrong at a line (1-based) of a recording."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@attrs.frozen
class Torn:
    """The incomplete last line: where it starts and how many bytes it has."""

    line: int
    offset: int
    size: int


class RecordingReader:
    """Iterate over the records of one recording; the header is read at once.

    Use as a context manager, or call :meth:`close`. Iterating yields
    records; :attr:`line` is the line number of the record last yielded.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        errors: ErrorMode = "raise",
        check_chain: bool = True,
        key: chain.SealKey | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.errors = errors
        self.check_chain = check_chain
        self.key = key
        self._link_key: bytes | None = None
        self.problems: list[Problem] = []
        self.torn: Torn | None = None
        self.line = 0
        self.records_read = 0
        try:
            self._file: BinaryIO = open_regular(self.path)  # a FIFO or /dev/zero: refused, no hang
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot read recording: {exc.strerror}") from None
        self._offset = 0
        self._prev_hash = chain.GENESIS
        self._expected_seq = 0
        self._iterating = False
        self.header = self._read_header()

    def _read_header(self) -> Header:
        first = self._file.readline(MAX_HEADER_BYTES + 1)
        problem = None
        if not first:
            problem = "file is empty"
        elif len(first) > MAX_HEADER_BYTES:
            problem = f"its first line is over {MAX_HEADER_BYTES:,} bytes, more than any header"
        elif not first.endswith(b"\n"):
            problem = "its only line is incomplete"
        else:
            try:
                body, h = chain.unseal(first)
                record = convert.structure(codec.loads(body))
            except ValueError as exc:
                problem = f"first line is not a {FORMAT} header ({exc})"
            else:
                if not isinstance(record, Header):
                    problem = f"first record is a {record.kind}, not a header"
                elif record.format != FORMAT:
                    problem = f"format {record.format!r} is not {FORMAT!r}"
                elif self.check_chain and chain.link(chain.GENESIS, body) != h:
                    problem = "header's hash does not match its content"
        if problem is not None:
            self._file.close()
            raise NotARecording(f"{self.path}: not a {FORMAT} recording: {problem}")
        assert isinstance(record, Header)  # no problem: it is one
        self._offset = len(first)
        self._prev_hash = h
        if record.seal is not None and self.key is not None:
            key_id = record.seal.get("key_id")
            if record.seal.get("alg") != chain.SEAL_ALG:
                self._file.close()
                raise RecordingError(f"{self.path}: sealed with {record.seal.get('alg')!r}, which this qmprr does not know")
            if key_id != self.key.key_id:
                self._file.close()
                raise RecordingError(
                    f"{self.path}: sealed with key id {key_id}, not with the key given ({self.key.key_id})"
                )
            self._link_key = self.key.key
        elif record.seal is not None:
            self.check_chain = False  # keyed: cannot be checked without the key
        self._expected_seq = record.seq + 1
        self.line = 1
        return record

    @property
    def chain_checked(self) -> bool:
        """False when the chain is not checked (asked so, or sealed and no key)."""
        return self.check_chain

    def __iter__(self) -> Iterator[Record]:
        if self._iterating:
            raise RuntimeError("a RecordingReader can be iterated once")
        self._iterating = True
        self.records_read = 1
        yield self.header
        lineno = 1
        offset = self._offset
        for raw in self._file:
            lineno += 1
            if not raw.endswith(b"\n"):
                self.torn = Torn(lineno, offset, len(raw))
                self.problems.append(
                    Problem(lineno, f"torn last line ({len(raw)} bytes, no newline)")
                )
                break
            offset += len(raw)
            try:
                record = self._check(raw)
            except _LineProblem as exc:
                self.problems.append(Problem(lineno, str(exc)))
                if self.errors == "raise":
                    raise CorruptRecord(self.path, lineno, str(exc)) from None
                if self.errors == "stop":
                    break
                continue
            self.line = lineno
            self.records_read += 1
            yield record

    def _check(self, raw: bytes) -> Record:
        try:
            body, h = chain.unseal(raw)
        except chain.ChainFormatError as exc:
            raise _LineProblem(str(exc)) from None
        prev, self._prev_hash = self._prev_hash, h  # later lines chain on from this one
        try:
            d = codec.loads(body)
        except codec.JSONDecodeError as exc:
            raise _LineProblem(f"invalid JSON: {exc}") from None
        try:
            record = convert.structure(d)
        except convert.RecordSchemaError as exc:
            raise _LineProblem(str(exc)) from None
        expected, self._expected_seq = self._expected_seq, record.seq + 1
        if self.check_chain and chain.link(prev, body, self._link_key) != h:
            raise _LineProblem(
                "hash chain broken: the line was edited, or a line before it was"
                " deleted, inserted or moved"
            )
        if record.seq != expected:
            raise _LineProblem(f"seq {record.seq} where {expected} was expected")
        if isinstance(record, Header):
            raise _LineProblem("a second header")
        return record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LineProblem(Exception):
    pass


def read_records(path: str | os.PathLike[str], *, errors: ErrorMode = "raise") -> Iterator[Record]:
    """Yield the records of *path* (header first); see :class:`RecordingReader`."""
    with RecordingReader(path, errors=errors) as reader:
        yield from reader
