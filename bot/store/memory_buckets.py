"""Rate-limit buckets kept in this process's memory: the embedded engine's, which shares its database with nobody."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from bot.store.base import RateBucket

Clock = Callable[[], float]


class TokenBuckets:
    """Token buckets in this process's memory: what one process sharing its database with nobody needs.

    Only keys seen recently are kept; a bucket idle long enough to be full again is the same as no bucket.
    """

    def __init__(self, *, clock: Clock = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def take_tokens(self, buckets: Sequence[RateBucket]) -> float:
        """Spend one token of each bucket when every one has a token: 0 then, else the seconds until they all do.

        No await between reading and writing: within one event loop this is atomic.
        """
        now = self._clock()
        levels = []
        for bucket in buckets:
            tokens, then = self._buckets.get(bucket.key, (bucket.capacity, now))
            levels.append(min(bucket.capacity, tokens + (now - then) * bucket.per_second))
        short = [(1 - have) / b.per_second for b, have in zip(buckets, levels, strict=True) if have < 1]
        wait = max(short, default=0.0)
        spend = 1 if wait == 0 else 0
        for bucket, have in zip(buckets, levels, strict=True):
            self._buckets.pop(bucket.key, None)
            self._buckets[bucket.key] = (have - spend, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait
