"""``qmprr rechain``: a new, valid chain for a recording edited on purpose.

An edit breaks the hash chain at the edited line, so ``verify`` and replay
refuse the file. :func:`rechain` reads it without checking the chain (every
line must still be a valid record), renumbers ``seq`` when lines were deleted
or inserted (and the ``cmd`` of replies and fds with it), and writes a new
recording whose header says where it came from::

    "derived_from": {"file": "a.jsonl", "final_hash": "<h of its last line>",
                     "file_sha256": "...", "how": "edited", "records": N}

so the edit is never hidden: the new chain proves only that *this* file is
as ``rechain`` wrote it (and, with a seal key, who ran it), and names the
original by its final hash. The redaction of a live recording applies again
(raw-input excerpts the original kept stay kept).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import attrs

from .. import codec
from ..errors import RecordingError
from . import chain, convert
from .encode import END_SEAL_TEXT, LineEncoder
from .header import header_problem
from .redact import Redactor


class RechainError(RecordingError):
    """The input cannot be rechained (a line that is not a record, a dangling ``cmd``)."""


@attrs.frozen
class RechainResult:
    records: int
    renumbered: int  # records whose seq changed
    source_hash: str | None  # the input's final hash (its last line's "h")


def read_edited(path: str) -> tuple[list[dict[str, Any]], str | None, str]:
    """The records of *path* as dicts (chain not checked, ``h`` dropped), its final hash and SHA-256."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise RechainError(f"{path}: cannot read: {exc.strerror}") from None
    records: list[dict[str, Any]] = []
    final_hash = None
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue  # an editor's blank line, or the end of the file
        try:
            body, final_hash = chain.unseal(raw)
        except chain.ChainFormatError:
            body, final_hash = raw.rstrip(b"\r"), None  # the "h" was edited away: fine
        try:
            d = codec.loads(body)
        except codec.JSONDecodeError as exc:
            raise RechainError(f"{path}:{lineno}: not JSON ({exc}); fix the line or delete it") from None
        if isinstance(d, dict):
            d.pop("h", None)
        try:
            record = convert.structure(d)
        except convert.RecordSchemaError as exc:
            raise RechainError(f"{path}:{lineno}: {exc}") from None
        problem = header_problem(record) if not records else "a second header" if record.kind == "header" else None
        if problem is not None:
            raise RechainError(f"{path}:{lineno}: {problem}")
        d["_line"] = lineno
        records.append(d)
    if not records:
        raise RechainError(f"{path}: holds no records")
    return records, final_hash, hashlib.sha256(data).hexdigest()


def rechain(
    src: str,
    dst: str,
    *,
    seal_key: chain.SealKey | None = None,
    how: str = "edited",
    redactor: Redactor | None = None,
) -> RechainResult:
    """Write *src* (a recording, its chain possibly broken) as a newly chained *dst* (must not exist)."""
    records, final_hash, sha = read_edited(src)
    derived: dict[str, Any] = {
        "file": os.path.basename(src),
        "final_hash": final_hash,
        "file_sha256": sha,
        "how": how,
        "records": len(records),
    }
    renumbered = write_derived(records, dst, derived, seal_key=seal_key, redactor=redactor, src=src)
    return RechainResult(len(records), renumbered, final_hash)


def write_derived(
    records: list[dict[str, Any]],
    dst: str,
    derived: dict[str, Any],
    *,
    seal_key: chain.SealKey | None = None,
    redactor: Redactor | None = None,
    src: str = "the input",
) -> int:
    """Write *records* (dicts as :func:`read_edited` gives them) as a newly chained *dst* (must not exist).

    The header gets ``derived_from`` = *derived* (the header's earlier one as its
    ``previous``); ``seq`` is renumbered and the ``cmd`` of replies and fds with
    it. Returns how many records were renumbered. *records* is not changed.
    """
    records = [dict(d) for d in records]
    remap = {d["seq"]: i for i, d in enumerate(records)}
    if len(remap) != len(records):
        dup = next(d for i, d in enumerate(records) if remap[d["seq"]] != i)
        raise RechainError(f"{src}:{dup.get('_line', '?')}: seq {dup['seq']} appears twice; give each record its own")
    header = dict(records[0])
    derived = dict(derived)
    if header.get("derived_from") is not None:
        derived["previous"] = header["derived_from"]
    header["derived_from"] = derived
    records[0] = header
    renumbered = 0
    encoder = LineEncoder(redactor or Redactor(keep_input=True), seal_key)
    lines = []
    for i, d in enumerate(records):
        line_no = d.pop("_line", "?")
        if d["seq"] != i:
            renumbered += 1
            d["seq"] = i
        if d.get("kind") in ("reply", "fd") and d.get("cmd") is not None:
            if d["cmd"] not in remap:
                raise RechainError(
                    f"{src}:{line_no}: names command seq {d['cmd']}, which is not in the file; delete this line too"
                )
            d["cmd"] = remap[d["cmd"]]
        line, h = encoder.encode(d)
        encoder.commit(h)
        lines.append(line)
    if seal_key is not None:
        last_t = records[-1].get("t", 0.0)
        end = {"seq": len(records), "t": last_t, "kind": "note", "text": END_SEAL_TEXT, "data": {"key_id": seal_key.key_id}}
        line, h = encoder.encode(end)
        lines.append(line)
    _write_new(dst, b"".join(lines))
    return renumbered


def _write_new(path: str, data: bytes) -> None:
    """Create *path* (never over an existing file, mode 0600) with *data*, all or nothing."""
    part = f"{path}.part"
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise RechainError(f"{part}: exists (another rechain running?); remove it") from None
    except OSError as exc:
        raise RechainError(f"{path}: cannot create: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(part, path)  # fails if path exists, never replaces it
        except FileExistsError:
            raise RechainError(f"{path}: file exists; recordings are never overwritten") from None
        except OSError as exc:
            raise RechainError(f"{path}: cannot create: {exc.strerror}") from None
    finally:
        os.unlink(part)
