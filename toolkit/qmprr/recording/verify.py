"""Whole-recording checks behind ``qmprr verify``, for one file or a segment set.

Each line is checked as the reader checks it -- the hash chain over the exact
line bytes, JSON, ``seq`` continuity, the record's kind and its fields' types
-- without building typed records: the fast path hashes the line and checks
it against :mod:`.lineschema` (msgspec structs that keep only what is
checked); only a line that fails there goes through orjson, QEMU's grammar
and the typed schema (:func:`.convert.structure`) for the verdict and its
exact message. A large file is cut in chunks verified in parallel processes.
On top it checks that every reply names an earlier command that had no reply
yet, and lists the commands still waiting for one when the log ends (in
flight when QEMU or qmprr stopped: information, not a problem).

A set (a folder, or its first segment; ``since`` starts later) is verified
segment by segment, in parallel processes when there are several; then the
links between segments are checked (each header names the previous file,
its final seq and hash), replies are matched across segments, and only the
last segment may have a torn tail. Segments deleted by retention are fine
when a later header's ``retention`` note names the hash the set starts from.

With a key (``verify --key``) it proves the recording was sealed by a holder
of that key: the header must name the key, every keyed link must match, and
every segment must end with the writer's end seal (else the file was cut
short, or its writer crashed: ``qmprr repair --seal-key`` seals a crashed one).
"""

from __future__ import annotations

import io
import os
from binascii import hexlify
from hashlib import blake2b
from typing import Any

import attrs
import orjson

from .. import codec
from ..errors import RecordingError
from . import convert, lineschema, sets
from .chain import SealKey
from .encode import END_SEAL_TEXT
from .model import Command, Header, Record
from .reader import Problem, RecordingReader, Torn, link_problem

_H_MARK = b',"h":"'
_H_TAIL = len(_H_MARK) + 32 + 3  # the mark, 32 hex digits, '"}\n'
_BROKEN = "hash chain broken: the line was edited, or a line before it was deleted, inserted or moved"


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
    #: With a key: the end seal was found (the file is whole; every segment, for a set).
    end_sealed: bool = False
    #: The files verified, in order (one, unless a set).
    files: list[str] = attrs.Factory(list)
    #: Segments deleted by retention before the set's first one (from a header's note).
    deleted: list[str] = attrs.Factory(list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong (in-flight commands are not wrong)."""
        return not self.problems


class NotSealed(RecordingError):
    """``verify --key`` on a recording that has no seal, or another key's."""

    exit_code = 1


@attrs.define
class SegmentResult:
    """What one segment's scan found (plain data: it comes back from a worker process)."""

    file: str
    header: Header
    header_hash: str
    chain_checked: bool
    records: int = 0
    problems: list[tuple[int, str]] = attrs.Factory(list)
    torn: tuple[int, int, int] | None = None
    final_seq: int = -1
    final_hash: str = ""
    last_note: str | None = None  # text of the last record when it is a note
    last_line: int = 1  # line of the last good record
    lines: int = 0  # lines read (of a chunk: from its start)
    pending: dict[int, bytes] = attrs.Factory(dict)  # lines of commands with no reply in this segment
    orphans: list[tuple[int, int, int]] = attrs.Factory(list)  # (line, reply seq, cmd) not matched here


@attrs.frozen
class Chunk:
    """Lines ``[start, end)`` (byte offsets at line starts) of a file, after the line whose hash and seq are given."""

    start: int
    end: int
    prev_hash: str
    prev_seq: int


def scan_segment(path: str, key: SealKey | None = None, chunk: Chunk | None = None) -> SegmentResult:
    """Check one file (or one *chunk* of it) line by line (see the module's docstring)."""
    try:
        reader = RecordingReader(path, errors="skip", key=key, one_file=True)
    except RecordingError as exc:
        if key is not None and "sealed with" in str(exc):
            raise NotSealed(str(exc)) from None
        raise
    if key is not None and reader.header.seal is None:
        reader.close()
        raise NotSealed(
            f"{path}: not sealed (no keyed chain): nothing proves who wrote it"
            + (" (it was rechained without --seal-key)" if reader.header.derived_from else "")
        )
    with reader:
        header = reader.header
        result = SegmentResult(path, header, reader._prev_hash, reader.chain_checked)
        key_bytes = key.key if key is not None and reader.chain_checked else None
        f = reader._file
        if chunk is None:
            _scan_lines(f, result, key_bytes, prev=reader._prev_hash, seq=header.seq, lineno=1)
        else:
            with io.BufferedReader(Window(f.fileno(), chunk.start or f.tell(), chunk.end), 1 << 20) as window:
                if chunk.start == 0:
                    _scan_lines(window, result, key_bytes, prev=reader._prev_hash, seq=header.seq, lineno=1)
                else:
                    _scan_lines(window, result, key_bytes, prev=chunk.prev_hash, seq=chunk.prev_seq, lineno=0)
    return result


class Window(io.RawIOBase):
    """Bytes ``[start, end)`` of an open file (a chunk), read with pread: its own position, EOF at *end*."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self._fd, self._pos, self._end = fd, start, end

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        data = os.pread(self._fd, min(len(b), self._end - self._pos), self._pos)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:  # the fd is the reader's
        super().close()


def _scan_lines(f: Any, r: SegmentResult, key: bytes | None, *, prev: str, seq: int, lineno: int) -> None:
    """The fast loop: each line hashed as it is on disk, checked by :mod:`.lineschema`, no typed records.

    The common case costs one hash, one comparison (the line's ``"h"``
    member, well-formed and linked) and one msgspec decode; anything else
    (a torn or malformed line, a broken link, a line the schema refuses, a
    seq gap) leaves the fast path to find out exactly what is wrong.
    """
    decode, refused = lineschema.decode_unchecked, lineschema.Refused
    mark_bytes, end_bytes, tail = _H_MARK, b'"}\n', _H_TAIL
    problems = r.problems
    add_problem = problems.append
    pending = r.pending
    answered: set[int] = set()
    check = r.chain_checked
    new_hash = (blake2b(digest_size=16) if key is None else blake2b(digest_size=16, key=key)).copy
    prev_b = prev.encode("ascii")
    expected = seq + 1
    first_line = lineno
    start_problems = len(problems)
    final_seq = seq
    last_line = lineno
    last: Any = None
    damaged = ""
    kept = 0  # problems on lines that still count as records
    try:
        for lineno, raw in enumerate(f, first_line + 1):  # noqa: B007 - lineno is used after the loop
            mark = len(raw) - tail
            if check:
                hasher = new_hash()  # == blake2b(prev + body, digest_size=16[, key]): chain.link
                hasher.update(prev_b)
                hasher.update(raw[:mark])
                hasher.update(b"}")
                h = hexlify(hasher.digest())
                broken = raw[mark:] != mark_bytes + h + end_bytes  # the "h" member, well-formed and linked
            else:
                broken = True
            if broken:
                if raw[-1] != 10:
                    r.torn = (lineno, f.tell() - len(raw), len(raw))
                    break
                if raw[mark : mark + 6] != mark_bytes or raw[-3:] != end_bytes:
                    add_problem((lineno, _format_problem(raw)))
                    continue
                h = raw[mark + 6 : -3]
                broken = check
            prev_b = h
            try:
                rec: Any = decode(raw)  # the whole line: "h" is one more member
                if not raw.isascii():
                    raw.decode()  # lineschema.decode's UTF-8 check, inline
                kind = rec.K
            except refused:
                rec = _slow_record(raw)
                if type(rec) is str:
                    add_problem((lineno, rec))
                    continue
                kind = rec.kind
            seq = rec.seq
            if broken or seq != expected:
                add_problem((lineno, _BROKEN if broken else f"seq {seq} where {expected} was expected"))
                expected = seq + 1
                continue
            expected = seq + 1
            if kind == "command":
                pending[seq] = raw
            elif kind == "reply":
                cmd = rec.cmd
                if cmd in pending:
                    del pending[cmd]
                    answered.add(cmd)
                elif cmd >= seq:
                    add_problem((lineno, f"reply names seq {cmd}, not an earlier record"))
                    kept += 1  # still a record
                elif cmd in answered:
                    add_problem((lineno, f"second reply to the command at seq {cmd}"))
                    kept += 1
                else:
                    r.orphans.append((lineno, seq, cmd))
            elif kind == "header":
                add_problem((lineno, "a second header"))
                continue
            last = rec
            last_line = lineno
    except OSError as exc:  # a damaged .zst
        damaged = str(exc)
    read = lineno - first_line - (r.torn is not None)
    r.records = (1 if first_line else 0) + read - (len(problems) - start_problems - kept)
    if damaged:
        add_problem((lineno + 1, damaged))
    r.lines = lineno
    r.last_line = last_line
    r.final_hash = prev_b.decode("ascii", "replace")
    r.final_seq = final_seq if last is None else last.seq
    kind = "" if last is None else last.K if isinstance(last, lineschema.LineRecord) else last.kind
    r.last_note = last.text if kind == "note" else None


def _format_problem(raw: bytes) -> str:
    from .chain import ChainFormatError, unseal

    try:
        unseal(raw)
    except ChainFormatError as exc:
        return str(exc)
    return 'line has no well-formed "h" member at its end'


def _slow_record(raw: bytes) -> Record | str:
    """The typed record of a line the fast schema refused, or what is wrong with it.

    orjson, then QEMU's grammar (what orjson refuses but qmprr writes: deep
    nesting, 1e999), then the typed schema: its verdict and message decide.
    """
    try:
        d = codec.loads(raw)
    except codec.JSONDecodeError as exc:
        return f"invalid JSON: {exc}"
    try:
        return convert.structure(d)
    except convert.RecordSchemaError as exc:
        return str(exc)


def verify(
    path: str | os.PathLike[str],
    *,
    key: SealKey | None = None,
    since: str | None = None,
    jobs: int | None = None,
) -> VerifyReport:
    """Read *path* (one file or a set) through and report every problem, with its line.

    Raises :class:`~qmprr.errors.NotARecording` (or another
    :class:`~qmprr.errors.RecordingError`) when a file cannot be read as a
    recording at all, and :class:`NotSealed` when *key* is given and the
    recording is not sealed with it. *jobs*: processes for a set (default:
    the CPUs available).
    """
    path = os.fspath(path)
    files = sets.resolve(path, since=since)
    results = _scan_all(files, key, jobs)
    first = results[0]
    report = VerifyReport(path=path, header=first.header, files=files,
                          chain_checked=all(r.chain_checked for r in results))
    problems: list[Problem] = []
    pending: dict[int, bytes] = {}
    for i, r in enumerate(results):
        where = None if len(results) == 1 else r.file
        problems += [Problem(line, message, where) for line, message in r.problems]
        if i:
            prev = results[i - 1]
            link = link_problem(r.header, r.header_hash, prev.header, prev.file, prev.final_seq, prev.final_hash)
            if link is not None:
                problems.append(Problem(1, f"segment {link}", where))
            if prev.torn is not None:
                problems.append(Problem(prev.torn[0], f"torn last line ({prev.torn[2]} bytes) in a segment"
                                        " that is not the last", prev.file))
        for line, _seq, cmd in r.orphans:
            if cmd in pending:
                del pending[cmd]
            elif cmd < first.header.seq:
                pass  # a command before what was verified (an earlier segment, --since): not checked here
            else:
                problems.append(Problem(line, f"reply names seq {cmd}, which is not a command", where))
        pending.update(r.pending)
        if key is not None and r.last_note != END_SEAL_TEXT:
            problems.append(Problem(r.last_line + 1, "the sealed chain has no end seal: the"
                                    " file was cut short, or its writer crashed ('qmprr repair --seal-key' seals it)",
                                    where))
    last = results[-1]
    if last.torn is not None:
        line, offset, size = last.torn
        report.torn = Torn(line, offset, size)
        problems.append(Problem(line, f"torn last line ({size} bytes, no newline)",
                                None if len(results) == 1 else last.file))
    report.end_sealed = key is not None and all(r.last_note == END_SEAL_TEXT for r in results) and last.torn is None
    if len(results) > 1 and since is None:
        problems += _start_problems(results, report)
    report.records = sum(r.records for r in results)
    report.problems = sorted(problems, key=lambda p: (files.index(p.file) if p.file in files else 0, p.line))
    report.in_flight = [convert.structure(codec.loads(line)) for line in pending.values()]  # type: ignore[misc]  # structure() is typed Record; these are Commands
    return report


def _start_problems(results: list[SegmentResult], report: VerifyReport) -> list[Problem]:
    """A set that does not start at its first segment must say why (retention)."""
    first = results[0]
    prev = first.header.previous
    if not prev or first.header.segment in (None, 1):
        return []
    for r in results:
        note = r.header.retention
        if note and note.get("final_hash") == prev.get("final_hash"):
            report.deleted = list(note.get("deleted") or [])
            return []
    return [Problem(1, f"the set starts at segment {first.header.segment}: {prev.get('file')} is missing and no"
                    " header says retention deleted it", first.file)]


#: A file smaller than this is not split between processes.
MIN_SPLIT = 8 << 20


def _scan_all(files: list[str], key: SealKey | None, jobs: int | None) -> list[SegmentResult]:
    """Every file's result, in order: files (or, with fewer files than CPUs, chunks of them) in parallel."""
    cpus = jobs or len(os.sched_getaffinity(0))
    tasks: list[tuple[int, str, Chunk | None]] = []
    for i, f in enumerate(files):
        pieces = -(-cpus // len(files))
        chunks = split_file(f, pieces) if pieces > 1 and not f.endswith(sets.ZST) else [None]
        tasks += [(i, f, c) for c in chunks]
    workers = min(len(tasks), cpus)
    if workers <= 1:
        parts = [scan_segment(f, key, c) for _, f, c in tasks]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(scan_segment, [f for _, f, _ in tasks], [key] * len(tasks), [c for *_, c in tasks]))
    results: list[SegmentResult] = []
    for (i, _, c), part in zip(tasks, parts):
        if c is None or c.start == 0 or not results or len(results) <= i:
            results.append(part)
        else:
            _merge(results[-1], part)
    return results


def split_file(path: str, pieces: int, min_size: int | None = None) -> list[Chunk | None]:
    """Cut a file at line starts into about *pieces* chunks, each knowing the line before it.

    ``[None]``: not cut (smaller than *min_size*, default :data:`MIN_SPLIT`).
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        return [None]
    if size < (MIN_SPLIT if min_size is None else min_size):
        return [None]
    out: list[tuple[str, int]] = []
    with open(path, "rb") as f:
        starts = [0]
        for k in range(1, pieces):
            f.seek(size * k // pieces)
            f.readline()  # to the next line start
            for _ in range(100):  # past a damaged line: a chunk starts after a line it can read
                at = f.tell()
                line = f.readline()
                if not line.endswith(b"\n"):
                    break
                prev = _line_end(line)
                if prev is not None and at > starts[-1]:
                    starts.append(f.tell())
                    out.append(prev)
                    break
        ends = starts[1:] + [size + 1]
    chunks: list[Chunk | None] = [Chunk(0, ends[0], "", -1)]
    for start, end, (prev_hash, prev_seq) in zip(starts[1:], ends[1:], out):
        chunks.append(Chunk(start, end, prev_hash, prev_seq))
    return chunks


def _line_end(line: bytes) -> tuple[str, int] | None:
    """``(h, seq)`` of a well-formed line, else None."""
    from .chain import ChainFormatError, unseal

    try:
        _, h = unseal(line)
        d = orjson.loads(line)
    except (ChainFormatError, orjson.JSONDecodeError):
        return None
    seq = d.get("seq") if type(d) is dict else None
    return (h, seq) if type(seq) is int else None


def _merge(into: SegmentResult, part: SegmentResult) -> None:
    """Append a later chunk's result to its segment's (line numbers moved on, replies matched)."""
    base = into.lines
    into.problems += [(line + base, m) for line, m in part.problems]
    for line, seq, cmd in part.orphans:
        if cmd in into.pending:
            del into.pending[cmd]
        else:
            into.orphans.append((line + base, seq, cmd))
    into.pending.update(part.pending)
    into.records += part.records
    if part.records:
        into.final_seq, into.last_line, into.last_note = part.final_seq, part.last_line + base, part.last_note
    into.final_hash = part.final_hash
    into.torn = (part.torn[0] + base, part.torn[1], part.torn[2]) if part.torn else None
    into.lines = base + part.lines
