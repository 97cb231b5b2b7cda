"""Delta debugging (ddmin, Zeller & Hildebrandt 2002) with dependencies and parallel tries.

Generic: items are ints (``qmprr minimize``'s units, or argv options), the
test is an async function telling whether a configuration still fails.
``close`` maps a candidate to the configuration actually tried (the units
it needs added: a subset is never tried half-formed). Each round's
candidates (subsets first, then complements, as in the paper) are tried up
to ``jobs`` at a time; the first failing one *in order* wins, so the result
does not depend on which try finished first. Configurations already tried
are not tried again. A :class:`Budget` stops the search early; the smallest
failing configuration so far is returned either way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import attrs

Config = frozenset[int]


@attrs.define
class Budget:
    """At most *tries* tries and *seconds* seconds (None: no bound)."""

    tries: int | None = None
    seconds: float | None = None
    started: float = attrs.Factory(time.monotonic)

    def left(self, used: int) -> int | None:
        """Tries still allowed (None: unbounded); 0 once the time is up."""
        if self.seconds is not None and time.monotonic() - self.started >= self.seconds:
            return 0
        return None if self.tries is None else max(0, self.tries - used)


@attrs.define
class Result:
    config: Config
    tries: int
    complete: bool  # False: the budget ran out before the result was 1-minimal


class Search:
    """One ddmin run; :meth:`run` returns the :class:`Result`."""

    def __init__(
        self,
        test: Callable[[Config], Awaitable[bool]],
        *,
        close: Callable[[Iterable[int]], Config] = frozenset,
        jobs: int = 1,
        budget: Budget | None = None,
        tried: Callable[[int, Config, bool], None] | None = None,
    ) -> None:
        self.test, self.close, self.jobs = test, close, max(1, jobs)
        self.budget = budget or Budget()
        self.tried = tried  # told (tries so far, config, failed) after each try
        self.cache: dict[Config, bool] = {}
        self.tries = 0
        self.exhausted = False

    async def _one(self, config: Config) -> bool:
        failed = bool(await self.test(config))
        self.tries += 1
        self.cache[config] = failed
        if self.tried is not None:
            self.tried(self.tries, config, failed)
        return failed

    async def first_failing(self, candidates: Sequence[Config]) -> Config | None:
        """The first of *candidates* (in order) that still fails, trying up to ``jobs`` at once."""
        pending = list(dict.fromkeys(candidates))
        i = 0
        while i < len(pending):
            if pending[i] in self.cache:  # tried in an earlier round
                if self.cache[pending[i]]:
                    return pending[i]
                i += 1
                continue
            window: list[Config] = []
            while i + len(window) < len(pending) and len(window) < self.jobs \
                    and pending[i + len(window)] not in self.cache:
                window.append(pending[i + len(window)])
            left = self.budget.left(self.tries)
            if left is not None:
                if left == 0:
                    self.exhausted = True
                    return None
                window = window[:left]
            results = await asyncio.gather(*(self._one(c) for c in window))
            for c, failed in zip(window, results):
                if failed:
                    return c
            i += len(window)
        return None

    async def run(self, items: Iterable[int]) -> Result:
        """Minimize *items*, which must fail (already tested by the caller)."""
        current = self.close(items)
        self.cache[current] = True
        n = 2
        while len(current) >= 2 and not self.exhausted:
            ordered = sorted(current)
            chunks = [frozenset(c) for c in _split(ordered, n)]
            subsets = [self.close(c) for c in chunks]
            complements = [self.close(current - c) for c in chunks]
            found = await self.first_failing([c for c in subsets + complements if c != current and c < current])
            if found is not None:
                n = 2 if found in subsets else max(n - 1, 2)
                current = found
                continue
            if self.exhausted or n >= len(current):
                break
            n = min(2 * n, len(current))
        return Result(current, self.tries, complete=not self.exhausted)


def _split(items: list[int], n: int) -> list[list[int]]:
    """*items* in *n* contiguous chunks of nearly equal size."""
    out, start = [], 0
    for i in range(n):
        end = start + (len(items) - start) // (n - i)
        out.append(items[start:end])
        start = end
    return [c for c in out if c]
