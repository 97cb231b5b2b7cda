"""Writing analysis output files: replaced only once complete; big messages cut."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

import orjson

from ..errors import QmprrError

#: Messages larger than this (bytes of JSON) are cut in reports and traces (the recording has them whole).
MAX_DETAIL = 16 * 1024


class OutputError(QmprrError):
    """An output file cannot be written."""


def clip(msg: Any) -> Any:
    """*msg*, or a small stand-in when its JSON is over :data:`MAX_DETAIL` bytes."""
    text = orjson.dumps(msg)
    if len(text) <= MAX_DETAIL:
        return msg
    return {"qmprr-cut": f"{len(text):,} bytes of JSON; see 'qmprr show --json'",
            "head": text[:2000].decode("utf-8", "replace")}


@contextlib.contextmanager
def replace_file(output: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """*output* open for writing; it appears (mode 0644) only when the block completes. ``-``: stdout."""
    path = os.fspath(output)
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".qmprr-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write there: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.chmod(tmp, 0o644)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
