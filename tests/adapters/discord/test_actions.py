"""Discord message context-menu commands through the real discord.py against the loopback fake Discord: "Ask
teambot" and "Summarize" picked on a message (INTERACTION_CREATE of type 2, data of type 3, the message in
``resolved.messages``), each a turn by whoever clicked, answered as a reply to the message."""

from __future__ import annotations

from typing import Any

import pytest

from bot import texts
from tests.adapters.discord import test_app as base
from tests.adapters.discord.test_app import Discord
from tests.fakes.discord import ADA, BOT_USER, EPHEMERAL, GRACE, INTENT_MESSAGE_CONTENT
from tests.test_conversation import until

# The Discord fixtures of test_app: the fake model, and the adapter started against the fake Discord.
model, overrides, granted_intents, discord_bot = base.model, base.overrides, base.granted_intents, base.discord_bot

#: The app has the Message Content intent and asks for it: the channel's history arrives whole.
with_content = (
    pytest.mark.parametrize("granted_intents", [INTENT_MESSAGE_CONTENT]),
    pytest.mark.parametrize("overrides", [{"discord_message_content": True, "history_tokens": 400}]),
)


def prompt(bot: Discord, request: int = -1) -> list[str]:
    return [f"{m['role']}: {m['content']}" for m in bot.model.requests[request]["messages"][1:]]


def said(bot: Discord, text: str, author: dict[str, Any] = GRACE) -> dict[str, Any]:
    """A message someone wrote in the channel (REST sees it; the bot was not told)."""
    message = bot.fake.message_create(text, author=author)
    bot.fake.post(message)
    return message


async def pick(bot: Discord, name: str, target: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """Someone picks the message command ``name`` on ``target``; until its private line arrives."""
    fake = bot.fake
    before = len(fake.followups)
    interaction = fake.message_command(name, target, **kw)
    await fake.dispatch("INTERACTION_CREATE", interaction)
    await fake.wait_for(lambda: len(fake.followups) > before, within=10)
    deferral = fake.interaction_responses[-1]
    assert deferral["type"] == 5 and deferral["data"]["flags"] & EPHEMERAL  # acked within 3 s, privately
    assert fake.followups[-1]["flags"] & EPHEMERAL
    return interaction


async def test_ask_teambot_answers_as_a_reply_with_the_message_as_context(discord_bot: Discord) -> None:
    target = said(discord_bot, "the build fails with exit code 137")
    await pick(discord_bot, texts.DISCORD_ACTION_ASK, target)
    question = texts.ACTION_ASK.format(author="Grace", excerpt="the build fails with exit code 137")
    assert prompt(discord_bot) == ["user: Grace: the build fails with exit code 137", f"user: Ada: {question}"]
    [reply] = discord_bot.sent()
    assert reply.content == f"echo: Ada: {question}"
    assert str(reply.payload["message_reference"]["message_id"]) == target["id"]  # a reply to the message clicked on
    assert discord_bot.fake.followups[-1]["content"] == texts.ACTION_ANSWERED


async def test_two_people_asking_both_get_an_answer_and_a_redelivered_click_gets_none(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    target = said(discord_bot, "why is the queue stuck?")
    first = await pick(discord_bot, texts.DISCORD_ACTION_ASK, target)
    await pick(discord_bot, texts.DISCORD_ACTION_ASK, target, user=GRACE)
    await fake.wait_for(lambda: len(discord_bot.sent()) == 2)
    # The same interaction delivered again (a gateway replay): acknowledged, but not answered a second time.
    before = len(fake.followups)
    await fake.dispatch("INTERACTION_CREATE", first)
    await fake.wait_for(lambda: len(fake.followups) > before)
    await until(lambda: not discord_bot.adapter._inflight)
    assert len(discord_bot.sent()) == 2 and len(discord_bot.model.requests) == 2
    # The message is stored once, whoever asked about it.
    assert prompt(discord_bot).count("user: Grace: why is the queue stuck?") == 1


@pytest.mark.parametrize("overrides", [{"deny_users": frozenset({ADA["id"]})}])
async def test_a_denied_person_gets_the_refusal_privately(discord_bot: Discord) -> None:
    target = said(discord_bot, "the cache is cold")
    await pick(discord_bot, texts.DISCORD_ACTION_ASK, target)
    assert discord_bot.fake.followups[-1]["content"] == texts.NOT_ALLOWED
    assert discord_bot.sent() == [] and discord_bot.model.requests == []
    # The access lists are the clicker's: Grace may ask about the same message.
    await pick(discord_bot, texts.DISCORD_ACTION_ASK, target, user=GRACE)
    assert len(discord_bot.sent()) == 1


@with_content[0]
@with_content[1]
async def test_summarize_a_long_channel_reads_its_newest_messages_and_says_what_was_left_out(
    discord_bot: Discord,
) -> None:
    said(discord_bot, "the very first message")
    for n in range(1, 60):
        said(discord_bot, f"remark number {n} about the outage and what we saw then")
    target = said(discord_bot, "so what now?", author=ADA)
    await pick(discord_bot, texts.DISCORD_ACTION_SUMMARIZE, target)
    contents = prompt(discord_bot)
    assert contents[-1] == f"user: Ada: {texts.ACTION_SUMMARIZE}"
    assert contents[-2] == "user: Ada: so what now?"
    assert contents[-3] == "user: Grace: remark number 59 about the outage and what we saw then"
    assert "user: Grace: the very first message" not in contents
    [reply] = discord_bot.sent()
    assert reply.content == f"{texts.ACTION_OLDEST_LEFT_OUT}\n\necho: Ada: {texts.ACTION_SUMMARIZE}"
    assert str(reply.payload["message_reference"]["message_id"]) == target["id"]


@with_content[0]
@with_content[1]
async def test_summarize_a_short_channel_reads_it_whole_without_a_note(discord_bot: Discord) -> None:
    said(discord_bot, "the deploy failed")
    target = said(discord_bot, "reverting now", author=ADA)
    await pick(discord_bot, texts.DISCORD_ACTION_SUMMARIZE, target)
    assert prompt(discord_bot) == [
        "user: Grace: the deploy failed",
        "user: Ada: reverting now",
        f"user: Ada: {texts.ACTION_SUMMARIZE}",
    ]
    [reply] = discord_bot.sent()
    assert reply.content == f"echo: Ada: {texts.ACTION_SUMMARIZE}"


async def test_the_message_commands_are_synced_with_the_slash_commands(discord_bot: Discord) -> None:
    [(scope, body)] = discord_bot.fake.command_syncs
    menus = {c["name"]: c["type"] for c in body if c.get("type") == 3}
    assert scope == "global" and menus == {texts.DISCORD_ACTION_ASK: 3, texts.DISCORD_ACTION_SUMMARIZE: 3}


async def test_ask_on_the_bots_own_answer_reads_it_as_its_own(discord_bot: Discord) -> None:
    target = said(discord_bot, "HTTP 429 means too many requests.", author=BOT_USER)
    await pick(discord_bot, texts.DISCORD_ACTION_ASK, target)
    question = texts.ACTION_ASK.format(author="you", excerpt="HTTP 429 means too many requests.")
    assert prompt(discord_bot) == ["assistant: HTTP 429 means too many requests.", f"user: Ada: {question}"]
    [reply] = discord_bot.sent()
    assert str(reply.payload["message_reference"]["message_id"]) == target["id"]
