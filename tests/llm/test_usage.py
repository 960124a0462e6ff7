"""Usage as billed: the parts of a call's tokens a server reports (cached prompt, reasoning), and only those."""

from __future__ import annotations

from typing import Any

import pytest

from bot.llm import ChatClient, Endpoint, model_http_client
from bot.llm.sse import usage_from
from bot.messages import Usage
from tests.fakes.openai import CACHE_BLOCK, CACHE_MIN_TOKENS, FakeOpenAI


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # OpenAI's shape: both parts reported, 0 meaning "none", which is known.
        (
            {
                "prompt_tokens": 2048,
                "completion_tokens": 300,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
            Usage(2048, 300, cached_tokens=1920, reasoning_tokens=0),
        ),
        # llama.cpp and older servers: no details at all, which is unknown, not zero.
        ({"prompt_tokens": 10, "completion_tokens": 3}, Usage(10, 3, cached_tokens=None, reasoning_tokens=None)),
        # A details object with null or garbled parts says nothing either.
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 3,
                "prompt_tokens_details": None,
                "completion_tokens_details": {"reasoning_tokens": "lots"},
            },
            Usage(10, 3),
        ),
        # A part above its total is capped: cached can never make the prompt cost less than nothing.
        (
            {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 99}},
            Usage(10, 3, cached_tokens=10),
        ),
    ],
)
def test_usage_details_are_read_where_reported_and_unknown_where_not(raw: dict[str, Any], expected: Usage) -> None:
    assert usage_from(raw) == expected


async def _ask(fake: FakeOpenAI, prompt: list[dict[str, str]], *, stream: bool) -> Usage:
    async with model_http_client(10) as http:
        client = ChatClient(http, Endpoint("fake", fake.base_url, "fake-model"))
        if stream:

            async def ignore(piece: str) -> None:
                return None

            completion = await client.stream(prompt, ignore)  # type: ignore[arg-type]
        else:
            completion = await client.complete(prompt)  # type: ignore[arg-type]
    assert completion.usage is not None
    return completion.usage


@pytest.mark.parametrize("stream", [False, True])
async def test_cached_and_reasoning_tokens_arrive_over_the_wire(stream: bool) -> None:
    system = {"role": "system", "content": "x" * 4 * 1500}  # 1,500 of the fake's tokens
    async with FakeOpenAI(usage_details=True) as fake:
        first = await _ask(
            fake, [system, {"role": "user", "content": "Ada: one [[reasoning_tokens:40]]"}], stream=stream
        )
        second = await _ask(fake, [system, {"role": "user", "content": "Ada: two"}], stream=stream)
    # The first request found nothing cached (known: 0), and thought 40 tokens, counted in its completion.
    assert first.cached_tokens == 0 and first.reasoning_tokens == 40 and first.completion_tokens > 40
    # The second shares the system prompt (1,500 tokens + "Ada: "): 1,024 and three whole blocks of 128.
    assert second.cached_tokens == CACHE_MIN_TOKENS + 3 * CACHE_BLOCK
    assert second.reasoning_tokens == 0


async def test_a_server_without_details_leaves_them_unknown() -> None:
    async with FakeOpenAI() as fake:
        usage = await _ask(fake, [{"role": "user", "content": "Ada: hi"}], stream=True)
    assert usage.cached_tokens is None and usage.reasoning_tokens is None
