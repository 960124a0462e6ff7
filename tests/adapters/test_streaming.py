"""The streamer's contract with a platform: first post at once, throttled edits, final text whole."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import httpx
import pytest

from adapters.discord import DiscordAdapter
from adapters.slack import SlackAdapter
from adapters.streaming import StreamingReply
from bot import texts
from bot.config import Settings
from bot.messages import ConversationKey
from bot.runtime import open_core
from tests.fakes.discord import BOT_USER, CHANNEL_ID, GUILD_ID, FakeDiscord
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack, event_envelope, mention, signed_headers
from tests.test_conversation import until


class Channel:
    """A platform channel in memory: numbered messages and a log of every call with its time."""

    def __init__(self, fail_edits: int = 0) -> None:
        self.messages: list[str] = []
        self.calls: list[tuple[str, float]] = []
        self._fail_edits = fail_edits

    async def post(self, text: str) -> int:
        self.calls.append(("post", time.monotonic()))
        self.messages.append(text)
        return len(self.messages) - 1

    async def edit(self, handle: int, text: str) -> None:
        self.calls.append(("edit", time.monotonic()))
        if self._fail_edits:
            self._fail_edits -= 1
            raise RuntimeError("platform said no")
        self.messages[handle] = text


async def test_a_reply_complete_before_the_first_post_is_posted_once_whole() -> None:
    channel = Channel()
    stream = StreamingReply(channel, interval=1.0, limit=100)
    for piece in ("Hel", "lo ", "there"):
        await stream.feed(piece)
    await stream.finish("Hello there")
    assert channel.messages == ["Hello there"]
    assert [c for c, _ in channel.calls] == ["post"]


class ButtonsChannel(Channel):
    """A channel whose last message of a finished reply carries feedback buttons, as on Discord."""

    def __init__(self) -> None:
        super().__init__()
        self.buttons: dict[int, int] = {}

    async def post(self, text: str, feedback: int | None = None) -> int:  # type: ignore[override]
        handle = await super().post(text)
        if feedback is not None:
            self.buttons[handle] = feedback
        return handle

    async def edit(self, handle: int, text: str, feedback: int | None = None) -> None:  # type: ignore[override]
        await super().edit(handle, text)
        if feedback is not None:
            self.buttons[handle] = feedback


async def test_an_answer_whole_before_its_first_post_goes_out_once_with_its_buttons() -> None:
    channel = ButtonsChannel()
    stream = StreamingReply(channel, interval=1.0, limit=100)
    for piece in ("Hel", "lo ", "there"):
        await stream.feed(piece)
    stream.text_complete()  # the core says so before it stores the reply, which takes a while
    for _ in range(5):
        await asyncio.sleep(0)  # the pump's turns while the reply is stored: it must not post the text yet
    assert channel.calls == []
    await stream.finish("Hello there", feedback=7)
    assert [c for c, _ in channel.calls] == ["post"]
    assert channel.messages == ["Hello there"] and channel.buttons == {0: 7}


def pumps() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "stream-pump"]


async def test_an_answer_whole_before_the_loop_turns_needs_no_pump() -> None:
    channel = ButtonsChannel()
    stream = StreamingReply(channel, interval=1.0, limit=100)
    for piece in ("Hel", "lo ", "there"):
        await stream.feed(piece)
    stream.text_complete()  # in the same turn of the loop as its words: an instant model's stream read at once
    for _ in range(5):
        await asyncio.sleep(0)
    assert pumps() == [] and channel.calls == []
    await stream.finish("Hello there", feedback=7)
    assert channel.messages == ["Hello there"] and channel.buttons == {0: 7}


async def test_a_reply_cancelled_before_its_pump_started_posts_nothing() -> None:
    channel = Channel()
    stream = StreamingReply(channel, interval=1.0, limit=100)
    await stream.feed("the first words")
    await stream.cancel()  # the turn failed or was refused before the loop turned
    for _ in range(5):
        await asyncio.sleep(0)
    assert channel.calls == [] and pumps() == []


async def test_without_the_complete_signal_the_text_is_posted_at_once_and_the_buttons_come_by_edit() -> None:
    channel = ButtonsChannel()
    stream = StreamingReply(channel, interval=1.0, limit=100)
    await stream.feed("Hello there")
    await until(lambda: channel.calls)  # a streamed answer's first words go out as soon as they arrive
    await stream.finish("Hello there", feedback=7)
    assert [c for c, _ in channel.calls] == ["post", "edit"]
    assert channel.buttons == {0: 7}


async def test_first_text_is_posted_at_once_and_edits_are_throttled() -> None:
    channel = Channel()
    stream = StreamingReply(channel, interval=0.2, limit=1000)
    await stream.feed("first")
    await asyncio.sleep(0)  # the pump posts as soon as it runs
    for i in range(30):
        await stream.feed(f" {i}")
        await asyncio.sleep(0.02)
    await stream.finish("the whole final text")
    kinds = [c for c, _ in channel.calls]
    assert kinds[0] == "post" and kinds.count("post") == 1
    edits = [t for c, t in channel.calls if c == "edit"]
    gaps = [b - a for a, b in itertools.pairwise(edits[:-1])]  # the final edit goes out at once
    assert 2 <= len(edits) <= 6
    assert all(gap >= 0.19 for gap in gaps)
    assert channel.messages == ["the whole final text"]


async def test_long_text_continues_in_further_messages() -> None:
    channel = Channel()
    stream = StreamingReply(channel, interval=0.01, limit=50)
    text = "\n\n".join(f"paragraph {i} " + "x" * 30 for i in range(6))
    await stream.feed(text[:40])
    await asyncio.sleep(0.05)
    await stream.finish(text)
    assert len(channel.messages) >= 4 and all(len(m) <= 50 for m in channel.messages)
    assert "".join(channel.messages).replace("\n", "") == text.replace("\n", "")


async def test_a_failed_intermediate_edit_is_caught_up_by_the_final() -> None:
    channel = Channel(fail_edits=1)
    stream = StreamingReply(channel, interval=0.01, limit=100)
    await stream.feed("a")
    await asyncio.sleep(0.02)
    await stream.feed("b")
    await asyncio.sleep(0.05)
    await stream.finish("ab and the rest")
    assert channel.messages == ["ab and the rest"]


async def test_render_is_applied_to_what_the_platform_sees() -> None:
    channel = Channel()
    stream = StreamingReply(channel, interval=1.0, limit=100, render=str.upper)
    await stream.finish("shout")
    assert channel.messages == ["SHOUT"]


async def test_on_first_post_runs_once() -> None:
    seen: list[int] = []

    async def hook() -> None:
        seen.append(1)

    channel = Channel()
    stream = StreamingReply(channel, interval=0.01, limit=50, on_first_post=hook)
    await stream.feed("x" * 10)
    await asyncio.sleep(0.02)
    await stream.finish("y " * 60)
    assert seen == [1] and len(channel.messages) > 1


@pytest.mark.parametrize("native", [True, False], ids=["native-stream", "post-and-edit"])
async def test_a_stop_past_the_deadline_returns_once_the_reply_is_marked_cut_off(tmp_path: Path, native: bool) -> None:
    secret = "drain-test-secret"
    async with FakeOpenAI(chunk_delay=0.2) as model, FakeSlack(users={"U1": {"display_name": "Ada"}}) as fake:
        settings = Settings(
            openai_base_url=model.base_url,
            db=str(tmp_path / "teambot.db"),
            slack_bot_token=fake.bot_token,
            slack_signing_secret=secret,
            slack_api_url=fake.api_url,
            http_host="127.0.0.1",
            http_port=0,
            stream_edit_interval=0.2,
            slack_native_streaming=native,
        )
        async with open_core(settings) as core, httpx.AsyncClient() as http:
            adapter = SlackAdapter(core, settings)
            await adapter.start()
            body = json.dumps(event_envelope(mention("<@UBOT> " + " ".join(f"w{i}" for i in range(50)), ts="1.1")))
            headers = {"Content-Type": "application/json", **signed_headers(secret, body)}
            await http.post(f"http://127.0.0.1:{adapter.http_port}/slack/events", content=body, headers=headers)
            await fake.wait_for(lambda: bool(fake.posted), 10)
            await adapter.stop(drain_seconds=0.1)
            # Nothing awaited here: stop() itself returns only once the cut-off turn has finished its last calls,
            # while the Slack session and the database were still open for them.
            [reply] = fake.posted
            assert reply.text.startswith("echo:") and reply.text.endswith(texts.STOPPING + "]_")
            assert not reply.streaming
            assert await core.store.count_messages(ConversationKey("slack", "T1", "C1")) == 0


async def test_a_discord_stop_past_the_deadline_marks_the_reply_before_disconnecting(tmp_path: Path) -> None:
    async with FakeOpenAI(chunk_delay=0.2) as model, FakeDiscord() as fake:
        settings = Settings(
            openai_base_url=model.base_url,
            db=str(tmp_path / "teambot.db"),
            discord_token="fake-discord-token",
            stream_edit_interval=0.2,
        )
        async with open_core(settings) as core:
            with fake.patch_discord():
                adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05)
                await asyncio.wait_for(adapter.start(), 10)
                words = " ".join(f"w{i}" for i in range(50))
                trigger = fake.message_create(f"<@{BOT_USER['id']}> {words}", mentions=(BOT_USER,))
                await fake.dispatch("MESSAGE_CREATE", trigger)
                await fake.wait_for(lambda: bool(fake.channel_messages(CHANNEL_ID)), 10)
                stopping = asyncio.create_task(adapter.stop(drain_seconds=0.3))
                # Still connected while it drains, but no longer taking new questions.
                late = fake.message_create(f"<@{BOT_USER['id']}> one more", mentions=(BOT_USER,))
                await fake.dispatch("MESSAGE_CREATE", late)
                await stopping
            # The edit went out before the client closed its HTTP session, and stop() waited for it.
            [reply] = fake.channel_messages(CHANNEL_ID)
            assert reply.content.startswith("echo:") and reply.content.endswith(texts.STOPPING + "]_")
            assert await core.store.count_messages(ConversationKey("discord", GUILD_ID, CHANNEL_ID)) == 0
            assert model.calls == 1


async def test_a_status_line_shows_alone_then_under_the_text_and_the_answer_replaces_it() -> None:
    seen: list[str] = []

    async def hook() -> None:
        seen.append("first words")

    channel = Channel()
    stream = StreamingReply(channel, interval=0.01, limit=100, on_first_post=hook, status_line=lambda s: f"({s})")
    await stream.status("Looking up the time…")
    await stream.status(None)  # taken away before anything showed... then set again: shown alone
    await stream.status("Looking up the time…")
    await until(lambda: channel.messages == ["(Looking up the time…)"])
    assert seen == []  # a status line alone is not the answer's first words
    await stream.feed("It is")
    await until(lambda: channel.messages == ["It is"])  # the words replace the line
    assert seen == ["first words"]
    await stream.status("Checking again…")
    await until(lambda: channel.messages == ["It is\n\n(Checking again…)"])
    await stream.finish("It is noon.")
    assert channel.messages == ["It is noon."] and seen == ["first words"]
