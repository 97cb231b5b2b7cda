"""QMP wire framing: a byte stream in, JSON messages out, and back. No I/O.

QMP is a stream of JSON objects. QEMU ends each of its messages with
``\\r\\n``; clients may send any whitespace between objects, or none at all
(qemu.qmp sends none), and a TCP/UNIX read can cut an object anywhere. A
:class:`StreamDecoder` is fed whatever bytes arrived and returns the complete
items: each a message (``dict``) or a :class:`FramingError` describing input
that could not become one. Like QEMU's own streamer it recovers after bad
input: a lexical error inside an object abandons that object, and scanning
resumes so a valid object that follows is never lost.

Driving code (asyncio adapters elsewhere) owns the sockets::

    decoder = StreamDecoder()
    for item in decoder.feed(chunk):
        if isinstance(item, FramingError):
            ...  # answer with item.qmp_error(), keep the connection
        else:
            ...  # a message; see classify()
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any

from . import codec

#: Default largest message accepted, in bytes.
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024

_WHITESPACE = b" \t\r\n"


class MessageKind(enum.Enum):
    """What a QMP message is, judged by its top-level keys."""

    GREETING = "greeting"
    COMMAND = "command"
    RETURN = "return"
    ERROR = "error"
    EVENT = "event"
    UNKNOWN = "unknown"


def classify(msg: Mapping[str, Any]) -> MessageKind:
    """Classify a decoded message by the key that defines it in the QMP spec."""
    if "execute" in msg or "exec-oob" in msg:
        return MessageKind.COMMAND
    if "return" in msg:
        return MessageKind.RETURN
    if "error" in msg:
        return MessageKind.ERROR
    if "event" in msg:
        return MessageKind.EVENT
    if "QMP" in msg:
        return MessageKind.GREETING
    return MessageKind.UNKNOWN


def command_name(msg: Mapping[str, Any]) -> str | None:
    """The command a message executes (``execute`` or ``exec-oob``), if it is a string."""
    name = msg.get("execute", msg.get("exec-oob"))
    return name if isinstance(name, str) else None


def encode(msg: Mapping[str, Any]) -> bytes:
    """Encode one message as QEMU does: compact JSON ended by ``\\r\\n``."""
    return codec.dumps(msg) + b"\r\n"


class FramingError:
    """Input that did not become a message. Yielded by the decoder, not raised.

    ``excerpt`` holds at most the first 64 bytes of the offending input and
    ``size`` its length in bytes (as far as it was read).
    """

    #: Default QMP ``desc`` used when answering this kind of error.
    DESC = "JSON parse error"

    __slots__ = ("excerpt", "size", "detail", "desc")

    def __init__(self, excerpt: bytes, size: int, detail: str = "", desc: str | None = None) -> None:
        self.excerpt = bytes(excerpt[:64])
        self.size = size
        self.detail = detail
        #: The QMP ``desc`` for this error (QEMU's wording where qmprr knows it).
        self.desc = desc or self.DESC

    def qmp_error(self) -> dict[str, Any]:
        """The error QMP sends back for this input: ``GenericError`` and no ``id``."""
        return {"error": {"class": "GenericError", "desc": self.desc}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.excerpt!r}, size={self.size}, detail={self.detail!r})"

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and self.excerpt == other.excerpt  # type: ignore[attr-defined]
            and self.size == other.size  # type: ignore[attr-defined]
        )

    __hash__ = None  # type: ignore[assignment]


class JSONSyntaxError(FramingError):
    """Invalid JSON: a bad token, unbalanced brackets, a malformed string."""


class InvalidUTF8(FramingError):
    """A message whose bytes are not valid UTF-8."""


class NotAnObject(FramingError):
    """Valid JSON whose top-level value is not an object (``42``, ``[1]``)."""

    DESC = "QMP input must be a JSON object"


class MessageTooLarge(FramingError):
    """A message longer than the decoder's limit; it was skipped, not buffered."""

    DESC = "JSON token size limit exceeded"


# Bytes that matter inside a value, outside strings: structure, quotes, and
# anything QEMU's lexer cannot start a token with (a lexical error). Lowercase
# words are tokens to QEMU (keywords); a wrong one fails the whole object.
_VALUE_SPECIAL = re.compile(rb'[^ \t\r\n:,0-9+\-.a-zE]')
# After a lexical error QEMU skips input up to whitespace or an opening bracket.
_RECOVERY_END = re.compile(rb"[ \t\r\n{\[]")
_KEYWORD = re.compile(rb'"(?:[^"\\]|\\.)*"|([a-z]+)', re.S)
_STRING_SPECIAL = re.compile(rb'["\\]')
_NON_SPACE = re.compile(rb"[^ \t\r\n]")
_SCALAR_END = re.compile(rb'[ \t\r\n{}\[\]"]')

_TOP, _VALUE, _SCALAR = range(3)


class StreamDecoder:
    """Incremental QMP stream decoder (a small state machine, no I/O).

    States: between messages (``_TOP``), inside an object or array
    (``_VALUE``, tracking depth and strings), or inside a bare top-level token
    (``_SCALAR``: garbage, or a scalar that is not an object). While
    ``_discard`` is set the current value is over the size limit: it is still
    scanned to find its end, but its bytes are dropped instead of kept.
    """

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        if max_message < 2:
            raise ValueError("max_message must be at least 2 bytes")
        self.max_message = max_message
        self._buf = bytearray()
        self._pos = 0  # next byte to scan
        self._start = 0  # first byte of the value or token being scanned
        self._state = _TOP
        self._depth = 0
        self._in_string = False
        self._discard = False  # current value is too large: drop its bytes
        self._dropped = 0  # bytes of the current value already dropped
        self._reported = False  # current token's error is already reported
        self._recovering = False  # skipping after a lexical error, as QEMU does

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._buf)

    @property
    def idle(self) -> bool:
        """True when no partial message is pending (ignoring whitespace)."""
        return self._state == _TOP and not self._buf.strip(_WHITESPACE)

    def feed(self, data: bytes) -> list[dict[str, Any] | FramingError]:
        """Add *data* and return every item it completes, in stream order."""
        if self._state == _TOP and not self._buf and data[:1] == b"{" and len(data) <= self.max_message:
            # Fast path: most reads hold exactly one whole object. If it parses
            # as one, the scanner would have found just that; otherwise scan.
            try:
                msg = codec.loads(data)
            except codec.JSONDecodeError:
                pass
            else:
                if isinstance(msg, dict):
                    return [msg]
        self._buf += data
        out: list[dict[str, Any] | FramingError] = []
        buf = self._buf
        while True:
            if self._state == _TOP:
                if not self._scan_top(buf, out):
                    break
            elif self._state == _VALUE:
                if not self._scan_value(buf, out):
                    break
            elif not self._scan_scalar(buf, out):
                break
        self._compact()
        return out

    # -- states ------------------------------------------------------------

    def _scan_top(self, buf: bytearray, out: list) -> bool:
        m = _NON_SPACE.search(buf, self._pos)
        if m is None:
            self._pos = len(buf)
            return False
        i = m.start()
        c = buf[i]
        self._start = i
        self._discard = False
        self._dropped = 0
        self._reported = False
        if c in b"{[":
            self._state, self._depth, self._pos = _VALUE, 1, i + 1
        elif c in b"}]":
            out.append(JSONSyntaxError(buf[i : i + 1], 1, f"unexpected {chr(c)!r}"))
            self._pos = i + 1
        else:
            self._state, self._pos = _SCALAR, i
            self._in_string = c == 0x22  # a top-level string
            if self._in_string:
                self._pos = i + 1
        return True

    def _scan_string(self, buf: bytearray) -> bool:
        """Advance through a string body; False when more data is needed."""
        while True:
            m = _STRING_SPECIAL.search(buf, self._pos)
            if m is None:
                self._pos = len(buf)
                return False
            i = m.start()
            if buf[i] == 0x22:  # closing quote
                self._in_string = False
                self._pos = i + 1
                return True
            if i + 1 >= len(buf):  # a backslash with its escaped byte still to come
                self._pos = i
                return False
            self._pos = i + 2

    def _scan_value(self, buf: bytearray, out: list) -> bool:
        while True:
            if self._in_string and not self._scan_string(buf):
                return self._check_size(buf, out)
            m = _VALUE_SPECIAL.search(buf, self._pos)
            if m is None:
                self._pos = len(buf)
                return self._check_size(buf, out)
            i = m.start()
            c = buf[i]
            self._pos = i + 1
            if c == 0x22:
                self._in_string = True
            elif c in b"{[":
                self._depth += 1
            elif c in b"}]":
                self._depth -= 1
                if self._depth == 0:
                    self._finish_value(buf, out)
                    return True
            else:  # a byte JSON does not allow here: abandon this value
                if not self._discard:
                    stray = bytes(buf[i : i + 1]).decode("utf-8", "replace")
                    out.append(
                        JSONSyntaxError(
                            buf[self._start : i + 1],
                            self._dropped + i + 1 - self._start,
                            f"invalid byte {bytes([c])!r} in object",
                            f"JSON parse error, stray '{stray}'",
                        )
                    )
                # Skip, silently and without keeping it, to where QEMU's lexer
                # recovers; then resume.
                self._state, self._pos, self._reported, self._discard = _SCALAR, i, True, True
                self._in_string = False
                self._recovering = True
                return True

    def _finish_value(self, buf: bytearray, out: list) -> None:
        self._state = _TOP
        if self._discard:
            return
        raw = bytes(buf[self._start : self._pos])
        if len(raw) > self.max_message:
            out.append(MessageTooLarge(raw, len(raw)))
            return
        try:
            msg = codec.loads(raw)
        except codec.JSONDecodeError as exc:
            out.append(_decode_error(raw, exc))
            return
        if isinstance(msg, dict):
            out.append(msg)
        else:
            out.append(NotAnObject(raw, len(raw)))

    def _scan_scalar(self, buf: bytearray, out: list) -> bool:
        if self._in_string:
            if not self._scan_string(buf):
                return self._check_size(buf, out)
        else:
            m = (_RECOVERY_END if self._recovering else _SCALAR_END).search(buf, self._pos)
            if m is None:
                self._pos = len(buf)
                return self._check_size(buf, out)
            self._pos = m.start()
        self._state = _TOP
        self._recovering = False
        if not (self._reported or self._discard):
            raw = bytes(buf[self._start : self._pos])
            if len(raw) > self.max_message:
                out.append(MessageTooLarge(raw, len(raw)))
                return True
            try:
                codec.loads(raw)
            except codec.JSONDecodeError as exc:
                out.append(_decode_error(raw, exc))
            else:
                out.append(NotAnObject(raw, len(raw)))
        return True

    # -- buffer management -------------------------------------------------

    def _check_size(self, buf: bytearray, out: list) -> bool:
        """Called when more input is needed; starts discarding an oversized item."""
        held = self._pos - self._start
        if not self._discard and self._dropped + held > self.max_message:
            out.append(MessageTooLarge(buf[self._start : self._pos], self._dropped + held))
            self._discard = True
        return False

    def _compact(self) -> None:
        if self._state == _TOP:
            keep_from = self._pos
        elif self._discard:
            keep_from = self._pos
            self._dropped += self._pos - self._start
            self._start = self._pos
        else:
            keep_from = self._start
        if keep_from:
            del self._buf[:keep_from]
            self._pos -= keep_from
            self._start = max(0, self._start - keep_from)


def _decode_error(raw: bytes, exc: Exception) -> FramingError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return InvalidUTF8(raw, len(raw), str(bad))
    desc = None
    for m in _KEYWORD.finditer(raw):
        word = m.group(1)
        if word is not None and word not in (b"true", b"false", b"null"):
            desc = f"JSON parse error, invalid keyword '{word.decode()}'"
            break
    return JSONSyntaxError(raw, len(raw), str(exc), desc)
