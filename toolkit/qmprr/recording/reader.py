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
from . import chain, convert, sets
from .header import MAX_HEADER_BYTES, HeaderProblem, parse_header
from .model import FORMAT, Header, Record

ErrorMode = Literal["raise", "stop", "skip"]


@attrs.frozen
class Problem:
    """Something wrong at a line (1-based) of a recording (of segment *file* in a set)."""

    line: int
    message: str
    file: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@attrs.frozen
class Torn:
    """The incomplete last line: where it starts and how many bytes it has."""

    line: int
    offset: int
    size: int


def link_problem(header: Header, h: str, prev: Header, prev_file: str, final_seq: int, final_hash: str) -> str | None:
    """What is wrong with segment *header* (hash *h*) as the successor of *prev*, or None."""
    # A file written before sets (or by a plain recorder) has no id and counts as segment 1.
    if prev.recording is not None and header.recording != prev.recording:
        return f"names recording {header.recording!r}, not the set's {prev.recording!r}"
    if header.segment != (prev.segment or 1) + 1:
        return f"is segment {header.segment}, where {(prev.segment or 1) + 1} was expected"
    p = header.previous or {}
    if not isinstance(p.get("file"), str) or not sets.same_segment(os.path.basename(p["file"]), os.path.basename(prev_file)):
        return f"continues {p.get('file')!r}, not {os.path.basename(prev_file)} (a segment is missing, reordered or replaced)"
    if p.get("final_hash") != final_hash or p.get("final_seq") != final_seq:
        return (f"names the previous segment's end as seq {p.get('final_seq')} hash {p.get('final_hash')}, but it ends"
                f" at seq {final_seq} hash {final_hash} (the previous segment was replaced or changed)")
    if header.seq != final_seq + 1:
        return f"header seq {header.seq} where {final_seq + 1} was expected"
    return None


class RecordingReader:
    """Iterate over the records of one recording; the header is read at once.

    *path* may be one file (``.jsonl`` or ``.jsonl.zst``) or a segment set
    (a folder, or its first segment: see :func:`.sets.resolve`); *since*
    starts a set at that segment; *one_file* reads *path* alone. A set reads as one recording: the first
    header, then every segment's records in order (later headers are
    checked as links, in :attr:`headers`, and not yielded). Use as a
    context manager, or call :meth:`close`. Iterating yields records;
    :attr:`line` is the line number of the record last yielded, in the
    file :attr:`current` (the segment being read).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        errors: ErrorMode = "raise",
        check_chain: bool = True,
        key: chain.SealKey | None = None,
        since: str | None = None,
        one_file: bool = False,
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
        self.files = [self.path] if one_file else sets.resolve(self.path, since=since)
        self.current = self.files[0]
        #: ``(file, header)`` of every segment read so far.
        self.headers: list[tuple[str, Header]] = []
        self._file: BinaryIO = self._open(self.current)
        self._prev_hash = chain.GENESIS
        self._expected_seq = 0
        self._iterating = False
        self.header, self._prev_hash = self._read_header(self._file, self.current)
        self._expected_seq = self.header.seq + 1
        self.line = 1

    def _open(self, path: str) -> BinaryIO:
        try:
            return sets.open_bytes(path)  # a FIFO or /dev/zero: refused, no hang
        except OSError as exc:
            raise RecordingError(f"{path}: cannot read recording: {exc.strerror}") from None

    def _read_header(self, f: BinaryIO, path: str) -> tuple[Header, str]:
        try:
            first = f.readline(MAX_HEADER_BYTES + 1)
        except OSError as exc:
            f.close()
            raise NotARecording(f"{path}: not a {FORMAT} recording: {exc}") from None
        try:
            record, h = parse_header(first, check_chain=self.check_chain)
        except HeaderProblem as exc:
            f.close()
            raise NotARecording(f"{path}: not a {FORMAT} recording: {exc}") from None
        if record.seal is not None and self.key is not None:
            key_id = record.seal.get("key_id")
            if record.seal.get("alg") != chain.SEAL_ALG:
                f.close()
                raise RecordingError(f"{path}: sealed with {record.seal.get('alg')!r}, which this qmprr does not know")
            if key_id != self.key.key_id:
                f.close()
                raise RecordingError(
                    f"{path}: sealed with key id {key_id}, not with the key given ({self.key.key_id})"
                )
            self._link_key = self.key.key
        elif record.seal is not None:
            self.check_chain = False  # keyed: cannot be checked without the key
        self.headers.append((path, record))
        return record, h

    @property
    def final_hash(self) -> str:
        """The hash of the last line read: once iterated, the recording's final hash (its last segment's)."""
        return self._prev_hash

    @property
    def chain_checked(self) -> bool:
        """False when the chain is not checked (asked so, or sealed and no key)."""
        return self.check_chain

    def _problem(self, line: int, message: str) -> Problem:
        p = Problem(line, message, None if self.current == self.path else self.current)
        self.problems.append(p)
        return p

    def __iter__(self) -> Iterator[Record]:
        if self._iterating:
            raise RuntimeError("a RecordingReader can be iterated once")
        self._iterating = True
        self.records_read = 1
        yield self.header
        for index, path in enumerate(self.files):
            if index:
                if not self._next_segment(path):
                    return
            yield from self._lines(last=index == len(self.files) - 1)

    def _next_segment(self, path: str) -> bool:
        """Open the next segment and check its header as a link; False: stop reading."""
        prev_path, prev_header = self.headers[-1]
        final_seq, final_hash = self._expected_seq - 1, self._prev_hash
        self._file.close()
        self.current = path
        self._file = self._open(path)
        header, h = self._read_header(self._file, path)
        self.line = 1
        problem = link_problem(header, h, prev_header, prev_path, final_seq, final_hash)
        self._prev_hash, self._expected_seq = h, header.seq + 1
        if problem is not None:
            self._problem(1, f"segment {problem}")
            if self.errors == "raise":
                raise CorruptRecord(path, 1, f"segment {problem}")
            if self.errors == "stop":
                return False
        return True

    def _lines(self, *, last: bool) -> Iterator[Record]:
        lineno = 1
        offset = self._file.tell()  # just after the header, read already
        try:
            for raw in self._file:
                lineno += 1
                if not raw.endswith(b"\n"):
                    if last:
                        self.torn = Torn(lineno, offset, len(raw))
                        self._problem(lineno, f"torn last line ({len(raw)} bytes, no newline)")
                    else:
                        self._problem(lineno, f"torn last line ({len(raw)} bytes) in a segment that is not the last")
                    break
                offset += len(raw)
                try:
                    record = self._check(raw)
                except _LineProblem as exc:
                    self._problem(lineno, str(exc))
                    if self.errors == "raise":
                        raise CorruptRecord(self.current, lineno, str(exc)) from None
                    if self.errors == "stop":
                        break
                    continue
                self.line = lineno
                self.records_read += 1
                yield record
        except OSError as exc:  # a damaged .zst
            self._problem(lineno + 1, str(exc))
            if self.errors == "raise":
                raise CorruptRecord(self.current, lineno + 1, str(exc)) from None

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
    """Yield the records of *path* (header first; one file or a set); see :class:`RecordingReader`."""
    with RecordingReader(path, errors=errors) as reader:
        yield from reader
