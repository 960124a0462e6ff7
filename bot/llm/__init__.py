"""The OpenAI-wire model client: endpoints and fallback, retries, streaming (SSE), the mapping of a server's
errors to ours, and token counting."""

from __future__ import annotations

from bot.llm.client import (
    ChatClient,
    ChatMessage,
    Completion,
    Endpoint,
    GenerationParams,
    RetryPolicy,
    model_http_client,
)
from bot.llm.sse import OnDelta, SSEDecoder
from bot.llm.tokens import PER_MESSAGE_OVERHEAD, TRUNCATION_MARK, TokenCounter

__all__ = [
    "PER_MESSAGE_OVERHEAD",
    "TRUNCATION_MARK",
    "ChatClient",
    "ChatMessage",
    "Completion",
    "Endpoint",
    "GenerationParams",
    "OnDelta",
    "RetryPolicy",
    "SSEDecoder",
    "TokenCounter",
    "model_http_client",
]
