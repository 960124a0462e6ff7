"""Rate-limit buckets kept in this process's memory: the embedded engine's, which shares its database with nobody."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBuckets:
    """Token buckets in this process's memory: what one process sharing its database with nobody needs.

    Only keys seen recently are kept; a bucket idle long enough to be full again is the same as no bucket.
    """

    def __init__(self, *, clock: Clock = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def take_token(self, bucket: str, capacity: float, per_second: float) -> float:
        """Spend one token of ``bucket``: 0 when there was one, else the seconds until there is."""
        now = self._clock()
        tokens, then = self._buckets.pop(bucket, (capacity, now))
        tokens = min(capacity, tokens + (now - then) * per_second)
        if tokens >= 1:
            self._buckets[bucket] = (tokens - 1, now)
            wait = 0.0
        else:
            self._buckets[bucket] = (tokens, now)
            wait = (1 - tokens) / per_second
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait
