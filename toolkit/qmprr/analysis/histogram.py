"""A fixed-size log-bucket histogram for latency percentiles in constant memory.

Values are whole microseconds (recording times are rounded to microseconds).
Below :data:`EXACT` µs every value has its own bucket, so percentiles are
exact; above, buckets grow by :data:`GROWTH` (1 %) each and a percentile is
reported as its bucket's geometric middle, within 0.5 % of the true value.
The minimum and maximum are kept exactly, and bound every percentile. From 1 µs to a day there are under 2,100
buckets, and only the buckets in use take memory.
"""

from __future__ import annotations

import math

EXACT = 256
GROWTH = 1.01
_LOG_GROWTH = math.log(GROWTH)
_LOG_EXACT = math.log(EXACT)


def bucket(us: int) -> int:
    """The bucket of *us* microseconds."""
    if us < EXACT:
        return us if us > 0 else 0
    return EXACT + int((math.log(us) - _LOG_EXACT) / _LOG_GROWTH)


def bucket_value(b: int) -> float:
    """The value a bucket stands for (exact ones: themselves)."""
    if b < EXACT:
        return float(b)
    return float(EXACT * GROWTH ** (b - EXACT + 0.5))


class LogHistogram:
    """Counts of microsecond values; :meth:`quantile` by nearest rank."""

    __slots__ = ("counts", "count", "min", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.min = 1 << 62  # until the first value
        self.max = 0

    def add(self, us: int) -> None:
        b = us if 0 <= us < EXACT else bucket(us)
        counts = self.counts
        counts[b] = counts.get(b, 0) + 1
        self.count += 1
        if us > self.max:
            self.max = us
        if us < self.min:
            self.min = us

    def quantile(self, q: float) -> float:
        """The value at quantile *q* (0 < q <= 1) in microseconds; 0 when empty."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return max(float(self.min), min(bucket_value(b), float(self.max)))
        return float(self.max)
