"""Writing imported records: times and origins from the source, not from a clock.

:class:`~qmprr.recording.RecordWriter` stamps each record with the time it
writes it. An import knows better: every record has the time its source line
was logged. :class:`ImportWriter` writes the same ``qmprr/1`` lines (the
record's on-disk dict from :func:`qmprr.recording.convert.unstructure`, the
same redaction, sealed with :func:`qmprr.recording.chain.seal`) with

* ``t`` = the source timestamp minus the header's ``started_epoch``, rounded to
  microseconds and never decreasing (libvirt threads log a millisecond out of
  order now and then);
* ``orig`` = where the record came from: ``{"ts": "<timestamp as logged>",
  "tid": <thread id>, "line": <1-based line>}`` (``file`` when the line is in
  another file than the one imported, ``caller`` for the libvirt function that
  sent a command). It is the last member before ``h``.

A reply or fd names its command by ``seq``, which only exists once records
are written: :class:`Item` carries a reference to the command's item instead,
resolved here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import attrs

from ..errors import QmprrError
from ..recording import Header, Msg, Note, Record, Redactor
from ..recording import convert
from ..recording.chain import SealKey
from ..recording.encode import END_SEAL_TEXT, LineEncoder


class LogImportError(QmprrError):
    """An input cannot be imported as asked (the message says what to do)."""


@attrs.define(eq=False)
class Item:
    """A record waiting to be written: when it happened, where it came from.

    ``at`` is seconds since the Unix epoch (None: as the record before it).
    ``ref`` is the item of the command a ``reply`` or ``fd`` belongs to; its
    ``seq`` goes into the record's ``cmd`` when both are written.
    """

    record: Record
    at: float | None = None
    orig: dict[str, Any] | None = None
    ref: Item | None = None
    seq: int = -1


def _has_orig_field(record: Record) -> bool:
    return any(a.name == "orig" for a in attrs.fields(type(record)))


class ImportWriter:
    """Writes one imported recording; use :meth:`create`, then :meth:`append`, then :meth:`close`.

    The file is created next to its final name (``NAME.part``) and renamed
    when closed, so an import that fails leaves no half recording behind.
    """

    def __init__(
        self, path: str, header: Header, *, redactor: Redactor | None = None, seal_key: SealKey | None = None
    ) -> None:
        self.path = path
        self.redactor = redactor or Redactor()
        self.seal_key = seal_key
        self._encoder = LineEncoder(self.redactor, seal_key)
        self._part = path + ".part"
        try:
            # O_EXCL never follows a link; 0600 like every recording, whatever the umask.
            fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            os.fchmod(fd, 0o600)
            self._file = open(fd, "wb")  # noqa: SIM115
        except FileExistsError:
            raise LogImportError(f"{self._part}: exists (another import running?); remove it") from None
        except OSError as exc:
            raise LogImportError(f"{path}: cannot create: {exc.strerror}") from None
        self._started = header.started_epoch
        self._last_t = 0.0
        self._next_seq = 0
        self._write(header, 0.0, None)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        header: Header,
        *,
        overwrite: bool = False,
        seal_key: SealKey | None = None,
    ) -> ImportWriter:
        """Start the recording at *path* (refused when it exists, unless *overwrite*); sealed with *seal_key*."""
        path = os.fspath(path)
        if os.path.islink(path):
            raise LogImportError(f"{path}: is a symbolic link; qmprr does not write through links (give the real path)")
        if os.path.exists(path) and not overwrite:
            raise LogImportError(f"{path}: file exists; recordings are never overwritten (choose another name)")
        return cls(path, header, seal_key=seal_key)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def append(self, item: Item) -> Item:
        """Write *item*'s record as the next line; sets ``item.seq`` (and ``cmd`` from ``ref``)."""
        if item.ref is not None:
            if item.ref.seq < 0:
                raise ValueError("an item's ref must be written before it")
            item.record.cmd = item.ref.seq  # type: ignore[attr-defined]  # an item with a ref holds a Reply
        if item.at is None:
            t = self._last_t
        else:
            t = max(round(item.at - self._started, 6), self._last_t)
        item.seq = self._write(item.record, t, item.orig)
        return item

    def extend(self, items: Iterable[Item]) -> None:
        for item in items:
            self.append(item)

    def _write(self, record: Record, t: float, orig: dict[str, Any] | None) -> int:
        record.seq = self._next_seq
        record.t = t
        with_field = _has_orig_field(record)
        if with_field:
            record.orig = None if orig is None else Msg(orig)
        d = convert.unstructure(record)
        if orig is not None and not with_field:
            d["orig"] = orig
        elif orig is not None:
            d["orig"] = d.pop("orig", orig)  # last, whatever the model's field order
        line, h = self._encoder.encode(d)
        self._file.write(line)
        self._encoder.commit(h)
        self._next_seq += 1
        self._last_t = t
        return record.seq

    def close(self) -> None:
        """End the seal (sealed imports), flush, sync and move the file to its name."""
        if self._file.closed:
            return
        if self.seal_key is not None:
            self._write(Note(text=END_SEAL_TEXT, data=Msg({"key_id": self.seal_key.key_id})), self._last_t, None)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if os.path.islink(self.path):  # planted while importing: the rename would replace it, refuse instead
            self.abort()
            raise LogImportError(f"{self.path}: is a symbolic link; qmprr does not write through links")
        os.replace(self._part, self.path)

    def abort(self) -> None:
        """Drop the partial file."""
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self._part)
        except FileNotFoundError:
            pass

    def __enter__(self) -> ImportWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_recording(
    path: str, header: Header, items: Iterable[Item], *, overwrite: bool = False, seal_key: SealKey | None = None
) -> int:
    """Write a whole recording; returns the number of records (header included, end seal not)."""
    with ImportWriter.create(path, header, overwrite=overwrite, seal_key=seal_key) as writer:
        writer.extend(items)
        return writer.next_seq
