"""The fake model server speaks the OpenAI wire format and fails exactly as asked."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]

KEY = "sk-fake-key-000000"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as http:
        yield http


def body(text: str, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]
    return {"model": "m", "messages": messages, "stream": stream, **extra}


async def post(
    client: httpx.AsyncClient, fake: FakeOpenAI, text: str, *, stream: bool = False, key: str = KEY, **extra: Any
) -> httpx.Response:
    return await client.post(
        f"{fake.base_url}/chat/completions",
        json=body(text, stream=stream, **extra),
        headers={"Authorization": f"Bearer {key}"},
    )


def events(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.text.split("\n\n") if line.startswith("data: ")]


def streamed_text(data: list[str]) -> str:
    chunks = [json.loads(d) for d in data if d != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


async def read_until_dropped(client: httpx.AsyncClient, fake: FakeOpenAI, text: str) -> list[str]:
    lines: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream(
            "POST",
            f"{fake.base_url}/chat/completions",
            json=body(text, stream=True, stream_options={"include_usage": True}),
            headers={"Authorization": f"Bearer {KEY}"},
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                lines.append(line)
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


async def test_plain_reply_with_usage_and_records(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    response = await post(client, fake, "hi", temperature=0.2, max_tokens=50)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    completion = response.json()
    assert completion["object"] == "chat.completion"
    choice = completion["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "echo: hi", "refusal": None}
    assert choice["finish_reason"] == "stop"
    # ceil(chars / 4): "be brief" + "hi" is 10 chars -> 3; "echo: hi" is 8 chars -> 2.
    assert completion["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert fake.calls == 1 and fake.requests[0]["max_tokens"] == 50
    assert fake.headers[0]["Authorization"] == f"Bearer {KEY}"


async def test_reply_callable_sees_the_messages(client: httpx.AsyncClient) -> None:
    async with FakeOpenAI(reply=lambda messages: f"{len(messages)} messages") as fake:
        response = await post(client, fake, "hi", key="anything")
    assert response.json()["choices"][0]["message"]["content"] == "2 messages"


async def test_models_list(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    response = await client.get(f"{fake.base_url}/models", headers={"Authorization": f"Bearer {KEY}"})
    assert response.headers["content-type"] == "application/json"
    assert response.json()["data"][0]["id"] == "fake-model"
    assert (await client.get(f"{fake.base_url}/models")).status_code == 401  # no key, no list


async def test_stream_reassembles_exactly_and_ends_with_done(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    text = "one  two\nthree\t four "
    response = await post(client, fake, text, stream=True, stream_options={"include_usage": True})
    assert response.headers["content-type"] == "text/event-stream"
    data = events(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert streamed_text(data) == f"echo: {text}"
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) >= 3
    finish, usage = chunks[-2], chunks[-1]
    assert finish["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 7
    assert ": keep-alive\n\n" in response.text
    assert response.text.endswith("data: [DONE]\n\n")


async def test_usage_chunk_only_when_asked(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    data = events(await post(client, fake, "hi there", stream=True))
    assert data[-1] == "[DONE]"
    assert not any("usage" in json.loads(d) for d in data[:-1])
    assert json.loads(data[-2])["choices"][0]["finish_reason"] == "stop"


async def test_wrong_or_missing_key_is_401_without_echoing_it(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    response = await post(client, fake, "hi", key="sk-wrong-key-1111111")
    assert response.status_code == 401 and "sk-wrong" not in response.text
    assert error_of(response) == {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    missing = await client.post(f"{fake.base_url}/chat/completions", json=body("hi"))
    assert missing.status_code == 401 and fake.calls == 2


async def test_429_has_retry_after(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    response = await post(client, fake, "[[429]] hi")
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    assert error_of(response)["type"] == "requests" and error_of(response)["code"] == "rate_limit_exceeded"


async def test_429_with_fractional_retry_after_once_then_success(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    first = await post(client, fake, "[[429:ra=0.2x1]] hi")
    assert first.status_code == 429 and first.headers["retry-after"] == "0.2"
    second = await post(client, fake, "[[429:ra=0.2x1]] hi")
    assert second.status_code == 200 and fake.calls == 2


async def test_count_is_per_message_text(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    statuses = [(await post(client, fake, "[[500x2]] a")).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert (await post(client, fake, "[[500x2]] b")).status_code == 500
    assert (await post(client, fake, "[[500]] c")).status_code == 500
    assert (await post(client, fake, "[[500]] c")).status_code == 500


@pytest.mark.parametrize(
    ("token", "status", "kind", "code"),
    [
        ("quota", 429, "insufficient_quota", "insufficient_quota"),
        ("500", 500, "server_error", None),
        ("502", 502, "server_error", None),
        ("503", 503, "server_error", None),
        ("504", 504, "server_error", None),
        ("401", 401, "invalid_request_error", "invalid_api_key"),
        ("403", 403, "request_forbidden", "unsupported_country_region_territory"),
        ("404", 404, "invalid_request_error", "model_not_found"),
        ("context", 400, "invalid_request_error", "context_length_exceeded"),
        ("llamactx", 400, "exceed_context_size_error", 400),
    ],
)
async def test_error_faults(
    fake: FakeOpenAI, client: httpx.AsyncClient, token: str, status: int, kind: str, code: object
) -> None:
    response = await post(client, fake, f"please [[{token}]]", stream=True)
    assert response.status_code == status
    error = error_of(response)
    assert error["type"] == kind and error["code"] == code and error["message"]
    assert "retry-after" not in response.headers


async def test_only_the_last_user_message_carries_faults(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    messages = [{"role": "user", "content": "[[500]]"}, {"role": "assistant", "content": "x"}]
    messages.append({"role": "user", "content": "fine"})
    response = await client.post(
        f"{fake.base_url}/chat/completions",
        json={"model": "m", "messages": messages},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 200


async def test_cut_stream_drops_without_finish_usage_or_done(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    text = "[[cut]] a b c d e f g h"
    data = await read_until_dropped(client, fake, text)
    assert "[DONE]" not in data
    chunks = [json.loads(d) for d in data]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert not any(c.get("usage") or c["choices"][0]["finish_reason"] for c in chunks)
    received = streamed_text(data)
    assert received and f"echo: {text}".startswith(received) and received != f"echo: {text}"


async def test_cut_plain_body_is_truncated(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await post(client, fake, "[[cut]]")


async def test_midstream_error_event_with_200(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    response = await post(client, fake, "[[midstream]] a b c d e f", stream=True)
    assert response.status_code == 200
    data = events(response)
    assert "[DONE]" not in data
    assert json.loads(data[-1])["error"]["type"] == "server_error"
    assert streamed_text(data[:-1]).startswith("echo: ")


async def test_midstream_with_a_one_word_reply_still_sends_text_first(client: httpx.AsyncClient) -> None:
    async with FakeOpenAI(reply=lambda messages: "word") as fake:
        data = events(await post(client, fake, "[[midstream]]", stream=True))
    assert streamed_text(data[:-1]) == "word" and "error" in json.loads(data[-1])


async def test_malformed_plain_and_stream(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    plain = await post(client, fake, "[[malformed]]")
    assert plain.status_code == 200 and plain.text == "{not json"
    streamed = await post(client, fake, "[[malformed]]", stream=True)
    data = events(streamed)
    assert data[1] == "{not json"
    assert streamed_text([data[0], *data[2:]]) == "echo: [[malformed]]"


async def test_empty_plain_and_stream(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    plain = await post(client, fake, "[[empty]]")
    assert plain.json()["choices"][0]["message"]["content"] == ""
    data = events(await post(client, fake, "[[empty]]", stream=True))
    chunks = [json.loads(d) for d in data[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": ""}, {}]
    assert data[-1] == "[DONE]"


async def test_context_limit(client: httpx.AsyncClient) -> None:
    async with FakeOpenAI(context_limit_chars=20) as fake:
        assert (await post(client, fake, "x" * 12)).status_code == 200  # 8 + 12 chars: at the limit
        response = await post(client, fake, "x" * 13)
    assert response.status_code == 400
    assert error_of(response)["code"] == "context_length_exceeded" and error_of(response)["param"] == "messages"


async def test_slow_delays_the_first_byte(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    response = await post(client, fake, "[[slow:0.2]]")
    assert time.monotonic() - started >= 0.2
    assert response.json()["choices"][0]["message"]["content"] == "echo: [[slow:0.2]]"


async def test_first_byte_delay_applies_to_everything(client: httpx.AsyncClient) -> None:
    async with FakeOpenAI(api_key=KEY, first_byte_delay=0.1) as fake:
        started = time.monotonic()
        response = await post(client, fake, "hi", key="wrong")
        assert time.monotonic() - started >= 0.1 and response.status_code == 401


async def test_stall_pauses_after_the_first_text_chunk(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    arrivals: list[tuple[float, str]] = []
    async with client.stream(
        "POST",
        f"{fake.base_url}/chat/completions",
        json=body("[[stall:0.2]] a b c", stream=True),
        headers={"Authorization": f"Bearer {KEY}"},
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line.removeprefix("data: ")))
    assert arrivals[-1][1] == "[DONE]"
    assert streamed_text([d for _, d in arrivals]) == "echo: [[stall:0.2]] a b c"
    # Role chunk, first text chunk, then the silence; a busy machine may read the first chunk a little late.
    assert arrivals[2][0] - arrivals[1][0] >= 0.15


async def test_tokens_combine(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    response = await post(client, fake, "[[slow:0.1]] [[503x1]]")
    assert time.monotonic() - started >= 0.1 and response.status_code == 503
    assert (await post(client, fake, "[[slow:0.1]] [[503x1]]")).status_code == 200


async def test_unknown_tokens_are_plain_text(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    response = await post(client, fake, "[[teapot]] [[500x]]")
    assert response.status_code == 200


async def test_invalid_json_is_400_and_counted(fake: FakeOpenAI, client: httpx.AsyncClient) -> None:
    response = await client.post(f"{fake.base_url}/chat/completions", content=b"{nope", headers={"Authorization": KEY})
    assert response.status_code == 400 and fake.calls == 1 and fake.requests == []


async def test_wait_for_requests(client: httpx.AsyncClient) -> None:
    async with FakeOpenAI(first_byte_delay=0.2) as fake:
        pending = asyncio.create_task(post(client, fake, "hi"))
        await fake.wait_for_requests(1, timeout=1.0)
        assert not pending.done() and fake.in_flight == 1
        assert (await pending).status_code == 200
        with pytest.raises(TimeoutError):
            await fake.wait_for_requests(2, timeout=0.1)


async def test_run_standalone_on_a_port_in_use_it_says_so_in_one_line() -> None:
    async with FakeOpenAI() as taken:
        port = taken.base_url.rsplit(":", 1)[1].split("/")[0]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.fakes.openai",
            "--port",
            port,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1 and out == b""
    expected = f"python -m tests.fakes.openai: cannot listen on port {port}: Address already in use"
    assert err.decode().splitlines() == [expected]


async def test_prompt_cache_counts_the_shared_prefix_in_openai_steps(client: httpx.AsyncClient) -> None:
    async with FakeOpenAI(usage_details=True) as fake:

        async def cached(messages: list[dict[str, str]]) -> int:
            response = await client.post(f"{fake.base_url}/chat/completions", json={"model": "m", "messages": messages})
            return int(response.json()["usage"]["prompt_tokens_details"]["cached_tokens"])

        long = "a" * 4 * 2000  # 2,000 tokens of the fake's four characters each
        assert await cached([{"role": "system", "content": long}, {"role": "user", "content": "q1"}]) == 0
        # Shared: the 2,000-token system prompt: 1,024 + 7 blocks of 128 (1,920); the rest is not a whole block.
        assert await cached([{"role": "system", "content": long}, {"role": "user", "content": "q2"}]) == 1920
        # Below 1,024 shared tokens nothing counts, and a role that differs ends the shared prefix.
        assert await cached([{"role": "system", "content": "a" * 4 * 1000}, {"role": "user", "content": "x"}]) == 0
        assert await cached([{"role": "user", "content": long}]) == 0
        # Expired entries are forgotten.
        fake.cache_ttl = 0.0
        assert await cached([{"role": "system", "content": long}, {"role": "user", "content": "q3"}]) == 0
