"""QMP wire framing: a byte stream in, JSON messages out, and back. No I/O.

QMP is a stream of JSON values. A :class:`StreamDecoder` is fed whatever bytes
arrived and returns the complete items: each a message (``dict``) or a
:class:`FramingError` saying what QEMU would answer instead. Its purpose is
that a client cannot tell qmprr from QEMU 7.2 by what it sends, and that
nothing reaches QEMU that QEMU would cut into other messages than the log
shows. It is QEMU's own streamer over QEMU's lexer and parser
(:mod:`qmprr.codec`), rule for rule:

* Tokens are QEMU's (qobject/json-lexer.c ``json_lexer[][]``): single-quoted
  strings, ``\\'``, bytes 0x20..0xFD inside strings; a control byte, 0xFE,
  0xFF, ``%`` or any byte no token starts with is a lexical error answered
  ``JSON parse error, stray '<token so far>'``, after which the lexer skips
  to a structural byte, a control byte or 0xFE/0xFF (``IN_RECOVERY``). So a
  0xFF inside an unterminated string ends it, and the next command is parsed.
* A message is the tokens up to the one that brings the counts of ``{``
  and ``[`` both back to zero, or either below zero (json-streamer.c
  ``json_message_process_token``); a top-level scalar is a message by itself
  (``QMP input must be a JSON object``), ``}`` alone is ``expecting value``.
* QEMU's limits (json-streamer.c: ``MAX_TOKEN_SIZE`` 64 MiB,
  ``MAX_TOKEN_COUNT`` 2 << 20 = 2,097,152, ``MAX_NESTING`` 1 << 10 = 1024),
  checked as QEMU checks them, before a token joins the message: the sum of
  the message's token lengths plus this token's plus one must not exceed
  MAX_TOKEN_SIZE, the tokens already held plus one must not exceed
  MAX_TOKEN_COUNT, the open ``{`` plus ``[`` counting this token must not
  exceed MAX_NESTING. The answer is QEMU's text (``JSON token size limit
  exceeded``, ``JSON token count limit exceeded``, ``JSON nesting depth limit
  exceeded``).

**One deliberate difference, on the limits.** QEMU, past a limit, answers
the error, resets its streamer and parses *the rest of the same message as
new top-level input*: ``{"execute":"query-status","arguments":{"a":[0,...
(2**21 tokens)...,{"execute":"quit"}]}}`` makes QEMU quit. qmprr instead
refuses the whole message, as far as a streamer without limits would have
taken it (to the token that closes it, or a lexical error), with that one
error, and none of it reaches QEMU; what follows is parsed from a clean
state. A message over qmprr's own cap (``max_message`` bytes from its first
byte to its last) is refused the same way (:class:`MessageTooLarge`),
reported as soon as it passes the cap and skipped without being buffered.
The server should use :data:`DEFAULT_MAX_PARTIAL` or lower for clients.

Re-encoding can change what QEMU counts (``1e9`` becomes ``1000000000.0``,
and qmprr adds its own id): :func:`limit_error` checks the bytes the channel
will send (qmprr.session.qemu_would_split), with QEMU's error if they are over.

The decoder never depends on how the stream is cut into reads. The hot path
(a read holding one whole object, or whole objects one per line, that orjson
parses, in ASCII, with no ``\\u`` escape, no duplicate key and no ``0e``
number) skips the lexer: on such input orjson and QEMU agree (orjson also
stops at depth 1024, and a read shorter than MAX_TOKEN_COUNT bytes cannot
hold more tokens). Inside a message, runs of simple tokens are counted by
regex in bulk. tests/test_wire_grammar.py checks all of it against a per-byte
port of QEMU's loop; tests/test_wire_qemu.py checks replies against QEMU 7.2.

Sources: QEMU's qobject/json-lexer.c (``json_lexer[][]``,
``json_lexer_feed_char``), qobject/json-streamer.c (``MAX_*``,
``json_message_process_token``), qobject/json-parser.c, util/unicode.c, as
in QEMU 7.2 (unchanged since the 2018 rework that added ``IN_RECOVERY``; the
error texts are in Debian's 7.2 binary and its behaviour is the test).

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

import attrs
import orjson

from . import codec
from .codec import ERROR, LCURLY, LSQUARE, RCURLY, RSQUARE

#: Default largest message accepted, in bytes (first to last byte of the message).
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
#: A saner cap for what one client may make the server hold (a partial message).
DEFAULT_MAX_PARTIAL = 1024 * 1024


@attrs.frozen
class Limits:
    """The limits of QEMU's JSON streamer (qobject/json-streamer.c)."""

    token_size: int = 64 << 20  # MAX_TOKEN_SIZE (64ULL << 20)
    token_count: int = 2 << 20  # MAX_TOKEN_COUNT (2ULL << 20)
    nesting: int = 1 << 10  # MAX_NESTING (1 << 10)


#: QEMU 7.2's limits.
QEMU_LIMITS = Limits()

TOKEN_SIZE_EXCEEDED = "JSON token size limit exceeded"
TOKEN_COUNT_EXCEEDED = "JSON token count limit exceeded"
NESTING_EXCEEDED = "JSON nesting depth limit exceeded"


class MessageKind(enum.Enum):
    """What a QMP message is, judged by its top-level keys."""

    __hash__ = object.__hash__  # members are singletons: hashed in C, not by Enum's Python __hash__

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


def encode_with_id(body: bytes, wire_id: str) -> bytes:
    """``encode({**msg, "id": wire_id})`` from *body*, ``codec.dumps(msg)`` of a non-empty object.

    The id goes last, as a dict built that way has it: the bytes are the same
    (a property test holds them equal), without encoding *msg* again.
    """
    return b"".join((body[:-1], b',"id":', codec.dumps(wire_id), b"}\r\n"))


#: Tokens and bytes qmprr's own ``"id"`` may add to a forwarded command (``,"id":"qmprr-N"``).
ID_TOKENS, ID_BYTES = 4, 32


def limit_error(encoded: bytes, limits: Limits = QEMU_LIMITS, *, extra_tokens: int = 0, extra_bytes: int = 0) -> str | None:
    """QEMU's error if it would not take *encoded* (one compact message) as one message.

    *extra_tokens*/*extra_bytes* are added before checking (room for an id
    qmprr adds). Cheap bounds first; tokens are counted only near a limit.
    """
    n = len(encoded)
    if n + extra_tokens <= limits.token_count and n <= limits.nesting and n + extra_bytes < limits.token_size:
        return None  # too short for any limit: a token, and a level of nesting, is a byte at least
    if n + extra_bytes >= limits.token_size:
        return TOKEN_SIZE_EXCEEDED
    opens = encoded.count(b"{") + encoded.count(b"[")
    bound = 2 * (opens * 2 + encoded.count(b",") + encoded.count(b":")) + 1  # >= tokens of valid JSON
    if bound + extra_tokens <= limits.token_count and opens <= limits.nesting:
        return None
    count = depth = deepest = 0
    for kind, _ in codec.tokenize(encoded):
        count += 1
        depth += (kind in (LCURLY, LSQUARE)) - (kind in (RCURLY, RSQUARE))
        deepest = max(deepest, depth)
    if count + extra_tokens > limits.token_count:
        return TOKEN_COUNT_EXCEEDED
    if deepest > limits.nesting:
        return NESTING_EXCEEDED
    return None


class FramingError:
    """Input that did not become a message. Yielded by the decoder, not raised.

    ``excerpt`` holds at most the first 64 bytes of the offending input,
    ``size`` its length in bytes (as far as it was read when reported) and
    ``desc`` the text QEMU answers for it.
    """

    #: Default QMP ``desc`` used when answering this kind of error.
    DESC = "JSON parse error"

    __slots__ = ("excerpt", "size", "detail", "desc")

    def __init__(self, excerpt: bytes | bytearray, size: int, detail: str = "", desc: str | None = None) -> None:
        self.excerpt = bytes(excerpt[:64])
        self.size = size
        self.detail = detail
        #: The QMP ``desc`` for this error (QEMU's wording).
        self.desc = desc or self.DESC

    def qmp_error(self) -> dict[str, Any]:
        """The error QMP sends back for this input: ``GenericError`` and no ``id``."""
        return {"error": {"class": "GenericError", "desc": self.desc}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.excerpt!r}, size={self.size}, desc={self.desc!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, FramingError)
            and type(other) is type(self)
            and self.excerpt == other.excerpt
            and self.desc == other.desc
        )

    __hash__ = None  # type: ignore[assignment]  # unhashable, as it has __eq__; typeshed says a method


class JSONSyntaxError(FramingError):
    """Invalid JSON: a bad token, unbalanced brackets, a malformed string."""


class InvalidUTF8(FramingError):
    """A string whose bytes are not (modified) UTF-8."""

    DESC = "JSON parse error, invalid UTF-8 sequence in string"


class NotAnObject(FramingError):
    """Valid JSON whose top-level value is not an object (``42``, ``[1]``)."""

    DESC = "QMP input must be a JSON object"


class LimitExceeded(FramingError):
    """A message over one of QEMU's limits; refused whole (see the module docstring)."""


class MessageTooLarge(LimitExceeded):
    """A message longer than the decoder's ``max_message``; skipped, not buffered."""

    DESC = TOKEN_SIZE_EXCEEDED


_UTF8_ERROR = "JSON parse error, invalid UTF-8 sequence in string"
# A run of tokens inside a message that changes no count but the number of
# tokens: strings without escapes, numbers and keywords followed by a byte that
# ends them for QEMU's lexer too, separators. Lexed by regex, counted in bulk
# (the numbers exclude 0e5, which QEMU lexes as 0 then a keyword).
_SIMPLE = (
    rb"[ \t\r\n]*"
    rb"(\"[^\"\\\x00-\x1f\xfe\xff]*\"|'[^'\\\x00-\x1f\xfe\xff]*'|[,:]|"
    rb"(?:-?(?:0(?:\.[0-9]+(?:[eE][-+]?[0-9]+)?)?|[1-9][0-9]*(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)|[a-z]+)"
    rb"(?=[ \t\r\n,:\]}]))"
)
_SIMPLE_TOKEN = re.compile(_SIMPLE)
_SIMPLE_RUN = re.compile(b"(?:" + _SIMPLE + b")+")
# A number like 0e5 is 0 then a keyword to QEMU, 0.0 to orjson (10e5 and the
# like just take the exact path).
_ZERO_E = re.compile(rb"0[eE]")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def _key_count(value: dict[str, Any]) -> int:
    """Keys in *value* and every object inside it (no recursion: any depth)."""
    count = 0
    todo: list[dict[str, Any] | list[Any]] = [value]
    while todo:
        item = todo.pop()
        if type(item) is dict:
            count += len(item)
            todo += [v for v in item.values() if type(v) is dict or type(v) is list]
        else:
            todo += [v for v in item if type(v) is dict or type(v) is list]
    return count


def _orjson_agrees(raw: bytes, value: dict[str, Any]) -> bool:
    """Whether QEMU reads *raw* (ASCII, no ``\\u``, parsed by orjson as *value*) the same.

    Left to check (the caller excluded the rest): duplicate keys (orjson keeps the
    last, QEMU refuses the message). Without ``\\u`` a colon inside a string
    is a colon in the raw bytes and in orjson's re-encoding alike, and every
    key has its colon: the counts are equal exactly when no key was dropped.
    """
    colons = raw.count(b":")
    try:
        return orjson.dumps(value).count(b":") == colons
    except orjson.JSONEncodeError:  # deeper than orjson writes: count keys outside strings
        return _STRING.sub(b"", raw).count(b":") == _key_count(value)


class StreamDecoder:
    """Incremental QMP stream decoder: QEMU's streamer over QEMU's lexer (no I/O).

    *limits* are QEMU's streamer limits (None: no limits, to read QEMU's own
    output). With *strict* (the default), messages are parsed with QEMU's
    parser (its extensions and refusals); without, any JSON orjson reads is
    taken as is (QEMU's output, which is plain JSON, is read faster).
    """

    def __init__(
        self, max_message: int = DEFAULT_MAX_MESSAGE, *, limits: Limits | None = QEMU_LIMITS, strict: bool = True
    ) -> None:
        if max_message < 2:
            raise ValueError("max_message must be at least 2 bytes")
        self.max_message = max_message
        self.limits = limits
        self.strict = strict
        fast_ok = limits is None or limits.nesting >= QEMU_LIMITS.nesting
        #: Longest read the hot path may take whole (see the module docstring).
        self._fast_max = (
            0 if not fast_ok else min(max_message, limits.token_count, limits.token_size - 1) if limits else max_message
        )
        self._buf = bytearray()
        self._pos = 0  # next byte to lex
        self._lexer = codec.Lexer()
        self._out: list[dict[str, Any] | FramingError] = []
        self._reset()

    def _reset(self) -> None:
        """The streamer's state between messages (json-streamer.c ``out_emit``)."""
        self._ntok = 0  # tokens in the message (g_queue_get_length)
        self._size = 0  # their total length (token_size)
        self._braces = 0
        self._brackets = 0
        self._msg_start = 0  # buffer index of the message's first token
        self._discard = False  # the message is refused: find its end, keep nothing

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._buf)

    @property
    def idle(self) -> bool:
        """True when no partial message is pending (ignoring whitespace)."""
        return self._ntok == 0 and not self._discard and not self._lexer.in_token

    def feed(self, data: bytes) -> list[dict[str, Any] | FramingError]:
        """Add *data* and return every item it completes, in stream order."""
        if (
            data[:1] == b"{"
            and not self._buf
            and self._ntok == 0
            and not self._discard
            and self._lexer.state in (codec.IN_START, codec.IN_RECOVERY)  # "{" ends recovery
        ):
            msgs = self._fast_lines(data if type(data) is bytes else bytes(data))
            if msgs is not None:
                self._lexer.state = codec.IN_START
                return msgs
        buf = self._buf
        buf += data
        out = self._out = []
        lexer, emit = self._lexer, self._token
        while self._pos < len(buf):
            if lexer.state == codec.IN_START and (self._ntok or self._discard):
                self._bulk(buf)
            self._pos = lexer.run(buf, self._pos, len(buf), emit)
        self._check_partial()
        self._compact()
        return out

    def _fast_lines(self, data: bytes) -> list[dict[str, Any] | FramingError] | None:
        """The hot path: a read of one whole object, or of whole objects one per line."""
        if len(data) <= self._fast_max:
            msg = self._fast(data)
            if msg is not None:
                return [msg]
        if not data.endswith(b"\n") or data.count(b"\n") < 2:
            return None
        out: list[dict[str, Any] | FramingError] = []
        for line in data.split(b"\n"):
            if line[:1] != b"{" or len(line) > self._fast_max:
                if not line.strip(b" \t\r"):
                    continue  # QEMU's whitespace between messages
                return None
            msg = self._fast(line)
            if msg is None:
                return None
            out.append(msg)
        return out

    def _fast(self, data: bytes) -> dict[str, Any] | None:
        """*data* as one message, if orjson and QEMU read it alike; else None."""
        if self.strict and (
            # what orjson and QEMU may read differently: non-ASCII (noncharacters,
            # modified UTF-8), \u escapes (noncharacters, lone surrogates), 0e
            not data.isascii() or (b"\\" in data and b"\\u" in data) or _ZERO_E.search(data)
        ):
            return None
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(msg, dict) or (self.strict and not _orjson_agrees(data, msg)):
            return None
        return msg

    # -- the streamer (json-streamer.c json_message_process_token) ---------

    def _bulk(self, buf: bytearray) -> None:
        """Take a run of simple tokens inside the message at once (same result as one by one)."""
        pos = self._pos
        stop = len(buf) if self._discard else min(len(buf), self._msg_start + self.max_message)
        m = _SIMPLE_RUN.match(buf, pos, stop)
        if m is None:
            return
        end = m.end()
        # The run's last number or keyword was ended by the byte after it (QEMU's
        # lookahead), so the count looks one byte further (nothing else fits there).
        window = end + 1 if end < stop else end
        if not self._discard and self.limits is not None:  # without limits, counts do not matter
            tokens = _SIMPLE_TOKEN.findall(buf, pos, window)
            count, size = len(tokens), sum(map(len, tokens))
            limits = self.limits
            if limits is not None and (
                self._ntok + count > limits.token_count or self._size + size + 1 > limits.token_size
            ):
                # stop before the token over a limit; _token reports it
                end, count, size = pos, 0, 0
                for t in _SIMPLE_TOKEN.finditer(buf, pos, window):
                    n = t.end(1) - t.start(1)
                    if self._ntok + count + 1 > limits.token_count or self._size + size + n + 1 > limits.token_size:
                        break
                    end, count, size = t.end(), count + 1, size + n
            self._ntok += count
            self._size += size
        self._pos = self._lexer.start = end

    def _token(self, kind: int, start: int, end: int) -> bool:
        buf, out = self._buf, self._out
        if not self._discard:
            first = self._msg_start if self._ntok else start
            if end - first > self.max_message:
                out.append(MessageTooLarge(buf[first:end], end - first))
                self._discard = True
        if kind == ERROR:
            if not self._discard:
                stray = codec.qemu_text(bytes(buf[start:end]))
                first = self._msg_start if self._ntok else start
                out.append(JSONSyntaxError(buf[first:end], end - first, desc=f"JSON parse error, stray '{stray}'"))
            self._reset()
            return False
        if kind == LCURLY:
            self._braces += 1
        elif kind == RCURLY:
            self._braces -= 1
        elif kind == LSQUARE:
            self._brackets += 1
        elif kind == RSQUARE:
            self._brackets -= 1
        if not self._discard:
            if self._ntok == 0:
                self._msg_start = start
            limits = self.limits
            if limits is not None:
                error = None
                if self._size + (end - start) + 1 > limits.token_size:
                    error = TOKEN_SIZE_EXCEEDED
                elif self._ntok + 1 > limits.token_count:
                    error = TOKEN_COUNT_EXCEEDED
                elif self._braces + self._brackets > limits.nesting:
                    error = NESTING_EXCEEDED
                if error is not None:
                    first = self._msg_start
                    out.append(LimitExceeded(buf[first:end], end - first, desc=error))
                    self._discard = True
            self._ntok += 1
            self._size += end - start
        if (self._braces > 0 or self._brackets > 0) and self._braces >= 0 and self._brackets >= 0:
            return True  # the message goes on: let _bulk try what follows
        if not self._discard:
            out.append(self._parse(bytes(buf[self._msg_start : end])))
        self._reset()
        return False

    def _parse(self, raw: bytes) -> dict[str, Any] | FramingError:
        """One complete message's value (json-parser.c), or QEMU's error for it."""
        if raw[:1] == b"{":  # the streamer has checked the limits: orjson may parse it
            msg = self._fast(raw)
            if msg is not None:
                return msg
        try:
            value = codec.parse(codec.tokenize(raw))
        except codec.ParseError as exc:
            cls = InvalidUTF8 if exc.desc == _UTF8_ERROR else JSONSyntaxError
            return cls(raw, len(raw), desc=exc.desc)
        if isinstance(value, dict):
            return value
        return NotAnObject(raw, len(raw))

    # -- buffer management -------------------------------------------------

    def _check_partial(self) -> None:
        """At the end of a read: refuse a message that is already over the cap."""
        if self._discard:
            return
        if self._ntok:
            first = self._msg_start
        elif self._lexer.in_token:
            first = self._lexer.start
        else:
            return
        held = self._pos - first
        if held > self.max_message:
            self._out.append(MessageTooLarge(self._buf[first : self._pos], held))
            self._discard = True

    def _compact(self) -> None:
        if self._discard or not (self._ntok or self._lexer.in_token):
            keep_from = self._pos
        else:
            keep_from = self._msg_start if self._ntok else self._lexer.start
        if keep_from:
            del self._buf[:keep_from]
            self._pos -= keep_from
            self._msg_start = max(0, self._msg_start - keep_from)
            self._lexer.start = max(0, self._lexer.start - keep_from)
