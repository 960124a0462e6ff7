"""What a model call costs: a price table per model, in US dollars per million input and output tokens.

The defaults are list prices of common OpenAI models and only an estimate; ``TEAMBOT_PRICES`` overrides or adds
entries. A model not in the table costs 0 and is flagged, so a report can say its figures are incomplete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: model name (or prefix) -> (USD per 1M input tokens, USD per 1M output tokens)
DEFAULT_PRICES: Mapping[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}


@dataclass(frozen=True, slots=True)
class Price:
    cost: float
    known: bool


class PriceTable:
    """Looks a model up by exact name, else by the longest known prefix (``gpt-4o-mini-2024-07-18``)."""

    def __init__(self, overrides: Mapping[str, tuple[float, float]] | None = None) -> None:
        self._prices = {**DEFAULT_PRICES, **(overrides or {})}
        self._by_length = sorted(self._prices, key=len, reverse=True)

    def lookup(self, model: str) -> tuple[float, float] | None:
        name = model.rsplit("/", 1)[-1]  # OpenRouter names models "openai/gpt-4o"
        if name in self._prices:
            return self._prices[name]
        for known in self._by_length:
            if name.startswith(known + "-"):
                return self._prices[known]
        return None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> Price:
        prices = self.lookup(model)
        if prices is None:
            return Price(0.0, False)
        return Price((prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1_000_000, True)
