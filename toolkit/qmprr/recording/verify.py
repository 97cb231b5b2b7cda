"""Whole-recording checks behind ``qmprr verify``, for one file or a segment set.

Each line is checked as the reader checks it -- the hash chain over the exact
line bytes, JSON, ``seq`` continuity, the record's kind and required fields
-- without building typed records: the fast path hashes the line, decodes it
with orjson and looks at a few fields; only a line that fails there goes
through the typed schema (:func:`.convert.structure`) for its exact message.
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

import os
from hashlib import blake2b
from typing import Any

import attrs

from .. import codec
from ..errors import RecordingError
from . import convert, sets
from .chain import SealKey
from .encode import END_SEAL_TEXT
from .model import RECORD_TYPES, Command, Header
from .reader import Problem, RecordingReader, Torn, link_problem

_H_MARK = b',"h":"'
_H_TAIL = len(_H_MARK) + 32 + 3  # the mark, 32 hex digits, '"}\n'
_NUMBERS = (int, float)
_BROKEN = "hash chain broken: the line was edited, or a line before it was deleted, inserted or moved"
#: Fields each kind must have (the fast path; the typed schema decides anything else).
_REQUIRED = {
    kind: tuple(a.name for a in attrs.fields(cls) if a.default is attrs.NOTHING)
    for kind, cls in RECORD_TYPES.items()
}
_MSG_FIELDS = ("msg", "reply")


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
    pending: dict[int, dict[str, Any]] = attrs.Factory(dict)  # commands with no reply in this segment
    orphans: list[tuple[int, int, int]] = attrs.Factory(list)  # (line, reply seq, cmd) not matched here


def scan_segment(path: str, key: SealKey | None = None) -> SegmentResult:
    """Check one file line by line (see the module's docstring)."""
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
        _scan_lines(reader._file, result, key.key if key is not None and reader.chain_checked else b"")
    return result


def _scan_lines(f: Any, r: SegmentResult, key: bytes) -> None:
    """The fast loop: no typed records, each line hashed as it is on disk."""
    loads, decode_error = codec.loads, codec.JSONDecodeError
    required, kinds = _REQUIRED, RECORD_TYPES
    problems = r.problems
    pending = r.pending
    answered: set[int] = set()
    check = r.chain_checked
    prev = r.header_hash.encode("ascii")
    expected = r.header.seq + 1
    final_seq = r.header.seq
    lineno = 1
    last_line = 1
    records = 1
    last_kind = None
    last_d: Any = None
    offset = f.tell()
    try:
        for raw in f:
            lineno += 1
            n = len(raw)
            if raw[n - 1 :] != b"\n":
                r.torn = (lineno, offset, n)
                break
            offset += n
            mark = n - _H_TAIL
            if raw[mark : mark + 6] != _H_MARK or raw[n - 3 :] != b'"}\n' or raw[mark + 6 : n - 3].find(b'"') >= 0:
                problems.append((lineno, _format_problem(raw)))
                continue
            h = raw[mark + 6 : n - 3]
            p, prev = prev, h
            if check:
                b = blake2b(p, digest_size=16, key=key)
                b.update(memoryview(raw)[:mark])
                b.update(b"}")
                good = b.hexdigest().encode() == h
            else:
                good = True
            try:
                d = loads(raw)  # the whole line: "h" is one more member
            except decode_error as exc:
                problems.append((lineno, f"invalid JSON: {exc}"))
                continue
            kind = d.get("kind") if type(d) is dict else None
            seq = d.get("seq") if kind is not None else None
            fast = (
                type(kind) is str and kind in kinds and kind != "header" and type(seq) is int and seq >= 0
                and type(d.get("t")) in _NUMBERS and all(k in d for k in required[kind])
                and all(type(d[k]) is dict for k in _MSG_FIELDS if k in d)
            )
            if not fast:
                message = _slow_problem(d)
                if message is not None:
                    problems.append((lineno, message))
                    continue
            exp, expected = expected, seq + 1  # type: ignore[operator]
            if not good:
                problems.append((lineno, _BROKEN))
                continue
            if seq != exp:
                problems.append((lineno, f"seq {seq} where {exp} was expected"))
                continue
            if kind == "header":
                problems.append((lineno, "a second header"))
                continue
            records += 1
            final_seq = seq
            last_line = lineno
            last_kind, last_d = kind, d
            if kind == "command":
                pending[seq] = d
            elif kind == "reply":
                cmd = d["cmd"]
                if cmd in pending:
                    del pending[cmd]
                    answered.add(cmd)
                elif cmd >= seq:
                    problems.append((lineno, f"reply names seq {cmd}, not an earlier record"))
                elif cmd in answered:
                    problems.append((lineno, f"second reply to the command at seq {cmd}"))
                else:
                    r.orphans.append((lineno, seq, cmd))
    except OSError as exc:  # a damaged .zst
        problems.append((lineno + 1, str(exc)))
    r.records = records
    r.final_seq = final_seq
    r.last_line = last_line
    r.final_hash = prev.decode("ascii", "replace")
    r.last_note = last_d.get("text") if last_kind == "note" else None


def _format_problem(raw: bytes) -> str:
    from .chain import ChainFormatError, unseal

    try:
        unseal(raw)
    except ChainFormatError as exc:
        return str(exc)
    return 'line has no well-formed "h" member at its end'


def _slow_problem(d: Any) -> str | None:
    """The typed schema's verdict on a line the fast path did not accept (None: it is fine)."""
    try:
        convert.structure(d)
    except convert.RecordSchemaError as exc:
        return str(exc)
    return None


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
    pending: dict[int, dict[str, Any]] = {}
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
        for line, seq, cmd in r.orphans:
            if cmd in pending:
                del pending[cmd]
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
    report.in_flight = [convert.structure(d) for d in pending.values()]  # type: ignore[misc]
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


def _scan_all(files: list[str], key: SealKey | None, jobs: int | None) -> list[SegmentResult]:
    workers = min(len(files), jobs or len(os.sched_getaffinity(0)))
    if workers <= 1:
        return [scan_segment(f, key) for f in files]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(scan_segment, files, [key] * len(files)))
