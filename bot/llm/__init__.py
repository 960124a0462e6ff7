"""The OpenAI-wire model client: endpoints and fallback, retries, streaming (SSE), the mapping of a server's
errors to ours, and token counting."""

from __future__ import annotations

from bot.llm.client import (
    REASONING_EFFORTS,
    ChatClient,
    ChatMessage,
    Completion,
    Endpoint,
    GenerationParams,
    RetryPolicy,
    model_choice,
)
from bot.llm.errors import shown_url
from bot.llm.sse import OnDelta, SSEDecoder, ThinkSplitter, ToolCall
from bot.llm.tokens import PER_MESSAGE_OVERHEAD, TRUNCATION_MARK, TokenCounter
from bot.llm.transport import ModelHTTP, model_http_client

__all__ = [
    "PER_MESSAGE_OVERHEAD",
    "REASONING_EFFORTS",
    "TRUNCATION_MARK",
    "ChatClient",
    "ChatMessage",
    "Completion",
    "Endpoint",
    "GenerationParams",
    "ModelHTTP",
    "OnDelta",
    "RetryPolicy",
    "SSEDecoder",
    "ThinkSplitter",
    "TokenCounter",
    "ToolCall",
    "model_choice",
    "model_http_client",
    "shown_url",
]
