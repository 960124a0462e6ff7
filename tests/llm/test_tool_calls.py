"""The model client and tools: ``tools`` sent only when given, tool calls read from a stream's deltas (joined by
index, split anywhere) and from a whole message, from a loopback server answering from a script."""

from __future__ import annotations

import json
from typing import Any

from bot.llm import ToolCall
from tests.llm.script import PROMPT, Script, chunk, json_reply, sse, streamed

TOOLS = [{"type": "function", "function": {"name": "time__now", "description": "", "parameters": {}}}]


def calls_chunk(*deltas: dict[str, Any], finish: str | None = None) -> dict[str, object]:
    return {"model": "m", "choices": [{"index": 0, "delta": {"tool_calls": list(deltas)}, "finish_reason": finish}]}


async def test_no_tools_given_sends_no_tools(script: Script) -> None:
    script.answer(streamed(sse(chunk("hi"), chunk(finish="stop"))))

    async def on_delta(piece: str) -> None:
        pass

    completion = await script.client().stream(PROMPT, on_delta)
    body = json.loads(script.requests[0].content)
    assert "tools" not in body and "tool_choice" not in body and completion.tool_calls == ()


async def test_streamed_tool_calls_are_joined_by_index_across_chunks(script: Script) -> None:
    events = sse(
        {"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]},
        calls_chunk(
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "time__now", "arguments": ""}}
        ),
        calls_chunk(
            {"index": 1, "id": "call_b", "type": "function", "function": {"name": "time__now", "arguments": '{"ci'}}
        ),
        calls_chunk({"index": 0, "function": {"arguments": '{"city": "To'}}),
        calls_chunk({"index": 1, "function": {"arguments": 'ty": "Oslo"}'}}),
        calls_chunk({"index": 0, "function": {"arguments": 'kyo"}'}}),
        chunk(finish="tool_calls"),
    )
    script.answer(streamed(events))
    pieces: list[str] = []

    async def on_delta(piece: str) -> None:
        pieces.append(piece)

    completion = await script.client().stream(PROMPT, on_delta, tools=TOOLS, tool_choice="none")
    assert completion.tool_calls == (
        ToolCall("call_a", "time__now", '{"city": "Tokyo"}'),
        ToolCall("call_b", "time__now", '{"city": "Oslo"}'),
    )
    assert completion.finish_reason == "tool_calls" and completion.text == "" and pieces == []
    body = json.loads(script.requests[0].content)
    assert body["tools"] == TOOLS and body["tool_choice"] == "none"


async def test_text_and_a_tool_call_in_one_stream(script: Script) -> None:
    events = sse(
        chunk("Let me "),
        chunk("check."),
        calls_chunk({"index": 0, "id": "c", "function": {"name": "time__now", "arguments": "{}"}}, finish="tool_calls"),
    )
    pieces: list[str] = []

    async def on_delta(piece: str) -> None:
        pieces.append(piece)

    completion = await script.client(streamed(events)).stream(PROMPT, on_delta, tools=TOOLS)
    assert completion.text == "Let me check." == "".join(pieces)
    assert completion.tool_calls == (ToolCall("c", "time__now", "{}"),)


async def test_whole_tool_calls_are_read_from_the_message(script: Script) -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "time__now", "arguments": '{"city": "Oslo"}'}},
            # Some servers send the arguments as an object.
            {"id": "c2", "type": "function", "function": {"name": "time__now", "arguments": {"city": "Lima"}}},
            {"id": "c3", "type": "function", "function": {"arguments": "{}"}},  # no name: not a call
        ],
    }
    body = {"model": "m", "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
    completion = await script.client(json_reply(200, body)).complete(PROMPT, tools=TOOLS)
    assert completion.tool_calls == (
        ToolCall("c1", "time__now", '{"city": "Oslo"}'),
        ToolCall("c2", "time__now", '{"city": "Lima"}'),
    )
    assert completion.text == ""
