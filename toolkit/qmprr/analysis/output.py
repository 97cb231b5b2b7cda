"""Writing analysis output files: replaced only once complete, mode 0600 (:mod:`qmprr.files`); big messages cut."""

from __future__ import annotations

from typing import Any

import orjson

from ..files import OutputError, replace_file

__all__ = ["MAX_DETAIL", "OutputError", "clip", "replace_file"]

#: Messages larger than this (bytes of JSON) are cut in reports and traces (the recording has them whole).
MAX_DETAIL = 16 * 1024


def clip(msg: Any) -> Any:
    """*msg*, or a small stand-in when its JSON is over :data:`MAX_DETAIL` bytes."""
    text = orjson.dumps(msg)
    if len(text) <= MAX_DETAIL:
        return msg
    return {"qmprr-cut": f"{len(text):,} bytes of JSON; see 'qmprr show --json'",
            "head": text[:2000].decode("utf-8", "replace")}
