"""``qmprr bench hotpath``: the proxy's Python per command, in process, without sockets.

The serve loop, the channel, its core and the recording writer are driven as
``qmprr proxy`` drives them, but their transports are fakes: a client's
``query-status`` goes in at the client protocol's ``data_received``, comes out
as bytes for QEMU, and QEMU's reply goes in at the channel's
``data_received`` and comes out as bytes for the client. The log is a real
:class:`~qmprr.recording.RecordWriter` (default sync policy) in a temporary
folder. Printed, from one run:

* the time per command warm (back to back) and after a sleep before each
  command (as a real proxy waits for its client), and their ratio: what cold
  caches cost the same work;
* bytecodes executed and Python calls per command (``sys.settrace``; exact, so
  it compares versions of the code where times cannot), and the functions
  that execute most of them.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

QUERY = b'{"execute":"query-status","id":1}'
REPLY = b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": "%s"}\r\n'
GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
                    "capabilities": ["oob"]}}
_WIRE_ID = re.compile(rb'"id":"(qmprr-\d+)"')


class _Transport:
    """A transport that keeps what is written (and is never full, never closing)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Writer:
    """What :class:`~qmprr.channel.Channel` takes of an ``asyncio.StreamWriter``."""

    def __init__(self, transport: _Transport) -> None:
        self.transport = transport

    def close(self) -> None:
        pass


class _Reader:
    """What :class:`~qmprr.channel.Channel` takes of an ``asyncio.StreamReader`` (nothing left to read)."""

    _buffer = b""

    def at_eof(self) -> bool:
        return False

    def exception(self) -> None:
        return None


def _proxy(folder: str) -> Callable[[], bytes]:
    """The proxy's objects, wired as ``qmprr proxy`` wires them; a function running one command."""
    from ..channel import Channel
    from ..image_watch import ImageWatcher
    from ..recording import RecordWriter
    from ..recording.header import header_for_greeting
    from ..recording.redact import Redactor
    from ..server import QmpServer, _ClientProtocol

    to_qemu, to_client = _Transport(), _Transport()
    log = RecordWriter.create(os.path.join(folder, "hotpath.jsonl"), header_for_greeting(GREETING),
                              redactor=Redactor())
    channel = Channel(_Reader(), _Writer(to_qemu), log, GREETING)  # type: ignore[arg-type]  # the fakes above
    channel._start_reading()
    upstream = channel._upstream
    assert upstream is not None
    client = _ClientProtocol(QmpServer(ImageWatcher(channel)), None, "primary")
    client.connection_made(to_client)  # type: ignore[arg-type]  # a fake transport
    client.data_received(b'{"execute":"qmp_capabilities"}')

    def one() -> bytes:
        client.data_received(QUERY)
        match = _WIRE_ID.search(to_qemu.written[-1])
        assert match is not None, to_qemu.written[-1]
        upstream.data_received(REPLY % match.group(1))
        reply = to_client.written[-1]
        del to_qemu.written[:], to_client.written[:]
        return reply

    return one


def _timed(one: Callable[[], bytes], n: int, nap: float) -> float:
    """Seconds per command over *n* commands, sleeping *nap* before each (not counted)."""
    total = 0.0
    for _ in range(n):
        if nap:
            time.sleep(nap)
        start = time.perf_counter()
        one()
        total += time.perf_counter() - start
    return total / n


def _traced(one: Callable[[], bytes], n: int) -> tuple[float, float, collections.Counter[str]]:
    """Bytecodes and Python calls per command over *n* commands, and bytecodes per function."""
    per: collections.Counter[str] = collections.Counter()
    calls = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal calls
        frame.f_trace_opcodes = True
        if event == "call":
            calls += 1
        elif event == "opcode":
            code = frame.f_code
            per[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
        return trace

    sys.settrace(trace)
    try:
        for _ in range(n):
            one()
    finally:
        sys.settrace(None)
    return sum(per.values()) / n, calls / n, per


def run(commands: int = 5000, rounds: int = 5, nap: float = 0.001, top: int = 15) -> dict[str, float]:
    """Measure, print and return the figures (seconds per command, counts per command)."""
    figures: dict[str, float] = {}

    async def measure() -> None:
        with tempfile.TemporaryDirectory(prefix="qmprr-hotpath-") as folder:
            one = _proxy(folder)
            if not one().startswith(b'{"return"'):
                raise SystemExit("qmprr bench: the hot path did not answer query-status")
            for _ in range(500):
                one()
            warm, cold = [], []
            for _ in range(rounds):  # interleaved: noise hits both alike
                warm.append(_timed(one, commands, 0.0))
                cold.append(_timed(one, max(1, commands // 10), nap))
            ops, calls, per = _traced(one, 200)
            figures.update(warm=min(warm), cold=min(cold), opcodes=ops, calls=calls)
            figures["ratio"] = figures["cold"] / figures["warm"]
            print(f"qmprr bench hotpath: one query-status through the proxy's objects (fake transports, "
                  f"a real log), best of {rounds} interleaved rounds")
            print(f"  warm (back to back)         {figures['warm'] * 1e6:7.1f} us/command")
            print(f"  after a {nap * 1e3:g} ms sleep each      {figures['cold'] * 1e6:7.1f} us/command   "
                  f"cold/warm: {figures['ratio']:.2f}")
            print(f"  {ops:,.0f} bytecodes and {calls:.0f} Python calls per command; most executed:")
            for name, count in per.most_common(top):
                print(f"    {count / 200:6.0f}  {name}")

    asyncio.run(measure())
    return figures
