"""Fast streaming of a recording's records as plain dicts, for the analyses.

:class:`~qmprr.recording.RecordingReader` builds typed records (cattrs),
which costs about 4 µs a record; the analyses read millions of records, so
they work on the decoded JSON objects instead and build typed records only for
what they print. Each line is checked as the reader checks it -- JSON object,
known ``kind``, ``seq`` continuity, numeric ``t``, and (optionally) the hash
chain -- and a line that fails is reported and skipped. The fields of each
kind are *not* checked here (``qmprr verify`` does that): consumers read them
defensively.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from hashlib import blake2b
from typing import Any, BinaryIO

from .. import codec
from ..errors import NotARecording, RecordingError
from ..recording import RecordingReader, chain
from ..recording.model import FORMAT, RECORD_TYPES, Header
from ..recording.reader import Problem, Torn
from .follow import POLL_INTERVAL, LineTail

KINDS = frozenset(RECORD_TYPES)

_H_MARK = b',"h":"'
_H_TAIL = len(_H_MARK) + 32 + 3  # the mark, 32 hex digits, '"}\n'


class Scanner:
    """Iterate over ``(record dict, raw line)`` pairs of one recording.

    The header is read and checked on construction (:attr:`header`, typed);
    :class:`~qmprr.errors.NotARecording` if the file is not a recording.
    Problems go to *on_problem* as they are found, or else to
    :attr:`problems`. With *follow*, waits for more records (see
    :class:`~qmprr.analysis.follow.LineTail`), and for the header too.
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
        self.problems: list[Problem] = []
        self._report = on_problem or self.problems.append
        #: Line number of the record last yielded (1-based).
        self.line = 0
        self.records = 0
        try:
            self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot read recording: {exc.strerror}") from None
        try:
            self._tail = LineTail(self._file, self.path, follow=follow, poll=poll, should_stop=should_stop)
            self._lines = iter(self._tail)
            self._first = self._read_first_line()
            self.header: Header = self._check_header()
        except BaseException:
            self._file.close()
            raise

    def _read_first_line(self) -> bytes:
        first = next(self._lines, None)
        if first is None:
            problem = "its only line is incomplete" if self._tail.torn else "file is empty"
            raise NotARecording(f"{self.path}: not a {FORMAT} recording: {problem}")
        return first

    def _check_header(self) -> Header:
        # The reader's own header checks, so the messages are the same.
        with RecordingReader(self.path, errors="skip", check_chain=self.check_chain) as reader:
            return reader.header

    @property
    def torn(self) -> Torn | None:
        """The incomplete last line, once iteration has ended (None while following)."""
        t = self._tail.torn
        return Torn(self.line + 1, t[0], t[1]) if t else None

    def __iter__(self) -> Iterator[tuple[dict[str, Any], bytes]]:
        first = self._first
        prev = chain.unseal(first)[1].encode("ascii")
        header = codec.loads(first)
        self.line = lineno = 1
        self.records = 1
        yield header, first
        expected = header["seq"] + 1
        check_chain = self.check_chain
        loads = codec.loads
        report = self._report
        for raw in self._lines:
            lineno += 1
            if check_chain:
                n = len(raw)
                mark = n - _H_TAIL
                if raw[mark : mark + 6] == _H_MARK and raw[-3:] == b'"}\n':
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
            try:
                d = loads(raw)
            except codec.JSONDecodeError as exc:
                report(Problem(lineno, f"invalid JSON: {exc}"))
                continue
            problem = _shape_problem(d, expected)
            if problem is None and check_chain and not good:
                problem = ("hash chain broken: the line was edited, or a line before it was"
                           " deleted, inserted or moved")
            if type(d) is dict and type(d.get("seq")) is int:
                expected = d["seq"] + 1
            if problem is not None:
                report(Problem(lineno, problem))
                continue
            self.line = lineno
            self.records += 1
            yield d, raw
        if self._tail.torn:
            report(Problem(lineno + 1, f"torn last line ({self._tail.torn[1]} bytes, no newline)"))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Scanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shape_problem(d: Any, expected: int) -> str | None:
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
    if seq != expected:
        return f"seq {seq} where {expected} was expected"
    if kind == "header":
        return "a second header"
    return None
