"""The line format and its hash chain.

A record's line is its compact JSON object with one last member added,
``"h"``: the first 128 bits (hex) of BLAKE2b over the previous record's
``h`` (ASCII; empty for the header) followed by this record's JSON bytes
without ``h``. The bytes hashed are exactly the bytes on disk, so editing,
deleting, inserting or reordering any line breaks the chain at that line.
"""

from __future__ import annotations

from hashlib import blake2b

GENESIS = ""
_H_MARK = b',"h":"'
_H_LEN = 32  # hex digits


class ChainFormatError(ValueError):
    """A line that does not end with a well-formed ``"h"`` member."""


def link(prev: str, body: bytes) -> str:
    """Hash of a record whose JSON bytes are *body*, following *prev*."""
    return blake2b(prev.encode("ascii") + body, digest_size=_H_LEN // 2).hexdigest()


def seal(body: bytes, prev: str) -> tuple[bytes, str]:
    """Turn a record's JSON object bytes into its line (with newline) and hash."""
    h = link(prev, body)
    return b"".join((body[:-1], _H_MARK, h.encode("ascii"), b'"}\n')), h


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
