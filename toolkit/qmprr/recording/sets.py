"""Segment sets: names, finding a set's files in order, reading ``.jsonl.zst``.

A long recording is a *set* of segments ``NAME.000001.jsonl``,
``NAME.000002.jsonl``, ... (a closed one may be compressed:
``NAME.000001.jsonl.zst``). Every segment is a complete ``qmprr/1`` file
with its own header; the header names the recording (``recording``, one id
for the whole set), its number (``segment``) and the segment before it
(``previous``: file name, final ``seq`` and final hash), so the chain runs
across the set. See ``recordings/README.md``.

:func:`resolve` turns what a user gives (a folder, a set's first segment, or
one file) into the files to read, in order; :func:`open_bytes` opens one of
them, decompressing ``.zst`` transparently.
"""

from __future__ import annotations

import io
import os
import re
from typing import BinaryIO

from ..errors import RecordingError
from ..files import open_regular

ZST = ".zst"
_SEGMENT = re.compile(r"^(?P<stem>.+)\.(?P<num>\d{6})\.jsonl(?P<zst>\.zst)?$")


def segment_name(stem: str, number: int) -> str:
    """``STEM.NNNNNN.jsonl``."""
    return f"{stem}.{number:06d}.jsonl"


def stem_of(path: str) -> str:
    """The set stem a recording path stands for: ``vm.jsonl`` and ``vm.000003.jsonl`` give ``vm``."""
    m = _SEGMENT.match(os.path.basename(path))
    base = m["stem"] if m else os.path.basename(path)
    if not m and base.endswith(".jsonl"):
        base = base[: -len(".jsonl")]
    return os.path.join(os.path.dirname(path), base)


def parse(path: str) -> tuple[str, int] | None:
    """``(stem path, number)`` of a segment file name, or None when it is not one."""
    m = _SEGMENT.match(os.path.basename(path))
    if m is None:
        return None
    return os.path.join(os.path.dirname(path), m["stem"]), int(m["num"])


def same_segment(a: str, b: str) -> bool:
    """True when two names are one segment (compressed or not)."""
    return a.removesuffix(ZST) == b.removesuffix(ZST)


def segments_of(stem: str) -> list[tuple[int, str]]:
    """``(number, path)`` of every segment of *stem* on disk, in order (``.zst`` preferred)."""
    folder = os.path.dirname(stem) or "."
    base = os.path.basename(stem)
    found: dict[int, str] = {}
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise RecordingError(f"{folder}: cannot list the segments: {exc.strerror}") from None
    for name in names:
        m = _SEGMENT.match(name)
        if m is None or m["stem"] != base:
            continue
        n = int(m["num"])
        if n not in found or m["zst"]:  # both for a moment while compressing: the .zst is final
            found[n] = os.path.join(os.path.dirname(stem), name)
    return sorted(found.items())


def next_segment(path: str) -> str | None:
    """The file of the segment after *path* if it exists (compressed or not), else None."""
    p = parse(path)
    if p is None:
        return None
    nxt = os.path.join(os.path.dirname(path), segment_name(os.path.basename(p[0]), p[1] + 1))
    for candidate in (nxt, nxt + ZST):
        if os.path.exists(candidate):
            return candidate
    return None


def resolve(path: str | os.PathLike[str], *, since: str | None = None) -> list[str]:
    """The files *path* stands for, in order.

    A folder: the one set it holds. A set's first segment (the lowest number
    on disk): the whole set. A plain ``NAME.jsonl`` continued by segments
    from ``NAME.000002.jsonl`` on (the pytest plugin's ``new_episodes``; it
    counts as segment 1): the file and its continuation. Anything else: that
    file alone. With *since* (a segment's name or number), the set from that
    segment on.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        stems = {m["stem"] for m in map(_SEGMENT.match, os.listdir(path)) if m}
        if not stems:
            raise RecordingError(f"{path}: cannot read recording: Is a directory with no segment set (NAME.000001.jsonl ...)")
        if len(stems) > 1:
            raise RecordingError(f"{path}: the folder holds several sets ({', '.join(sorted(stems))}); name one's first segment")
        stem = os.path.join(path, stems.pop())
        files = [p for _, p in segments_of(stem)]
        plain = stem + ".jsonl"
        if files and parse(files[0]) == (stem, 2) and os.path.isfile(plain) and _continues(files[0], plain):
            files.insert(0, plain)
    else:
        p = parse(path)
        files = [path]
        if p is not None:
            found = segments_of(p[0])
            if found and found[0][0] == p[1]:
                files = [f for _, f in found]
        elif path.endswith(".jsonl"):
            found = segments_of(stem_of(path))
            if found and found[0][0] == 2 and _continues(found[0][1], path):
                files += [f for _, f in found]
    if since is not None:
        files = _since(files, since, path)
    return files


def continuation(path: str) -> str:
    """The file name of the segment that would continue the set ending with *path*."""
    p = parse(path.removesuffix(ZST))
    stem, number = p if p is not None else (stem_of(path), 1)
    return os.path.join(os.path.dirname(path), segment_name(os.path.basename(stem), number + 1))


def _continues(segment: str, path: str) -> bool:
    """True when *segment*'s header names *path* as the file it continues (read from its first line only)."""
    from .. import codec

    try:
        with open_bytes(segment) as f:
            header = codec.loads(f.readline(1 << 20))
    except Exception:  # unreadable or not a header: not a continuation; the file stands alone
        return False
    previous = header.get("previous") if isinstance(header, dict) else None
    return isinstance(previous, dict) and previous.get("file") == os.path.basename(path)


def _since(files: list[str], since: str, where: str) -> list[str]:
    for i, f in enumerate(files):
        p = parse(f)
        if (since.isdigit() and p is not None and p[1] == int(since)) or same_segment(
            os.path.basename(f), os.path.basename(since)
        ):
            return files[i:]
    raise RecordingError(f"{where}: --since {since}: no such segment in the set")


def open_bytes(path: str) -> BinaryIO:
    """*path* open for binary reading (a regular file only), ``.zst`` decompressed as it is read.

    A closed segment named while it was being compressed is read from its ``.zst``: the
    compressor renames that into place before it deletes the ``.jsonl``.
    """
    if not path.endswith(ZST):
        try:
            return open_regular(path)
        except FileNotFoundError:
            if not os.path.exists(path + ZST):
                raise
            path += ZST
    f = open_regular(path)
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True, closefd=True)
    return io.BufferedReader(_Raw(reader), 1 << 20)


class _Raw(io.RawIOBase):
    """A zstandard stream reader as a raw stream (so :class:`io.BufferedReader` gives lines)."""

    def __init__(self, reader: object) -> None:
        self._r = reader
        self._pos = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]  # typeshed's Buffer
        import zstandard

        try:
            n: int = self._r.readinto(b)  # type: ignore[attr-defined]  # zstandard's reader is untyped
        except zstandard.ZstdError as exc:
            raise OSError(f"corrupt zstd data: {exc}") from None
        self._pos += n
        return n

    def close(self) -> None:
        self._r.close()  # type: ignore[attr-defined]  # zstandard's reader is untyped
        super().close()


def compress(path: str, level: int = 3) -> str:
    """Compress a closed segment to ``PATH.zst`` (written aside, fsynced, renamed), then remove *path*."""
    import zstandard

    target = path + ZST
    tmp = target + ".tmp"
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        zstandard.ZstdCompressor(level=level).copy_stream(src, dst)
        dst.flush()
        os.fsync(dst.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)
    _fsync_dir(os.path.dirname(path) or ".")
    os.remove(path)
    return target


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
