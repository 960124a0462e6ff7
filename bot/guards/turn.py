"""The guards a turn passes, together: access lists, rate limits, the concurrency gate and the budgets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bot.guards.access import AccessPolicy
from bot.guards.budgets import Accounting
from bot.guards.limits import ConcurrencyGate, RateLimiter
from bot.messages import IncomingMessage


@dataclass(slots=True)
class Guards:
    """The abuse controls a turn passes before it may call the model; the defaults limit nothing."""

    access: AccessPolicy = field(default_factory=AccessPolicy)
    user_rate: RateLimiter = field(default_factory=lambda: RateLimiter(0))
    channel_rate: RateLimiter = field(default_factory=lambda: RateLimiter(0))
    gate: ConcurrencyGate = field(default_factory=lambda: ConcurrencyGate(1_000_000, 0))
    accounting: Accounting | None = None

    async def rate_wait(self, msg: IncomingMessage) -> int:
        """Whole seconds until this person and channel may ask again; 0 when they may now."""
        key = msg.key
        user = await self.user_rate.take(f"{key.platform}:{key.workspace}:{msg.author_id}")
        channel = await self.channel_rate.take(f"{key.platform}:{key.workspace}:{key.channel}")
        return math.ceil(max(user, channel))
