"""Abuse controls: per-user and per-channel request rates, and a cap on concurrent calls."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Protocol

from bot import texts
from bot.errors import TeambotError
from bot.store import RateBucket

Clock = Callable[[], float]


class Buckets(Protocol):
    """Where buckets are kept: in memory, or in a database that several replicas share so their caps hold."""

    async def take_tokens(self, buckets: Sequence[RateBucket]) -> float: ...


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute, bursts up to the same number; 0 is no limit."""

    def __init__(self, per_minute: int, *, name: str = "rate") -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._name = name

    @property
    def enabled(self) -> bool:
        return self._capacity > 0

    def bucket(self, key: str) -> RateBucket | None:
        """The bucket a request for ``key`` takes a token from; None when this limit is off."""
        if not self.enabled:
            return None
        return RateBucket(f"{self._name}:{key}", self._capacity, self._rate)


class Busy(TeambotError):
    user_message = texts.BUSY


class ConversationBusy(Busy):
    """Too many questions already wait for their turn in one conversation."""

    user_message = texts.CONVERSATION_BUSY


class ConcurrencyGate:
    """At most ``limit`` model calls at once; up to ``max_waiting`` more wait their turn, the rest are told busy.

    A burst of mentions then queues here instead of tripping the provider's rate limits.
    """

    def __init__(self, limit: int, max_waiting: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._max_waiting = max_waiting
        self.waiting = 0

    def slot(self) -> contextlib.AbstractAsyncContextManager[bool]:
        """Hold a slot; yields whether it had to wait for one (what was checked before may have changed)."""
        return _Slot(self)


class _Slot:
    """The block of :meth:`ConcurrencyGate.slot`: a plain async context manager, not a generator's (every turn
    takes one; a third of the cost)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: ConcurrencyGate) -> None:
        self._gate = gate

    async def __aenter__(self) -> bool:
        gate = self._gate
        slots = gate._slots
        if slots.locked() and gate.waiting >= gate._max_waiting:
            raise Busy("the queue of model calls is full")
        waited = slots.locked()
        gate.waiting += 1
        try:
            await slots.acquire()
        finally:
            gate.waiting -= 1
        return waited

    async def __aexit__(self, *exc: object) -> None:
        self._gate._slots.release()
