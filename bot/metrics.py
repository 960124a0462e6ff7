"""Prometheus metrics, in a registry of their own so nothing is registered at import time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80)
#: Tools run from a millisecond (a built-in lookup) to the timeout (30 s by default).
_TOOL_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """What ``GET /metrics`` shows: traffic, outcomes, model latency, tokens, cost and the call queue."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.mentions = Counter("teambot_mentions", "Messages addressed to the bot", ["platform"], registry=r)
        self.replies = Counter("teambot_replies", "Turns by outcome", ["platform", "kind"], registry=r)
        self.errors = Counter("teambot_model_errors", "Failed model calls by error kind", ["kind"], registry=r)
        self.model_latency = Histogram(
            "teambot_model_latency_seconds", "Model call duration", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.first_token = Histogram(
            "teambot_time_to_first_token_seconds",
            "Streaming: time to the first text",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # direction: prompt and completion (what is billed), and the parts of them the server reported: "cached"
        # (prompt tokens read from the prompt cache) and "reasoning" (completion tokens spent thinking).
        self.tokens = Counter("teambot_tokens", "Tokens used by model calls", ["direction"], registry=r)
        # The cache hit share is teambot_tokens_total{direction="cached"} over this: the prompt tokens of the calls
        # whose server says how many were cached, so a server that cannot tell does not count as all misses.
        self.cache_reported_prompt_tokens = Counter(
            "teambot_cache_reported_prompt_tokens",
            "Prompt tokens of model calls whose server reported how many of them were cached",
            registry=r,
        )
        self.cost = Counter("teambot_cost_usd", "Estimated cost of model calls, US dollars", registry=r)
        self.feedback = Counter(
            "teambot_feedback", "Clicks on the answers' feedback buttons", ["platform", "value"], registry=r
        )
        # outcome: ok, error (the tool said it failed), timeout, crashed, denied (no approval), unknown (no such tool
        # here: its name is "(unknown)"), bad_arguments (not a JSON object).
        self.tool_calls = Counter(
            "teambot_tool_calls", "Tool calls by tool and outcome", ["tool", "outcome"], registry=r
        )
        self.tool_seconds = Histogram(
            "teambot_tool_seconds", "Tool call duration (calls that ran)", ["tool"], buckets=_TOOL_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "teambot_queue_depth", "Turns waiting: for their conversation or for a model call slot", registry=r
        )

    def child(self, metric: Counter, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: prometheus-client's lookup takes a lock and builds the key
        tuple every time, about 1.3 us, several times a turn. The labels on the turn's path take a handful of
        values (platforms, reply kinds, token directions), and a child, once made, is never removed here."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def watch_queue(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
