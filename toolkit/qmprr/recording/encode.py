"""Record dicts to chained lines: redaction, then the (optionally keyed) hash chain.

Every writer of ``qmprr/1`` lines (live, import, rechain) goes through one
:class:`LineEncoder`, so they redact and seal alike.
"""

from __future__ import annotations

from typing import Any

import orjson

from .. import codec
from . import chain
from .model import ABSENT
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
        self._prefixes: dict[tuple[str, str], bytes] = {}

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

    # -- the hot path: command, reply and event records straight to bytes --------------
    #
    # The same line as ``encode(convert.unstructure(record))`` (a property test holds
    # them equal): cattrs and the scrubber are skipped when the scrubber would change
    # nothing, which it tells (:meth:`RecordScrubber.passes`); otherwise None, and the
    # caller takes the typed path. ``seq``, ``cmd`` and ``tx`` are the writer's and the
    # channel's ints, ``t`` the writer's float: formatted directly, as orjson writes them.

    def encode_command(
        self, seq: int, t: float, src: str, role: str, msg: dict[str, Any],
        client_id: Any, tx: int | None, queued: float | None, encoded: bytes | None = None,
    ) -> tuple[bytes, str] | None:
        """A ``command`` record's line and hash, or None when redaction must look at it.

        *encoded* is ``codec.dumps(msg)`` when the caller has it already (the wire bytes).
        """
        if not self.scrubber.passes_command(msg):
            return None
        prefix = self._prefixes.get((src, role))
        if prefix is None:
            prefix = b',"kind":"command","src":' + codec.dumps(src) + b',"role":' + codec.dumps(role) + b',"msg":'
            if len(self._prefixes) < 4096:
                self._prefixes[(src, role)] = prefix
        body = b'{"seq":%d,"t":%b%b%b' % (seq, orjson.dumps(t), prefix, encoded if encoded is not None else codec.dumps(msg))
        if client_id is not ABSENT:
            body += b',"client_id":' + codec.dumps(client_id)
        if tx is not None:
            body += b',"tx":%d' % tx
        if queued is not None:
            body += b',"queued":' + _float(queued)
        return self._seal(body + b"}")

    def encode_reply(self, seq: int, t: float, cmd: int, msg: dict[str, Any]) -> tuple[bytes, str] | None:
        """A ``reply`` record's line and hash, or None when redaction must look at it."""
        if not self.scrubber.passes_reply(cmd):
            return None
        return self._seal(b'{"seq":%d,"t":%b,"kind":"reply","cmd":%d,"msg":%b}' % (
            seq, orjson.dumps(t), cmd, codec.dumps(msg)))

    def encode_event(self, seq: int, t: float, msg: dict[str, Any]) -> tuple[bytes, str] | None:
        """An ``event`` record's line and hash, or None when redaction must look at it."""
        return self._seal(b'{"seq":%d,"t":%b,"kind":"event","msg":%b}' % (seq, orjson.dumps(t), codec.dumps(msg)))

    def _seal(self, body: bytes) -> tuple[bytes, str] | None:
        if self.scrubber.values and self.scrubber.echoes(body):
            return None  # a known secret value appears: the scrubber takes it out
        return chain.seal(body, self.head, self.seal_key.key if self.seal_key is not None else None)


def _float(value: float) -> bytes:
    return orjson.dumps(value) if type(value) is float else codec.dumps(value)

