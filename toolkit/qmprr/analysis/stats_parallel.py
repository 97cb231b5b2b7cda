"""``qmprr stats`` on several cores: the file cut into segments, one worker each.

Each worker reads its segment (from a line start to before the next
segment's first line) with its own :class:`~qmprr.analysis.stats.StatsBuilder`,
then reads on past the end only as far as needed to finish what began inside
(a reply, a transaction, a wait: normally a few lines). Builders come back
(pickled) and merge in file order; line numbers of problems and ``seq``
continuity across borders are fixed up here. Workers are forked, so nothing
is imported twice.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import attrs

from ..recording.reader import Problem
from .source import Decoder
from .stats_builder import StatsBuilder


@attrs.define
class _Part:
    """What one worker found in its segment."""

    builder: StatsBuilder
    problems: list[Problem]
    lines: int
    first_seq: int | None
    first_line: int  # the line (in the segment) of the first record read
    next_seq: int | None


class _Lines:
    """The complete lines of ``[start, end)``, then (:meth:`after`) the rest of the file."""

    def __init__(self, f: BinaryIO, start: int, end: int) -> None:
        self.f, self.pos, self.end = f, start, end
        self.torn: bytes | None = None
        self._next: bytes | None = None
        f.seek(start)

    def segment(self) -> Iterator[bytes]:
        end = self.end
        for raw in self.f:
            if self.pos >= end:
                self._next = raw
                return
            self.pos += len(raw)
            if not raw.endswith(b"\n"):
                self.torn = raw
                return
            yield raw

    def after(self) -> Iterator[bytes]:
        if self._next is not None:
            yield self._next
        for raw in self.f:
            if raw.endswith(b"\n"):
                yield raw


def _segment(path: str, start: int, end: int, expected: int | None) -> _Part:
    problems: list[Problem] = []
    with open(path, "rb") as f:
        lines = _Lines(f, start, end)
        decoder = Decoder(problems.append, expected=expected)
        first: list[int] = []  # seq and line of the first record read

        builder = StatsBuilder(start_seq=expected)

        def records() -> Iterator[dict[str, Any]]:
            for d, _ in decoder.decode(lines.segment()):
                if not first:
                    first.extend((d["seq"], decoder.line))
                    builder.start_seq = d["seq"]  # replies to earlier commands are the previous worker's
                yield d

        builder.consume(records())
        n = decoder.line
        if lines.torn is not None:
            problems.append(Problem(n + 1, f"torn last line ({len(lines.torn)} bytes, no newline)"))
        ahead = Decoder(lambda p: None, expected=None)
        builder.resolve(d for d, _ in ahead.decode(lines.after()))
        builder.seal()
    return _Part(builder, problems, n, first[0] if first else None, first[1] if first else 0, decoder.expected)


def _borders(path: str, start: int, jobs: int) -> list[int]:
    """Offsets where segments start (each at a line start), and the file's size last."""
    size = os.path.getsize(path)
    cuts = [start]
    with open(path, "rb") as f:
        for i in range(1, jobs):
            f.seek(max(start + (size - start) * i // jobs - 1, cuts[-1]))
            f.readline()  # to the start of the next line
            pos = f.tell()
            if cuts[-1] < pos < size:
                cuts.append(pos)
    return [*cuts, size]


def consume_parallel(path: str, header: dict[str, Any], start: int, jobs: int,
                     report: Callable[[Problem], None]) -> StatsBuilder:
    """A builder holding the records of *path*: its *header* (a dict; the next line at *start*)
    and the rest read by *jobs* workers."""
    header_seq = header["seq"]
    cuts = _borders(path, start, jobs)
    tasks = [(path, cuts[i], cuts[i + 1], header_seq + 1 if i == 0 else None) for i in range(len(cuts) - 1)]
    with multiprocessing.get_context("fork").Pool(len(tasks)) as pool:
        parts = pool.starmap(_segment, tasks)
    merged = StatsBuilder()
    merged.consume([header])
    line = 1  # the header's
    expected: int | None = header_seq + 1
    for i, part in enumerate(parts):
        problems = [Problem(line + p.line, p.message) for p in part.problems]
        if i and part.first_seq is not None and expected is not None and part.first_seq != expected:
            problems.append(Problem(part.first_line + line, f"seq {part.first_seq} where {expected} was expected"))
        for problem in sorted(problems, key=lambda p: p.line):
            report(problem)
        merged.merge(part.builder)
        line += part.lines
        expected = part.next_seq
    return merged
