"""QEMU's JSON grammar and limits in the decoder and the codec (no QEMU needed).

The decoder is checked against a literal per-byte port of QEMU's lexer and
streamer (tests/qemu_json_ref.py) on hostile byte streams cut at random
points; the limits at, just below and just above each one; deep nesting and
QEMU's number extensions through the codec. tests/test_wire_qemu.py checks
the same inputs against a real QEMU.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qemu_json_ref import reference
from qmprr import codec, session
from qmprr.codec import LCURLY, LSQUARE, RCURLY, RSQUARE
from qmprr.wire import (
    NESTING_EXCEEDED,
    QEMU_LIMITS,
    TOKEN_COUNT_EXCEEDED,
    TOKEN_SIZE_EXCEEDED,
    FramingError,
    LimitExceeded,
    Limits,
    StreamDecoder,
    encode,
    limit_error,
)
from test_wire import chunked, json_objects

NEXT = {"execute": "query-status", "id": 7}


def items(out: list[Any]) -> list[tuple[str, Any]]:
    return [("error", i.desc) if isinstance(i, FramingError) else ("msg", i) for i in out]


def decode(chunks: list[bytes], **kw: Any) -> list[tuple[str, Any]]:
    decoder = StreamDecoder(**kw)
    out: list[Any] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return items(out)


# -- the decoder is QEMU's streamer, whatever the chunking --------------------

FRAGMENTS = [
    b"{", b"}", b"[", b"]", b",", b":", b'"', b"'", b"\\", b" ", b"\n", b"\t", b"\r",
    b"\xff", b"\xfe", b"\x00", b"\x01", b"\x1f", b"\x7f", b"%", b"%d", b"0", b"01", b"-", b"1.", b"1e400",
    b"-1e400", b"0e5", b"1.5e3", b"18446744073709551616", b"-9223372036854775809", b"true", b"tru",
    b"null", b"QMP", b"@", b'"\\u0000"', b'"\\ud800"', b'"\\ud83d\\ude00"', b'"\\uffff"', b'"\\u12"',
    b'"\xc0\x80"', b'"\xc3"', "é".encode(), b'"\xef\xbf\xbf"', b"'a\"b'", b'"a\\\'b"', b'"\\x"',
    b'{"a":1,"a":2}', b'{"execute":"query-name"}', b"[[[[[[", b"]]]]]]", b'{"k":', b'"long string here"',
]  # fmt: skip

hostile = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), json_objects.map(encode)), max_size=30
).map(b"".join)
SMALL = Limits(token_size=60, token_count=12, nesting=4)


@given(st.data(), hostile)
def test_decoder_is_the_reference_streamer_on_any_chunking(data: st.DataObject, stream: bytes) -> None:
    limits = data.draw(st.sampled_from([QEMU_LIMITS, SMALL]), label="limits")
    cap = data.draw(st.sampled_from([None, 40, 500]), label="max_message")
    kw: dict[str, Any] = {"limits": limits}
    if cap is not None:
        kw["max_message"] = cap
    expected = reference(stream, limits, max_message=cap)
    assert decode([stream], **kw) == expected
    assert decode(data.draw(chunked(stream), label="chunks"), **kw) == expected


def test_reference_and_decoder_on_recovery_examples() -> None:
    stream = b'"abc\xff{"execute":"query-name","id":"after"}'
    assert decode([stream]) == reference(stream) == [
        ("error", "JSON parse error, stray '\"abc\ufffd'"),
        ("msg", {"execute": "query-name", "id": "after"}),
    ]


# -- limits: at, just below, just above ---------------------------------------


def nested(depth: int) -> bytes:
    """A command whose arguments nest *depth* levels in all (the object itself is level 1)."""
    inner = depth - 2
    return b'{"execute":"x","arguments":{"a":' + b"[" * inner + b"0" + b"]" * inner + b"}}"


@pytest.mark.parametrize(("depth", "ok"), [(1023, True), (1024, True), (1025, False)])
def test_nesting_limit(depth: int, ok: bool) -> None:
    raw = nested(depth)
    for chunks in ([raw + encode(NEXT)], [raw[: depth // 2], raw[depth // 2 :] + encode(NEXT)]):
        out = decode(chunks)
        if ok:
            assert out[0][0] == "msg" and out[1:] == [("msg", NEXT)]
        else:  # refused whole: no "expecting value" for each "]" that follows, as QEMU would send
            assert out == [("error", NESTING_EXCEEDED), ("msg", NEXT)]
            assert reference(raw, split=True)[0] == ("error", NESTING_EXCEEDED)
            assert len(reference(raw, split=True)) > 2  # what QEMU itself does


def counted(tokens: int) -> bytes:
    """A command ``{"execute":"x","arguments":{...,"a":[0,0,...]}}`` of exactly *tokens* tokens."""
    if tokens % 2:  # 13 tokens around the zeros, 2 per zero but one
        raw = b'{"execute":"x","arguments":{"a":[' + b",".join([b"0"] * ((tokens - 13) // 2)) + b"]}}"
    else:  # '"e":[],' adds 5
        raw = b'{"execute":"x","arguments":{"e":[],"a":[' + b",".join([b"0"] * ((tokens - 18) // 2)) + b"]}}"
    assert len(raw) > 2**20 or len(codec.tokenize(raw)) == tokens
    return raw


@pytest.mark.parametrize(("tokens", "ok"), [(2**21 - 1, True), (2**21 + 1, False)])
def test_token_count_limit_real_size(tokens: int, ok: bool) -> None:
    raw = counted(tokens)
    assert len(codec.tokenize(raw)) == tokens
    out = decode([raw[:1000], raw[1000:] + encode(NEXT)])
    if ok:
        assert out[0][0] == "msg" and len(out[0][1]["arguments"]["a"]) == (tokens - 12) // 2
    else:
        assert out[0] == ("error", TOKEN_COUNT_EXCEEDED)
    assert out[-1] == ("msg", NEXT) and len(out) == 2


@pytest.mark.parametrize("tokens", [20, 21, 22])
def test_token_count_limit_small(tokens: int) -> None:
    limits = Limits(token_count=21)
    stream = counted(tokens) + encode(NEXT)
    out = decode([stream], limits=limits)
    assert out[0][0] == ("msg" if tokens <= 21 else "error")
    assert out[1:] == [("msg", NEXT)]
    assert out == decode([stream[i : i + 1] for i in range(len(stream))], limits=limits) == reference(stream, limits)


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_token_size_limit(offset: int) -> None:
    """Sum of token lengths (whitespace aside) plus one must not exceed token_size."""
    limits = Limits(token_size=200)
    head = b'{ "execute" : "x", "pad" : "'
    tokens_len = len(head.replace(b" ", b"")) + 2  # closing quote, "}": offset 0 is 200 bytes of tokens
    pad = b"p" * (200 - tokens_len + offset)
    raw = head + pad + b'" }'
    out = decode([raw + encode(NEXT)], limits=limits, max_message=10**6)
    if offset < 0:
        assert out[0][0] == "msg"
    else:
        assert out[0] == ("error", TOKEN_SIZE_EXCEEDED)
    assert out[1:] == [("msg", NEXT)]


def test_token_size_limit_real_size_single_string() -> None:
    """One 64 MiB string: QEMU's lexer cuts it, and parses the rest as commands; qmprr refuses it whole."""
    smuggled = b'", {"execute":"quit"}, "'
    raw = b'{"execute":"x","arguments":{"a":"' + b"s" * (64 << 20) + smuggled + b'"}}'
    out = decode([raw[i : i + (8 << 20)] for i in range(0, len(raw), 8 << 20)] + [encode(NEXT)],
                 max_message=len(raw) + 1)  # fmt: skip
    assert out == [("error", TOKEN_SIZE_EXCEEDED), ("msg", NEXT)]


# -- the smuggling rule, on the reference ---------------------------------------


def smuggle(limits: Limits) -> bytes:
    zeros = b",".join([b"0"] * (limits.token_count // 2))
    return b'{"execute":"query-status","arguments":{"a":[' + zeros + b',{"execute":"quit"}]}}'


def test_qemu_would_run_the_smuggled_command_qmprr_does_not() -> None:
    limits = Limits(token_count=40)
    raw = smuggle(limits)
    assert ("msg", {"execute": "quit"}) in reference(raw, limits, split=True)  # QEMU's behaviour
    assert decode([raw], limits=limits) == [("error", TOKEN_COUNT_EXCEEDED)]
    assert all(isinstance(i, LimitExceeded) for i in StreamDecoder(limits=limits).feed(raw))


# -- what the channel will send is checked too ---------------------------------


def test_reencoding_that_would_cross_a_limit_is_refused() -> None:
    limits = QEMU_LIMITS
    assert limit_error(b'{"execute":"x"}') is None
    just = counted(2**21 - 3)  # + qmprr's 4 id tokens = 2**21 + 1
    assert limit_error(just) is None
    assert limit_error(just, extra_tokens=4) == TOKEN_COUNT_EXCEEDED
    msg = codec.loads(just)
    assert session.qemu_would_split(msg) == TOKEN_COUNT_EXCEEDED
    assert session.qemu_would_split({**msg, "id": "client"}) == TOKEN_COUNT_EXCEEDED
    assert session.qemu_would_split(codec.loads(counted(2**21 - 5))) is None
    assert limit_error(b"[" * 1025 + b"]" * 1025, limits) == NESTING_EXCEEDED
    assert limit_error(b"x" * (64 << 20), limits) == TOKEN_SIZE_EXCEEDED


def test_session_refuses_what_qemu_would_split() -> None:
    s = session.ClientSession({"QMP": {"capabilities": []}})
    s.handle({"execute": "qmp_capabilities"})
    action = s.handle(codec.loads(counted(2**21 - 1)))
    assert isinstance(action, session.Answer)
    assert action.reply == {"error": {"class": "GenericError", "desc": TOKEN_COUNT_EXCEEDED}}


# -- codec: QEMU's values survive encoding and the log -------------------------


@pytest.mark.parametrize("depth", [253, 254, 255, 1024, 1026, 5000])
def test_any_depth_encodes_and_decodes(depth: int) -> None:
    value: Any = "leaf"
    for k in range(depth):
        value = [value] if k % 2 else {"k": value}
    raw = codec.dumps({"msg": value})
    assert raw.count(b"[") + raw.count(b"{") == depth + 1
    back = codec.loads(raw)
    assert codec.dumps(back) == raw
    assert codec.dumps(value, sort_keys=True) == codec.dumps(value)


def test_deep_message_decodes_and_its_record_encodes() -> None:
    raw = nested(1024)
    (msg,) = StreamDecoder().feed(raw)
    record = codec.dumps({"kind": "command", "msg": msg})  # depth 1025: beyond orjson both ways
    assert codec.dumps(codec.loads(record)) == record
    assert codec.dumps(msg) == raw


@pytest.mark.parametrize(
    ("text", "value"),
    [(b"1e400", float("inf")), (b"-1e400", float("-inf")), (b"18446744073709551615", 2**64 - 1),
     (b"18446744073709551616", 2.0**64), (b"-9223372036854775809", -9.223372036854776e18), (b"-0", 0),
     (b"1" * 400, float("inf")), (b"1e-400", 0.0)],
)  # fmt: skip
def test_numbers_as_qemu_reads_them(text: bytes, value: Any) -> None:
    (msg,) = StreamDecoder().feed(b'{"id":' + text + b"}")
    assert msg["id"] == value and type(msg["id"]) in (int, float, codec.NonFinite)
    wire = codec.dumps(msg)
    assert codec.loads(wire) == msg  # the log reads back what it wrote
    (again,) = StreamDecoder().feed(wire)  # and QEMU reads what qmprr forwards as the same number
    assert again == msg


def test_nonfinite_is_never_written_as_null() -> None:
    inf, ninf = codec.parse_qemu(b"1e400"), codec.parse_qemu(b"-1e400")
    assert codec.dumps({"a": inf, "b": ninf}) == b'{"a":1e999,"b":-1e999}'
    assert codec.dumps([[inf]] * 2) == b"[[1e999],[1e999]]"


def test_qemu_strings() -> None:
    assert codec.parse_qemu(b"'a\"b\\'c'") == "a\"b'c"
    assert codec.parse_qemu(b'"\xc0\x80"') == "\x00"  # modified UTF-8
    assert codec.parse_qemu(b'"\\ud83d\\ude00"') == "\U0001f600"
    for bad, desc in [
        (b'"\\uffff"', "\\uffff is not a valid Unicode character"),
        (b'"\\ud800"', "\\ud800 is not a valid Unicode character"),
        (b'"\\ud800\\u0041"', "\\ud800 is not a valid Unicode character"),
        (b'"\\u12"', '\\u12" is not a valid Unicode character'),
        (b'"\\x"', "invalid escape sequence in string"),
        (b'"\xef\xbf\xbf"', "invalid UTF-8 sequence in string"),
        (b'"\xed\xa0\x80"', "invalid UTF-8 sequence in string"),
        (b'"\xc0\xaf"', "invalid UTF-8 sequence in string"),
    ]:
        with pytest.raises(codec.ParseError) as err:
            codec.parse_qemu(bad)
        assert err.value.desc == "JSON parse error, " + desc


def test_loads_still_refuses_invalid_json() -> None:
    for bad in (b"{", b"[1,]", b"\xff", b"nul", b'{"a":1}x'):
        with pytest.raises(codec.JSONDecodeError):
            codec.loads(bad)


CORPUS = [
    b'{"execute":"x","arguments":{"e":[],"a":[0,0]}}',
    b'{ "execute" : "qom-set", "arguments" : { "path" : "/a", "value" : 1.5e3 , "b": true } }',
    b"{'execute':'x','arguments':{'list':[null,false,-1,'s\\'q',\"d\"]}}",
    b'{"a":[[{"b":[1,2,{"c":"\\u00e9"}]}],"x"],"n":18446744073709551616}',
]


@pytest.mark.parametrize("raw", CORPUS)
def test_every_limit_at_below_and_above_matches_the_reference(raw: bytes) -> None:
    tokens = codec.tokenize(raw)
    depth = max(
        sum((k in (LCURLY, LSQUARE)) - (k in (RCURLY, RSQUARE)) for k, _ in tokens[: i + 1]) for i in range(len(tokens))
    )
    size = sum(len(t) for _, t in tokens)
    stream = raw + b" " + encode(NEXT)
    for limits in [
        *(Limits(token_count=len(tokens) + d) for d in (-1, 0, 1)),
        *(Limits(nesting=depth + d) for d in (-1, 0, 1)),
        *(Limits(token_size=size + d) for d in (0, 1, 2)),
    ]:
        expected = reference(stream, limits)
        assert decode([stream], limits=limits) == expected, limits
        assert decode([stream[i : i + 1] for i in range(len(stream))], limits=limits) == expected, limits
        accepted = expected[0][0] == "msg"
        assert accepted == (
            len(tokens) <= limits.token_count and depth <= limits.nesting and size < limits.token_size
        ), limits


# -- reading QEMU's own output ---------------------------------------------------


@given(st.data(), st.lists(json_objects, max_size=6))
def test_qemu_output_decoder_reads_plain_json_any_chunking(data: st.DataObject, objs: list[dict]) -> None:
    stream = b"".join(encode(o) for o in objs)
    out = decode(data.draw(chunked(stream), label="chunks"), limits=None, strict=False)
    assert out == [("msg", o) for o in objs]


def test_qemu_output_decoder_has_no_input_limits() -> None:
    deep_reply = b'{"return":' + b"[" * 2000 + b"]" * 2000 + b',"id":"qmprr-1"}\r\n'
    many = b'{"return":[' + b",".join([b"1"] * (2**20 + 5)) + b'],"id":"qmprr-2"}\r\n'
    out = decode([deep_reply, many[:100_000], many[100_000:]], limits=None, strict=False)
    assert [o[0] for o in out] == ["msg", "msg"]
    assert out[1][1]["id"] == "qmprr-2" and len(out[1][1]["return"]) == 2**20 + 5
