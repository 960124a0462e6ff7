"""The fake model server speaks the OpenAI wire format and fails exactly as asked."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.fakes.openai import FakeOpenAI


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-fake-key-000000") as server:
        yield server


async def post(fake: FakeOpenAI, text: str, *, stream: bool = False, key: str = "sk-fake-key-000000", **extra: object):
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "stream": stream, **extra}
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{fake.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )


def events(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]


async def test_plain_reply_with_usage(fake: FakeOpenAI) -> None:
    response = await post(fake, "hi")
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "echo: hi"
    assert body["usage"]["completion_tokens"] > 0 and fake.calls == 1


async def test_stream_reassembles_and_ends_with_done(fake: FakeOpenAI) -> None:
    response = await post(fake, "one two three four", stream=True, stream_options={"include_usage": True})
    data = events(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: one two three four"
    assert "usage" in chunks[-1] and chunks[-1]["choices"] == []
    assert ": keep-alive" in response.text


async def test_usage_chunk_only_when_asked(fake: FakeOpenAI) -> None:
    data = events(await post(fake, "hi", stream=True))
    assert not any("usage" in json.loads(d) for d in data[:-1])


async def test_wrong_key_is_401_without_echoing_it(fake: FakeOpenAI) -> None:
    response = await post(fake, "hi", key="sk-wrong-key-1111111")
    assert response.status_code == 401 and "sk-wrong" not in response.text


async def test_fault_with_a_count_then_success(fake: FakeOpenAI) -> None:
    first = await post(fake, "[[429:ra=0.5x1]] hi")
    assert first.status_code == 429 and first.headers["retry-after"] == "0.5"
    assert (await post(fake, "[[429:ra=0.5x1]] hi")).status_code == 200


@pytest.mark.parametrize(
    ("token", "status", "code"),
    [
        ("quota", 429, "insufficient_quota"),
        ("500", 500, None),
        ("403", 403, "unsupported_country_region_territory"),
        ("404", 404, "model_not_found"),
        ("context", 400, "context_length_exceeded"),
        ("llamactx", 400, 400),
    ],
)
async def test_error_faults(fake: FakeOpenAI, token: str, status: int, code: object) -> None:
    response = await post(fake, f"[[{token}]]")
    assert response.status_code == status and response.json()["error"]["code"] == code


async def test_cut_stream_has_no_done(fake: FakeOpenAI) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await post(fake, "[[cut]] a b c d e f g h", stream=True)


async def test_midstream_error_event_with_200(fake: FakeOpenAI) -> None:
    response = await post(fake, "[[midstream]] a b c d e f", stream=True)
    assert response.status_code == 200
    assert "error" in json.loads(events(response)[-1]) and "[DONE]" not in response.text


async def test_malformed_and_empty(fake: FakeOpenAI) -> None:
    assert (await post(fake, "[[malformed]]")).text == "{not json"
    assert (await post(fake, "[[empty]]")).json()["choices"][0]["message"]["content"] == ""


async def test_slow_first_byte(fake: FakeOpenAI) -> None:
    started = time.monotonic()
    await post(fake, "[[slow:0.3]]")
    assert time.monotonic() - started >= 0.3


async def test_context_limit(fake: FakeOpenAI) -> None:
    fake.context_limit_chars = 10
    assert (await post(fake, "x" * 11)).json()["error"]["code"] == "context_length_exceeded"
