"""Abuse controls: per-user and per-channel request rates, and a cap on concurrent calls."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from bot import texts
from bot.errors import TeambotError

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


class Buckets(Protocol):
    """Where buckets are kept: in memory, or in a database that several replicas share so their caps hold."""

    async def take_token(self, bucket: str, capacity: float, per_second: float) -> float: ...


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute, bursts up to the same number."""

    def __init__(self, per_minute: int, *, name: str = "rate", buckets: Buckets | None = None) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._name = name
        self._buckets = buckets or TokenBuckets()

    @property
    def enabled(self) -> bool:
        return self._capacity > 0

    async def take(self, key: str) -> float:
        """Spend one request for ``key``: 0 when allowed, else the seconds until one is available."""
        if not self.enabled:
            return 0.0
        return await self._buckets.take_token(f"{self._name}:{key}", self._capacity, self._rate)


class Busy(TeambotError):
    user_message = texts.BUSY


class ConcurrencyGate:
    """At most ``limit`` model calls at once; up to ``max_waiting`` more wait their turn, the rest are told busy.

    A burst of mentions then queues here instead of tripping the provider's rate limits.
    """

    def __init__(self, limit: int, max_waiting: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._max_waiting = max_waiting
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self.waiting >= self._max_waiting:
            raise Busy("the queue of model calls is full")
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()
