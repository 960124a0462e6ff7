"""The ``search_history`` tool: full-text search over this conversation's older messages, beyond the window.

The access rule is the store's: only the asking conversation's own messages (``ToolCallContext.key``), and only
those before the question being answered, are ever searched.
"""

from __future__ import annotations

import datetime
from typing import Any

from bot.store import Store, StoredMessage
from bot.tools.base import ToolCallContext, ToolError, ToolSpec

NAME = "search_history"
DEFAULT_LIMIT = 10
MAX_LIMIT = 25
#: Each message found is shown up to this many characters: enough to recognise it, not a wall of text.
MESSAGE_CHARS = 1000
#: Without a stored question (nothing to be before), the whole conversation is searched.
_NO_BOUND = 2**62

SPEC = ToolSpec(
    name=NAME,
    description=(
        "Search the older messages of this conversation, including those too old to be in your context, for "
        "words. Returns the messages that contain every word, newest first, each with its author and date. "
        "Use a few distinctive words; fewer words find more."
    ),
    parameters={
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "The words to look for (all must appear)."},
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LIMIT,
                "description": f"At most this many messages (default {DEFAULT_LIMIT}).",
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    },
)


async def search_history(store: Store, arguments: dict[str, Any], context: ToolCallContext) -> str:
    """Run the tool: the messages found, newest first, as text for the model."""
    query = arguments.get("query")
    if not isinstance(query, str) or not any(ch.isalnum() for ch in query):
        raise ToolError(f"{NAME}: give one or more words to search for in 'query'")
    limit = arguments.get("limit", DEFAULT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        raise ToolError(f"{NAME}: 'limit' must be a number from 1 to {MAX_LIMIT}")
    limit = min(max(int(limit), 1), MAX_LIMIT)
    before = context.question_row if context.question_row is not None else _NO_BOUND
    found = await store.search_messages(context.key, query, before=before, limit=limit)
    if not found:
        return f"No earlier message in this conversation contains all of these words: {query}"
    lines = [f"{len(found)} message{'s' if len(found) > 1 else ''} found, newest first:"]
    lines += [_line(message) for message in found]
    return "\n".join(lines)


def _line(message: StoredMessage) -> str:
    when = datetime.datetime.fromtimestamp(message.created_at, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    author = "you (the assistant)" if message.role == "assistant" else (message.author_name or "someone")
    text = " ".join(message.content.split())
    if len(text) > MESSAGE_CHARS:
        text = text[:MESSAGE_CHARS].rstrip() + " […]"
    return f"[{when}] {author}: {text}"
