"""Who may use the bot and how much: access lists, rate limits, the concurrency gate and the budgets, together."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bot.budgets import Accounting
from bot.limits import ConcurrencyGate, RateLimiter
from bot.messages import IncomingMessage


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Allowlists (empty: everyone) and denylists of workspaces/guilds, channels and users."""

    allow_workspaces: frozenset[str] = frozenset()
    deny_workspaces: frozenset[str] = frozenset()
    allow_channels: frozenset[str] = frozenset()
    deny_channels: frozenset[str] = frozenset()
    allow_users: frozenset[str] = frozenset()
    deny_users: frozenset[str] = frozenset()
    refuse_silently: bool = False

    def allows(self, msg: IncomingMessage) -> bool:
        checks = (
            (msg.key.workspace, self.allow_workspaces, self.deny_workspaces),
            (msg.key.channel, self.allow_channels, self.deny_channels),
            (msg.author_id, self.allow_users, self.deny_users),
        )
        return all((not allow or value in allow) and value not in deny for value, allow, deny in checks)


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
