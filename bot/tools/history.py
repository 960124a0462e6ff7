"""Tool calls and results in the history: put back before the replies they led to, where the budget has room."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from bot.llm import ChatMessage
from bot.store import StoredMessage

log = logging.getLogger(__name__)


def with_traces(history: Sequence[StoredMessage], chat: list[ChatMessage], budget: int) -> list[ChatMessage]:
    """``chat`` (the chat messages of ``history``, one each) with each reply's tool calls and results put back
    before it, newest first, as long as they fit what ``budget`` leaves beside the messages themselves.

    The messages were chosen by their own tokens, so tool results are what goes first when the history is full:
    an older turn keeps its question and answer, and loses what was looked up for it (all of it: a call without
    its results is refused by the API). Once one turn's trace does not fit, no older one is taken either.
    """
    room = budget - sum(m.tokens for m in history)
    kept: dict[int, list[ChatMessage]] = {}
    for index in range(len(history) - 1, -1, -1):
        raw = history[index].tool_trace
        if raw is None:
            continue
        try:
            trace = json.loads(raw)
            tokens, messages = int(trace["tokens"]), list(trace["messages"])
        except (ValueError, KeyError, TypeError):
            log.warning("message %d: its stored tool calls cannot be read; left out", history[index].id)
            continue
        if tokens > room:
            break
        room -= tokens
        kept[index] = messages
    if not kept:
        return chat
    out: list[ChatMessage] = []
    for index, message in enumerate(chat):
        out.extend(kept.get(index, ()))
        out.append(message)
    return out
