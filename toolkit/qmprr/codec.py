"""Compact JSON encoding and decoding (orjson).

Numbers follow QEMU's own parser: integers that fit int64/uint64 stay
integers, larger ones become floats. Output is compact UTF-8 with no spaces,
the form QEMU itself emits. Python integers outside 64 bits (which can only
come from a caller, never from decoding) are encoded by the standard library.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

#: Raised by :func:`loads` for invalid JSON and invalid UTF-8 (a ValueError).
JSONDecodeError = orjson.JSONDecodeError


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """Encode *value* as compact UTF-8 JSON bytes."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except orjson.JSONEncodeError:
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys, allow_nan=False
        ).encode()


loads = orjson.loads
