"""Same input, same replies: a real QEMU 7.2 directly and through ``qmprr launch``.

Each tricky input goes to QEMU's QMP socket and to qmprr's, raw, after
``qmp_capabilities``, followed by a resynchronisation (0xFF, which resets
QEMU's lexer, then a ``query-name`` with a fresh id); the replies up to that
id must be the same. Then the smuggling attack: a message over QEMU's
limits whose tail QEMU would run as a command must not reach QEMU.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import support
from qmprr import codec
from qmprr.recording import Command, read_records

pytestmark = pytest.mark.qemu


class Raw:
    """A QMP client that sends bytes and reads QEMU's lines."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        assert "QMP" in self.read_message()
        self.sock.sendall(b'{"execute":"qmp_capabilities"}')
        assert self.read_message() == {"return": {}}
        self.n = 0

    def read_message(self) -> Any:
        """The next line that is not an event (a slow start can put QEMU's RESUME first)."""
        while True:
            msg = self.read()
            if not (isinstance(msg, dict) and "event" in msg):
                return msg

    def read(self) -> Any:
        line = self.file.readline()
        assert line.endswith(b"\r\n"), line
        # QEMU writes a double it parsed from 1e400 as "inf" (not JSON); qmprr writes 1e999.
        return codec.loads(re.sub(rb'": (-?)inf\b', rb'": \g<1>1e999', line))

    def replies(self, data: bytes) -> list[Any]:
        """Send *data* then a resync; every reply before the resync's own."""
        self.n += 1
        sync = f"sync-{self.n}"
        self.sock.sendall(data + b'\xff\n{"execute":"query-name","id":"' + sync.encode() + b'"}')
        out = []
        while True:
            msg = self.read()
            if isinstance(msg, dict) and msg.get("id") == sync:
                return out
            if not (isinstance(msg, dict) and "event" in msg):
                out.append(msg)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def deep(depth: int, tail: bytes = b"") -> bytes:
    """A query-name whose id nests so the message is *depth* levels deep."""
    return b'{"execute":"query-name","id":' + b"[" * (depth - 1) + b"0" + tail + b"]" * (depth - 1) + b"}"


Q = b'{"execute":"query-name","id":'
CASES = [
    b"", b"garbage ", b"}", b"]", b"{}", b"[]", b"42 ", b'"str"', b"'single'", b"true ", b"nul ",
    b"{'execute':'query-name','id':'sq'}", Q + b'"a\\\'b"}', Q + b"'dq\"in'}",
    Q + b"1e400}", Q + b"-1e400}", Q + b"18446744073709551616}", Q + b"-9223372036854775809}",
    Q + b"18446744073709551615}", Q + b"0e5}", Q + b"01}", Q + b"1.}", Q + b"-}", Q + b"1.5}", Q + b"-0}",
    Q + b'"\\uffff"}', Q + b'"\\ud800"}', Q + b'"\\ud800\\u0041"}', Q + b'"\\ud83d\\ude00"}', Q + b'"\\u0000"}',
    Q + b'"\\u12"}', Q + b'"\\x"}', Q + b'"\xc0\x80"}', Q + b'"\xef\xbf\xbf"}', Q + b'"\xc3("}', Q + b'"\xed\xa0\x80"}',
    Q + "\"é€😀\"}".encode(), Q + b'"tab\there"}', Q + b'"nul\x00"}', Q + b'"del\x7f"}', Q + b'"unterminated',
    Q + b'"x\xff"} {"execute":"query-name","id":"after-ff"}', b'\xfe{"execute":"query-name","id":"after-fe"}',
    b"\x00\x01\x7f ", b"%d", Q + b"%d}", Q + b"tru}", Q + b"True}", Q + b"1,\"id\":2}", Q + b"[1,]}", Q + b"[1 2]}",
    b'{"execute":"query-name" "id":1}', b"{1:2}", b'{"execute":"query-name","id":1}{"execute":"query-name","id":2}',
    b'{"execute":"qmp_capabilities","id":"again"}', b'{"execute":"query-name","id":3,"extra":1}',
    b'{"execute":"nonexistent","id":4}', b'{"execute": "query-name", "id": "\xff\xfe"}', b"\xff\xfe\x80\xc3 ",
    b'{"execute": "query-\xc3\x28name"} ', b"xyz \n", b"}}} ", b"[1, 2] 42 ", b"[" * 20 + b"}" + b"]" * 20, deep(1023), deep(1024),
]  # fmt: skip


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Raw, Raw, support.Launched]]:
    tmp = tmp_path_factory.mktemp("sidebyside")
    with support.qemu_with_qmp(tmp) as (_, qemu_sock), support.qmprr_launch(tmp) as launched:
        direct, proxied = Raw(qemu_sock), Raw(launched.socket)
        yield direct, proxied, launched
        direct.close()
        proxied.close()


def same(a: Any, b: Any) -> bool:
    try:
        return a == b
    except RecursionError:  # nesting deeper than Python's own comparison goes
        return codec.dumps(a, sort_keys=True) == codec.dumps(b, sort_keys=True)


@pytest.mark.parametrize("data", CASES, ids=[repr(c[:40]) for c in CASES])
def test_same_input_same_replies(both: tuple[Raw, Raw, support.Launched], data: bytes) -> None:
    direct, proxied, _ = both
    expected = direct.replies(data)
    got = proxied.replies(data)
    assert same(got, expected), (got, expected)


def test_over_a_limit_qmprr_sends_qemus_first_reply_only(both: tuple[Raw, Raw, support.Launched]) -> None:
    """The documented difference: QEMU answers the error, then parses the rest of the
    message (one 'expecting value' per closing bracket here); qmprr refuses it whole."""
    direct, proxied, _ = both
    data = deep(1025)
    expected = direct.replies(data)
    assert expected[0] == {"error": {"class": "GenericError", "desc": "JSON nesting depth limit exceeded"}}
    assert len(expected) > 1000
    assert proxied.replies(data) == expected[:1] + expected[-1:]  # + the resync's own 0xFF error


def test_every_accepted_message_is_recorded(both: tuple[Raw, Raw, support.Launched]) -> None:
    _, proxied, launched = both
    assert proxied.replies(deep(1024, b',"marker-deep"'))[0]["return"] == {}
    commands = [r for r in read_records(launched.record) if isinstance(r, Command)]
    (deep_one,) = [c for c in commands if isinstance(c.client_id, list) and b"marker-deep" in codec.dumps(c.client_id)]
    assert codec.dumps(deep_one.client_id).count(b"[") == 1023


# -- smuggling: nothing of a message over QEMU's limits reaches QEMU -----------

QUIT = b'{"execute":"quit"}'


def nesting_smuggle() -> bytes:
    """Over MAX_NESTING at the last "[": QEMU then parses the quit as a new command."""
    return b'{"execute":"query-status","arguments":{"a":' + b"[" * 1023 + QUIT + b"]" * 1023 + b"}}"


def count_smuggle() -> bytes:
    """Token 2**21 + 1 is the comma before the quit: QEMU resets and runs it."""
    head = b'{"execute":"query-status","arguments":{"a":['
    zeros = (2**21 - 10) // 2  # head: 11 tokens, then 2 * zeros - 1: the comma is token 2**21 + 1
    return head + b",".join([b"0"] * zeros) + b"," + QUIT + b"]}}"


def test_qemu_itself_runs_the_smuggled_quit(tmp_path: Path) -> None:
    with support.qemu_with_qmp(tmp_path) as (proc, sock):
        c = Raw(sock)
        c.sock.sendall(nesting_smuggle())
        assert proc.wait(30) == 0  # the attack works on QEMU: it quit


@pytest.mark.parametrize(("payload", "socket_kind"), [(nesting_smuggle, "debug"), (count_smuggle, "primary")])
def test_smuggled_command_never_reaches_qemu(tmp_path: Path, payload: Any, socket_kind: str) -> None:
    data = payload()
    with support.qmprr_launch(tmp_path) as launched:
        c = Raw(launched.debug_socket if socket_kind == "debug" else launched.socket)
        replies = c.replies(data)
        assert replies[0]["error"]["desc"] in (
            "JSON nesting depth limit exceeded",
            "JSON token count limit exceeded",
            "JSON token size limit exceeded",  # the server's own cap, if lower than 2**21 tokens
        )
        c.sock.sendall(b'{"execute":"query-status","id":"alive"}')
        reply = c.read()
        assert reply["id"] == "alive" and "status" in reply["return"]  # QEMU still runs
        assert launched.proc.poll() is None
        c.close()
    records = read_records(launched.record)
    client_commands = [r for r in records if isinstance(r, Command) and r.role != "internal"]  # qmprr quits QEMU at the end
    assert client_commands and not any(b"quit" in codec.dumps(r.msg) for r in client_commands)
