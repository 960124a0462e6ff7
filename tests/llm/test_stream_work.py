"""The work a streamed answer costs per token: what the short paths skip must not change what a stream gives.

At 500 conversations the event loop reads about 2,800 streamed tokens a second (BENCHMARKS.md); each token's event
is read without coroutines of its own and without a timer of aiohttp's. These tests hold both to the answers the
general path gives.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot import errors
from bot.llm import ChatClient, Endpoint, RetryPolicy, model_http_client
from bot.llm.sse import StreamResult, consume_sse, take_event
from tests.fakes.openai import FakeOpenAI


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def test_a_streamed_answer_sets_no_read_timer_per_token(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiohttp's read limit cancelled and set a loop timer for every piece of the body; the stream's own stall limit
    # (progress, event by event) times a streamed body's silences instead.
    loop = asyncio.get_running_loop()
    read_timers: list[float] = []
    call_later = loop.call_later

    def counting(delay: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__name__", "") == "_on_read_timeout":
            read_timers.append(delay)
        return call_later(delay, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_later", counting)
    fake.chunk_delay = 0.005  # each word its own piece of the body
    words = " ".join(f"w{i}" for i in range(30))
    pieces: list[str] = []

    async def on_delta(piece: str) -> None:
        pieces.append(piece)

    async with model_http_client(30) as http:
        c = ChatClient(http, Endpoint("primary", fake.base_url, "m"))
        first = await c.stream([{"role": "user", "content": words}], on_delta)
        read_timers.clear()
        second = await c.stream([{"role": "user", "content": words}], on_delta)  # the same connection, again
    assert first.text == second.text == f"echo: {words}" and "".join(pieces) == first.text * 2
    # Set for the response's head (the limit on waiting for an answer stays), not once more per token.
    assert 1 <= len(read_timers) <= 2 and read_timers[0] == 30


async def test_a_stream_that_falls_silent_after_its_first_text_still_times_out(fake: FakeOpenAI) -> None:
    # aiohttp's read timer is off for a streamed body: silence (no bytes at all, not even comments) after the first
    # text must still end the call at the stall limit (0.5 s), long before the deadline and the cap (60 s). Text
    # comes in pieces after the head, so aiohttp's timer, set again when the head came, is gone when it falls silent.
    fake.chunk_delay = 0.05
    fake.stall_at = 2
    async with model_http_client(0.5) as http:
        c = ChatClient(http, Endpoint("primary", fake.base_url, "m"), retry=RetryPolicy(deadline=60, max_call=60))
        pieces: list[str] = []

        async def on_delta(piece: str) -> None:
            pieces.append(piece)

        loop_time = asyncio.get_running_loop().time
        began = loop_time()
        with pytest.raises(errors.StreamInterrupted) as caught:
            async with asyncio.timeout(10):
                await c.stream([{"role": "user", "content": "[[stall:30]] a b c"}], on_delta)
        assert loop_time() - began < 3.0
        assert isinstance(caught.value.cause, errors.Timeout) and caught.value.partial == "".join(pieces) != ""
        assert fake.calls == 1  # text had reached the user: no retry
        # The stalled connection was let go: the next call on the same client is answered.
        again = await c.stream([{"role": "user", "content": "hi"}], on_delta)
    assert again.text == "echo: hi"


#: Events of every shape the short path must leave to the general one, between plain tokens.
EVENTS: list[dict[str, Any]] = [
    {"model": "m1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"model": "m1", "choices": [{"index": 0, "delta": {"content": "Hello"}}]},
    {"model": "m2", "choices": [{"index": 0, "delta": {"content": " a"}, "finish_reason": None}]},
    {"choices": [{"delta": {"content": " b"}}]},
    {"model": "", "choices": [{"delta": {"content": " c"}}], "usage": None},
    {"choices": [{"delta": {"content": " d"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
    {"choices": [{"delta": {"content": " e", "reasoning_content": None, "reasoning": ""}}]},
    {"choices": [{"delta": {"content": " f", "reasoning": "hmm"}}]},
    {"choices": [{"delta": {"content": " g"}}, {"index": 1, "delta": {"content": " h"}}]},
    {"choices": [{"delta": {"content": 5}}]},
    {"choices": [{"delta": None}]},
    {"choices": [{"delta": {"content": "", "tool_calls": [{"index": 0, "id": "t", "function": {"name": "f"}}]}}]},
    {"choices": [{"delta": {"content": " i", "tool_calls": [{"index": 1, "id": "u", "function": {"name": "g"}}]}}]},
    {"choices": []},
    {"model": "m3", "choices": [{"delta": {"content": " j"}, "finish_reason": "length"}]},
    {"model": "m4", "choices": [{"delta": {"content": " k"}}]},
]

#: An answer that starts with its thinking in the text: no token is the answer's until the block has ended.
THINKING_FIRST: list[dict[str, Any]] = [
    {"model": "m", "choices": [{"delta": {"content": "<th"}}]},
    {"model": "m", "choices": [{"delta": {"content": "ink>hm"}}]},
    {"model": "m", "choices": [{"delta": {"content": "</think>\n\nThe"}}]},
    {"model": "m", "choices": [{"delta": {"content": " answer"}}]},
    {"model": "m", "choices": [{"delta": {}, "finish_reason": "stop"}]},
]


async def _general(events: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], StreamResult]:
    """What the general path (each event's text through ``take_event``) makes of ``events``."""
    said: list[tuple[str, str]] = []

    async def on_delta(piece: str) -> None:
        said.append(("answer", piece))

    async def on_reasoning(piece: str) -> None:
        said.append(("thinking", piece))

    result = StreamResult()
    for event in events:
        await take_event(json.dumps(event), result, on_delta, on_reasoning)
    await result.close(on_delta, on_reasoning)
    return said, result


class Pieces:
    """aiohttp's reader of a body, as consume_sse uses it: the stream handed out in pieces of a given size."""

    def __init__(self, stream: bytes, size: int) -> None:
        self._pieces = iter([stream[i : i + size] for i in range(0, len(stream), size)])

    async def readany(self) -> bytes:
        return next(self._pieces, b"")


@pytest.mark.parametrize("events", [EVENTS, THINKING_FIRST], ids=["shapes", "thinking-first"])
@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
async def test_the_short_path_for_tokens_gives_what_the_general_path_gives(
    size: int, events: list[dict[str, Any]]
) -> None:
    expected, general = await _general(events)
    said: list[tuple[str, str]] = []

    async def on_delta(piece: str) -> None:
        said.append(("answer", piece))

    async def on_reasoning(piece: str) -> None:
        said.append(("thinking", piece))

    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    result = StreamResult()
    await consume_sse(Pieces(body, size), result, on_delta, lambda: 0.0, on_reasoning)  # type: ignore[arg-type]
    assert said == expected
    assert (result.text, result.reasoning, result.model, result.finish_reason, result.usage) == (
        general.text,
        general.reasoning,
        general.model,
        general.finish_reason,
        general.usage,
    )
    assert result.tool_calls() == general.tool_calls()
    if events is THINKING_FIRST:
        assert said == [("thinking", "hm"), ("answer", "The"), ("answer", " answer")]
        return
    # The events above do reach every rule of the short path's refusals.
    assert result.model == "m4" and result.finish_reason == "length" and result.usage is not None
    assert ("thinking", "hmm") in said and ("answer", " h") in said and [c.name for c in result.tool_calls()] == ["f"]
