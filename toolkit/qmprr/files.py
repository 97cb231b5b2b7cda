"""Small input files read with a bound, and derived files written safely.

Inputs given by option (rules, an argv file, a domain XML) are read whole but
never past a limit, and a FIFO with no writer reads as empty instead of
blocking: ``/dev/zero`` or a named pipe cannot hang a command or fill memory.

Derived files (a report, a trace, a replay report) hold what a recording holds,
and a recording is mode 0600: they are written 0600 too, whatever the umask,
into a temporary file next to the output that is renamed over it once
complete. An output path that is a symbolic link, a folder or any other
non-regular file is refused before any work starts (:func:`check_output`) and
again just before the rename: a link planted at the output never redirects
the write. This module imports nothing of qmprr but its errors (any layer may
use it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from .errors import QmprrError

#: Mode of every derived file: at most as readable as the recording it comes from.
DERIVED_MODE = 0o600

_CHUNK = 1 << 16


class InputError(QmprrError):
    """An input file cannot be read as asked (``strerror``: the system's reason, if any)."""

    def __init__(self, message: str, strerror: str | None = None) -> None:
        super().__init__(message)
        self.strerror = strerror


class InputTooLarge(InputError):
    """An input file is larger than its kind ever needs."""


class OutputError(QmprrError):
    """An output file cannot be written (or must not be: a link, a folder, the input itself)."""


def display_name(path: str | os.PathLike[str]) -> str:
    """*path* as text that can go into JSON or HTML: bytes that are not UTF-8 become U+FFFD."""
    return os.fsencode(path).decode("utf-8", "replace")


def _label(path: str, option: str | None) -> str:
    return f"{option} {path}" if option else path


def read_limited(path: str | os.PathLike[str], limit: int, *, option: str | None = None,
                 what: str = "file") -> bytes:
    """The bytes of *path*, refused with :class:`InputError` when over *limit* bytes.

    A regular file's size is checked before anything is read; anything else
    (a pipe, a device) is read to at most ``limit + 1`` bytes. A FIFO without
    a writer reads as empty. Folders are refused.
    """
    path = os.fspath(path)
    label = _label(path, option)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{label}: cannot read {what}: {exc.strerror}", exc.strerror) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{label}: cannot read {what}: Is a directory", "Is a directory")
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise InputTooLarge(f"{label}: {st.st_size:,} bytes is more than a {what} needs ({limit:,} at most)")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return read_fd_limited(fd, limit, label=label, what=what)
    except OSError as exc:
        raise InputError(f"{label}: cannot read {what}: {exc.strerror}", exc.strerror) from None
    finally:
        os.close(fd)


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """*path* open for binary reading; :class:`OSError` unless it is a regular file.

    Opened without blocking, so a FIFO with no writer fails at once instead
    of hanging; a folder fails with EISDIR, a pipe or device with ESPIPE
    (what is read more than once, or seeked, must be a file).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.ESPIPE, "not a regular file (a pipe or a device cannot be read twice)",
                          os.fspath(path))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_fd_limited(fd: int, limit: int, *, label: str, what: str = "file") -> bytes:
    """Everything readable from *fd* up to EOF, refused once more than *limit* bytes arrive."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = os.read(fd, min(_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise InputTooLarge(f"{label}: over {limit:,} bytes is more than a {what} needs")


def read_text_limited(path: str | os.PathLike[str], limit: int, *, option: str | None = None,
                      what: str = "file") -> str:
    """:func:`read_limited`, decoded as UTF-8 (:class:`InputError` when it is not)."""
    data = read_limited(path, limit, option=option, what=what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{_label(os.fspath(path), option)}: not UTF-8 text"
                         f" (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None


def check_output(path: str | os.PathLike[str], *, option: str | None = None,
                 inputs: Sequence[str | os.PathLike[str]] = (), exist_ok: bool = True) -> None:
    """Refuse an output before work starts: a link, a folder, a special file, a missing or
    read-only folder, one of *inputs*, or (unless *exist_ok*) an existing file. ``-`` passes."""
    path = os.fspath(path)
    if path == "-":
        return
    label = _label(path, option)
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"{label}: cannot write there: {exc.strerror}") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise OutputError(f"{label}: cannot write: it is a symbolic link, and qmprr never writes through one"
                              " (give the real path)")
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{label}: cannot write: it is a folder; give a file name")
        if not stat.S_ISREG(st.st_mode):
            hint = " (use - for standard output)" if option in ("-o", "--output") else ""
            raise OutputError(f"{label}: cannot write: it exists and is not a regular file{hint}")
        if not exist_ok:
            raise OutputError(f"{label}: file exists; recordings are never overwritten")
        for source in inputs:
            with contextlib.suppress(OSError):
                if os.path.samefile(source, path):
                    raise OutputError(f"{label}: cannot write: it is the input {os.fspath(source)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{label}: cannot write: its folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{label}: cannot write: permission denied in {folder}")


@contextlib.contextmanager
def replace_file(output: str | os.PathLike[str], *, option: str | None = None) -> Iterator[BinaryIO]:
    """*output* open for writing; it appears, mode 0600, only when the block completes.

    ``-`` is standard output. Written to a temporary file in the same folder,
    then renamed over *output*; refused (:class:`OutputError`) when *output*
    is a link, a folder or a special file.
    """
    path = os.fspath(output)
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    check_output(path, option=option)
    folder = os.path.dirname(os.path.abspath(path))
    label = _label(path, option)
    try:
        # mkstemp: O_CREAT|O_EXCL (never follows a link), mode 0600 before the umask.
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)[:64]}.", suffix=".qmprr-tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"{label}: cannot write there: {exc.strerror}") from None
    try:
        os.fchmod(fd, DERIVED_MODE)  # exactly 0600, whatever the umask
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        check_output(path, option=option)  # a link planted meanwhile: still refused
        try:
            os.replace(tmp, path)  # rename never follows a link at the target
        except OSError as exc:
            raise OutputError(f"{label}: cannot write: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
