"""QMP stream framing: StreamDecoder, encode, classify.

Properties (hypothesis) check that framing never depends on how the byte
stream is cut into reads, that garbage never costs a valid object after it,
and that encode/decode round-trip. Example tests pin down each error kind.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qmprr import codec
from qmprr.wire import (
    FramingError,
    InvalidUTF8,
    JSONSyntaxError,
    MessageKind,
    MessageTooLarge,
    NotAnObject,
    StreamDecoder,
    classify,
    command_name,
    encode,
)

# -- strategies --------------------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

# Characters that stress a framer: quotes, backslashes, brackets inside
# strings, whitespace and control characters, non-ASCII (2, 3 and 4 bytes).
_TRICKY = '{}[]"\\:, \t\r\n\x00\x1fé€😀\u2028'
text = st.one_of(
    st.text(max_size=12),  # any code point except surrogates
    st.text(alphabet=_TRICKY + "ab", max_size=12),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    INT64,
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(text, children, max_size=4),
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(text, json_values, max_size=5)


def _orjson(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _json_ascii(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=True).encode()


def _json_spaced(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(" , ", " : ")).encode()


def _json_indented(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, indent=2).encode()


ENCODERS = [_orjson, _json_ascii, _json_spaced, _json_indented, encode]
SEPARATORS = [b"", b"\n", b"\r\n", b" ", b" \t\r\n  "]


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """*data* cut at arbitrary points (possibly empty chunks, possibly none)."""
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    if draw(st.booleans()) and len(data) < 400:
        cuts = list(range(len(data) + 1))  # byte by byte
    points = sorted({0, len(data), *cuts})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


def decode_all(chunks: list[bytes], **kw: Any) -> tuple[list[Any], StreamDecoder]:
    decoder = StreamDecoder(**kw)
    out: list[Any] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out, decoder


def messages(items: list[Any]) -> list[dict]:
    return [i for i in items if not isinstance(i, FramingError)]


def errors(items: list[Any]) -> list[FramingError]:
    return [i for i in items if isinstance(i, FramingError)]


# -- properties --------------------------------------------------------------


@given(st.data(), st.lists(json_objects, max_size=6))
def test_any_objects_any_separators_any_chunking(data: st.DataObject, objs: list[dict]) -> None:
    parts = []
    for obj in objs:
        parts.append(data.draw(st.sampled_from(SEPARATORS), label="sep"))
        parts.append(data.draw(st.sampled_from(ENCODERS), label="encoder")(obj))
    parts.append(data.draw(st.sampled_from(SEPARATORS), label="trailing"))
    stream = b"".join(parts)
    chunks = data.draw(chunked(stream), label="chunks")
    assert b"".join(chunks) == stream

    out, decoder = decode_all(chunks)

    assert out == objs
    assert decoder.idle


GARBAGE_BYTE = st.integers(0, 255).filter(lambda b: b not in b'{["')
WHITESPACE_BYTE = st.sampled_from([b" ", b"\t", b"\r", b"\n"])


@st.composite
def garbage(draw: st.DrawFn) -> bytes:
    """Bytes that cannot open a value swallowing what follows, then whitespace."""
    body = bytes(draw(st.lists(GARBAGE_BYTE, min_size=1, max_size=16)))
    if not body.strip(b" \t\r\n"):
        body += b"x"
    return body + draw(WHITESPACE_BYTE)


@given(
    st.data(),
    st.lists(st.tuples(st.none() | garbage(), json_objects), max_size=5),
    st.none() | garbage(),
)
def test_garbage_never_loses_a_following_object(
    data: st.DataObject, items: list[tuple[bytes | None, dict]], tail: bytes | None
) -> None:
    stream = b"".join((g or b"") + encode(obj) for g, obj in items) + (tail or b"")
    chunks = data.draw(chunked(stream), label="chunks")

    out, decoder = decode_all(chunks)

    assert messages(out) == [obj for _, obj in items]
    # Split the output at each message: the errors before message i come
    # from the garbage before object i, and only garbage produces errors.
    runs: list[list[FramingError]] = [[]]
    for item in out:
        if isinstance(item, FramingError):
            runs[-1].append(item)
        else:
            runs.append([])
    expected_garbage = [g for g, _ in items] + [tail]
    assert len(runs) == len(expected_garbage)
    for g, run in zip(expected_garbage, runs):
        if g is None:
            assert run == [], f"errors without garbage: {run}"
        else:
            assert len(run) >= 1, f"garbage {g!r} produced no error"
    assert decoder.idle


@given(json_objects)
def test_encode_decode_round_trip(obj: dict) -> None:
    wire = encode(obj)
    assert wire.endswith(b"\r\n")
    body = wire[:-2]
    assert b"\n" not in body and b"\r" not in body  # one line, escapes inside strings
    assert body == orjson.dumps(obj)  # compact, as QEMU writes
    assert StreamDecoder().feed(wire) == [obj]
    assert codec.loads(body) == obj


# -- examples: error kinds ---------------------------------------------------

NEXT = {"execute": "query-status", "id": 7}


@pytest.mark.parametrize("bad", [b"42", b'"str"', b"[1]", b"true", b"null", b"-1.5e3", b'[{"a":1}]'])
def test_non_object_top_level_is_not_an_object(bad: bytes) -> None:
    out = StreamDecoder().feed(bad + b"\r\n" + encode(NEXT))
    assert len(out) == 2
    err, msg = out
    assert isinstance(err, NotAnObject)
    assert err.excerpt == bad and err.size == len(bad)
    assert err.qmp_error() == {
        "error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}
    }
    assert msg == NEXT


def test_top_level_scalar_waits_for_its_end() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(b"42") == []  # "42" may continue as "421"
    assert not decoder.idle
    out = decoder.feed(b"1 ")
    assert len(out) == 1 and isinstance(out[0], NotAnObject) and out[0].excerpt == b"421"


def test_invalid_utf8_in_a_string() -> None:
    bad = b'{"execute": "qu\xc3(ery-status"}'
    out = StreamDecoder().feed(bad + b"\r\n" + encode(NEXT))
    assert len(out) == 2
    assert isinstance(out[0], InvalidUTF8)
    assert out[0].excerpt == bad and out[0].size == len(bad)
    assert out[0].qmp_error() == {
        "error": {"class": "GenericError", "desc": "JSON parse error, invalid UTF-8 sequence in string"}
    }
    assert out[1] == NEXT


def test_0xff_inside_a_string_ends_it_as_qemu_does() -> None:
    """QEMU's lexer: 0xFF is a lexical error (the token so far is echoed), then it
    skips to the next structural byte: here the object's ``}``, an error of its own."""
    out = StreamDecoder().feed(b'{"execute": "qu\xffery-status"}' + encode(NEXT))
    assert [i.desc for i in out[:2]] == ["JSON parse error, stray '\"qu\ufffd'", "JSON parse error, expecting value"]
    assert out[2:] == [NEXT]


@pytest.mark.parametrize("bad", [b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"])
def test_invalid_utf8_sequences_byte_by_byte(bad: bytes) -> None:
    stream = b'{"a": "x' + bad + b'y"}' + encode(NEXT)
    out, _ = decode_all([stream[i : i + 1] for i in range(len(stream))])
    assert [type(i) for i in out] == [InvalidUTF8, dict]
    assert out[1] == NEXT


@pytest.mark.parametrize(
    "bad",
    [
        b'{"execute": x}',
        b'{"execute": "stop",}',
        b'{"execute" "stop"}',
        b'{"execute": "stop"]',
        b'{"execute": "stop", "arguments": {"a": tru}}',
        b'{"a": "tab\there"}',  # raw control character in a string
        b'{"a": 01}',
        b"}",
    ],
)
def test_invalid_json_then_recovery(bad: bytes) -> None:
    for chunks in ([bad + b"\r\n" + encode(NEXT)], [bytes([b]) for b in bad + b"\r\n" + encode(NEXT)]):
        out, decoder = decode_all(chunks)
        assert out[-1] == NEXT, out
        assert len(out) >= 2
        assert all(isinstance(i, JSONSyntaxError) for i in out[:-1]), out
        assert decoder.idle


def test_excerpt_is_at_most_64_bytes() -> None:
    bad = b'{"execute": "' + b"a" * 500 + b'",}'
    (err,) = StreamDecoder().feed(bad + b"\n")
    assert isinstance(err, JSONSyntaxError)
    assert err.excerpt == bad[:64]
    assert err.size == len(bad)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10**9])
def test_size_limit_boundary(chunk: int) -> None:
    limit = 200
    for size, too_large in ((limit, False), (limit + 1, True)):
        msg = {"execute": "x", "pad": ""}
        msg["pad"] = "p" * (size - len(orjson.dumps(msg)))
        raw = orjson.dumps(msg)
        assert len(raw) == size
        stream = raw + b"\n" + encode(NEXT)
        out, _ = decode_all([stream[i : i + chunk] for i in range(0, len(stream), chunk)], max_message=limit)
        if too_large:
            assert [type(i) for i in out] == [MessageTooLarge, dict]
        else:
            assert out == [msg, NEXT]


@pytest.mark.parametrize("chunk", [1000, 4096, 65537])
def test_oversize_message_is_skipped_without_buffering_it(chunk: int) -> None:
    limit = 64 * 1024
    # Strings full of escapes and brackets, nested objects: the scan must keep
    # tracking structure while it discards.
    blob = ('a\\"}{][\\\\' * 50_000)
    big = encode({"execute": "guest-file-write", "arguments": {"data": blob, "n": [{"x": "}"}] * 3000}})
    assert len(big) > 8 * limit
    stream = b"  " + big + encode(NEXT)
    decoder = StreamDecoder(max_message=limit)
    out: list[Any] = []
    peak = 0
    for i in range(0, len(stream), chunk):
        out.extend(decoder.feed(stream[i : i + chunk]))
        peak = max(peak, decoder.buffered)
    assert len(out) == 2, out
    assert isinstance(out[0], MessageTooLarge)
    assert out[0].size > limit
    assert out[0].excerpt == big[:64]
    assert out[0].qmp_error()["error"]["desc"] == "JSON token size limit exceeded"
    assert out[1] == NEXT
    assert peak <= limit + chunk + 2  # never the whole message
    assert decoder.idle


def test_oversize_message_in_one_read() -> None:
    big = encode({"execute": "x", "arguments": {"data": "d" * 5000}})
    out = StreamDecoder(max_message=1000).feed(big + encode(NEXT))
    assert [type(i) for i in out] == [MessageTooLarge, dict]
    assert 1000 < out[0].size <= len(big) - 2  # as far as it was read when refused


def test_oversize_top_level_garbage_is_one_error() -> None:
    decoder = StreamDecoder(max_message=1000)
    out: list[Any] = []
    for _ in range(100):
        out.extend(decoder.feed(b"z" * 1000))
        assert decoder.buffered <= 2000
    out.extend(decoder.feed(b"\n" + encode(NEXT)))
    assert [type(i) for i in out] == [MessageTooLarge, dict]


def test_long_bad_token_inside_an_object_is_one_error() -> None:
    """A lexical error (a byte no JSON token starts with) abandons the object;
    the rest of that bad token is swallowed silently, however long it is.
    (A lowercase word is a token to QEMU: it fails the object only at its end.)"""
    decoder = StreamDecoder(max_message=1000)
    out: list[Any] = []
    out.extend(decoder.feed(b'{"execute": @'))
    for _ in range(20):
        out.extend(decoder.feed(b"y" * 500))
        assert decoder.buffered <= 2000
    out.extend(decoder.feed(b" " + encode(NEXT)))
    assert [type(i) for i in out] == [JSONSyntaxError, dict], out


def test_max_message_must_be_sane() -> None:
    with pytest.raises(ValueError):
        StreamDecoder(max_message=1)


# -- examples: strings across chunk boundaries --------------------------------

TRICKY_MSGS = [
    {"execute": "human-monitor-command", "arguments": {"command-line": 'echo "}{" \\ \\\\'}},
    {"k\\\"": "\\", "q": '"', "b": "\\\\\"\\", "n": "{\"execute\": \"quit\"}"},
    {"u": "\u00e9\u20ac\U0001f600", "esc": "\\u0041 is A"},
]


@pytest.mark.parametrize("encoder", [_orjson, _json_ascii])
def test_escapes_split_at_every_position(encoder: Any) -> None:
    stream = b"".join(encoder(m) + b"\r\n" for m in TRICKY_MSGS)
    for cut in range(len(stream) + 1):
        out, decoder = decode_all([stream[:cut], stream[cut:]])
        assert out == TRICKY_MSGS, cut
        assert decoder.idle
    for cut1 in range(0, len(stream), 3):
        for cut2 in range(cut1, min(len(stream), cut1 + 12)):
            out, _ = decode_all([stream[:cut1], stream[cut1:cut2], stream[cut2:]])
            assert out == TRICKY_MSGS, (cut1, cut2)


def test_backslash_as_the_last_byte_of_a_read() -> None:
    decoder = StreamDecoder()
    assert decoder.feed(b'{"a": "x\\') == []
    assert decoder.feed(b'"') == []  # an escaped quote, not the end of the string
    assert decoder.feed(b'}') == []  # inside the string still
    assert decoder.feed(b'"}') == [{"a": 'x"}'}]


def test_qemu_style_stream_with_greeting() -> None:
    greeting = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 8}, "package": ""},
                        "capabilities": ["oob"]}}
    items = [greeting, {"return": {}}, {"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}]
    assert StreamDecoder().feed(b"".join(map(encode, items))) == items


# -- classify / command_name --------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "kind"),
    [
        ({"QMP": {"version": {}, "capabilities": []}}, MessageKind.GREETING),
        ({"execute": "stop"}, MessageKind.COMMAND),
        ({"exec-oob": "migrate-pause", "id": 1}, MessageKind.COMMAND),
        ({"return": {}, "id": 1}, MessageKind.RETURN),
        ({"return": None}, MessageKind.RETURN),
        ({"error": {"class": "GenericError", "desc": "x"}}, MessageKind.ERROR),
        ({"event": "STOP", "timestamp": {}}, MessageKind.EVENT),
        ({}, MessageKind.UNKNOWN),
        ({"id": 1}, MessageKind.UNKNOWN),
    ],
)
def test_classify(msg: dict, kind: MessageKind) -> None:
    assert classify(msg) is kind


def test_command_name() -> None:
    assert command_name({"execute": "stop"}) == "stop"
    assert command_name({"exec-oob": "migrate-pause"}) == "migrate-pause"
    assert command_name({"execute": 42}) is None
    assert command_name({"return": {}}) is None


def test_framing_errors_compare_by_kind_excerpt_and_desc() -> None:
    assert JSONSyntaxError(b"x", 1) == JSONSyntaxError(b"x", 2, "other detail")
    assert JSONSyntaxError(b"x", 1) != InvalidUTF8(b"x", 1)
    assert JSONSyntaxError(b"x", 1) != JSONSyntaxError(b"y", 1)
    assert JSONSyntaxError(b"x", 1, desc="a") != JSONSyntaxError(b"x", 1, desc="b")
    assert "JSONSyntaxError" in repr(JSONSyntaxError(b"x", 1))
