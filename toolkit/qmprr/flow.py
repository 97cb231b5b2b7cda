"""asyncio write flow control for a protocol: ``pause_writing``/``resume_writing`` and a wait for the drain.

The channel's QEMU side and the serve loop's client side both write to a
transport from callbacks and now and then wait for its buffer to drain:
:class:`WriteFlow` is that one rule.
"""

from __future__ import annotations

import asyncio


class WriteFlow:
    """Mixed into an :class:`asyncio.Protocol` (call ``WriteFlow.__init__``): pauses, and :meth:`wait_drained`."""

    def __init__(self) -> None:
        self._paused = False
        self._waiters: list[asyncio.Future[None]] = []

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_drained(self) -> None:
        """Return when the transport writes again (at once when it is not paused)."""
        if not self._paused:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter
