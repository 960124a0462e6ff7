"""What a model call costs: a price table per model, in US dollars per million input, output and cached input
tokens.

The defaults are list prices of common OpenAI models and only an estimate; ``TEAMBOT_PRICES`` overrides or adds
entries, as ``[input, output]`` or ``[input, output, cached input]``. A model not in the table costs 0 and is
flagged, so a report can say its figures are incomplete.

Cached input tokens are part of the prompt tokens (the server counts them in ``prompt_tokens`` and says how many
in ``prompt_tokens_details.cached_tokens``): they are charged at the cached price *instead of* the input price,
never on top. Reasoning tokens are part of the completion tokens and cost what output costs, so they need no price
of their own. A model with no cached price (an entry of two numbers) charges cached tokens as plain input: an
estimate that may be high, never low.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: model name (or prefix) -> (USD per 1M input tokens, per 1M output tokens, per 1M cached input tokens)
DEFAULT_PRICES: Mapping[str, tuple[float, float, float]] = {
    "gpt-5": (1.25, 10.00, 0.125),
    "gpt-5-mini": (0.25, 2.00, 0.025),
    "gpt-5-nano": (0.05, 0.40, 0.005),
    "gpt-4.1": (2.00, 8.00, 0.50),
    "gpt-4.1-mini": (0.40, 1.60, 0.10),
    "gpt-4.1-nano": (0.10, 0.40, 0.025),
    "gpt-4o": (2.50, 10.00, 1.25),
    "gpt-4o-mini": (0.15, 0.60, 0.075),
    "gpt-4-turbo": (10.00, 30.00, 10.00),  # no prompt caching
    "gpt-3.5-turbo": (0.50, 1.50, 0.50),  # no prompt caching
    "o3": (2.00, 8.00, 0.50),
    "o3-mini": (1.10, 4.40, 0.55),
    "o4-mini": (1.10, 4.40, 0.275),
}


#: Model names whose price lookup is remembered (see PriceTable.lookup).
_FOUND_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Price:
    cost: float
    known: bool


def _row(prices: Sequence[float]) -> tuple[float, float, float]:
    """An entry as (input, output, cached input); two numbers, the older form, charge cached input as input."""
    if len(prices) == 2:
        return (prices[0], prices[1], prices[0])
    return (prices[0], prices[1], prices[2])


class PriceTable:
    """Looks a model up by exact name, else by the longest known prefix (``gpt-4o-mini-2024-07-18``)."""

    def __init__(self, overrides: Mapping[str, Sequence[float]] | None = None) -> None:
        self._prices = {**DEFAULT_PRICES, **{name: _row(p) for name, p in (overrides or {}).items()}}
        self._by_length = sorted(self._prices, key=len, reverse=True)
        #: What :meth:`lookup` found per model name: every call is charged, and a name the table lacks (a local
        #: model) was a walk over every prefix each time. Bounded: the names come from the servers' answers.
        self._found: dict[str, tuple[float, float, float] | None] = {}

    def lookup(self, model: str) -> tuple[float, float, float] | None:
        """(input, output, cached input) dollars per million tokens, or None for a model the table lacks."""
        if model in self._found:
            return self._found[model]
        if len(self._found) >= _FOUND_SIZE:
            self._found.clear()
        found = self._found[model] = self._lookup(model)
        return found

    def _lookup(self, model: str) -> tuple[float, float, float] | None:
        name = model.rsplit("/", 1)[-1]  # OpenRouter names models "openai/gpt-4o"
        if name in self._prices:
            return self._prices[name]
        for known in self._by_length:
            if name.startswith(known + "-"):
                return self._prices[known]
        return None

    def cost(
        self, model: str, prompt_tokens: int, completion_tokens: int, *, cached_tokens: int | None = None
    ) -> Price:
        """What a call cost; ``cached_tokens`` (part of ``prompt_tokens``; None when unknown) at the cached price."""
        prices = self.lookup(model)
        if prices is None:
            return Price(0.0, False)
        cached = min(max(cached_tokens or 0, 0), prompt_tokens)
        dollars = (prompt_tokens - cached) * prices[0] + cached * prices[2] + completion_tokens * prices[1]
        return Price(dollars / 1_000_000, True)
