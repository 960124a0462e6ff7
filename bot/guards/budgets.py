"""Usage accounting: the ledger of model calls, budgets with soft and hard caps, and the ``/usage`` report.

Periods are UTC calendar days and months. Spending is counted in the database, not in memory, so caps hold
across restarts (and across replicas sharing one database).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot import texts
from bot.guards.pricing import PriceTable
from bot.messages import ConversationKey, Usage
from bot.store import Store, UsageRecord, UsageScope, UsageTotal

Clock = Callable[[], float]
_CLAIMED_CACHE_SIZE = 10_000


class Unit(enum.Enum):
    TOKENS = "tokens"
    USD = "usd"


class Period(enum.Enum):
    DAY = "day"
    MONTH = "month"

    def start(self, now: float) -> datetime:
        moment = datetime.fromtimestamp(now, UTC)
        if self is Period.DAY:
            return moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)

    def next_start(self, now: float) -> datetime:
        start = self.start(now)
        if self is Period.DAY:
            return datetime.fromtimestamp(start.timestamp() + 86_400, UTC)
        return (
            start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        )


class ScopeKind(enum.Enum):
    WORKSPACE = "workspace"
    CHANNEL = "channel"
    USER = "user"


@dataclass(frozen=True, slots=True)
class Budget:
    kind: ScopeKind
    period: Period
    limit: float

    @property
    def label(self) -> str:
        period = "daily" if self.period is Period.DAY else "monthly"
        return {
            ScopeKind.WORKSPACE: f"this workspace's {period} budget",
            ScopeKind.CHANNEL: f"this channel's {period} budget",
            ScopeKind.USER: f"your {period} budget",
        }[self.kind]


def scope_for(kind: ScopeKind, key: ConversationKey, user_id: str) -> UsageScope:
    if kind is ScopeKind.WORKSPACE:
        return UsageScope(key.platform, key.workspace)
    if kind is ScopeKind.CHANNEL:
        return UsageScope(key.platform, key.workspace, channel=key.channel)
    return UsageScope(key.platform, key.workspace, user_id=user_id)


#: The scopes a ``/usage`` report lists, with their labels: a chat platform's three.
REPORT_SCOPES: tuple[tuple[ScopeKind, str], ...] = (
    (ScopeKind.CHANNEL, texts.USAGE_SCOPE_CHANNEL),
    (ScopeKind.USER, texts.USAGE_SCOPE_USER),
    (ScopeKind.WORKSPACE, texts.USAGE_SCOPE_WORKSPACE),
)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


class Accounting:
    """Records every model call and enforces the configured budgets."""

    def __init__(
        self,
        store: Store,
        prices: PriceTable,
        budgets: list[Budget],
        *,
        unit: Unit = Unit.TOKENS,
        soft_percent: float = 80.0,
        clock: Clock = time.time,
    ) -> None:
        self._store = store
        self._prices = prices
        self._budgets = budgets
        self._unit = unit
        self._soft = soft_percent / 100.0
        self._clock = clock
        #: (scope, period start) of soft-cap warnings known to be posted already
        self._claimed: set[tuple[str, float]] = set()

    def _amount(self, total: UsageTotal) -> float:
        return float(total.tokens) if self._unit is Unit.TOKENS else total.cost

    def _format(self, amount: float) -> str:
        return f"{amount:,.0f} tokens" if self._unit is Unit.TOKENS else f"${amount:,.4f}"

    async def _spent(self, budget: Budget, key: ConversationKey, user_id: str, now: float) -> float:
        total = await self._store.usage_since(
            scope_for(budget.kind, key, user_id), budget.period.start(now).timestamp()
        )
        return self._amount(total)

    async def refusal(self, key: ConversationKey, user_id: str) -> str | None:
        """A message for people when a hard cap is reached; None when the call may go ahead."""
        now = self._clock()
        for budget in self._budgets:
            if await self._spent(budget, key, user_id, now) >= budget.limit:
                return texts.BUDGET_REACHED.format(budget=budget.label, resets=_when(budget.period.next_start(now)))
        return None

    def charge(self, key: ConversationKey, user_id: str, model: str, usage: Usage) -> UsageRecord:
        """The ledger entry for one call, priced; the store writes it with the reply."""
        price = self._prices.cost(
            model, usage.prompt_tokens, usage.completion_tokens, cached_tokens=usage.cached_tokens
        )
        return UsageRecord(
            self._clock(),
            key,
            user_id,
            model,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.exact,
            price.cost,
            price.known,
            usage.cached_tokens,
            usage.reasoning_tokens,
        )

    async def notice(self, record: UsageRecord) -> str | None:
        """The soft-cap warning, when a budget of the call in ``record`` (already stored) is past its soft cap and
        no warning was posted for it yet this period."""
        warnings: list[str] = []
        for budget in self._budgets:
            spent = await self._spent(budget, record.key, record.user_id, record.at)
            if spent < budget.limit * self._soft:
                continue
            # Not "did this call cross it": two calls finishing together would each see the other's share and
            # neither would warn. Every call past it asks; the claim in the database lets exactly one post.
            scope = scope_for(budget.kind, record.key, record.user_id)
            name = f"{budget.kind.value}:{budget.period.value}:{scope.platform}:{scope.workspace}:"
            name += scope.channel or scope.user_id or ""
            claim = (name, budget.period.start(record.at).timestamp())
            if claim in self._claimed:
                continue  # already posted (by anyone): no need to ask the database on every later call
            won = await self._store.claim_warning(*claim)
            self._remember_claimed(claim)
            if won:
                warnings.append(
                    texts.BUDGET_SOFT_WARNING.format(
                        budget=budget.label,
                        percent=round(100 * spent / budget.limit),
                        spent=self._format(spent),
                        limit=self._format(budget.limit),
                        resets=_when(budget.period.next_start(record.at)),
                    )
                )
        return "\n".join(warnings) or None

    def _remember_claimed(self, claim: tuple[str, float]) -> None:
        if len(self._claimed) >= _CLAIMED_CACHE_SIZE:
            self._claimed.clear()  # forgetting only costs one more claim attempt per scope
        self._claimed.add(claim)

    async def report(
        self,
        key: ConversationKey,
        user_id: str,
        *,
        header: str = texts.USAGE_HEADER,
        scopes: tuple[tuple[ScopeKind, str], ...] = REPORT_SCOPES,
    ) -> str:
        """The ``/usage`` answer: spending of each of ``scopes`` today and this month, then each budget."""
        now = self._clock()
        day, month = Period.DAY.start(now).timestamp(), Period.MONTH.start(now).timestamp()
        lines = [header]
        unpriced = False
        for kind, label in scopes:
            scope = scope_for(kind, key, user_id)
            today = await self._store.usage_since(scope, day)
            this_month = await self._store.usage_since(scope, month)
            unpriced = unpriced or not this_month.all_priced
            line = texts.USAGE_LINE.format(
                who=label,
                day_tokens=today.tokens,
                day_cost=today.cost,
                month_tokens=this_month.tokens,
                month_cost=this_month.cost,
            )
            if (share := this_month.cache_share) is not None:
                line += texts.USAGE_CACHE_PART.format(share=share)
            if this_month.reasoning_tokens:
                line += texts.USAGE_REASONING_PART.format(tokens=this_month.reasoning_tokens)
            lines.append(line)
        for budget in self._budgets:
            spent = await self._spent(budget, key, user_id, now)
            lines.append(
                texts.USAGE_BUDGET_LINE.format(
                    budget=budget.label[0].upper() + budget.label[1:],
                    spent=self._format(spent),
                    limit=self._format(budget.limit),
                    left=self._format(max(0.0, budget.limit - spent)),
                    resets=_when(budget.period.next_start(now)),
                )
            )
        if not self._budgets:
            lines.append(texts.USAGE_NO_BUDGETS)
        if unpriced:
            lines.append(texts.USAGE_UNPRICED)
        return "\n".join(lines)
