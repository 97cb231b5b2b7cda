"""QEMU's JSON language: its lexer, its parser, and a compact encoder. No I/O.

QEMU 7.2 does not parse JSON with an off-the-shelf parser but with its own
lexer and parser (``qobject/json-lexer.c``, ``qobject/json-parser.c``), which
accept more than RFC 8259 (single-quoted strings, ``\\'``, modified UTF-8's
``\\xC0\\x80``, numbers too large for a double) and less (duplicate keys,
noncharacters such as U+FFFF, lone surrogates). This module ports both, so
qmprr accepts and rejects exactly what QEMU does, with QEMU's error texts:

* :data:`TABLE` is ``json_lexer[][256]`` of json-lexer.c, state for state
  (without ``IN_INTERP``/``IN_START_INTERP``: QMP's parser is created without
  interpolation, monitor/qmp.c ``json_message_parser_init(..., NULL)``, so
  ``%`` is a lexical error there). :class:`Lexer` runs it like
  ``json_lexer_feed_char`` and skips runs of bytes that leave a state
  unchanged with one regex match each (same result, much faster).
* :func:`parse` is json-parser.c's ``parse_value`` and friends, iterative so
  any depth QEMU's streamer lets through (1024) parses without recursion;
  :func:`parse_string` follows ``parse_string`` and util/unicode.c's
  ``mod_utf8_codepoint``; integers become ``int`` when they fit int64 or
  uint64 and ``float`` otherwise, as ``parse_literal`` does.
* :func:`qemu_text` decodes bytes as QEMU's JSON writer does when it echoes
  them in an error (invalid sequences become U+FFFD).

Encoding (:func:`dumps`) is orjson's compact UTF-8, the form QEMU reads. Two
values orjson cannot write are handled: nesting deeper than orjson's 254
levels (an iterative encoder takes over) and :class:`NonFinite`, the ±inf a
QEMU number such as ``1e400`` denotes, written ``1e999``/``-1e999`` (QEMU,
orjson's fallback here and Python's ``json`` read it back as the same double).
:func:`loads` is orjson's, falling back to QEMU's grammar for what orjson
refuses (those two cases, and QEMU's extensions).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson

#: Raised by :func:`loads` for invalid JSON and invalid UTF-8 (a ValueError).
JSONDecodeError = orjson.JSONDecodeError


class ParseError(ValueError):
    """Input QEMU's parser rejects; ``desc`` is QEMU's error text for it."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc)
        self.desc = desc


class NonFinite(float):
    """±infinity from a JSON number too large for a double (QEMU's ``strtod``).

    JSON cannot spell it, and orjson would write ``null``; :func:`dumps`
    writes ``1e999`` (``-1e999``), which every parser reads back as the same value.
    """

    def __repr__(self) -> str:
        return f"NonFinite({float(self)!r})"


# -- lexer (qobject/json-lexer.c) ----------------------------------------------

# enum json_lexer_state, in QEMU's order; JSON_ERROR is 0 as in QEMU.
(
    ERROR,
    IN_RECOVERY,
    IN_DQ_STRING_ESCAPE,
    IN_DQ_STRING,
    IN_SQ_STRING_ESCAPE,
    IN_SQ_STRING,
    IN_ZERO,
    IN_EXP_DIGITS,
    IN_EXP_SIGN,
    IN_EXP_E,
    IN_MANTISSA,
    IN_MANTISSA_DIGITS,
    IN_DIGITS,
    IN_SIGN,
    IN_KEYWORD,
    IN_START,
) = range(16)
# JSONTokenType (json-parser-int.h), JSON_MIN and up.
LCURLY, RCURLY, LSQUARE, RSQUARE, COLON, COMMA, INTEGER, FLOAT, KEYWORD, STRING = range(0x20, 0x2A)
TOKEN_MIN = LCURLY
TOKEN_NAMES = {ERROR: "error", **dict(zip(range(0x20, 0x2A), "{ } [ ] : , integer float keyword string".split()))}
#: A table entry with this bit does not consume its byte (QEMU's LOOKAHEAD).
LOOKAHEAD = 0x80


def _row(*assign: tuple[str | tuple[int, int], int]) -> bytes:
    """One state's 256 transitions; later assignments override, as C designated initializers do."""
    row = [ERROR] * 256
    for key, value in assign:
        lo, hi = (ord(key), ord(key)) if isinstance(key, str) else key
        row[lo : hi + 1] = [value] * (hi - lo + 1)
    return bytes(row)


def _terminal(token: int) -> tuple[tuple[int, int], int]:
    return (0, 0xFF), token | LOOKAHEAD


_DIGITS = (ord("0"), ord("9"))
_LA_START = IN_START | LOOKAHEAD
_STRUCTURAL = "[]{}:,"

#: ``json_lexer[state][byte]``: the next state or token, maybe with LOOKAHEAD.
TABLE: list[bytes] = [b""] * 16
TABLE[IN_RECOVERY] = _row(
    ((0, 0x1F), _LA_START), ((0x20, 0xFD), IN_RECOVERY), ((0xFE, 0xFF), _LA_START),
    ("\t", IN_RECOVERY), *((c, _LA_START) for c in _STRUCTURAL),
)  # fmt: skip
TABLE[IN_DQ_STRING_ESCAPE] = _row(((0x20, 0xFD), IN_DQ_STRING))
TABLE[IN_DQ_STRING] = _row(((0x20, 0xFD), IN_DQ_STRING), ("\\", IN_DQ_STRING_ESCAPE), ('"', STRING))
TABLE[IN_SQ_STRING_ESCAPE] = _row(((0x20, 0xFD), IN_SQ_STRING))
TABLE[IN_SQ_STRING] = _row(((0x20, 0xFD), IN_SQ_STRING), ("\\", IN_SQ_STRING_ESCAPE), ("'", STRING))
TABLE[IN_ZERO] = _row(_terminal(INTEGER), (_DIGITS, ERROR), (".", IN_MANTISSA))
TABLE[IN_EXP_DIGITS] = _row(_terminal(FLOAT), (_DIGITS, IN_EXP_DIGITS))
TABLE[IN_EXP_SIGN] = _row((_DIGITS, IN_EXP_DIGITS))
TABLE[IN_EXP_E] = _row(("-", IN_EXP_SIGN), ("+", IN_EXP_SIGN), (_DIGITS, IN_EXP_DIGITS))
TABLE[IN_MANTISSA_DIGITS] = _row(
    _terminal(FLOAT), (_DIGITS, IN_MANTISSA_DIGITS), ("e", IN_EXP_E), ("E", IN_EXP_E)
)
TABLE[IN_MANTISSA] = _row((_DIGITS, IN_MANTISSA_DIGITS))
TABLE[IN_DIGITS] = _row(
    _terminal(INTEGER), (_DIGITS, IN_DIGITS), ("e", IN_EXP_E), ("E", IN_EXP_E), (".", IN_MANTISSA)
)
TABLE[IN_SIGN] = _row(("0", IN_ZERO), ((ord("1"), ord("9")), IN_DIGITS))
TABLE[IN_KEYWORD] = _row(_terminal(KEYWORD), ((ord("a"), ord("z")), IN_KEYWORD))
TABLE[IN_START] = _row(
    ('"', IN_DQ_STRING), ("'", IN_SQ_STRING), ("0", IN_ZERO), ((ord("1"), ord("9")), IN_DIGITS),
    ("-", IN_SIGN), ("{", LCURLY), ("}", RCURLY), ("[", LSQUARE), ("]", RSQUARE), (",", COMMA),
    (":", COLON), ((ord("a"), ord("z")), IN_KEYWORD),
    (" ", IN_START), ("\t", IN_START), ("\r", IN_START), ("\n", IN_START),
)  # fmt: skip


def _self_loop(state: int) -> Callable[[Any, int, int], Any] | None:
    """A regex matcher for a run of bytes that keep *state* (consumed, same state)."""
    if state == ERROR:
        return None
    keep = bytes(b for b in range(256) if TABLE[state][b] == state)
    if not keep:
        return None
    return re.compile(b"[" + b"".join(b"\\x%02x" % b for b in keep) + b"]*").match


_RUNS = [_self_loop(s) for s in range(16)]

#: ``emit(token_type, start, end)``: the token is ``buf[start:end]``; a true result pauses :meth:`Lexer.run`.
Emit = Callable[[int, int, int], Any]


class Lexer:
    """QEMU's lexer over a caller's buffer: :meth:`run` emits each token as it completes.

    ``state`` is QEMU's lexer state and ``start`` the buffer index where the
    token being lexed began (QEMU's ``lexer->token`` is ``buf[start:pos]``).
    A lexical error emits an ``ERROR`` token holding the bad byte and goes to
    ``IN_RECOVERY``, which skips to a structural byte, a control byte or
    0xFE/0xFF (json-lexer.c, ``IN_RECOVERY`` and ``case JSON_ERROR``). There
    is no ``MAX_TOKEN_SIZE`` cut here: the caller enforces sizes (see wire.py).
    """

    __slots__ = ("state", "start")

    def __init__(self) -> None:
        self.state = IN_START
        self.start = 0

    @property
    def in_token(self) -> bool:
        """True while a token has begun but not ended."""
        return self.state not in (IN_START, IN_RECOVERY)

    def run(self, buf: bytes | bytearray, pos: int, stop: int, emit: Emit) -> int:
        """Lex ``buf[pos:stop]``, calling *emit* per token; returns where it stopped.

        That is *stop*, or just after a token for which *emit* returned true.
        """
        state, start, table, runs = self.state, self.start, TABLE, _RUNS
        while pos < stop:
            run = runs[state]
            if run is not None:
                pos = run(buf, pos, stop).end()
                if state == IN_START or state == IN_RECOVERY:
                    start = pos  # QEMU truncates the token: whitespace, skipped bytes
                if pos >= stop:
                    break
            new = table[state][buf[pos]]
            if new & LOOKAHEAD:
                new ^= LOOKAHEAD
            else:
                pos += 1
            if new >= TOKEN_MIN:
                self.state = IN_START
                if emit(new, start, pos):
                    self.start = pos
                    return pos
                state, start = IN_START, pos
            elif new == IN_START:
                state, start = IN_START, pos
            elif new == ERROR:
                self.state = IN_RECOVERY
                emit(ERROR, start, pos)
                state, start = IN_RECOVERY, pos
            else:
                state = new
        self.state, self.start = state, start
        return pos


def tokenize(data: bytes) -> list[tuple[int, bytes]]:
    """Every token of *data*, as if the input ended there (scalars need no lookahead)."""
    tokens: list[tuple[int, bytes]] = []
    text = bytes(data) + b" "
    Lexer().run(text, 0, len(text), lambda t, a, b: tokens.append((t, text[a:b])))
    return tokens


# -- parser (qobject/json-parser.c) --------------------------------------------


def _error(message: str | bytes) -> ParseError:
    """``parse_error()``: QEMU formats into ``char message[1024]``, so 1023 bytes at most."""
    raw = message.encode() if isinstance(message, str) else message
    return ParseError("JSON parse error, " + qemu_text(raw[:1023]))


_HEX4 = re.compile(rb"[0-9a-fA-F]{4}")
_NONCHARACTER = re.compile("[\ufdd0-\ufdef\ufffe\uffff]|[\U0001fffe-\U0010ffff]")


def _valid_codepoint(cp: int) -> bool:
    """util/unicode.c ``is_valid_codepoint``."""
    if cp < 0 or cp > 0x10FFFF:
        return False
    if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
        return False
    return not 0xD800 <= cp <= 0xDFFF


_MIN_CP = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)


def mod_utf8_codepoint(s: bytes, i: int) -> tuple[int, int]:
    """util/unicode.c ``mod_utf8_codepoint(s + i, 6, &end)``: (code point or -1, end index).

    *s* must end with a NUL byte (QEMU's strings are NUL-terminated).
    """
    byte = s[i]
    i += 1
    if byte < 0x80:
        return byte, i
    if byte >= 0xFE or not byte & 0x40:
        return -1, i  # impossible byte, or an unexpected continuation byte
    length, mask = 0, 0x80
    while byte & mask:
        length += 1
        mask >>= 1
    cp = byte & (mask - 1)
    for k in range(1, length):
        nxt = s[i] if k < 6 else 0
        if nxt & 0xC0 != 0x80:
            return -1, i  # a continuation byte is missing
        i += 1
        cp = (cp << 6) | (nxt & 0x3F)
    if not _valid_codepoint(cp) or (cp < _MIN_CP[length - 2] and not (cp == 0 and length == 2)):
        return -1, i  # invalid, or overlong other than \xC0\x80
    return cp, i


def qemu_text(raw: bytes) -> str:
    """*raw* as QEMU's JSON writer shows it: C string (ends at NUL), bad sequences as U+FFFD."""
    raw = raw.split(b"\0", 1)[0]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if not _NONCHARACTER.search(text):
            return text
    s = raw + b"\0"
    out, i = [], 0
    while i < len(raw):
        cp, i = mod_utf8_codepoint(s, i)
        out.append(chr(cp) if cp >= 0 else "\ufffd")
    return "".join(out)


_SIMPLE_ESCAPES = {ord('"'): '"', ord("'"): "'", ord("\\"): "\\", ord("/"): "/",
                   ord("b"): "\b", ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}  # fmt: skip


def parse_string(token: bytes) -> str:
    """A string token's value, as json-parser.c ``parse_string`` decodes it."""
    body = token[1:-1]
    if b"\\" not in body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if text.isascii() or not _NONCHARACTER.search(text):
                return text
    s = token + b"\0" * 8
    quote, i, out = s[0], 1, []
    while s[i] != quote:
        if s[i] == 0x5C:  # backslash
            beg = i
            esc = s[i + 1]
            i += 2
            if esc in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[esc])
                continue
            if esc != ord("u"):
                raise _error("invalid escape sequence in string")
            cp = int(s[i : i + 4], 16) if _HEX4.fullmatch(s, i, i + 4) else -1
            i += 4
            if 0xD800 <= cp <= 0xDBFF and s[i] == 0x5C and s[i + 1] == ord("u"):
                trailing = int(s[i + 2 : i + 6], 16) if _HEX4.fullmatch(s, i + 2, i + 6) else -1
                if 0xDC00 <= trailing <= 0xDFFF:
                    cp = 0x10000 + ((cp & 0x3FF) << 10) | (trailing & 0x3FF)
                    i += 6
                else:
                    cp = -1
            if not _valid_codepoint(cp):
                raise _error(s[beg:i].split(b"\0", 1)[0] + b" is not a valid Unicode character")
            out.append(chr(cp))
        else:
            cp, i = mod_utf8_codepoint(s, i)
            if cp < 0:
                raise _error("invalid UTF-8 sequence in string")
            out.append(chr(cp))
    return "".join(out)


_INT_RANGE = range(-(2**63), 2**64)


def parse_number(kind: int, text: bytes) -> int | float:
    """``parse_literal``: int64, else uint64 (non-negative), else a double (``strtod``)."""
    if kind == INTEGER and len(text) <= 20:
        value = int(text)
        if value in _INT_RANGE:
            return value
    number = float(text)
    if number in (float("inf"), float("-inf")):
        return NonFinite(number)
    return number


_KEYWORDS = {b"true": True, b"false": False, b"null": None}
_EOI = "premature EOI"


def parse(tokens: list[tuple[int, bytes]]) -> Any:
    """json-parser.c ``json_parser_parse``: one value from *tokens*, or :class:`ParseError`.

    QEMU's recursive descent keeps the first error it meets; this loop makes
    the same checks in the same order. Tokens left after the value are an
    error (QEMU's streamer never hands over any).
    """
    pos, n = 0, len(tokens)
    stack: list[list[Any]] = []  # [container, key or None (dict: None until the key is read)]
    while True:
        # parse_value(): read one value (pos is at its first token)
        if pos >= n:
            raise _error(_EOI)
        kind, text = tokens[pos]
        pos += 1
        if kind == LCURLY or kind == LSQUARE:
            if pos >= n:
                raise _error(_EOI)
            close = RCURLY if kind == LCURLY else RSQUARE
            if tokens[pos][0] != close:
                stack.append([{} if kind == LCURLY else [], None])
                continue
            pos += 1
            value: Any = {} if kind == LCURLY else []
        elif kind == STRING:
            value = parse_string(text)
        elif kind == INTEGER or kind == FLOAT:
            value = parse_number(kind, text)
        elif kind == KEYWORD:
            if text not in _KEYWORDS:
                raise _error(b"invalid keyword '" + text + b"'")
            value = _KEYWORDS[text]
        else:
            raise _error("expecting value")
        # hand the value to the enclosing container, closing containers as they end
        while True:
            if not stack:
                if pos != n:
                    raise _error("unexpected data after the value")
                return value
            frame = stack[-1]
            container = frame[0]
            if isinstance(container, dict):
                if frame[1] is None:  # the value is a key
                    if not isinstance(value, str):
                        raise _error("key is not a string in object")
                    if pos >= n:
                        raise _error(_EOI)
                    if tokens[pos][0] != COLON:
                        raise _error("missing : in object pair")
                    pos += 1
                    frame[1] = value
                    break
                if frame[1] in container:
                    raise _error("duplicate key")
                container[frame[1]] = value
                frame[1] = None
                sep, close, what = COMMA, RCURLY, "dict"
            else:
                container.append(value)
                sep, close, what = COMMA, RSQUARE, "list"
            if pos >= n:
                raise _error(_EOI)
            kind = tokens[pos][0]
            pos += 1
            if kind == close:
                stack.pop()
                value = container
                continue
            if kind != sep:
                raise _error(f"expected separator in {what}")
            break


def parse_qemu(data: bytes) -> Any:
    """*data* (one JSON text in QEMU's grammar) as a value, or :class:`ParseError`."""
    tokens = tokenize(data)
    for kind, text in tokens:
        if kind == ERROR:
            raise ParseError("JSON parse error, stray '" + qemu_text(text) + "'")
    return parse(tokens)


# -- encoding and decoding ---------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, NonFinite):
        return orjson.Fragment(b"1e999" if value > 0 else b"-1e999")
    raise TypeError


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """Encode *value* as compact UTF-8 JSON bytes, at any depth."""
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except orjson.JSONEncodeError:
        return _dumps_iterative(value, sort_keys)


def _leaf(value: Any) -> bytes:
    if isinstance(value, NonFinite):
        return b"1e999" if value > 0 else b"-1e999"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # e.g. a string holding a lone surrogate
        return json.dumps(value, allow_nan=False).encode()


def _dumps_iterative(value: Any, sort_keys: bool) -> bytes:
    """What orjson refuses (depth > 254, integers beyond 64 bits), without recursion."""
    out: list[bytes] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):  # punctuation pushed below
            out.append(item)
        elif isinstance(item, dict):
            pairs = sorted(item.items()) if sort_keys else list(item.items())
            out.append(b"{")
            stack.append(b"}")
            for k, (key, v) in enumerate(reversed(pairs)):
                stack.append(v)
                stack.append(_leaf(str(key)) + b":")
                if k < len(pairs) - 1:
                    stack.append(b",")
        elif isinstance(item, (list, tuple)):
            out.append(b"[")
            stack.append(b"]")
            for k, v in enumerate(reversed(item)):
                stack.append(v)
                if k < len(item) - 1:
                    stack.append(b",")
        else:
            out.append(_leaf(item))
    return b"".join(out)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode one JSON text (orjson; QEMU's grammar for what orjson refuses).

    The fallback reads what :func:`dumps` writes beyond orjson's reach
    (nesting deeper than 1024, ``1e999``) and QEMU's extensions; anything
    else orjson refuses raises :data:`JSONDecodeError`.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        try:
            return parse_qemu(raw)
        except ParseError:
            raise exc from None
