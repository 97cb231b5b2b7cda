"""Fast streaming of a recording's records as plain dicts, for the analyses.

:class:`~qmprr.recording.RecordingReader` builds typed records (cattrs),
which costs about 4 µs a record; the analyses read millions of records, so
they work on the decoded JSON objects instead and build typed records only for
what they print. Each line is checked as the reader checks it -- JSON object,
known ``kind``, ``seq`` continuity, numeric ``t``, and (optionally) the hash
chain -- and a line that fails is reported and skipped. The fields of each
kind are *not* checked by the iteration (``qmprr verify`` does that):
consumers read them defensively; :func:`field_problem` checks a line's
fields, and :meth:`Scanner.kind_raw` can check those of the lines it yields.
"""

from __future__ import annotations

import io
import os
from binascii import hexlify
from collections.abc import Callable, Iterable, Iterator
from hashlib import blake2b
from typing import Any, BinaryIO

import attrs
import msgspec

from .. import codec
from ..errors import NotARecording, RecordingError
from ..recording import RecordingReader, chain, convert, lineschema, sets
from ..recording.model import FORMAT, RECORD_TYPES, Header
from ..recording.reader import Problem, Torn, link_problem
from ..recording.verify import Chunk, Window, split_file
from .follow import POLL_INTERVAL, LineTail

KINDS = frozenset(RECORD_TYPES)
_BODY_KINDS = {kind: True for kind in KINDS if kind != "header"}
_NUMBERS = (int, float)

_H_MARK = b',"h":"'
_H_TAIL = len(_H_MARK) + 32 + 3  # the mark, 32 hex digits, '"}\n'


class Scanner:
    """Iterate over ``(record dict, raw line)`` pairs of one recording, or of a segment set.

    *path* is what :func:`~qmprr.recording.sets.resolve` takes: a file
    (``.jsonl.zst`` too), a set's folder or first segment; a set reads as
    one recording (later segments' headers are checked as links and not
    yielded). The header is read and checked on construction (:attr:`header`,
    typed); :class:`~qmprr.errors.NotARecording` if the file is not a
    recording. Problems go to *on_problem* as they are found, or else to
    :attr:`problems`. With *follow*, waits for more records (see
    :class:`~qmprr.analysis.follow.LineTail`), and for the header too; a
    followed segment ends when the next one appears, and reading goes on there.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        check_chain: bool = True,
        follow: bool = False,
        poll: float = POLL_INTERVAL,
        should_stop: Callable[[], bool] | None = None,
        on_problem: Callable[[Problem], None] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.check_chain = check_chain
        self.follow = follow
        self.poll = poll
        self.should_stop = should_stop
        self.problems: list[Problem] = []
        self._report_to = on_problem or self.problems.append
        #: Line number (1-based) of the record last yielded; once iteration has ended, of the last line.
        self.line = 0
        self.files = sets.resolve(self.path)
        #: The file being read (a set's segment).
        self.current = self.files[0]
        self._file = self._open(self.current)
        try:
            if not follow:  # the reader's bounded header check first: a huge first line is refused unread
                self.header: Header = self._check_header(self.current)
            self._lines = self._tail_lines(self.current)
            self._first = self._read_first_line()
            if follow:
                self.header = self._check_header(self.current)
        except BaseException:
            self._file.close()
            raise

    def report(self, message: str) -> None:
        """Report a problem with the line last yielded (in the segment being read)."""
        self._report(Problem(self.line, message))

    def _report(self, problem: Problem) -> None:
        if self.current != self.path and problem.file is None:
            problem = Problem(problem.line, problem.message, self.current)
        self._report_to(problem)

    def _open(self, path: str) -> BinaryIO:
        try:
            return sets.open_bytes(path)  # a FIFO or /dev/zero: refused, no hang
        except OSError as exc:
            raise RecordingError(f"{path}: cannot read recording: {exc.strerror}") from None

    def _tail_lines(self, path: str) -> Iterator[bytes]:
        follow = self.follow and not path.endswith(sets.ZST)  # a compressed segment is closed
        user_stop = self.should_stop

        def stop() -> bool:
            return (user_stop is not None and user_stop()) or sets.next_segment(path) is not None

        self._tail = LineTail(self._file, path, follow=follow, poll=self.poll,
                              should_stop=stop if sets.parse(path) else user_stop)
        return iter(self._tail)

    def _read_first_line(self) -> bytes:
        first = next(self._lines, None)
        if first is None:
            problem = "its only line is incomplete" if self._tail.torn else "file is empty"
            raise NotARecording(f"{self.current}: not a {FORMAT} recording: {problem}")
        return first

    def _check_header(self, path: str) -> Header:
        # The reader's own header checks, so the messages are the same.
        with RecordingReader(path, errors="skip", check_chain=self.check_chain, one_file=True) as reader:
            return reader.header

    @property
    def body_offset(self) -> int:
        """Where the line after the header starts."""
        return len(self._first)

    @property
    def torn(self) -> Torn | None:
        """The incomplete last line, once iteration has ended (None while following)."""
        t = self._tail.torn
        return Torn(self.line + 1, t[0], t[1]) if t else None

    @property
    def _chain_checked(self) -> bool:
        """Lines' hashes are checked: asked for, and the chain is not keyed (sealed: as the reader without a key)."""
        return self.check_chain and self.header.seal is None

    def _next_file(self, index: int) -> str | None:
        if self.follow:
            return sets.next_segment(self.current)
        return self.files[index + 1] if index + 1 < len(self.files) else None

    def __iter__(self) -> Iterator[tuple[dict[str, Any], bytes]]:
        return self._records(lambda decoder, lines: decoder.decode(lines), header=True)

    def kind_lines(self, kinds: frozenset[str], grep: bytes | None = None) -> Iterator[tuple[dict[str, Any], bytes]]:
        """:meth:`kind_raw`'s lines with their decoded dicts."""
        loads = codec.loads
        for raw in self.kind_raw(kinds, grep):
            yield loads(raw), raw

    def kind_raw(self, kinds: frozenset[str], grep: bytes | None = None, *,
                 fields: bool = False) -> Iterator[bytes]:
        """The lines of records of *kinds* (and holding *grep*), checked as :meth:`__iter__` checks them, faster.

        Every line's chain, JSON, ``seq``, ``t`` and kind are checked with
        one hash and one msgspec decode of just those fields (no dicts); the
        lines are yielded as they are. A line that fails there goes the slow
        way, so its problem is reported as :meth:`__iter__` reports it.
        With *fields*, a line about to be yielded is also checked by the
        record schema (:func:`field_problem`, the line schema first): one
        that fails is reported and skipped (not the header: the reader checked it).
        """
        def torn(size: int) -> None:
            self._tail.torn = (self._file.tell() - size, size)

        def scan(decoder: Decoder, lines: Iterable[bytes]) -> Iterator[bytes]:
            if lines is self._file and not self.follow and self._chain_checked:
                chunks = _chunks_of(self.current)
                if chunks:
                    return self._split_kinds(decoder, chunks, kinds, grep, fields)
            return _fast_kinds(decoder, lines, kinds, grep, torn, fields)

        return self._records(scan, header="header" in kinds and (grep is None or grep in self._first),  # type: ignore[arg-type, return-value]  # pairs=False: bytes
                             direct=True, pairs=False)

    def _split_kinds(self, decoder: Decoder, chunks: list[Chunk], kinds: frozenset[str],
                     grep: bytes | None, fields: bool) -> Iterator[bytes]:
        """:func:`_fast_kinds` over a large file, its later chunks scanned by forked processes meanwhile.

        This process reads the first chunk and yields its lines; then, when
        its chain and seq arrive where the next chunk's scan started from
        (always, but after damage at the boundary), it takes that chunk's
        lines and problems (line numbers moved on), else it scans the chunk
        itself. The output is the serial scan's, line for line.
        """
        import multiprocessing
        import tempfile

        path = self.current
        fd = self._file.fileno()
        ctx = multiprocessing.get_context("fork")
        outs = [tempfile.TemporaryFile(prefix="qmprr-show-") for _ in chunks[1:]]
        workers = []
        try:
            for c, out in zip(chunks[1:], outs):
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_chunk_worker, args=(path, c, kinds, grep, fields, out.fileno(), send), daemon=True)
                proc.start()
                send.close()
                workers.append((proc, receive))
            start = self._file.tell()
            bounds: list[tuple[Chunk, int]] = [(c, nxt.start) for c, nxt in zip(chunks, chunks[1:])]
            bounds.append((chunks[-1], 1 << 62))
            for i, (chunk, end) in enumerate(bounds):
                result = None
                if i and decoder.prev_hash == chunk.prev_hash.encode("ascii") and decoder.expected == chunk.prev_seq + 1:
                    proc, receive = workers[i - 1]
                    try:
                        result = receive.recv()
                    except EOFError:  # the worker died: scan the chunk here
                        pass
                    proc.join()
                if result is not None:  # its scan started where this one arrived: take it
                    base = decoder.line
                    for problem in result.problems:
                        self._report(Problem(problem.line + base, problem.message))
                    out = outs[i - 1]
                    out.seek(0)
                    for lineno, raw in zip(result.lines, out):
                        decoder.line = base + lineno
                        yield raw
                    decoder.line, decoder.prev_hash, decoder.expected = (base + result.last_line, result.prev_hash,
                                                                         result.expected)
                    if result.torn:
                        self._tail.torn = (os.fstat(fd).st_size - result.torn, result.torn)
                    continue
                with io.BufferedReader(Window(fd, chunk.start or start, end), 1 << 20) as window:
                    def torn(size: int, window: Any = window) -> None:
                        self._tail.torn = (window.tell() - size, size)

                    yield from _fast_kinds(decoder, window, kinds, grep, torn, fields)
        finally:
            for proc, receive in workers:
                if proc.is_alive():
                    proc.terminate()
                proc.join()
                receive.close()
            for out in outs:
                out.close()

    def _records(self, decode: Callable[[Decoder, Iterable[bytes]], Iterator[tuple[dict[str, Any], bytes]]],
                 *, header: bool, direct: bool = False, pairs: bool = True) -> Iterator[tuple[dict[str, Any], bytes]]:
        """*direct*: not following, *decode* reads the file's lines itself (and reports a torn one);
        *pairs*: the header is yielded as *decode* yields lines, ``(dict, raw)`` (else raw)."""
        first = self._first
        self.line = 1
        if header:
            yield (codec.loads(first), first) if pairs else first  # type: ignore[misc]  # pairs=False: bytes
        prev = chain.unseal(first)[1].encode("ascii") if self._chain_checked else None
        decoder = Decoder(self._report, expected=self.header.seq + 1, prev_hash=prev, line=1)
        headers = [(self.current, self.header)]
        index = 0
        while True:
            for item in decode(decoder, self._file if direct and not self._tail.follow else self._lines):
                self.line = decoder.line
                yield item
            self.line = decoder.line
            nxt = self._next_file(index)
            if self._tail.torn:
                where = " in a segment that is not the last" if nxt else ", no newline"
                self._report(Problem(decoder.line + 1, f"torn last line ({self._tail.torn[1]} bytes{where})"))
            if nxt is None:
                return
            index += 1
            final_seq = (decoder.expected or 0) - 1
            final_hash = (decoder.prev_hash or b"").decode("ascii", "replace")
            self._file.close()
            for _ in range(3):  # compressed (renamed) between the look and the open: look again
                try:
                    self._file = sets.open_bytes(nxt)
                    break
                except FileNotFoundError:
                    nxt = self._next_file(index - 1) or nxt
            else:
                self._file = self._open(nxt)
            self.current = nxt
            if not self.follow:
                seg_header = self._check_header(nxt)
            self._lines = self._tail_lines(nxt)
            line = self._read_first_line()  # following: waits for the header to be written
            if self.follow:
                seg_header = self._check_header(nxt)
            h = chain.unseal(line)[1]
            if self.check_chain:
                problem = link_problem(seg_header, h, headers[-1][1], headers[-1][0], final_seq, final_hash)
                if problem is not None:
                    self._report(Problem(1, f"segment {problem}"))
            headers.append((nxt, seg_header))
            decoder.prev_hash = h.encode("ascii") if self._chain_checked else None
            decoder.expected = seg_header.seq + 1
            decoder.line = 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Scanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Common(msgspec.Struct, gc=False):
    """The fields every line's record has: what :class:`Decoder` checks of each (the JSON too)."""

    seq: int
    t: float
    kind: str


_decode_common = msgspec.json.Decoder(_Common).decode
_BODY_KIND_NAMES = frozenset(_BODY_KINDS)


#: A file smaller than this is scanned by one process (:meth:`Scanner.kind_raw`).
MIN_SPLIT = 16 << 20


def _cpus() -> int:
    return min(len(os.sched_getaffinity(0)), 4)


def _chunks_of(path: str) -> list[Chunk]:
    """Chunks for :meth:`Scanner._split_kinds`, one a CPU, or [] when the file is not worth splitting."""
    cpus = _cpus()
    if cpus < 2 or path.endswith(sets.ZST):
        return []
    try:
        if os.path.getsize(path) < MIN_SPLIT:
            return []
    except OSError:
        return []
    chunks = split_file(path, cpus, min_size=MIN_SPLIT)
    return [c for c in chunks if c is not None] if len(chunks) > 1 else []


@attrs.define
class _ChunkScan:
    """What a worker found in its chunk (line numbers from the chunk's start)."""

    problems: list[Problem]
    lines: list[int]  # the line of each line written out
    last_line: int
    prev_hash: bytes | None
    expected: int | None
    torn: int  # size of a torn last line, or 0


def _scan_chunk(path: str, chunk: Chunk, kinds: frozenset[str], grep: bytes | None, fields: bool,
                out_fd: int) -> _ChunkScan:
    """:func:`_fast_kinds` over *chunk* of *path*, its lines written to *out_fd* (a forked worker)."""
    problems: list[Problem] = []
    decoder = Decoder(problems.append, expected=chunk.prev_seq + 1, prev_hash=chunk.prev_hash.encode("ascii"))
    torn = [0]
    lines: list[int] = []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with io.BufferedReader(Window(fd, chunk.start, chunk.end), 1 << 20) as window, \
                open(out_fd, "wb", closefd=False, buffering=1 << 20) as out:
            write = out.write
            for raw in _fast_kinds(decoder, window, kinds, grep, lambda size: torn.__setitem__(0, size), fields):
                write(raw)
                lines.append(decoder.line)
    finally:
        os.close(fd)
    return _ChunkScan(problems, lines, decoder.line, decoder.prev_hash, decoder.expected, torn[0])


def _chunk_worker(path: str, chunk: Chunk, kinds: frozenset[str], grep: bytes | None, fields: bool,
                  out_fd: int, send: Any) -> None:
    """A forked process's work: :func:`_scan_chunk`, its result sent back (None: it failed, scan it again)."""
    try:
        result: _ChunkScan | None = _scan_chunk(path, chunk, kinds, grep, fields, out_fd)
    except Exception:  # noqa: BLE001 - the parent scans the chunk itself and reports what is wrong
        result = None
    send.send(result)
    send.close()


def field_problem(raw: bytes, d: Any = None) -> str | None:
    """What the record schema finds wrong with a line's fields (*d*: the line decoded, if it is), or None.

    ``verify``'s line schema (:mod:`~qmprr.recording.lineschema`) first, no
    dicts built; a line it refuses goes to the typed schema for the verdict
    and the exact message (it is stricter, never looser).
    """
    try:
        lineschema.decode(raw)
        return None
    except lineschema.Refused:
        pass
    try:
        convert.structure(codec.loads(raw) if d is None else d)
    except convert.RecordSchemaError as exc:
        return str(exc)
    except codec.JSONDecodeError as exc:  # pragma: no cover - lines come here decoded
        return f"invalid JSON: {exc}"
    return None


def _fast_kinds(decoder: Decoder, lines: Iterable[bytes], kinds: frozenset[str],
                grep: bytes | None, on_torn: Callable[[int], None], fields: bool = False) -> Iterator[bytes]:
    """:meth:`Decoder.decode`, keeping only the lines of *kinds* (see :meth:`Scanner.kind_raw`)."""
    body_kinds, mark_b, end_b, tail, common = _BODY_KIND_NAMES, _H_MARK, b'"}\n', _H_TAIL, _decode_common
    refused = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)  # deep nesting: the slow way reads it
    schema = lineschema.decode_unchecked if fields else None  # UTF-8 is checked here already
    check = decoder.prev_hash is not None
    new_hash = blake2b(digest_size=16).copy
    prev = decoder.prev_hash or b""
    expected = decoder.expected
    lineno = first = decoder.line
    for lineno, raw in enumerate(lines, first + 1):  # noqa: B007 - lineno is used after the loop
        mark = len(raw) - tail
        if check:
            hasher = new_hash()  # chain.link: blake2b(prev + body, digest_size=16)
            hasher.update(prev)
            hasher.update(raw[:mark])
            hasher.update(b"}")
            h = hexlify(hasher.digest())
            ok = raw[mark:] == mark_b + h + end_b  # the "h" member, well-formed and linked
        else:
            h = raw[mark + 6 : -3]
            ok = raw[mark : mark + 6] == mark_b and raw[-3:] == end_b
        if ok:
            try:
                rec = common(raw)
                if not raw.isascii():
                    raw.decode()  # msgspec does not check UTF-8 in what it skips; orjson does
                kind = rec.kind
                if rec.seq == expected and kind in body_kinds:
                    prev = h
                    expected = rec.seq + 1
                    if kind in kinds and (grep is None or grep in raw):
                        decoder.line = lineno
                        if schema is not None:
                            try:
                                schema(raw)
                            except refused:
                                problem = field_problem(raw)
                                if problem is not None:
                                    decoder.report(Problem(lineno, problem))
                                    continue
                        yield raw
                    continue
            except refused:
                pass
        elif raw[-1:] != b"\n":  # only the last line can lack its newline
            on_torn(len(raw))
            lineno -= 1  # not a line taken in
            break
        # The slow way, for one line: the Decoder's exact checks and messages.
        decoder.prev_hash, decoder.expected, decoder.line = (prev if check else None), expected, lineno - 1
        for d, r in decoder.decode((raw,)):
            if d.get("kind") in kinds and (grep is None or grep in r):
                problem = field_problem(r, d) if fields else None
                if problem is not None:
                    decoder.report(Problem(lineno, problem))
                    continue
                yield r
        prev, expected = decoder.prev_hash or b"", decoder.expected
    decoder.prev_hash, decoder.expected, decoder.line = (prev if check else None), expected, lineno


class Decoder:
    """Checks and decodes complete lines, keeping what spans lines: the line
    number, the ``seq`` expected next (None: take the first one seen) and,
    to check the hash chain, the previous line's hash."""

    def __init__(self, report: Callable[[Problem], None], *, expected: int | None,
                 prev_hash: bytes | None = None, line: int = 0) -> None:
        self.report = report
        self.expected = expected
        self.prev_hash = prev_hash
        #: Number of the last line taken in.
        self.line = line

    def decode(self, lines: Iterable[bytes]) -> Iterator[tuple[dict[str, Any], bytes]]:
        """``(dict, raw line)`` for each good line of *lines*; problems reported, bad lines skipped."""
        check_chain = self.prev_hash is not None
        prev = self.prev_hash or b""
        expected = self.expected
        loads, decode_error = codec.loads, codec.JSONDecodeError
        body_kinds, numbers = _BODY_KINDS, _NUMBERS
        report = self.report
        good = True
        lineno = self.line
        for raw in lines:
            lineno += 1
            self.line = lineno
            if check_chain:
                n = len(raw)
                mark = n - _H_TAIL
                if raw[mark : mark + 6] == _H_MARK and raw.endswith(b'"}\n'):
                    h = raw[mark + 6 : n - 3]
                    b = blake2b(prev, digest_size=16)
                    b.update(memoryview(raw)[:mark])
                    b.update(b"}")
                    prev, good = h, b.hexdigest().encode() == h
                else:
                    try:
                        body, hs = chain.unseal(raw)
                    except chain.ChainFormatError as exc:
                        report(Problem(lineno, str(exc)))
                        continue
                    h = hs.encode("ascii", "replace")
                    prev, good = h, chain.link(prev.decode("ascii", "replace"), body) == hs
                self.prev_hash = prev
            try:
                d = loads(raw)
                if expected is None and type(d) is dict and type(d.get("seq")) is int:
                    expected = d["seq"]
                ok = (type(d) is dict and d.get("seq") == expected and d.get("kind") in body_kinds
                      and type(d.get("t")) in numbers and type(d["seq"]) is int and good)
            except decode_error as exc:
                report(Problem(lineno, f"invalid JSON: {exc}"))
                expected = self.expected = None  # its seq is unknown: take the next one as it comes
                continue
            except TypeError:  # an unhashable "kind"
                ok = False
            if ok:
                expected += 1  # type: ignore[operator]  # ok implies expected is an int
                self.expected = expected
                yield d, raw
                continue
            problem = _shape_problem(d, expected)
            if problem is None and not good:
                problem = ("hash chain broken: the line was edited, or a line before it was"
                           " deleted, inserted or moved")
            seq = d.get("seq") if type(d) is dict else None
            gap = (type(seq) is int and expected is not None and seq > expected and good
                   and d.get("kind") != "header" and problem == _gap(seq, expected))
            expected = self.expected = seq + 1 if type(seq) is int else None
            report(Problem(lineno, problem or "invalid record"))
            if gap:
                yield d, raw  # records are missing before this one: said, and this one still read


def _gap(seq: int, expected: int) -> str:
    return f"seq {seq} where {expected} was expected"


def _shape_problem(d: Any, expected: int | None) -> str | None:
    """What is wrong with the common fields of a decoded line, or None."""
    if type(d) is not dict:
        return "a record must be a JSON object"
    kind = d.get("kind")
    if type(kind) is not str or kind not in KINDS:
        return f"unknown record kind {kind!r}"
    seq = d.get("seq")
    if type(seq) is not int or seq < 0:
        return f"'seq' must be a non-negative integer, not {seq!r}"
    if type(d.get("t")) not in (int, float):
        return f"'t' must be a number, not {d.get('t')!r}"
    if expected is not None and seq != expected:
        return _gap(seq, expected)
    if kind == "header":
        return "a second header"
    return None
