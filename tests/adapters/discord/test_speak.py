"""Where the bot speaks on Discord, through the real discord.py against the fake Discord: follow-ups in a thread it
answered in, ``/speak mention`` and ``/speak all``, ``/scope person`` (bot.speak). Messages that do not mention the
bot carry their text only with the Message Content intent, which these tests switch on."""

from __future__ import annotations

from typing import Any

import pytest

from bot import texts
from tests.adapters.discord import test_app as base
from tests.adapters.discord.test_app import BOT_MENTION, Discord, command
from tests.fakes.discord import ADMIN_ROLE_ID, BOT_USER, CHANNEL_ID, GRACE, INTENT_MESSAGE_CONTENT, THREAD_ID

model, discord_bot = base.model, base.discord_bot


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {"discord_message_content": True}


@pytest.fixture
def granted_intents() -> int:
    return INTENT_MESSAGE_CONTENT


def asked(discord_bot: Discord) -> list[str]:
    return [r["messages"][-1]["content"] for r in discord_bot.model.requests]


async def say(
    discord_bot: Discord, text: str, *, channel_id: str = CHANNEL_ID, mention: bool = False, **kw: Any
) -> None:
    fake = discord_bot.fake
    if mention:
        payload = fake.message_create(f"{BOT_MENTION} {text}", channel_id=channel_id, mentions=(BOT_USER,), **kw)
    else:
        payload = fake.message_create(text, channel_id=channel_id, **kw)
    await fake.dispatch("MESSAGE_CREATE", payload)


async def settle(discord_bot: Discord, n: int, *, channel_id: str = THREAD_ID) -> None:
    """A mention after the message under test, awaited to its answer: the message before it was dealt with first
    (a turn it started would have held the conversation before this one)."""
    await say(discord_bot, f"and now {n}", channel_id=channel_id, mention=True)
    await discord_bot.wait_text(f"echo: Ada: and now {n}", channel=channel_id)


async def test_a_follow_up_in_a_thread_the_bot_answered_needs_no_mention(discord_bot: Discord) -> None:
    await say(discord_bot, "the deploy failed", channel_id=THREAD_ID, mention=True)
    await discord_bot.wait_text("echo: Ada: the deploy failed", channel=THREAD_ID)
    await say(discord_bot, "and the rollback too", channel_id=THREAD_ID, author=GRACE)
    await discord_bot.wait_text("echo: Grace: and the rollback too", channel=THREAD_ID)


async def test_a_thread_the_bot_did_not_answer_in_and_plain_channel_messages_are_left_alone(
    discord_bot: Discord,
) -> None:
    await say(discord_bot, "people talking", channel_id=THREAD_ID)
    await say(discord_bot, "lunch anyone?")
    await settle(discord_bot, 1)
    await settle(discord_bot, 2, channel_id=CHANNEL_ID)
    assert asked(discord_bot) == ["Ada: and now 1", "Ada: and now 2"]


async def test_in_mention_mode_a_follow_up_is_ignored(discord_bot: Discord) -> None:
    done = await command(discord_bot, "speak", roles=(ADMIN_ROLE_ID,), mode="mention")
    assert done["content"] == texts.SPEAK_SET.format(what=texts.SPEAK_MODES["mention"], mode="mention")
    await say(discord_bot, "the deploy failed", channel_id=THREAD_ID, mention=True)
    await discord_bot.wait_text("echo: Ada: the deploy failed", channel=THREAD_ID)
    await say(discord_bot, "and the rollback too", channel_id=THREAD_ID)
    await settle(discord_bot, 1)
    assert asked(discord_bot) == ["Ada: the deploy failed", "Ada: and now 1"]


async def test_in_all_mode_every_message_is_a_question_and_only_admins_set_it(discord_bot: Discord) -> None:
    refused = await command(discord_bot, "speak", mode="all")
    assert refused["content"] == texts.ADMIN_ONLY.format(admins=texts.ADMINS_DISCORD)
    await command(discord_bot, "speak", roles=(ADMIN_ROLE_ID,), mode="all")
    await say(discord_bot, "how do I reset my password?")
    await discord_bot.wait_text("echo: Ada: how do I reset my password?")
    await say(discord_bot, "and my 2FA?", author=GRACE)
    await discord_bot.wait_text("echo: Grace: and my 2FA?")


async def test_in_person_scope_two_people_do_not_see_each_others_history(discord_bot: Discord) -> None:
    refused = await command(discord_bot, "scope", scope="person")
    assert refused["content"] == texts.ADMIN_ONLY.format(admins=texts.ADMINS_DISCORD)
    await command(discord_bot, "scope", roles=(ADMIN_ROLE_ID,), scope="person")
    await say(discord_bot, "my locker code is 4711", mention=True)
    await discord_bot.wait_text("echo: Ada: my locker code is 4711")
    await say(discord_bot, "what is my locker code?", mention=True, author=GRACE)
    await discord_bot.wait_text("echo: Grace: what is my locker code?")
    assert [m["content"] for m in discord_bot.model.requests[1]["messages"][1:]] == ["Grace: what is my locker code?"]
