"""Record dicts to chained lines: redaction, then the (optionally keyed) hash chain.

Every writer of ``qmprr/1`` lines (live, import, rechain) goes through one
:class:`LineEncoder`, so they redact and seal alike.
"""

from __future__ import annotations

from typing import Any

from .. import codec
from . import chain
from .redact import Redactor

#: The ``text`` of the note a sealed writer ends with (missing: crash or truncation).
END_SEAL_TEXT = "end of sealed recording"


class LineEncoder:
    """Encodes one recording's records in order; :attr:`head` is the chain's last hash.

    :meth:`encode` does not move the chain on: call :meth:`commit` with the
    hash once the line is on disk (a failed write must not advance it).
    """

    def __init__(self, redactor: Redactor, seal_key: chain.SealKey | None = None, *, head: str = chain.GENESIS) -> None:
        self.scrubber = redactor.session()
        self.seal_key = seal_key
        self.head = head

    def encode(self, d: dict[str, Any]) -> tuple[bytes, str]:
        """The line (with newline) and hash of the on-disk dict *d* (not changed)."""
        d = self.scrubber.record(d)
        key = None
        if d.get("kind") == "header":
            orig = d.get("orig")
            d = {k: v for k, v in d.items() if k not in ("seal", "orig")}
            if self.seal_key is not None:
                d["seal"] = self.seal_key.info()
            if orig is not None:
                d["orig"] = orig
        elif self.seal_key is not None:
            key = self.seal_key.key
        return chain.seal(codec.dumps(d), self.head, key)

    def commit(self, h: str) -> None:
        self.head = h
