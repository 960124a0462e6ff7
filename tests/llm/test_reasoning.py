"""Reasoning models through the client: refused parameters learned from the server's 400, the effort sent, and the
model's thinking kept apart from its answer (``reasoning_content`` / ``reasoning`` deltas, ``<think>`` blocks)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from bot import errors
from bot.llm import ChatClient, Endpoint, GenerationParams, ModelHTTP, RetryPolicy, ThinkSplitter, model_http_client
from tests.fakes.openai import THOUGHT, THOUGHT_MARK, FakeOpenAI
from tests.llm.script import Reply, Script, Seen, json_reply

PROMPT = [{"role": "user", "content": "Ada: hi"}]


def _client(fake: FakeOpenAI, http: ModelHTTP, model: str, **params: object) -> ChatClient:
    return ChatClient(http, Endpoint("fake", fake.base_url, model), params=GenerationParams(**params))  # type: ignore[arg-type]


class Pieces:
    def __init__(self) -> None:
        self.answer: list[str] = []
        self.thinking: list[str] = []

    async def on_answer(self, piece: str) -> None:
        self.answer.append(piece)

    async def on_thinking(self, piece: str) -> None:
        self.thinking.append(piece)


# --- refused parameters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-5-mini", "o3-mini"])
async def test_a_reasoning_model_just_works_with_the_default_settings(
    model: str, caplog: pytest.LogCaptureFixture
) -> None:
    """max_tokens and a temperature are refused one after the other; each is learned once, then never sent."""
    caplog.set_level(logging.WARNING, "bot.llm")
    async with FakeOpenAI() as fake, model_http_client(10.0) as http:
        llm = _client(fake, http, model, temperature=0.3)
        first = await llm.complete(PROMPT)
        assert first.text == "echo: Ada: hi"
        assert [sorted(set(r) - {"model", "messages"}) for r in fake.requests] == [
            ["max_tokens", "temperature"],
            ["max_completion_tokens", "temperature"],
            ["max_completion_tokens"],
        ]
        second = await llm.stream(PROMPT, Pieces().on_answer)
        assert second.text == "echo: Ada: hi"
        # Remembered: the next call goes out right the first time.
        assert fake.calls == 4
        assert fake.requests[-1]["max_completion_tokens"] == 1024
        assert "temperature" not in fake.requests[-1]
    learned = [r.getMessage() for r in caplog.records if "refuses" in r.getMessage()]
    assert len(learned) == 2, learned
    assert "max_tokens" in learned[0] and "max_completion_tokens" in learned[0]
    assert "temperature" in learned[1] and "leaving it out" in learned[1]


async def test_what_was_learned_is_kept_per_model() -> None:
    async with FakeOpenAI() as fake, model_http_client(10.0) as http:
        llm = _client(fake, http, "gpt-5")
        await llm.complete(PROMPT)
        assert fake.calls == 2
        # Another model on the same server has not refused anything: it gets max_tokens as configured.
        await llm.complete(PROMPT, model="fake-model")
        assert "max_tokens" in fake.requests[-1]
        await llm.complete(PROMPT)
        assert "max_completion_tokens" in fake.requests[-1] and fake.calls == 4


async def test_the_effort_is_sent_and_left_out_where_the_model_refuses_it() -> None:
    async with FakeOpenAI() as fake, model_http_client(10.0) as http:
        llm = _client(fake, http, "gpt-5", reasoning_effort="high")
        await llm.complete(PROMPT)
        assert fake.requests[-1]["reasoning_effort"] == "high"
        # A channel's own effort wins over the configured one.
        await llm.complete(PROMPT, effort="low")
        assert fake.requests[-1]["reasoning_effort"] == "low"
        # An older model refuses the parameter (unsupported_parameter): asked again without it, and remembered.
        answer = await llm.complete(PROMPT, model="gpt-4o-mini")
        assert answer.text == "echo: Ada: hi"
        assert "reasoning_effort" in fake.requests[-2] and "reasoning_effort" not in fake.requests[-1]
        calls = fake.calls
        await llm.complete(PROMPT, model="gpt-4o-mini")
        assert fake.calls == calls + 1


async def test_an_effort_value_the_model_refuses_is_left_out() -> None:
    async with FakeOpenAI() as fake, model_http_client(10.0) as http:
        llm = _client(fake, http, "o3", reasoning_effort="minimal", max_tokens_param="max_completion_tokens")
        assert (await llm.complete(PROMPT)).text == "echo: Ada: hi"
        assert fake.requests[0]["reasoning_effort"] == "minimal"
        assert "reasoning_effort" not in fake.requests[1] and fake.calls == 2


async def test_a_server_that_knows_only_max_tokens_gets_it_back() -> None:
    async with FakeOpenAI() as fake, model_http_client(10.0) as http:
        llm = _client(fake, http, "legacy-13b", max_tokens_param="max_completion_tokens")
        assert (await llm.complete(PROMPT)).text == "echo: Ada: hi"
        assert fake.requests[-1]["max_tokens"] == 1024 and "max_completion_tokens" not in fake.requests[-1]


async def test_a_parameter_refused_under_both_names_is_reported_not_looped(script: Script) -> None:
    refusal = {"message": "no", "type": "invalid_request_error", "code": "unsupported_parameter"}
    seen: list[dict[str, object]] = []

    def handler(request: Seen) -> Reply:
        body = json.loads(request.content)
        seen.append(body)
        param = "max_tokens" if "max_tokens" in body else "max_completion_tokens"
        return json_reply(400, {"error": refusal | {"param": param}})

    script.answer(*[handler] * 3)
    llm = ChatClient(script.http, Endpoint("mock", f"{script.url}/v1", "m"))
    with pytest.raises(errors.BadRequest):
        await llm.complete(PROMPT)
    assert len(seen) == 2


async def test_other_bad_requests_are_not_retried(script: Script) -> None:
    seen: list[int] = []

    def handler(request: Seen) -> Reply:
        seen.append(1)
        body = {"error": {"message": "bad 'temperature'", "type": "invalid_request_error", "code": "invalid_value"}}
        return json_reply(400, body | {"param": "temperature"})

    script.answer(*[handler] * 3)
    llm = ChatClient(script.http, Endpoint("mock", f"{script.url}/v1", "m"), params=GenerationParams(temperature=0.5))
    with pytest.raises(errors.BadRequest):
        await llm.complete(PROMPT)
    assert seen == [1]


# --- thinking kept apart --------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["[[thinking]]", "[[reasoning]]", "[[think]]"])
@pytest.mark.parametrize("streaming", [True, False])
async def test_thinking_never_reaches_the_answer(token: str, streaming: bool) -> None:
    prompt = [{"role": "user", "content": f"Ada: {token} hi"}]
    pieces = Pieces()
    async with FakeOpenAI() as fake, model_http_client(10.0) as http:
        llm = _client(fake, http, "fake-model")
        if streaming:
            result = await llm.stream(prompt, pieces.on_answer, on_reasoning=pieces.on_thinking)
        else:
            result = await llm.complete(prompt, on_reasoning=pieces.on_thinking)
    assert result.text == f"echo: Ada: {token} hi"
    assert THOUGHT_MARK not in result.text and "think>" not in result.text
    assert result.reasoning.strip() == THOUGHT
    assert "".join(pieces.thinking).strip() == THOUGHT
    if streaming:
        assert "".join(pieces.answer) == result.text
        assert len(pieces.thinking) > 1  # it streamed, piece by piece


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 9, 100])
def test_the_think_splitter_gives_the_same_split_however_the_text_is_cut(size: int) -> None:
    text = "\n<think>\nweigh it </thin k> up</think>\n\nThe answer: 42 <think> stays."
    splitter = ThinkSplitter()
    thinking, answer = "", ""
    for start in range(0, len(text), size):
        t, a = splitter.feed(text[start : start + size])
        thinking, answer = thinking + t, answer + a
    t, a = splitter.close()
    assert (thinking + t, answer + a) == ("\nweigh it </thin k> up", "The answer: 42 <think> stays.")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<thi", ("", "<thi")),  # a tag that never finished is text
        ("<think>still thinking", ("still thinking", "")),  # cut off while thinking: no answer
        ("Plain answer.", ("", "Plain answer.")),
        ("  <b>bold</b>", ("", "  <b>bold</b>")),
    ],
)
def test_the_think_splitter_at_the_end_of_the_text(text: str, expected: tuple[str, str]) -> None:
    splitter = ThinkSplitter()
    thinking, answer = splitter.feed(text)
    more_thinking, rest = splitter.close()
    assert (thinking + more_thinking, answer + rest) == expected


async def test_a_long_thought_counts_as_progress_for_the_answer_deadline() -> None:
    """A model that thinks aloud for longer than the wait for the answer to start is at work, not stalled."""
    async with FakeOpenAI() as fake, model_http_client(10.0) as http:
        llm = ChatClient(
            http,
            Endpoint("fake", fake.base_url, "fake-model"),
            retry=RetryPolicy(max_retries=0, deadline=0.3, max_call=10.0),
        )
        slow_thoughts = Pieces()

        async def slow(piece: str) -> None:
            slow_thoughts.thinking.append(piece)
            await asyncio.sleep(0.05)  # the thinking takes ~0.6 s in all, past the 0.3 s deadline

        prompt = [{"role": "user", "content": "Ada: [[thinking]] hi"}]
        result = await llm.stream(prompt, slow_thoughts.on_answer, on_reasoning=slow)
    assert result.text == "echo: Ada: [[thinking]] hi"


async def test_a_refusal_that_names_the_parameter_only_in_its_message_is_learned(script: Script) -> None:
    """Some servers leave ``param`` out; the parameter is then read from the quoted name in the message."""
    seen: list[dict[str, object]] = []

    def handler(request: Seen) -> Reply:
        body = json.loads(request.content)
        seen.append(body)
        if "max_tokens" in body:
            message = "Unsupported parameter: 'max_tokens' is not supported with this model."
            error = {"message": message, "type": "invalid_request_error", "code": "unsupported_parameter"}
            return json_reply(400, {"error": error})
        answer = {"role": "assistant", "content": "fine"}
        return json_reply(200, {"choices": [{"message": answer, "finish_reason": "stop"}]})

    script.answer(*[handler] * 3)
    llm = ChatClient(script.http, Endpoint("mock", f"{script.url}/v1", "m"))
    assert (await llm.complete(PROMPT)).text == "fine"
    assert [sorted(b) for b in seen] == [
        ["max_tokens", "messages", "model"],
        ["max_completion_tokens", "messages", "model"],
    ]
