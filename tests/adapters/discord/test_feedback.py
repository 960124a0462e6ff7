"""Answer feedback on Discord through the real discord.py client: the 👍/👎 buttons under an answer, and a
component interaction (type 3) when someone clicks one, against the loopback fake Discord."""

from __future__ import annotations

import gc
import sqlite3
import weakref
from typing import Any

import discord
import pytest

from adapters.discord.app import FeedbackButton, feedback_view
from bot import texts
from tests.adapters.discord import test_app as base
from tests.adapters.discord.test_app import BOT_MENTION, Discord
from tests.fakes.discord import BOT_USER, CHANNEL_ID, EPHEMERAL, GRACE, GUILD_ID, THREAD_ID, StoredMessage
from tests.test_conversation import until

# The Discord fixtures of test_app: the fake model, and the adapter started against the fake Discord.
model, overrides, granted_intents, discord_bot = base.model, base.overrides, base.granted_intents, base.discord_bot


async def answered(bot: Discord, text: str, channel: str = CHANNEL_ID) -> StoredMessage:
    fake = bot.fake
    await fake.dispatch(
        "MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} {text}", mentions=(BOT_USER,), channel_id=channel)
    )
    await fake.wait_for(lambda: any(m.components for m in bot.sent(channel)))
    [message] = [m for m in bot.sent(channel) if m.components]
    return message


def buttons(message: StoredMessage) -> list[dict[str, Any]]:
    return [c for row in message.components for c in row["components"]]


def rows(bot: Discord) -> list[tuple[Any, ...]]:
    with sqlite3.connect(bot.db) as db:
        return list(db.execute("SELECT user_id, value, platform, workspace, channel FROM feedback ORDER BY user_id"))


def metric(bot: Discord, value: str) -> float:
    line = f'teambot_feedback_total{{platform="discord",value="{value}"}} '
    rendered = bot.adapter._core.metrics.render().decode().splitlines()
    found = [row for row in rendered if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


async def click(bot: Discord, message: StoredMessage, verdict: str, user: dict[str, Any] | None = None) -> dict:
    fake = bot.fake
    [button] = [b for b in buttons(message) if b["custom_id"].startswith(f"teambot:feedback:{verdict}:")]
    before = len(fake.interaction_responses)
    kw = {"user": user} if user else {}
    await fake.dispatch("INTERACTION_CREATE", fake.component_interaction(message, button["custom_id"], **kw))
    await fake.wait_for(lambda: len(fake.interaction_responses) > before)
    return fake.interaction_responses[-1]


async def test_an_answer_carries_a_button_pair_and_a_click_is_kept(discord_bot: Discord) -> None:
    message = await answered(discord_bot, "what is a 429?")
    assert message.content == "echo: Ada: what is a 429?"
    assert [b["emoji"]["name"] for b in buttons(message)] == ["👍", "👎"]

    response = await click(discord_bot, message, "up")
    assert response["data"]["content"] == texts.FEEDBACK_THANKS
    assert response["data"]["flags"] & EPHEMERAL
    assert rows(discord_bot) == [(base.ADA["id"], "up", "discord", GUILD_ID, CHANNEL_ID)]
    assert metric(discord_bot, "up") == 1

    await click(discord_bot, message, "down")
    await click(discord_bot, message, "down", user=GRACE)
    assert rows(discord_bot) == sorted(
        [
            (base.ADA["id"], "down", "discord", GUILD_ID, CHANNEL_ID),
            (GRACE["id"], "down", "discord", GUILD_ID, CHANNEL_ID),
        ]
    )
    assert metric(discord_bot, "down") == 2


async def test_a_click_in_a_thread_is_kept_with_the_threads_answer(discord_bot: Discord) -> None:
    message = await answered(discord_bot, "in a thread", channel=THREAD_ID)
    response = await click(discord_bot, message, "up")
    assert response["data"]["content"] == texts.FEEDBACK_THANKS
    assert rows(discord_bot) == [(base.ADA["id"], "up", "discord", GUILD_ID, CHANNEL_ID)]


async def test_a_click_after_reset_is_not_kept(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    message = await answered(discord_bot, "forget me")
    await fake.dispatch("INTERACTION_CREATE", fake.interaction_create("reset"))
    await fake.wait_for(lambda: len(fake.followups) == 1)
    response = await click(discord_bot, message, "up")
    assert response["data"]["content"] == texts.FEEDBACK_GONE
    assert rows(discord_bot) == [] and metric(discord_bot, "up") == 0


async def test_the_summary_command_is_registered(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    assert "summary" in {c["name"] for _, body in fake.command_syncs for c in body}
    await fake.dispatch("INTERACTION_CREATE", fake.interaction_create("summary"))
    await fake.wait_for(lambda: len(fake.followups) == 1)
    assert fake.followups[0]["content"] == texts.SUMMARY_NONE


@pytest.mark.parametrize("overrides", [{"feedback": False}])
async def test_feedback_can_be_switched_off(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} hi", mentions=(BOT_USER,)))
    await discord_bot.wait_text("echo: Ada: hi")
    await until(lambda: not discord_bot.adapter._inflight)
    assert not any(m.components for m in discord_bot.sent())


async def test_the_buttons_are_what_discord_py_renders_for_them(discord_bot: Discord) -> None:
    message = await answered(discord_bot, "render them")
    reply_id = int(buttons(message)[0]["custom_id"].rsplit(":", 1)[1])
    view = discord.ui.View(timeout=None)
    view.add_item(FeedbackButton("up", reply_id))
    view.add_item(FeedbackButton("down", reply_id))
    assert message.components == view.to_components()
    assert discord_bot.adapter.client.persistent_views == []  # discord.py keeps no view per answer


async def test_a_streamed_answer_gets_its_buttons_with_the_final_edit(discord_bot: Discord) -> None:
    discord_bot.model.chunk_delay = 0.02
    words = " ".join(f"word{i}" for i in range(60))
    message = await answered(discord_bot, words)
    assert not message.payload.get("components")  # posted while it streamed, without the buttons
    [final] = [edit for edit in message.edits if edit.get("components")]
    assert final["content"] == f"echo: Ada: {words}"
    await click(discord_bot, message, "down")
    assert rows(discord_bot) == [(base.ADA["id"], "down", "discord", GUILD_ID, CHANNEL_ID)]


async def test_an_answers_buttons_leave_nothing_for_the_collector() -> None:
    # A view of button objects is a cycle (each item points at its view): ~18 objects per answer for the collector.
    gc.disable()
    try:
        view = feedback_view(7)
        gone = weakref.ref(view)
        del view
        assert gone() is None
    finally:
        gc.enable()
