"""A slow, literal port of QEMU 7.2's json_lexer_feed_char + json_message_process_token.

One byte at a time over :data:`qmprr.codec.TABLE`, QEMU's loop and QEMU's
streamer (qobject/json-lexer.c, qobject/json-streamer.c), with nothing of
StreamDecoder's machinery (no run skipping, no hot path, no buffer
compaction): the reference the decoder is checked against. ``split=True`` is
QEMU itself (past a limit: error, reset, the rest of the message is new
input, and the lexer cuts a token over MAX_TOKEN_SIZE); ``split=False`` is
qmprr's documented rule (the whole message is refused, as far as a streamer
without limits takes it). Items are ``("msg", value)`` or ``("error", desc)``.
"""

from __future__ import annotations

from typing import Any

from qmprr import codec
from qmprr.codec import ERROR, IN_RECOVERY, IN_START, LCURLY, LOOKAHEAD, LSQUARE, RCURLY, RSQUARE, TOKEN_MIN
from qmprr.wire import NESTING_EXCEEDED, QEMU_LIMITS, TOKEN_COUNT_EXCEEDED, TOKEN_SIZE_EXCEEDED, Limits


def reference(data: bytes, limits: Limits = QEMU_LIMITS, *, split: bool = False, max_message: int | None = None) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    state, token = IN_START, bytearray()
    tokens: list[tuple[int, bytes]] = []
    braces = brackets = size = 0
    refused = False

    def reset() -> None:
        nonlocal braces, brackets, size, refused
        tokens.clear()
        braces = brackets = size = 0
        refused = False

    def process(kind: int, text: bytes) -> None:  # json_message_process_token
        nonlocal braces, brackets, size, refused
        if kind == ERROR:
            if not refused:
                out.append(("error", "JSON parse error, stray '" + codec.qemu_text(text) + "'"))
            reset()
            return
        braces += (kind == LCURLY) - (kind == RCURLY)
        brackets += (kind == LSQUARE) - (kind == RSQUARE)
        if not refused:
            error = None
            if size + len(text) + 1 > limits.token_size:
                error = TOKEN_SIZE_EXCEEDED
            elif len(tokens) + 1 > limits.token_count:
                error = TOKEN_COUNT_EXCEEDED
            elif braces + brackets > limits.nesting:
                error = NESTING_EXCEEDED
            if error is not None:
                out.append(("error", error))
                if split:
                    reset()
                    return
                refused = True
            tokens.append((kind, text))
            size += len(text)
        if (braces > 0 or brackets > 0) and braces >= 0 and brackets >= 0:
            return
        if not refused:
            try:
                value = codec.parse(list(tokens))
            except codec.ParseError as exc:
                out.append(("error", exc.desc))
            else:
                out.append(("msg", value) if isinstance(value, dict) else ("error", "QMP input must be a JSON object"))
        reset()

    tok_begin = msg_begin = 0
    for i, byte in enumerate(data):
        consumed = False
        while not consumed:  # json_lexer_feed_char
            new = codec.TABLE[state][byte]
            consumed = not new & LOOKAHEAD
            new &= ~LOOKAHEAD
            if consumed:
                if not token:
                    tok_begin = i
                token.append(byte)
            if max_message is not None and not refused and (new >= TOKEN_MIN or new == ERROR):
                first = msg_begin if tokens else tok_begin
                if (i + 1 if consumed else i) - first > max_message:
                    out.append(("error", TOKEN_SIZE_EXCEEDED))
                    refused = True
            if not tokens:
                msg_begin = tok_begin
            if new >= TOKEN_MIN:
                process(new, bytes(token))
                token.clear()
                new = IN_START
            elif new == IN_START:
                token.clear()
            elif new == ERROR:
                process(ERROR, bytes(token))
                token.clear()
                new = IN_RECOVERY
            elif new == IN_RECOVERY:
                token.clear()
            state = new
        if split and len(token) > limits.token_size:  # the lexer's own MAX_TOKEN_SIZE cut
            process(state, bytes(token))
            token.clear()
            state = IN_START
    return out
