"""Chaos mode for the fake: the orderings and timings QEMU may legally produce.

A :class:`Chaos` (one seed) perturbs what a QMP client may not rely on, and
nothing else:

* **event placement**: the events a command caused (recorded before or after
  its reply) are split anew around the reply: any prefix before it, the rest
  after, their own order kept (QMP promises no order between a reply and the
  events its command caused);
* **rate-limited events** (QEMU throttles ``RTC_CHANGE``, ``BALLOON_CHANGE``,
  ``QUORUM_*``, ``VSERPORT_CHANGE``, ``MEMORY_DEVICE_SIZE_CHANGE`` to one a
  second per key, delivering the last of a burst): of a run recorded within
  a second, the middle ones may be dropped (the first and the last are kept);
* **timing**: each reply waits a random time up to ``max_delay``, and the
  fake's output stream (:func:`relay`) is cut and glued at arbitrary byte
  boundaries (one byte, a line and a half, several messages at once) with
  random pauses up to ``max_delay``.

Never: a reply before its command (nothing is sent early), a changed reply,
an event dropped that QEMU would deliver, events reordered among themselves.

Every decision comes from ``random.Random`` seeded by the seed and what it is
about (the n-th command, the n-th connection), so a seed gives the same
schedule on every run; :meth:`Chaos.lines` tells it, to re-run with
``--chaos SEED`` / ``--qmp-chaos=SEED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import attrs

#: Default longest pause (seconds) of a reply or of a piece of output.
DEFAULT_MAX_DELAY = 0.02

#: QEMU's rate-limited events (monitor_qapi_event_conf, 1 s) and the data member
#: that keys their throttling (None: one throttle for the event).
THROTTLED: dict[str, str | None] = {
    "RTC_CHANGE": None,
    "BALLOON_CHANGE": None,
    "QUORUM_REPORT_BAD": "node-name",
    "QUORUM_FAILURE": None,
    "VSERPORT_CHANGE": "id",
    "MEMORY_DEVICE_SIZE_CHANGE": "qom-path",
}
THROTTLE_SECONDS = 1.0

#: Largest read from either side of the relay.
READ_SIZE = 65536
#: Output held by the relay past which it stops reading the fake (so a client that does not
#: read meets the fake's own output budget, as without chaos).
MAX_PENDING = 1024 * 1024


@attrs.define
class Chaos:
    """One chaos schedule: the seed, the longest delay, and what was decided so far."""

    seed: int
    max_delay: float = DEFAULT_MAX_DELAY
    decisions: list[str] = attrs.Factory(list)
    _responses: int = 0
    _connections: int = 0
    pieces: int = 0  # output pieces written by every relay

    def __attrs_post_init__(self) -> None:
        if not self.max_delay >= 0 or self.max_delay == float("inf"):
            raise ValueError(f"the chaos delay must be a finite number of seconds >= 0, not {self.max_delay!r}")

    def _rng(self, what: str, n: int) -> random.Random:
        return random.Random(f"qmprr-chaos/{self.seed}/{what}/{n}")

    def place(self, command: str | None, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> tuple[
            list[dict[str, Any]], list[dict[str, Any]], float]:
        """The events a command caused split anew around its reply, and the reply's delay (seconds)."""
        n = self._responses
        self._responses += 1
        rng = self._rng("response", n)
        events = coalesce(before + after, rng)
        split = rng.randint(0, len(events))
        delay = rng.uniform(0, self.max_delay) if rng.random() < 0.5 else 0.0
        dropped = len(before) + len(after) - len(events)
        if events and (split != len(before) or dropped):
            self.decisions.append(
                f"command {n + 1} ({command}): {split} of {len(events)} event(s) before the reply"
                f" (recorded {len(before)})" + (f", {dropped} rate-limited event(s) coalesced" if dropped else "")
            )
        return events[:split], events[split:], delay

    def wire(self) -> random.Random:
        """The random source for the next connection's output."""
        self._connections += 1
        return self._rng("wire", self._connections)

    def lines(self) -> list[str]:
        """The schedule, for a failure message: the seed first, to re-run with it."""
        out = [f"chaos seed {self.seed} (max delay {self.max_delay:g} s): re-run with --chaos {self.seed}"
               f" (pytest: --qmp-chaos={self.seed})"]
        out += self.decisions or ["no event was moved"]
        out.append(f"{self.pieces} output piece(s) cut at random byte boundaries")
        return out


def coalesce(events: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """*events* with, maybe, the middle of each burst of a rate-limited event dropped (QEMU's throttle)."""
    out: list[dict[str, Any]] = []
    for i, event in enumerate(events):
        key = _throttle_key(event)
        if (key is not None and out and i + 1 < len(events) and _throttle_key(out[-1]) == key
                and _throttle_key(events[i + 1]) == key
                and _seconds(events[i + 1]) - _seconds(out[-1]) < THROTTLE_SECONDS and rng.random() < 0.5):
            continue  # QEMU would have replaced it with the next one, still pending
        out.append(event)
    return out


def _throttle_key(event: dict[str, Any]) -> tuple[str, Any] | None:
    name = event.get("event")
    if not isinstance(name, str) or name not in THROTTLED:
        return None
    member = THROTTLED[name]
    data = event.get("data")
    return name, (data.get(member) if member and isinstance(data, dict) else None)


def _seconds(event: dict[str, Any]) -> float:
    ts = event.get("timestamp")
    if not isinstance(ts, dict):
        return 0.0
    s, us = ts.get("seconds"), ts.get("microseconds")
    return float(s) + float(us) / 1e6 if isinstance(s, int) and isinstance(us, int) else 0.0


def _piece_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.3:
        return rng.randint(1, 8)  # a few bytes: a message cut mid-token
    if roll < 0.7:
        return rng.randint(9, 300)  # a message and a half
    return READ_SIZE  # all there is: several messages in one write


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chaos: Chaos, serve: Serve) -> None:
    """Serve one client through *chaos*: *serve* runs on a socketpair whose output reaches *writer* in random pieces.

    The client's input is passed on as it comes; when the client closes, the
    fake sees end of file; when the fake closes, what it wrote is delivered
    first, then the client's connection is closed.
    """
    rng = chaos.wire()
    ours, theirs = socket.socketpair()
    fake_reader, fake_writer = await asyncio.open_unix_connection(sock=theirs)
    serving = asyncio.create_task(serve(fake_reader, fake_writer))
    from_fake, to_fake = await asyncio.open_unix_connection(sock=ours)

    async def upstream() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(READ_SIZE):
                to_fake.write(data)
                await to_fake.drain()
        with contextlib.suppress(ConnectionError, OSError):
            to_fake.write_eof()

    pending = bytearray()
    arrived, room = asyncio.Event(), asyncio.Event()
    ended = False

    async def pump() -> None:  # the fake's output, as fast as it comes
        nonlocal ended
        with contextlib.suppress(ConnectionError, OSError):
            while data := await from_fake.read(READ_SIZE):
                pending.extend(data)
                arrived.set()
                while len(pending) > MAX_PENDING:
                    room.clear()
                    await room.wait()
        ended = True
        arrived.set()

    async def downstream() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                if not pending:
                    if ended:
                        break
                    arrived.clear()
                    await arrived.wait()
                    continue
                size = _piece_size(rng)
                if rng.random() < 0.5:
                    await asyncio.sleep(rng.uniform(0, chaos.max_delay))  # what comes meanwhile is glued on
                writer.write(bytes(pending[:size]))
                chaos.pieces += 1
                del pending[:size]
                room.set()
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    up = asyncio.create_task(upstream())
    reading = asyncio.create_task(pump())
    try:
        await downstream()
    finally:
        up.cancel()
        reading.cancel()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await serving
        for task in (up, reading):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        to_fake.close()


class Listener:
    """A UNIX socket whose clients are each served through :func:`relay`; :meth:`close` ends them all."""

    def __init__(self, handle: Serve) -> None:
        self._handle = handle
        self._server: asyncio.AbstractServer | None = None
        self._live: set[asyncio.Task[Any]] = set()

    async def listen(self, path: str, listen_any: bool = False) -> None:
        import socket

        from .server import bind_listener

        sock = bind_listener(path, listen_any=listen_any)
        if sock.family == socket.AF_UNIX:
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        else:  # tcp:HOST:PORT (qmprr.address)
            self._server = await asyncio.start_server(self._serve, sock=sock)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._live.add(task)
        try:
            await self._handle(reader, writer)
        except asyncio.CancelledError:
            pass  # closing: the connection ends here
        finally:
            self._live.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._live):
            task.cancel()
        await asyncio.gather(*self._live, return_exceptions=True)


async def listen(path: str, handle: Serve, listen_any: bool = False) -> Listener:
    """Accept clients on a new UNIX socket at *path* (mode 0600) or ``tcp:HOST:PORT``, each served by *handle*."""
    listener = Listener(handle)
    await listener.listen(path, listen_any)
    return listener
