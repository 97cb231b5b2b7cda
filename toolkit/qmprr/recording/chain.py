"""The line format and its hash chain.

A record's line is its compact JSON object with one last member added,
``"h"``: the first 128 bits (hex) of BLAKE2b over the previous record's
``h`` (ASCII; empty for the header) followed by this record's JSON bytes
without ``h``. The bytes hashed are exactly the bytes on disk, so editing,
deleting, inserting or reordering any line breaks the chain at that line.

Sealed recordings (``--seal-key``): every line after the header is hashed
with *keyed* BLAKE2b instead (same cost, same length), so only a holder of
the key can compute a valid chain. The header stays unkeyed (a reader without
the key still finds it) and names the key by its fingerprint (``seal``); the
header's hash is covered by the first keyed link.
"""

from __future__ import annotations

import os
import stat
from hashlib import blake2b

import attrs

from ..errors import RecordingError

GENESIS = ""
_H_MARK = b',"h":"'
_H_LEN = 32  # hex digits


class ChainFormatError(ValueError):
    """A line that does not end with a well-formed ``"h"`` member."""


#: The header's ``seal.alg`` for keyed BLAKE2b chains.
SEAL_ALG = "blake2b-128-keyed"
MIN_KEY_BYTES = 16
MAX_KEY_FILE = 1 << 16


class SealKeyError(RecordingError):
    """A seal key file that cannot be used (the message says why)."""


@attrs.frozen
class SealKey:
    """The key of a sealed chain, derived from a key file's bytes; ``key_id`` is its fingerprint."""

    key: bytes = attrs.field(repr=False)
    key_id: str

    @classmethod
    def from_bytes(cls, data: bytes) -> SealKey:
        if len(data) < MIN_KEY_BYTES:
            raise SealKeyError(
                f"a seal key needs at least {MIN_KEY_BYTES} bytes, this one has {len(data)}"
                " (make one: head -c 32 /dev/urandom > KEY; chmod 600 KEY)"
            )
        key = blake2b(data, digest_size=32, person=b"qmprr-seal-key").digest()
        return cls(key, blake2b(key, digest_size=8, person=b"qmprr-key-id").hexdigest())

    @classmethod
    def from_file(cls, path: str) -> SealKey:
        """Read a key file (its bytes, exactly; 16 bytes or more, at most 64 KiB)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block us
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise SealKeyError(f"{path}: not a regular file")
                data = f.read(MAX_KEY_FILE + 1)
        except OSError as exc:
            raise SealKeyError(f"{path}: cannot read the seal key: {exc.strerror}") from None
        if len(data) > MAX_KEY_FILE:
            raise SealKeyError(f"{path}: a seal key file is at most {MAX_KEY_FILE} bytes")
        try:
            return cls.from_bytes(data)
        except SealKeyError as exc:
            raise SealKeyError(f"{path}: {exc}") from None

    def info(self) -> dict[str, str]:
        """The header's ``seal`` member."""
        return {"alg": SEAL_ALG, "key_id": self.key_id}


_UNKEYED = blake2b(digest_size=_H_LEN // 2)  # copied: cheaper than a new hash object per record


def link(prev: str, body: bytes, key: bytes | None = None) -> str:
    """Hash of a record whose JSON bytes are *body*, following *prev* (keyed when *key*)."""
    h = _UNKEYED.copy() if key is None else blake2b(digest_size=_H_LEN // 2, key=key)
    h.update(prev.encode("ascii"))
    h.update(body)
    return h.hexdigest()


def seal(body: bytes, prev: str, key: bytes | None = None) -> tuple[bytes, str]:
    """Turn a record's JSON object bytes into its line (with newline) and hash."""
    h = link(prev, body, key)
    return b'%b%b%b"}\n' % (body[:-1], _H_MARK, h.encode("ascii")), h


def unseal(line: bytes) -> tuple[bytes, str]:
    """Split a line (with or without its newline) into the hashed bytes and ``h``."""
    end = len(line)
    if line.endswith(b"\n"):
        end -= 1
    if end > 0 and line[end - 1 : end] == b"\r":
        raise ChainFormatError("line ends with \\r\\n; recordings use \\n")
    if line[end - 2 : end] != b'"}':
        raise ChainFormatError('line does not end with the "h" member')
    mark = line.rfind(_H_MARK, 0, end)
    if mark < 0 or end - 2 - (mark + len(_H_MARK)) != _H_LEN:
        raise ChainFormatError('line has no well-formed "h" member at its end')
    h = line[mark + len(_H_MARK) : end - 2].decode("ascii", "replace")
    return line[:mark] + b"}", h
