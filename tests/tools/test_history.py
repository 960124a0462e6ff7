"""Stored tool calls put back into the history: newest first, whole or not at all, within what the budget leaves."""

from __future__ import annotations

import json
import logging

import pytest

from bot.store import StoredMessage
from bot.tools import with_traces


def trace(tokens: int, label: str) -> str:
    calls = [{"id": label, "type": "function", "function": {"name": "t", "arguments": "{}"}}]
    messages = [
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": label, "content": f"result {label}"},
    ]
    return json.dumps({"tokens": tokens, "messages": messages})


def history(*traces: str | None) -> list[StoredMessage]:
    out = []
    for n, raw in enumerate(traces):
        out.append(StoredMessage(2 * n + 1, "user", "Ada", f"q{n}", 10, 0.0))
        out.append(StoredMessage(2 * n + 2, "assistant", None, f"a{n}", 10, 0.0, raw))
    return out


def chat(stored: list[StoredMessage]) -> list[dict[str, object]]:
    return [{"role": m.role, "content": m.content} for m in stored]


def shape(messages: list[dict[str, object]]) -> list[str]:
    return [str(m.get("content") or m["role"]) for m in messages]


def test_traces_go_before_their_replies_newest_first_within_the_room_left() -> None:
    stored = history(trace(30, "a"), None, trace(30, "c"))
    # 60 tokens of messages; 100 leaves 40: room for the newest trace only, and then no older one.
    assert shape(with_traces(stored, chat(stored), 100)) == [
        "q0",
        "a0",
        "q1",
        "a1",
        "q2",
        "assistant",
        "result c",
        "a2",
    ]
    assert shape(with_traces(stored, chat(stored), 120)) == [
        "q0", "assistant", "result a", "a0", "q1", "a1", "q2", "assistant", "result c", "a2",
    ]  # fmt: skip
    assert with_traces(stored, chat(stored), 60) == chat(stored)


def test_an_unreadable_trace_is_left_out_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    stored = history("{not json", trace(5, "b"))
    with caplog.at_level(logging.WARNING, logger="bot.tools"):
        assert shape(with_traces(stored, chat(stored), 1000)) == ["q0", "a0", "q1", "assistant", "result b", "a1"]
    assert "message 2: its stored tool calls cannot be read; left out" in caplog.text
