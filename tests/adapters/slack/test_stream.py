"""Native streaming on its own, through the real slack_sdk against the fake Slack: pieces that split a mention,
a stream that breaks off midway, a stream left open by a failed turn."""

from __future__ import annotations

import asyncio
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


async def test_an_answer_whole_before_anything_showed_is_one_post_with_its_feedback_buttons(fake: FakeSlack) -> None:
    reply = native(fake)
    await reply.feed("Hi <!here>, ")
    await reply.feed("**all** done")
    reply.complete()  # the core: the answer is whole; the reply follows once stored
    # A round trip to Slack gives the pump its turn: it must not start a stream for text whose finish is near.
    await reply._client.auth_test()
    await reply.finish("Hi <!here>, **all** done", feedback=7)
    assert fake.calls_to("chat.startStream") == [] and fake.calls_to("chat.stopStream") == []
    [post] = fake.calls_to("chat.postMessage")
    [message] = fake.posted
    markdown = "Hi <\u2060!here>, **all** done"  # the same Markdown a stream shows, the mention broken up
    assert post["text"] == markdown and message.thread_ts == "1.1" and not message.streamed
    shown, buttons = message.blocks or []
    assert shown == {"type": "markdown", "text": markdown}
    assert buttons["type"] == "context_actions" and buttons["block_id"] == "teambot_feedback:7"


async def test_an_answer_still_coming_streams_at_once(fake: FakeSlack) -> None:
    reply = native(fake)
    await reply.feed("the first words")
    await fake.wait_for(lambda: bool(fake.streamed()))  # not held back: only a whole answer waits for its finish
    await reply.feed(", then the rest")
    reply.complete()
    await reply.finish("the first words, then the rest", feedback=3)
    [message] = fake.streamed()
    assert message.text == "the first words, then the rest" and not message.streaming
    assert fake.calls_to("chat.postMessage") == []


async def test_a_whole_answer_slack_will_not_post_goes_out_through_the_fallback(fake: FakeSlack) -> None:
    reply = native(fake)
    await reply.feed("short answer")
    reply.complete()
    fake.refuse("chat.postMessage", "invalid_blocks", times=1)
    await reply.finish("short answer", feedback=5)
    assert reply.fell_back
    first, second = fake.calls_to("chat.postMessage")
    assert first["blocks"][0]["type"] == "markdown"
    # The post-then-edit path: mrkdwn sections and the plain pair of buttons.
    assert [b["type"] for b in second["blocks"]] == ["section", "actions"]
    [message] = fake.posted
    assert message.text == "short answer"


def pumps() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "slack-native-stream"]


async def test_an_answer_whole_before_the_loop_turns_needs_no_pump(fake: FakeSlack) -> None:
    reply = native(fake)
    await reply.feed("Hi <!here>, ")
    await reply.feed("**all** done")
    reply.complete()  # in the same turn of the loop as its words: an instant model's stream read at once
    for _ in range(5):
        await asyncio.sleep(0)
    assert pumps() == [] and fake.calls == []
    await reply.finish("Hi <!here>, **all** done", feedback=7)
    assert pumps() == []
    [post] = fake.calls_to("chat.postMessage")
    assert post["text"] == "Hi <\u2060!here>, **all** done" and fake.calls_to("chat.startStream") == []
    [message] = fake.posted
    assert message.blocks is not None and message.blocks[-1]["block_id"] == "teambot_feedback:7"


async def test_a_reply_cancelled_before_its_pump_started_shows_nothing(fake: FakeSlack) -> None:
    reply = native(fake)
    await reply.feed("the first words")
    await reply.cancel()  # the turn failed or was refused before the loop turned
    for _ in range(5):
        await asyncio.sleep(0)
    assert pumps() == [] and fake.calls == []


async def test_a_reply_finished_before_its_pump_started_is_shown_once(fake: FakeSlack) -> None:
    # The pump's start was already due when finish came: finish shows the reply, and the pump does not start.
    reply = native(fake)
    await reply.feed("the whole ")
    await reply.feed("answer")
    await reply.finish("the whole answer")
    for _ in range(5):
        await asyncio.sleep(0)
    assert pumps() == []
    [message] = fake.posted
    assert message.text == "the whole answer" and len(fake.calls) == 1
