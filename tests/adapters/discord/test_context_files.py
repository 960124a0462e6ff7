"""Files on the messages around a Discord mention (the replied-to message, a thread's earlier messages, a forward)
through the real discord.py client against the fake Discord and model: read on the mention's turn, fetched once,
from Discord's own file hosts only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot import texts
from tests.adapters.discord import test_app as base
from tests.adapters.discord.test_app import Discord
from tests.adapters.discord.test_context import ask, chain, with_content
from tests.context import samples
from tests.fakes.discord import GRACE, OTHER_CHANNEL_ID, THREAD_ID
from tests.fakes.elsewhere import Elsewhere
from tests.fakes.openai import image_parts

# The Discord fixtures of test_app: the fake model, and the adapter started against the fake Discord.
model, overrides, granted_intents, discord_bot = base.model, base.overrides, base.granted_intents, base.discord_bot


@pytest.fixture
async def elsewhere() -> AsyncIterator[Elsewhere]:
    async with Elsewhere() as server:
        yield server


def shown(bot: Discord) -> int:
    """How many image parts the model got in the last request."""
    return len([p for m in bot.model.requests[-1]["messages"] for p in image_parts(m)])


@with_content[0]
@with_content[1]
async def test_a_reply_to_a_message_with_an_image_shows_the_image_once_fetched(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    screenshot = fake.add_attachment("error.png", samples.small_png((20, 20, 200)), "image/png")
    trace = fake.message_create("this is what I get", author=GRACE, attachments=(screenshot,))
    fake.post(trace)
    await ask(discord_bot, "what does this mean?", referenced=trace)
    assert shown(discord_bot) == 1
    grace = discord_bot.model.requests[-1]["messages"][-2]
    text = "".join(p["text"] for p in grace["content"] if p["type"] == "text")
    assert text.startswith("Grace: this is what I get") and "[Image: error.png]" in text
    assert len(fake.attachment_requests) == 1
    # Another reply to the same message: stored already, so not fetched again, and still shown from the store.
    await ask(discord_bot, "and how do I fix it?", referenced=trace)
    assert len(fake.attachment_requests) == 1
    assert shown(discord_bot) == 1


@with_content[0]
@with_content[1]
async def test_a_text_file_earlier_in_a_thread_is_read(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    log = fake.add_attachment("build.log", b"step migrate: exit 1 (relation users exists)\n", "text/plain")
    fake.post(
        fake.message_create("deploy failed", author=GRACE, message_id=THREAD_ID),
        fake.message_create("", author=GRACE, channel_id=THREAD_ID, attachments=(log,)),
    )
    await ask(discord_bot, "why did it fail?", channel=THREAD_ID)
    content = discord_bot.model.requests[-1]["messages"][-2]["content"]
    assert content.startswith("Grace: ") and "step migrate: exit 1 (relation users exists)" in content


@with_content[0]
@with_content[1]
async def test_a_reply_to_a_forwarded_image_shows_it(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    photo = fake.add_attachment("board.png", samples.small_png(), "image/png", channel_id=OTHER_CHANNEL_ID)
    original = fake.message_create("", author=GRACE, channel_id=OTHER_CHANNEL_ID, attachments=(photo,))
    forward = fake.message_create("", author=GRACE, forwarded=original)
    fake.post(forward)
    await ask(discord_bot, "what is on the board?", referenced=forward)
    assert shown(discord_bot) == 1


@with_content[0]
@with_content[1]
async def test_an_attachment_on_another_host_in_the_chain_is_never_fetched(
    discord_bot: Discord, elsewhere: Elsewhere
) -> None:
    fake = discord_bot.fake
    planted = {**fake.add_attachment("a.txt", b"x", "text/plain"), "url": f"{elsewhere.url}/a.txt"}
    [message] = chain(fake, (GRACE, "see attached"))
    message["attachments"] = [planted]
    await ask(discord_bot, "what does it say?", referenced=message)
    assert elsewhere.requests == []
    content = discord_bot.model.requests[-1]["messages"][-2]["content"]
    assert texts.FILE_NOT_READ_MARK.format(name="a.txt", why=texts.FILE_HOST_REFUSED) in content
