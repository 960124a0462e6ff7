"""The guards a turn passes, together: access lists, rate limits, the concurrency gate and the budgets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bot.guards.access import AccessPolicy
from bot.guards.budgets import Accounting
from bot.guards.limits import Buckets, ConcurrencyGate, RateLimiter
from bot.messages import IncomingMessage
from bot.store import TokenBuckets


@dataclass(slots=True)
class Guards:
    """The abuse controls a turn passes before it may call the model; the defaults limit nothing."""

    access: AccessPolicy = field(default_factory=AccessPolicy)
    user_rate: RateLimiter = field(default_factory=lambda: RateLimiter(0))
    channel_rate: RateLimiter = field(default_factory=lambda: RateLimiter(0))
    #: where the rate buckets are kept: the store, so that replicas sharing a database share the limits
    buckets: Buckets = field(default_factory=TokenBuckets)
    gate: ConcurrencyGate = field(default_factory=lambda: ConcurrencyGate(1_000_000, 0))
    #: how many turns may wait for one conversation's turn; the next are told it is busy
    max_queued_per_conversation: int = 1_000_000
    accounting: Accounting | None = None

    @property
    def limits_rates(self) -> bool:
        """Whether a rate limit is on: without one a turn need not ask (no await, no bucket names built)."""
        return self.user_rate.enabled or self.channel_rate.enabled

    async def rate_wait(self, msg: IncomingMessage) -> int:
        """Whole seconds until this person and channel may ask again; 0 when they may now.

        One take from both buckets: a question the channel's limit refuses does not use up the person's.
        """
        key = msg.key
        wanted = [
            bucket
            for bucket in (
                self.user_rate.bucket(f"{key.platform}:{key.workspace}:{msg.author_id}"),
                self.channel_rate.bucket(f"{key.platform}:{key.workspace}:{key.channel}"),
            )
            if bucket is not None
        ]
        if not wanted:
            return 0
        return math.ceil(await self.buckets.take_tokens(wanted))
