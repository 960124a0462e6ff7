"""Native streaming on its own, through the real slack_sdk against the fake Slack: pieces that split a mention,
a stream that breaks off midway, a stream left open by a failed turn."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import SlackSink
from adapters.slack.stream import NativeReply, neutralise_mentions
from adapters.streaming import StreamingReply
from tests.fakes.slack import FakeSlack


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server


def native(fake: FakeSlack, refusals: list[str] | None = None) -> NativeReply:
    client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
    refused = refusals if refusals is not None else []
    return NativeReply(
        client,
        channel="C1",
        thread_ts="1.1",
        recipient_team="T1",
        recipient_user="U1",
        interval=0.05,
        fallback=lambda: StreamingReply(SlackSink(client, "C1", "1.1"), interval=0.05, limit=3900),
        on_refused=refused.append,
    )


@pytest.mark.parametrize(
    ("text", "pinged"),
    [("<!here>", False), ("@channel", False), ("<@U123>", False), ("mail a@here.com", True), ("<!DOCTYPE>", True)],
)
def test_neutralise_mentions_breaks_only_mentions(text: str, pinged: bool) -> None:
    out = neutralise_mentions(text)
    assert out.replace("\u2060", "") == text
    assert (out == text) is pinged


async def test_a_mention_split_between_two_pieces_is_still_broken_up(fake: FakeSlack) -> None:
    reply = native(fake)
    await reply.feed("Hi <!ev")
    await fake.wait_for(lambda: bool(fake.streamed()))
    assert fake.streamed()[0].text == "Hi "  # the possible mention waits for the rest
    await reply.feed("eryone> and <@U1")
    await fake.wait_for(lambda: len(fake.streamed()[0].appends) >= 2)
    await reply.finish("Hi <!everyone> and <@U1>")
    [message] = fake.streamed()
    assert message.text == "Hi <\u2060!everyone> and <\u2060@U1>" and not message.streaming


async def test_a_stream_that_breaks_off_continues_in_a_post_without_losing_or_repeating_text(
    fake: FakeSlack,
) -> None:
    refusals: list[str] = []
    reply = native(fake, refusals)
    await reply.feed("first part, ")
    await fake.wait_for(lambda: bool(fake.streamed()))
    fake.refuse("chat.appendStream", "message_not_in_streaming_state", times=1)
    await reply.feed("second part, ")
    await fake.wait_for(lambda: bool(fake.calls_to("chat.postMessage")))
    await reply.feed("third part.")
    await reply.finish("first part, second part, third part.")
    assert reply.fell_back and refusals == []  # a broken stream is not a refusal to remember
    streamed, posted = fake.posted
    assert streamed.text == "first part, " and not streamed.streaming  # closed, not left open
    assert posted.text == "second part, third part." and not posted.streamed


async def test_a_cancelled_reply_closes_its_open_stream(fake: FakeSlack) -> None:
    reply = native(fake)
    await reply.feed("some text")
    await fake.wait_for(lambda: bool(fake.streamed()))
    await reply.cancel()
    assert not fake.streamed()[0].streaming and fake.calls_to("chat.stopStream")
