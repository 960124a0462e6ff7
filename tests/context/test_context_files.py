"""Files on the messages around a mention (a thread's earlier messages, a replied-to message): read by the backfill
before the question, once, within the budget and the image cap; their text and image marks stored with the message,
their images kept with its row. The real core, a real SQLite file and the loopback fake model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot import texts
from bot.context import Files, FileSettings
from bot.conversation import ConversationCore, TurnSettings
from bot.guards import KeySource
from bot.llm import ChatClient, Endpoint, RetryPolicy, TokenCounter, model_http_client
from bot.messages import ContextMessage, ReplyKind
from bot.store import Store, open_store
from tests.context import samples
from tests.context.test_backfill import Thread, mention, said
from tests.context.test_files import FileOnHand, decoded
from tests.fakes.openai import FakeOpenAI, image_parts
from tests.store.test_store import rows


@dataclass
class Bot:
    core: ConversationCore
    fake: FakeOpenAI
    store: Store


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter.load()


@pytest.fixture
async def bot(tmp_path: Path, counter: TokenCounter) -> AsyncIterator[Bot]:
    store = await open_store(str(tmp_path / "teambot.db"))
    async with FakeOpenAI() as fake, model_http_client(5.0) as http:
        llm = ChatClient(
            http,
            Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr("sk-test"))),
            retry=RetryPolicy(max_retries=0, base_delay=0.01, deadline=10),
        )
        files = Files(FileSettings(max_images=2), counter)
        core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", 8000), files=files)
        yield Bot(core, fake, store)
    await store.close()


def with_files(n: int, text: str, *files: FileOnHand, name: str = "Grace") -> ContextMessage:
    return said(n, text, name=name, attachments=tuple(f.attachment() for f in files))


async def test_a_thread_messages_image_and_text_file_reach_the_model_on_the_mention_turn(bot: Bot) -> None:
    screenshot = FileOnHand("screenshot.png", samples.small_png((20, 200, 20)), "image/png")
    log = FileOnHand("deploy.log", b"ERROR: disk full on db-3\n", "text/plain")
    thread = Thread()
    thread.add(said(1, "the deploy failed"), with_files(2, "here is what I saw", screenshot, log, name="Linus"))
    reply = await bot.core.handle(mention(3, "what went wrong?", thread))
    assert reply.kind is ReplyKind.ANSWER
    messages = bot.fake.requests[-1]["messages"]
    [image] = [p for m in messages for p in image_parts(m)]
    assert decoded(image).getpixel((1, 1))[1] > 150  # the green screenshot
    linus = messages[-2]
    text = "".join(p["text"] for p in linus["content"] if p["type"] == "text")
    assert text.startswith("Linus: here is what I saw")
    assert "[Image: screenshot.png]" in text and "ERROR: disk full on db-3" in text and "deploy.log" in text
    assert messages[-1]["content"] == "Ada: what went wrong?"
    # The image is kept with the context message's row, so later turns show it from the store.
    [(row,)] = await rows(bot.store, "SELECT id FROM messages WHERE platform_message_id = 'slack:T1:C1:2.0'")
    assert await rows(bot.store, "SELECT message_id FROM message_images") == [(row,)]
    assert (screenshot.fetched, log.fetched) == (1, 1)


async def test_a_second_mention_does_not_fetch_a_context_messages_files_again(bot: Bot) -> None:
    """A replied-to message comes with every reply to it: stored once, its files fetched once."""
    picture = FileOnHand("trace.png", samples.small_png((200, 20, 20)), "image/png")
    replied = with_files(1, "the stack trace", picture, name="Linus")
    await bot.core.handle(mention(2, "why?", context=[replied]))
    await bot.core.handle(mention(3, "and how to fix it?", context=[replied]))
    assert picture.fetched == 1
    # The second turn still shows it: from the store, through the mark stored with the message.
    messages = bot.fake.requests[-1]["messages"]
    assert len([p for m in messages for p in image_parts(m)]) == 1


async def test_context_images_over_the_cap_are_not_fetched_newest_first(bot: Bot) -> None:
    old, middle, new = (FileOnHand(f"{n}.png", samples.small_png(), "image/png") for n in ("old", "middle", "new"))
    thread = Thread()
    thread.add(with_files(1, "first", old), with_files(2, "second", middle), with_files(3, "third", new))
    reply = await bot.core.handle(mention(4, "compare them", thread))
    assert reply.kind is ReplyKind.ANSWER
    assert (old.fetched, middle.fetched, new.fetched) == (0, 1, 1)
    stored = await rows(bot.store, "SELECT content FROM messages WHERE platform_message_id = 'slack:T1:C1:1.0'")
    why = texts.FILE_TOO_MANY_IMAGES.format(count=2)
    assert stored == [("first\n\n" + texts.FILE_NOT_READ_MARK.format(name="old.png", why=why),)]


async def test_a_context_file_that_cannot_be_read_is_marked_and_the_turn_answered(bot: Bot) -> None:
    gone = FileOnHand("gone.txt", b"", "text/plain", error="the file is no longer there")
    blob = FileOnHand("data.bin", bytes(range(256)) * 8, "application/zip")
    thread = Thread()
    thread.add(with_files(1, "", gone, blob))
    reply = await bot.core.handle(mention(2, "what is in these?", thread))
    assert reply.kind is ReplyKind.ANSWER
    content = bot.fake.requests[-1]["messages"][-2]["content"]
    assert content.startswith("Grace: ")
    assert texts.FILE_NOT_READ_MARK.format(name="gone.txt", why="the file is no longer there") in content
    assert "data.bin (not read:" in content
    assert blob.fetched == 0  # of a type the bot cannot read: never fetched


async def test_a_long_text_file_on_a_context_message_is_cut_to_the_budget(bot: Bot, counter: TokenCounter) -> None:
    huge = FileOnHand("huge.log", b"".join(b"line %d: all is well\n" % n for n in range(20_000)), "text/plain")
    thread = Thread()
    thread.add(with_files(1, "the full log", huge))
    await bot.core.handle(mention(2, "anything odd?", thread))
    [(content, tokens)] = await rows(
        bot.store, "SELECT content, tokens FROM messages WHERE platform_message_id = 'slack:T1:C1:1.0'"
    )
    assert "huge.log" in content and "line 0: all is well" in content
    assert tokens <= 8000 // 2 + 16  # within the single-message cap of the history budget
    assert tokens == counter.count_message(f"Grace: {content}")  # as the model sees it, after the name
