"""The serve loop on protocols, against a real ``qmprr launch``.

A client's disconnect is recorded when it happens, not when the next client
comes (issue 16): a client leaves (close, half-close, reset, or while its
command waits behind another client's transaction) and its ``client``
``disconnect`` record appears with nothing else happening; a second client
that connects afterwards is recorded after it. A client that sends thousands
of commands at once gets every reply, in order (the socket is not read while
its messages wait, and reading resumes).
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

import support

pytestmark = pytest.mark.qemu


class Raw:
    """A blocking QMP client on a plain socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(path)
        self.buf = b""
        assert "QMP" in self.read()
        assert "return" in self.execute("qmp_capabilities")

    def read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            assert data, "qmprr closed the connection"
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    def send(self, msg: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(msg).encode())

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        self.send({"execute": name, **({"arguments": arguments} if arguments else {})})
        while True:
            msg = self.read()
            if "return" in msg or "error" in msg:
                return msg


def _clients(path: Path) -> list[dict[str, Any]]:
    return [d for d in support.records_on_disk(path) if d.get("kind") == "client"]


def _leave(client: Raw, how: str) -> None:
    if how == "reset":  # SO_LINGER 0: the kernel sends RST
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if how == "half-close":
        client.sock.shutdown(socket.SHUT_WR)
        return
    client.sock.close()


@pytest.mark.parametrize("how", ["close", "half-close", "reset"])
def test_the_disconnect_is_recorded_before_any_other_client_comes(tmp_path: Path, how: str) -> None:
    with support.qmprr_launch(tmp_path) as launched:
        support.wait_for_socket(launched.socket)
        first = Raw(launched.socket)
        assert first.execute("query-status")["return"]["status"]
        _leave(first, how)
        # Nothing else happens: the record must appear on its own.
        support.wait_until(lambda: support.logged_disconnect(launched.record, "primary-1"),
                           f"primary-1's disconnect record ({how})")
        second = Raw(launched.socket)
        second.execute("query-status")
        second.sock.close()
        support.wait_until(lambda: support.logged_disconnect(launched.record, "primary-2"), "primary-2's disconnect")
        first.sock.close()
    events = [(d["action"], d["name"]) for d in _clients(launched.record)]
    assert events == [("connect", "primary-1"), ("disconnect", "primary-1"),
                      ("connect", "primary-2"), ("disconnect", "primary-2")]


def test_a_client_leaving_while_its_command_waits_is_recorded_at_once(tmp_path: Path) -> None:
    """Its command waits behind another client's transaction: withdrawn, and the disconnect recorded."""
    with support.qmprr_launch(tmp_path) as launched:
        support.wait_for_socket(launched.socket)
        holder, waiter = Raw(launched.socket), Raw(launched.socket)
        assert "return" in holder.execute("qmprr-transaction-begin", {"label": "hold"})
        waiter.send({"execute": "query-name", "id": "w"})
        waiter.sock.close()
        support.wait_until(lambda: support.logged_disconnect(launched.record, "primary-2"),
                           "the waiting client's disconnect record")
        assert "return" in holder.execute("qmprr-transaction-end")
        holder.sock.close()
    records = support.records_on_disk(launched.record)
    assert not [d for d in records if d.get("kind") == "command" and d.get("src") == "primary-2"]
    assert any(d.get("kind") == "note" and "withdrawn" in d.get("text", "") and "primary-2" in d.get("text", "")
               for d in records)


def test_thousands_of_commands_sent_at_once_are_all_answered_in_order(tmp_path: Path) -> None:
    n = 3000
    with support.qmprr_launch(tmp_path) as launched:
        support.wait_for_socket(launched.socket)
        client = Raw(launched.socket)
        client.sock.sendall(b"".join(json.dumps({"execute": "query-status", "id": i}).encode() for i in range(n)))
        ids = []
        while len(ids) < n:
            msg = client.read()
            if "return" in msg:
                ids.append(msg["id"])
        client.sock.close()
    assert ids == list(range(n))
    commands = [d for d in support.records_on_disk(launched.record) if d.get("kind") == "command"
                and d.get("src") == "primary-1"]
    assert [c["client_id"] for c in commands] == list(range(n))
