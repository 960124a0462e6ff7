"""The limits on how long one model call may take, over the wire against the loopback fake.

A server that keeps a stream open without answering (``: keep-alive`` comments for ever) must not hold a turn:
the cap on the whole call (``RetryPolicy.max_call``, TEAMBOT_MAX_CALL_SECONDS) ends it, fallback included, and
comment lines do not count as the progress the read timeout waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import errors
from bot.conversation import ConversationCore, TurnSettings
from bot.guards import ConcurrencyGate, Guards
from bot.llm import ChatClient, Endpoint, RetryPolicy, TokenCounter, model_http_client
from bot.messages import ConversationKey, IncomingMessage, ReplyKind
from bot.store import open_store
from tests.fakes.openai import FakeOpenAI

KEEPALIVE = "[[keepalive]] tell me everything about the sea"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def stream(c: ChatClient, text: str) -> tuple[str, list[str]]:
    pieces: list[str] = []

    async def on_delta(piece: str) -> None:
        pieces.append(piece)

    completion = await c.stream([{"role": "user", "content": text}], on_delta)
    return completion.text, pieces


async def test_comments_after_the_first_text_are_cut_at_the_cap_on_the_call(fake: FakeOpenAI) -> None:
    # The read timeout (30 s) never fires: a comment arrives every 50 ms. Only the cap can end this call.
    async with model_http_client(30) as http:
        c = ChatClient(http, Endpoint("primary", fake.base_url, "m"), retry=RetryPolicy(deadline=1.5, max_call=2.0))
        started = time.monotonic()
        with pytest.raises(errors.StreamInterrupted) as caught:
            async with asyncio.timeout(10):
                await stream(c, KEEPALIVE)
        elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 4.0
    assert caught.value.partial == "echo: " and isinstance(caught.value.cause, errors.Timeout)
    assert "TEAMBOT_MAX_CALL_SECONDS" in str(caught.value)
    await fake.wait_until(lambda: fake.keepalive_streams == 0)  # the connection was let go, not left open
    assert fake.calls == 1  # text had reached the user: no retry


async def test_comments_do_not_count_as_progress_for_the_read_timeout(fake: FakeOpenAI) -> None:
    # The cap is far away; what ends this call is a read timeout of 0.5 s that comment lines do not reset.
    async with model_http_client(0.5) as http:
        c = ChatClient(http, Endpoint("primary", fake.base_url, "m"), retry=RetryPolicy(deadline=60, max_call=60))
        started = time.monotonic()
        with pytest.raises(errors.StreamInterrupted) as caught:
            async with asyncio.timeout(10):
                await stream(c, KEEPALIVE)
        elapsed = time.monotonic() - started
    assert elapsed < 3.0
    assert caught.value.partial == "echo: " and "comment lines do not count" in str(caught.value)


async def test_a_steady_stream_longer_than_the_deadline_is_not_cut(fake: FakeOpenAI) -> None:
    # The deadline bounds the wait for the answer to start, not its length: a long answer arriving steadily
    # is whole as long as it fits the cap.
    fake.chunk_delay = 0.1
    words = " ".join(f"w{i}" for i in range(15))  # about 1.5 s of streaming
    async with model_http_client(0.5) as http:
        c = ChatClient(http, Endpoint("primary", fake.base_url, "m"), retry=RetryPolicy(deadline=0.8, max_call=30))
        text, pieces = await stream(c, words)
    assert text == f"echo: {words}" and "".join(pieces) == text


@pytest.mark.parametrize("fallback_does", ["keep-alive comments", "nothing"])
async def test_the_cap_covers_the_fallback_too(fake: FakeOpenAI, fallback_does: str) -> None:
    # The primary never answers and uses up its 2.5 s deadline; then the fallback streams comments, or is silent
    # too. With limits per endpoint this would take 2.5 + 3 s (or 2.5 + 2.5 s); the cap is on the whole call, so
    # it ends at 3 s.
    async with contextlib.AsyncExitStack() as stack:
        silent = await stack.enter_async_context(FakeOpenAI(first_byte_delay=60))
        second = fake
        if fallback_does == "nothing":
            second = await stack.enter_async_context(FakeOpenAI(first_byte_delay=60))
        http = await stack.enter_async_context(model_http_client(30))
        c = ChatClient(
            http,
            Endpoint("primary", silent.base_url, "m"),
            fallback=Endpoint("fallback", second.base_url, "small"),
            retry=RetryPolicy(max_retries=0, deadline=2.5, max_call=3.0),
        )
        started = time.monotonic()
        expected = errors.StreamInterrupted if fallback_does == "keep-alive comments" else errors.Timeout
        with pytest.raises(expected):
            async with asyncio.timeout(15):
                await stream(c, KEEPALIVE)
        elapsed = time.monotonic() - started
    assert 3.0 <= elapsed < 4.5
    assert silent.calls == 1 and second.calls == 1 and second.requests[0]["model"] == "small"


async def test_a_held_stream_gives_back_the_slot_and_the_lock(fake: FakeOpenAI, tmp_path: Path) -> None:
    # One concurrency slot and one conversation: the question behind the held stream waits for both, and gets
    # its answer once the cap has cut the first one off.
    store = await open_store(str(tmp_path / "teambot.db"))
    try:
        async with model_http_client(30) as http:
            llm = ChatClient(
                http, Endpoint("primary", fake.base_url, "m"), retry=RetryPolicy(deadline=1.0, max_call=1.5)
            )
            guards = Guards(gate=ConcurrencyGate(1, 10))
            core = ConversationCore(store, llm, TokenCounter.load(), TurnSettings("You are a test bot.", 4000), guards)
            key = ConversationKey("slack", "T1", "C1")
            held = asyncio.create_task(core.handle(IncomingMessage(key, "m1", "U1", "Ada", KEEPALIVE), _ignore))
            await fake.wait_for_requests(1)
            behind = asyncio.create_task(core.handle(IncomingMessage(key, "m2", "U2", "Bob", "and now?"), _ignore))
            async with asyncio.timeout(10):
                first, second = await asyncio.gather(held, behind)
    finally:
        await store.close()
    assert first.kind is ReplyKind.PARTIAL and "cut off" in first.text
    assert second.kind is ReplyKind.ANSWER and second.text == "echo: Bob: and now?"


async def _ignore(piece: str) -> None:
    return None


async def test_a_cancellation_from_outside_is_not_taken_for_a_time_limit(fake: FakeOpenAI) -> None:
    # The call's own timer cancels the task when a limit runs out, and only that cancellation becomes a Timeout:
    # a turn cancelled from outside (shutdown, /reset) is cancelled, and the same client serves the next call.
    async with model_http_client(0.5) as http:
        c = ChatClient(http, Endpoint("primary", fake.base_url, "m"), retry=RetryPolicy(deadline=60, max_call=60))
        call = asyncio.create_task(stream(c, KEEPALIVE))
        await fake.wait_for_requests(1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(10):
                await call
        text, _ = await stream(c, "hi")
    assert text == "echo: hi"
