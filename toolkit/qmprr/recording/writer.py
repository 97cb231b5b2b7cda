"""The append-only, crash-safe recording writer.

* One writer per file: the file is ``flock``-ed while open (the kernel drops
  the lock when the process dies, so a crash leaves no stale lock).
* Opened with ``O_APPEND``; every record is one ``write()`` of one complete
  line, so a crash can tear at most the last line.
* Write-ahead: :meth:`RecordWriter.append` returns only once the line has
  reached the OS and hands back the record with its ``seq``, which is what
  a caller needs to forward a command (the reply names it) -- so logging
  comes first by construction. Callers forward their own message object; the
  writer never changes it (redaction applies to the logged copy only).
* Sync policy: see :class:`SyncPolicy`.
* Redaction (:mod:`.redact`) of every record, the header's argv and domain
  XML included, so no caller can forget it.
* Sealing: with a :class:`~.chain.SealKey` the chain is keyed, and
  :meth:`RecordWriter.close` ends it with a sealed note (so a truncated file
  shows). The key is never written; the header names its fingerprint.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, TypeVar

from .. import codec
from ..errors import NotARecording, RecordingError, RecordingLocked, TornTail
from . import chain, convert
from .encode import END_SEAL_TEXT, LineEncoder
from .header import MAX_HEADER_BYTES, HeaderProblem, new_header, parse_header
from .model import ABSENT, FORMAT, Command, Event, Header, Msg, Note, Record, Reply
from .redact import Redactor

R = TypeVar("R", bound=Record)

#: Environment variables worth keeping in a header (they change QEMU's behaviour).
RELEVANT_ENV = ("LC_ALL", "LANG", "TZ", "HOME", "PATH", "QEMU_AUDIO_DRV", "XDG_RUNTIME_DIR")


class SyncPolicy(enum.Enum):
    """When records are forced to stable storage (``fdatasync``).

    ``always``: after every record. Survives power loss record by record;
    costs a disk flush per QMP message (milliseconds on most disks).
    ``batch`` (default): every record reaches the OS at once (so it survives
    a crash of qmprr itself); a background flush runs at most every 100 ms
    and at close, so a power loss can lose the last 100 ms.
    ``none``: the OS decides. Survives a crash of qmprr, not of the host.
    """

    ALWAYS = "always"
    BATCH = "batch"
    NONE = "none"


BATCH_INTERVAL = 0.1


class RecordWriter:
    """Appends records to one recording. Use :meth:`create` or :meth:`append_to`."""

    def __init__(
        self,
        fd: int,
        path: str,
        *,
        next_seq: int,
        last_hash: str,
        t_offset: float,
        sync: SyncPolicy,
        redactor: Redactor,
        seal_key: chain.SealKey | None = None,
    ) -> None:
        self.path = path
        self.sync = sync
        self._always = sync is SyncPolicy.ALWAYS
        self.redactor = redactor
        self.seal_key = seal_key
        self._fd = fd
        self._next_seq = next_seq
        self._encoder = LineEncoder(redactor, seal_key, head=last_hash)
        self._t0 = time.monotonic() - t_offset
        self._last_t = float(t_offset)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one fdatasync at a time, outside _lock
        self._size = os.fstat(fd).st_size  # where the next line starts (to undo a failed write)
        self._dirty = False
        self._closed = False
        self._syncer: threading.Thread | None = None
        self._stop = threading.Event()
        if sync is SyncPolicy.BATCH:
            self._syncer = threading.Thread(target=self._sync_loop, name="qmprr-fsync", daemon=True)
            self._syncer.start()

    # -- opening -----------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        header: Header | None = None,
        *,
        sync: SyncPolicy | str = SyncPolicy.BATCH,
        redactor: Redactor | None = None,
        overwrite: bool = False,
        seal_key: chain.SealKey | None = None,
        first_seq: int = 0,
        t_offset: float = 0.0,
    ) -> RecordWriter:
        """Start a new recording at *path* and write its header.

        Fails if the file exists, unless *overwrite* (which still refuses a
        file another writer holds). With *seal_key* the chain is keyed.
        A segment continuing a set starts at *first_seq* with its clock at
        *t_offset* (``seq`` and ``t`` run on across the set).
        """
        path = os.fspath(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        if not overwrite:
            flags |= os.O_EXCL
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise RecordingError(
                f"{path}: file exists; choose another name, or overwrite it explicitly"
            ) from None
        except OSError as exc:
            raise RecordingError(f"{path}: cannot create recording: {exc.strerror}") from None
        try:
            _lock(fd, path)
        except BaseException:
            os.close(fd)
            raise
        if overwrite:
            os.ftruncate(fd, 0)
        writer = cls(
            fd,
            path,
            next_seq=first_seq,
            last_hash=chain.GENESIS,
            t_offset=t_offset,
            sync=SyncPolicy(sync),
            redactor=redactor or Redactor(),
            seal_key=seal_key,
        )
        writer.append(header or new_header())
        return writer

    @classmethod
    def append_to(
        cls,
        path: str | os.PathLike[str],
        *,
        sync: SyncPolicy | str = SyncPolicy.BATCH,
        redactor: Redactor | None = None,
        repair: bool = False,
        seal_key: chain.SealKey | None = None,
    ) -> RecordWriter:
        """Reopen an existing recording to add records after its last one.

        The tail is checked first. A torn last line raises :class:`TornTail`
        unless *repair*, which truncates it and logs a ``note`` saying so.
        A sealed recording can only be continued with its key (*seal_key*).
        """
        path = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise RecordingError(f"{path}: cannot open recording: {exc.strerror}") from None
        try:
            _lock(fd, path)
            tail = _read_tail(fd, path)
            _check_seal_key(path, tail.seal, seal_key)
            if tail.torn_size and not repair:
                raise TornTail(path, tail.torn_offset, tail.torn_size)
            if tail.torn_size:
                os.ftruncate(fd, tail.torn_offset)
        except BaseException:
            os.close(fd)
            raise
        elapsed = time.time() - tail.started_epoch
        writer = cls(
            fd,
            path,
            next_seq=tail.last_seq + 1,
            last_hash=tail.last_hash,
            t_offset=max(tail.last_t, round(elapsed, 6)),
            sync=SyncPolicy(sync),
            redactor=redactor or Redactor(),
            seal_key=seal_key,
        )
        if tail.torn_size:
            writer.append(
                Note(
                    text=f"repaired: truncated a torn last line of {tail.torn_size} bytes",
                    data=Msg({"offset": tail.torn_offset, "bytes": tail.torn_size}),
                )
            )
        return writer

    # -- writing -----------------------------------------------------------

    def offset(self, monotonic: float) -> float:
        """A ``time.monotonic()`` reading as a ``t`` of this recording."""
        return round(monotonic - self._t0, 6)

    @property
    def next_seq(self) -> int:
        """The ``seq`` the next record will get."""
        return self._next_seq

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def head(self) -> str:
        """The hash of the last record written."""
        return self._encoder.head

    @property
    def size(self) -> int:
        """Bytes written to the file so far."""
        return self._size

    def append(self, record: R) -> R:
        """Write *record* as the next line; return it with ``seq`` and ``t`` set.

        Returns once the line has reached the OS (and the disk, with sync
        ``always``). Raises :class:`RecordingError` when it cannot be written.
        """
        with self._lock:
            record.seq, record.t = self._next()
            line, h = self._encoder.encode(convert.unstructure(record))
            self._write(line, h, record.t)
            return record

    # The hot path: the same lines as append(Command(...)) etc. (a property test holds
    # them byte-identical), built straight to bytes; they return the record's seq.

    def append_command(
        self, *, src: str, role: str, msg: dict[str, Any], client_id: Any = ABSENT,
        tx: int | None = None, queued: float | None = None, encoded: bytes | None = None,
    ) -> int:
        """Append a ``command`` record (as :meth:`append` would); its ``seq``.

        *encoded*: ``codec.dumps(msg)``, when the caller has it (the bytes it sends QEMU).
        """
        with self._lock:
            seq, t = self._next()
            out = self._encoder.encode_command(seq, t, src, role, msg, client_id, tx, queued, encoded)
            if out is None:
                record = Command(src=src, role=role, msg=Msg(msg), client_id=client_id, tx=tx, queued=queued)  # type: ignore[arg-type]  # role strings are the callers'
                record.seq, record.t = seq, t
                out = self._encoder.encode(convert.unstructure(record))
            self._write(*out, t)
            return seq

    def append_reply(self, *, cmd: int, msg: dict[str, Any]) -> int:
        """Append a ``reply`` record (as :meth:`append` would); its ``seq``."""
        with self._lock:
            seq, t = self._next()
            out = self._encoder.encode_reply(seq, t, cmd, msg)
            if out is None:
                out = self._encoder.encode(convert.unstructure(Reply(seq=seq, t=t, cmd=cmd, msg=Msg(msg))))
            self._write(*out, t)
            return seq

    def append_event(self, *, msg: dict[str, Any]) -> int:
        """Append an ``event`` record (as :meth:`append` would); its ``seq``."""
        with self._lock:
            seq, t = self._next()
            out = self._encoder.encode_event(seq, t, msg)
            if out is None:
                out = self._encoder.encode(convert.unstructure(Event(seq=seq, t=t, msg=Msg(msg))))
            self._write(*out, t)
            return seq

    def append_many(self, records: Sequence[tuple[int | None, dict[str, Any]]]) -> list[int]:
        """Append ``reply`` (``(cmd, msg)``) and ``event`` (``(None, msg)``) records with one ``write()``.

        All of them reach the OS, or none (the file and the chain are as before,
        and :class:`RecordingError` is raised). Returns their seqs.
        """
        with self._lock:
            saved = self._next_seq, self._encoder.head, self._last_t
            lines: list[bytes] = []
            seqs: list[int] = []
            try:
                for cmd, msg in records:
                    seq, t = self._next()
                    out = (self._encoder.encode_event(seq, t, msg) if cmd is None
                           else self._encoder.encode_reply(seq, t, cmd, msg))
                    if out is None:
                        record: Record = Event(msg=Msg(msg)) if cmd is None else Reply(cmd=cmd, msg=Msg(msg))
                        record.seq, record.t = seq, t
                        out = self._encoder.encode(convert.unstructure(record))
                    lines.append(out[0])
                    seqs.append(seq)
                    self._next_seq, self._last_t = seq + 1, t  # the next line chains on this one
                    self._encoder.commit(out[1])
                self._write_raw(b"".join(lines))
            except BaseException:
                self._next_seq, head, self._last_t = saved
                self._encoder.commit(head)
                raise
            return seqs

    def _next(self) -> tuple[int, float]:
        """The next record's seq and t (under the lock)."""
        if self._closed:
            raise RecordingError(f"{self.path}: recording is closed")
        seq = self._next_seq
        if seq == 0:  # the header defines t = 0
            self._t0 = time.monotonic()
            return 0, 0.0
        t = round(time.monotonic() - self._t0, 6)
        return seq, t if t > self._last_t else self._last_t

    def _write(self, line: bytes, h: str, t: float) -> None:
        """One ``write()`` of one line (under the lock); the chain moves on only if it is all written."""
        self._write_raw(line)
        self._next_seq += 1
        self._encoder.head = h
        self._last_t = t

    def _write_raw(self, data: bytes) -> None:
        """One ``write()`` of whole lines (under the lock), taken back if it is not all written."""
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes); disk full?")
            if self._always:
                os.fdatasync(self._fd)
        except OSError as exc:
            # Take back what reached the file: a partial line must never be
            # followed by later records (that would corrupt the middle).
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise RecordingError(
                f"{self.path}: cannot write record: {exc.strerror or exc}"
            ) from None
        self._size += written
        self._dirty = not self._always

    def flush(self) -> None:
        """Force everything written so far to stable storage.

        The disk flush runs outside the append lock, so appends (the event
        loop) never wait for the disk.
        """
        with self._sync_lock:
            with self._lock:
                if self._closed or not self._dirty:
                    return
                self._dirty = False
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                self._dirty = True
                raise RecordingError(f"{self.path}: cannot flush to disk: {exc.strerror}") from None

    def close(self) -> None:
        """Seal the end (sealed recordings), flush (except with sync ``none``), unlock, close.

        Idempotent. A failed end seal leaves the file as it was (verify
        ``--key`` then says the end is not sealed).
        """
        if self._closed:
            return
        if self.seal_key is not None:
            with contextlib.suppress(RecordingError):
                self.append(Note(text=END_SEAL_TEXT, data=Msg({"key_id": self.seal_key.key_id})))
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        try:
            if self.sync is not SyncPolicy.NONE:
                self.flush()
        finally:
            with self._lock:
                self._closed = True
                os.close(self._fd)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sync_loop(self) -> None:
        while not self._stop.wait(BATCH_INTERVAL):
            if self._dirty:
                try:
                    self.flush()
                except RecordingError:
                    pass  # reported by the next append or close


def _check_seal_key(path: str, seal: Any, key: chain.SealKey | None) -> None:
    """Refuse to continue a sealed chain without its key, or to start sealing midway."""
    key_id = seal.get("key_id") if isinstance(seal, dict) else None
    if seal is not None and key is None:
        raise RecordingError(f"{path}: the recording is sealed (key id {key_id}); give its key (--seal-key) to add records")
    if seal is None and key is not None:
        raise RecordingError(f"{path}: the recording is not sealed; a seal cannot start midway (use 'qmprr rechain --seal-key')")
    if key is not None and key_id != key.key_id:
        raise RecordingError(f"{path}: sealed with key id {key_id}, not with this key ({key.key_id})")


def _lock(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RecordingLocked(f"{path}: another qmprr process is writing this recording") from None


class _Tail:
    """What :meth:`RecordWriter.append_to` needs to know of an existing file."""

    def __init__(self) -> None:
        self.started_epoch = 0.0
        self.last_seq = -1
        self.last_t = 0.0
        self.last_hash = chain.GENESIS
        self.torn_offset = 0
        self.torn_size = 0
        self.seal: Any = None


def _read_tail(fd: int, path: str, block: int = 65536) -> _Tail:
    """Find the header, the last complete record, and any torn bytes after it."""
    size = os.fstat(fd).st_size
    tail = _Tail()
    first = _read_line_at(fd, 0, min(size, MAX_HEADER_BYTES + 1))
    try:
        header, _ = parse_header(first)
    except HeaderProblem as exc:
        raise NotARecording(f"{path}: not a {FORMAT} recording: {exc}") from None
    tail.started_epoch = header.started_epoch
    tail.seal = header.seal
    # Walk back from the end to the last newline: what follows it is torn.
    end = size
    pos = size
    while pos > 0:
        start = max(0, pos - block)
        chunk = os.pread(fd, pos - start, start)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            end = start + nl + 1
            break
        pos = start
    else:
        end = 0
    tail.torn_offset, tail.torn_size = end, size - end
    if end == 0:
        raise NotARecording(f"{path}: holds no complete record")
    last = _read_line_before(fd, end, block)
    try:
        body, h = chain.unseal(last)
        rec = codec.loads(body)
        tail.last_seq, tail.last_t, tail.last_hash = int(rec["seq"]), float(rec["t"]), h
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordingError(
            f"{path}: last complete record is damaged ({exc}); run 'qmprr verify' on it"
        ) from None
    return tail


def _read_line_at(fd: int, offset: int, size: int, block: int = 65536) -> bytes:
    parts = []
    while offset < size:
        chunk = os.pread(fd, min(block, size - offset), offset)
        nl = chunk.find(b"\n")
        if nl >= 0:
            parts.append(chunk[: nl + 1])
            break
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _read_line_before(fd: int, end: int, block: int) -> bytes:
    """The complete line that ends (with its newline) at offset *end*."""
    parts = []
    pos = end - 1  # skip the line's own newline
    while pos > 0:
        start = max(0, pos - block)
        chunk = os.pread(fd, pos - start, start)
        nl = chunk.rfind(b"\n")
        if nl >= 0:
            parts.append(chunk[nl + 1 :])
            break
        parts.append(chunk)
        pos = start
    parts.reverse()
    return b"".join(parts) + b"\n"


def relevant_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables of :data:`RELEVANT_ENV` that are set."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in RELEVANT_ENV if k in env}
