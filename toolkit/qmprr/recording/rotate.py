"""Rotation: a recording written as a set of segments (``--rotate-size``, ``--rotate-age``, SIGHUP).

:class:`SegmentedWriter` is a :class:`~.log.RecordLog`, as the
:class:`~.writer.RecordWriter` of one file is: the interface the channel
uses (``append``, ``offset``, ``next_seq``, ``path``, ``flush``,
``close``). When a rotation is due it closes the current segment (a sealed
one gets its end seal), opens ``STEM.(N+1).jsonl`` whose header carries the
recording id, its number and ``previous`` (the closed file, its final seq
and hash), and hands the closed segment to one background thread that
compresses it (``--compress zstd``) and applies retention (``--keep N``,
``--keep-age D``). Which segments retention deletes is decided at rotation,
so the new header can say so (``retention``: the files and the final hash of
the newest one deleted); the worker deletes them after any compression
queued before.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import uuid
from typing import Any, TypeVar

import attrs

from ..errors import RecordingError
from . import chain, sets
from .model import Header, Msg, Record
from .reader import RecordingReader
from .redact import Redactor
from .writer import RecordWriter, SyncPolicy

R = TypeVar("R", bound=Record)


@attrs.frozen
class Rotation:
    """When to start a new segment, and what to do with closed ones."""

    size: int | None = None  # bytes
    age: float | None = None  # seconds
    compress: str | None = None  # "zstd"
    keep: int | None = None  # segments, the live one included
    keep_age: float | None = None  # seconds since a segment was closed

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.size, self.age, self.compress, self.keep, self.keep_age))


def new_recording_id() -> str:
    return uuid.uuid4().hex


class SegmentedWriter:
    """Writes a recording as segments of *stem* (``STEM.NNNNNN.jsonl``), starting at *first_segment*.

    *header* is the template of every segment's header; ``recording``,
    ``segment``, ``previous`` and ``retention`` are set here (*previous* for
    the first segment: what it continues, e.g. after ``proxy --reattach``).
    """

    def __init__(
        self,
        stem: str,
        header: Header,
        rotation: Rotation,
        *,
        sync: SyncPolicy | str = SyncPolicy.BATCH,
        redactor: Redactor | None = None,
        seal_key: chain.SealKey | None = None,
        first_segment: int = 1,
        first_seq: int = 0,
        t_offset: float = 0.0,
    ) -> None:
        self.stem = stem
        self.rotation = rotation
        self._template = header
        self._sync = SyncPolicy(sync)
        self._redactor = redactor or Redactor()
        self._seal_key = seal_key
        self._lock = threading.RLock()
        self._rotate_asked = False
        self._closed = False
        self._jobs: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="qmprr-segments", daemon=True)
        self._worker.start()
        self.errors: list[str] = []  # what the background worker could not do
        if header.recording is None:
            header = attrs.evolve(header, recording=new_recording_id())
        self.recording = header.recording
        self.segment = first_segment
        path = sets.segment_name(os.path.basename(stem), first_segment)
        path = os.path.join(os.path.dirname(stem), path)
        header = attrs.evolve(header, segment=first_segment)
        self._writer = RecordWriter.create(
            path, header, sync=self._sync, redactor=self._redactor, seal_key=seal_key,
            first_seq=first_seq, t_offset=t_offset,
        )
        self._opened = time.monotonic()

    # -- the RecordLog interface (recording/log.py) ----------------------------

    @property
    def path(self) -> str:
        return self._writer.path

    @property
    def next_seq(self) -> int:
        return self._writer.next_seq

    @property
    def closed(self) -> bool:
        return self._closed

    def offset(self, monotonic: float) -> float:
        return self._writer.offset(monotonic)

    def append(self, record: R) -> R:
        with self._lock:
            if not self._closed and self._due():
                self._rotate()
            return self._writer.append(record)

    def append_command(self, **fields: Any) -> int:
        """The hot path (see :meth:`RecordWriter.append_command`), rotating as :meth:`append` does."""
        with self._lock:
            if not self._closed and self._due():
                self._rotate()
            return self._writer.append_command(**fields)

    def append_reply(self, **fields: Any) -> int:
        with self._lock:
            if not self._closed and self._due():
                self._rotate()
            return self._writer.append_reply(**fields)

    def append_event(self, **fields: Any) -> int:
        with self._lock:
            if not self._closed and self._due():
                self._rotate()
            return self._writer.append_event(**fields)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        """Close the live segment and wait for the background work queued so far."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.close()
        self._jobs.put(None)
        self._worker.join()

    def __enter__(self) -> SegmentedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rotation ------------------------------------------------------------

    def request_rotate(self) -> None:
        """Rotate before the next record (SIGHUP; safe from a signal handler or another thread)."""
        self._rotate_asked = True

    def rotate_if_due(self) -> bool:
        """Rotate now if a rotation is due (the service calls it periodically, for ``--rotate-age``)."""
        with self._lock:
            if self._closed or not self._due():
                return False
            self._rotate()
            return True

    def rotate(self) -> None:
        """Close the live segment and open the next one now."""
        with self._lock:
            if self._closed:
                raise RecordingError(f"{self.path}: recording is closed")
            self._rotate()

    def _due(self) -> bool:
        r = self.rotation
        return (
            self._rotate_asked
            or (r.size is not None and self._writer.size >= r.size)
            or (r.age is not None and time.monotonic() - self._opened >= r.age)
        )

    def _rotate(self) -> None:
        old = self._writer
        old.close()  # a sealed segment ends with its end seal
        final_seq, final_hash = old.next_seq - 1, old.head
        t = old.offset(time.monotonic())
        self._rotate_asked = False
        number = self.segment + 1
        path = os.path.join(os.path.dirname(self.stem), sets.segment_name(os.path.basename(self.stem), number))
        retention = self._retention(number)
        now = time.time()
        import datetime

        header = attrs.evolve(
            self._template,
            started=datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(timespec="microseconds"),
            started_epoch=round(now, 6),
            recording=self.recording,
            segment=number,
            previous={"file": os.path.basename(old.path), "final_seq": final_seq, "final_hash": final_hash},
            retention=Msg(retention["note"]) if retention else None,
        )
        self._writer = RecordWriter.create(
            path, header, sync=self._sync, redactor=self._redactor, seal_key=self._seal_key,
            first_seq=final_seq + 1, t_offset=t,
        )
        self.segment = number
        self._opened = time.monotonic()
        if self.rotation.compress == "zstd":
            self._jobs.put(("compress", old.path))
        if retention:
            self._jobs.put(("delete", retention["files"]))

    def _retention(self, new_number: int) -> dict[str, Any] | None:
        """What retention deletes at this rotation (segments before *new_number*), or None."""
        r = self.rotation
        if r.keep is None and r.keep_age is None:
            return None
        closed = [(n, p) for n, p in sets.segments_of(self.stem) if n < new_number]
        doomed: list[tuple[int, str]] = []
        if r.keep is not None:
            doomed = closed[: max(0, len(closed) - (r.keep - 1))]
        if r.keep_age is not None:
            cutoff = time.time() - r.keep_age
            for n, p in closed:
                with contextlib.suppress(OSError):
                    if os.stat(p).st_mtime < cutoff and (n, p) not in doomed:
                        doomed.append((n, p))
        doomed.sort()
        # Only a run from the oldest: the remaining set stays one chain.
        run = [item for i, item in enumerate(doomed) if item[0] == closed[i][0]] if doomed else []
        if not run:
            return None
        newest = run[-1][0]
        after = next(p for n, p in closed + [(new_number, "")] if n > newest)
        if after:
            prev = _previous_of(after)
        else:  # the segment just closed is deleted itself
            prev = {"final_seq": self._writer.next_seq - 1, "final_hash": self._writer.head}
        files = [p for _, p in run]
        note = {
            "deleted": [os.path.basename(p).removesuffix(sets.ZST) for p in files],
            "final_seq": prev.get("final_seq"),
            "final_hash": prev.get("final_hash"),
        }
        return {"note": note, "files": files}

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            what, arg = job
            try:
                if what == "compress":
                    sets.compress(arg)
                else:
                    for path in arg:
                        for candidate in (path.removesuffix(sets.ZST), path.removesuffix(sets.ZST) + sets.ZST):
                            with contextlib.suppress(FileNotFoundError):
                                os.remove(candidate)
            except OSError as exc:
                self.errors.append(f"{arg}: cannot {what}: {exc.strerror or exc}")


def _previous_of(path: str) -> dict[str, Any]:
    """The ``previous`` link in the header of segment *path*.

    The background worker may be compressing that very segment: its ``.jsonl``
    can vanish between listing and opening, once its ``.zst`` is in place.
    """
    candidates = [path] if path.endswith(sets.ZST) else [path, path + sets.ZST]
    for i, candidate in enumerate(candidates):
        try:
            with RecordingReader(candidate, check_chain=False) as reader:
                return dict(reader.header.previous or {})
        except RecordingError:
            if i == len(candidates) - 1 or os.path.exists(candidate):
                raise
    raise AssertionError("unreachable")
