"""Who may ask and how much: access lists, rate limits, the concurrency gate, budgets and prices, the API key,
and the masking of secrets in everything the bot writes out."""

from __future__ import annotations

from bot.guards.access import AccessPolicy
from bot.guards.budgets import REPORT_SCOPES, Accounting, Budget, Period, ScopeKind, Unit, scope_for
from bot.guards.keys import KeySource
from bot.guards.limits import Buckets, Busy, ConcurrencyGate, ConversationBusy, RateLimiter
from bot.guards.pricing import Price, PriceTable
from bot.guards.redaction import MASK, RedactingFilter, redact, remember
from bot.guards.turn import Guards

__all__ = [
    "MASK",
    "REPORT_SCOPES",
    "AccessPolicy",
    "Accounting",
    "Buckets",
    "Budget",
    "Busy",
    "ConcurrencyGate",
    "ConversationBusy",
    "Guards",
    "KeySource",
    "Period",
    "Price",
    "PriceTable",
    "RateLimiter",
    "RedactingFilter",
    "ScopeKind",
    "Unit",
    "redact",
    "remember",
    "scope_for",
]
