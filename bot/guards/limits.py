"""Abuse controls: per-user and per-channel request rates, and a cap on concurrent calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from bot import texts
from bot.errors import TeambotError
from bot.store import TokenBuckets

Clock = Callable[[], float]


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
