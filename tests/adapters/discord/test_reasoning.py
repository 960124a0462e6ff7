"""A reasoning model's thinking on Discord, through the real discord.py against the loopback fakes: a status line
while it thinks (``status``), the thinking in subtext apart from the answer (``full``), or nothing (``off``); never
in the answer."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.discord import TEXT_LIMIT
from adapters.discord.app import subtext
from bot import texts
from tests.adapters.discord import test_app as base
from tests.adapters.discord.test_app import BOT_MENTION, Discord, command
from tests.fakes.discord import ADMIN_ROLE_ID, BOT_USER
from tests.fakes.openai import THOUGHT, THOUGHT_MARK

model, overrides, granted_intents, discord_bot = base.model, base.overrides, base.granted_intents, base.discord_bot


async def ask_thinking(discord_bot: Discord, token: str = "[[think]]") -> str:
    fake = discord_bot.fake
    discord_bot.model.chunk_delay = 0.02  # the thinking takes a while: the status line shows meanwhile
    trigger = fake.message_create(f"{BOT_MENTION} {token} why?", mentions=(BOT_USER,))
    await fake.dispatch("MESSAGE_CREATE", trigger)
    answer = f"echo: Ada: {token} why?"
    await discord_bot.wait_text(answer, within=10)
    return str(trigger["id"])


def everything_sent(discord_bot: Discord) -> list[str]:
    return [m.payload.get("content", "") for m in discord_bot.sent()] + [
        str(edit.get("content")) for m in discord_bot.sent() for edit in m.edits
    ]


@pytest.mark.parametrize("token", ["[[think]]", "[[thinking]]"])
async def test_status_shows_a_line_that_the_answer_replaces(discord_bot: Discord, token: str) -> None:
    trigger = await ask_thinking(discord_bot, token)
    [message] = discord_bot.sent()  # one message: the status line became the answer
    assert message.payload["content"] == f"-# {texts.REASONING_STATUS}"
    assert str(message.payload["message_reference"]["message_id"]) == trigger
    assert message.content == f"echo: Ada: {token} why?"
    assert not any(THOUGHT_MARK in text for text in everything_sent(discord_bot))


@pytest.mark.parametrize("overrides", [{"show_reasoning": "full"}])
async def test_full_shows_the_thinking_in_subtext_apart_from_the_answer(discord_bot: Discord) -> None:
    await ask_thinking(discord_bot)
    thinking, answer = discord_bot.sent()
    assert thinking.payload["content"] == f"-# {texts.REASONING_STATUS}"
    assert thinking.content == subtext(THOUGHT, TEXT_LIMIT)
    assert thinking.content.startswith(f"-# {texts.REASONING_HEADER}\n-# ") and THOUGHT_MARK in thinking.content
    assert answer.content == "echo: Ada: [[think]] why?"
    assert all(THOUGHT_MARK not in edit.get("content", "") for edit in answer.edits)


@pytest.mark.parametrize("overrides", [{"show_reasoning": "off"}])
async def test_off_shows_nothing_of_the_thinking(discord_bot: Discord) -> None:
    await ask_thinking(discord_bot)
    [answer] = discord_bot.sent()
    assert answer.content == "echo: Ada: [[think]] why?"
    assert not any(THOUGHT_MARK in text or texts.REASONING_STATUS in text for text in everything_sent(discord_bot))


async def test_a_plain_model_gets_no_status_line(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} hi", mentions=(BOT_USER,)))
    await discord_bot.wait_text("echo: Ada: hi")
    [answer] = discord_bot.sent()
    assert answer.payload["content"] == "echo: Ada: hi"


def test_long_thinking_is_cut_to_one_message_of_subtext() -> None:
    shown = subtext("\n\n".join(f"step {i}: " + "x" * 90 for i in range(100)), TEXT_LIMIT)
    assert len(shown) <= TEXT_LIMIT and shown.endswith(texts.REASONING_CUT)
    assert all(line.startswith("-# ") for line in shown.splitlines())


async def test_model_takes_an_effort(discord_bot: Discord, overrides: dict[str, Any]) -> None:
    done = await command(discord_bot, "model", roles=(ADMIN_ROLE_ID,), name="gpt-4o-mini", effort="low")
    assert done["content"] == texts.MODEL_SET.format(model="gpt-4o-mini with reasoning effort low")
    await ask_thinking(discord_bot, "[[thinking]]")
    # gpt-4o-mini refuses the effort: asked again without it, and answered.
    assert discord_bot.model.requests[-2]["reasoning_effort"] == "low"
    assert "reasoning_effort" not in discord_bot.model.requests[-1]
