"""The floors ``qmprr bench proxy`` measures beside the proxy: what any proxy costs here.

Each floor is a process between a client and its own QEMU monitor, doing less
than ``qmprr proxy`` does; its ratio and CPU per command say how much of the
proxy's price is the machine's (an extra hop, its wake-ups) and how much is
the proxy's own work:

- ``socat``: a native byte relay (Debian's socat, when installed);
- ``relay``: a byte relay in Python (uvloop protocols, no parsing, no log);
- ``recorder``: the least a write-ahead recorder can do in Python: each
  message parsed, one hash-chained record written to the OS before the message
  is passed on, the command's id replaced and the reply's restored. None of
  qmprr's checks, no redaction, no transaction or fd handling; one command per
  read, as the bench's clients send them.
"""

from __future__ import annotations

import shutil
import sys

import attrs

#: The Python byte relay: bytes relayed as they come.
RELAY = r'''
import asyncio, sys
try:
    import uvloop
except ImportError:
    uvloop = None

async def main(upstream, path):
    loop = asyncio.get_running_loop()
    early = []

    class Up(asyncio.Protocol):
        down = None
        def data_received(self, data):
            (self.down.write(data) if self.down else early.append(data))

    up_transport, up = await loop.create_unix_connection(Up, upstream)

    class Down(asyncio.Protocol):
        def connection_made(self, transport):
            up.down = transport
            transport.write(b"".join(early))
        def data_received(self, data):
            up_transport.write(data)

    await loop.create_unix_server(Down, path)
    await asyncio.Event().wait()

if uvloop is not None:
    uvloop.install()
asyncio.run(main(sys.argv[1], sys.argv[2]))
'''

#: The least write-ahead recorder: one function per direction, one record per message.
RECORDER = r'''
import asyncio, hashlib, os, sys, time
import orjson
try:
    import uvloop
except ImportError:
    uvloop = None

async def main(upstream, path, log_path):
    loop = asyncio.get_running_loop()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    t0 = time.monotonic()
    state = {"seq": 0, "prev": b"0" * 32, "client_id": None}

    def record(kind, msg):
        state["seq"] += 1
        line = b'{"seq":%d,"t":%.6f,"kind":"%b","msg":%b,"prev":"%b"' % (
            state["seq"], time.monotonic() - t0, kind, msg, state["prev"])
        h = hashlib.blake2b(line, digest_size=16).hexdigest().encode()
        state["prev"] = h
        os.write(fd, line + b',"h":"%b"}\n' % h)  # in the OS before the message goes on

    def lines(buf, data):
        buf += data
        *whole, rest = buf.split(b"\n")
        buf[:] = rest
        return whole

    early = []

    class Up(asyncio.Protocol):
        down = None
        buf = bytearray()
        def data_received(self, data):
            if self.down is None:
                early.append(data)
                return
            for line in lines(self.buf, data):
                msg = orjson.loads(line)
                if "return" in msg or "error" in msg:
                    record(b"reply", line)
                    msg.pop("id", None)
                    if state["client_id"] is not None:
                        msg["id"] = state["client_id"]
                    self.down.write(orjson.dumps(msg) + b"\n")
                else:
                    record(b"event", line)
                    self.down.write(line + b"\n")

    up_transport, up = await loop.create_unix_connection(Up, upstream)

    class Down(asyncio.Protocol):
        def connection_made(self, transport):
            up.down = transport
            transport.write(b"".join(early))
        def data_received(self, data):  # the bench's clients send one command per read
            self._command(data)
        def _command(self, line):
            msg = orjson.loads(line)
            if type(msg) is not dict or type(msg.get("execute")) is not str:
                raise SystemExit("not a command")
            state["client_id"] = msg.pop("id", None)
            msg["id"] = "qmprr-%d" % state["seq"]
            body = orjson.dumps(msg)
            record(b"command", body)
            up_transport.write(body + b"\n")

    await loop.create_unix_server(Down, path)
    await asyncio.Event().wait()

if uvloop is not None:
    uvloop.install()
asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
'''


@attrs.frozen
class Floor:
    """One floor process: *argv* listens on *socket* and talks to QEMU's monitor at *upstream*."""

    name: str
    title: str
    argv: list[str]
    socket: str
    upstream: str


def argvs(folder: str) -> list[Floor]:
    """The floors to run, their sockets and logs in *folder* (socat only where it is installed)."""
    out: list[Floor] = []
    socat = shutil.which("socat")
    if socat is not None:
        up, sock = f"{folder}/socat-up.sock", f"{folder}/socat.sock"
        out.append(Floor("socat", "a native byte relay (socat)",
                         [socat, "-b65536", f"UNIX-LISTEN:{sock}", f"UNIX-CONNECT:{up}"], sock, up))
    up, sock = f"{folder}/relay-up.sock", f"{folder}/relay.sock"
    out.append(Floor("relay", "a byte relay in Python (uvloop, no parsing, no log)",
                     [sys.executable, "-c", RELAY, up, sock], sock, up))
    up, sock = f"{folder}/recorder-up.sock", f"{folder}/recorder.sock"
    out.append(Floor("recorder", "the least write-ahead recorder in Python (parse, a chained record, id swap)",
                     [sys.executable, "-c", RECORDER, up, sock, f"{folder}/recorder.jsonl"], sock, up))
    return out
