"""Tool approvals and progress on Discord, through the real discord.py client against the loopback fake Discord:
the request with Approve / Deny buttons, clicks as component interactions (type 3), only the asker may answer, no
answer is a denial, a restart denies and a later click is told it expired; a status line the answer replaces."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import discord

from adapters.approvals import Outcome, outcome_line
from adapters.discord import DiscordAdapter
from adapters.discord.app import (
    ARGUMENTS_LIMIT,
    DiscordApprovalPrompt,
    DiscordSink,
    DiscordTurnView,
    approval_content,
    status_line,
)
from adapters.streaming import StreamingReply
from bot import texts
from bot.config import Settings
from bot.messages import ToolRequest
from bot.tools import ToolRule
from tests.adapters.discord import test_app as base
from tests.adapters.discord.test_app import BOT_MENTION, Discord
from tests.fakes.discord import ADA, BOT_USER, CHANNEL_ID, EPHEMERAL, GRACE, FakeDiscord, StoredMessage
from tests.tools.harness import ToolHarness, counter, harness

model, overrides, granted_intents, discord_bot = base.model, base.overrides, base.granted_intents, base.discord_bot
# The tool tests' harness: the real core and tool loop over the tests' own tools, against the fake model.
harness, counter = harness, counter

REQUEST = ToolRequest("call_1", "time__get_current_time", '{"timezone": "Asia/Tokyo"}')


async def turn_view(bot: Discord, adapter: DiscordAdapter | None = None) -> tuple[DiscordTurnView, StreamingReply[Any]]:
    """The view a question by Ada gets (the question stands in as a message the bot can reply to)."""
    adapter = adapter or bot.adapter
    channel = adapter.client.get_channel(int(CHANNEL_ID))
    assert isinstance(channel, discord.TextChannel)
    trigger = await channel.send("the question")
    reply: StreamingReply[Any] = StreamingReply(
        DiscordSink(trigger), interval=0.05, limit=2000, status_line=status_line
    )
    prompt = DiscordApprovalPrompt(trigger, "Ada")
    return DiscordTurnView(adapter._approvals, prompt, reply, ADA["id"], "Ada"), reply


def buttons(message: StoredMessage) -> list[dict[str, Any]]:
    return [c for row in message.components for c in row["components"]]


async def asked(bot: Discord, request: ToolRequest = REQUEST, within: float = 30) -> tuple[asyncio.Task[bool], Any]:
    view, _ = await turn_view(bot)
    task = asyncio.create_task(view.approve(request, ADA["id"], within))
    await bot.fake.wait_for(lambda: any(buttons(m) for m in bot.sent()) or task.done())
    [message] = [m for m in bot.sent() if buttons(m)]
    return task, message


async def click(bot: Discord, message: StoredMessage, approve: bool, user: dict[str, Any] = ADA) -> dict[str, Any]:
    fake = bot.fake
    prefix = "teambot:approval:approve:" if approve else "teambot:approval:deny:"
    # The buttons as first sent: a client that missed the edit removing them (or a crash before it) shows them.
    shown = message.payload["components"]
    [custom_id] = [b["custom_id"] for row in shown for b in row["components"] if b["custom_id"].startswith(prefix)]
    before = len(fake.interaction_responses)
    interaction = fake.component_interaction(message, custom_id, user=user, components=shown)
    await fake.dispatch("INTERACTION_CREATE", interaction)
    await fake.wait_for(lambda: len(fake.interaction_responses) > before)
    return fake.interaction_responses[-1]


async def test_the_asker_approves_and_the_request_says_so(discord_bot: Discord) -> None:
    task, message = await asked(discord_bot)
    assert "`time__get_current_time`" in message.content and '"timezone": "Asia/Tokyo"' in message.content
    assert message.content.endswith(f"-# {texts.APPROVAL_FOOTER.format(asker='Ada', seconds=30)}")
    assert [b["label"] for b in buttons(message)] == [texts.APPROVAL_APPROVE, texts.APPROVAL_DENY]
    assert message.payload["allowed_mentions"]["parse"] == []

    response = await click(discord_bot, message, approve=True)
    assert response["type"] == 6  # acknowledged; the waiting turn edits the request
    assert await asyncio.wait_for(task, 5) is True
    await discord_bot.fake.wait_for(lambda: not buttons(message))
    assert message.content.endswith(f"-# {texts.APPROVAL_APPROVED.format(asker='Ada')}")
    assert message.edits[-1]["allowed_mentions"]["parse"] == []


async def test_the_asker_denies(discord_bot: Discord) -> None:
    task, message = await asked(discord_bot)
    await click(discord_bot, message, approve=False)
    assert await asyncio.wait_for(task, 5) is False
    await discord_bot.fake.wait_for(lambda: not buttons(message))
    assert message.content.endswith(f"-# {texts.APPROVAL_DENIED.format(asker='Ada')}")


async def test_someone_else_cannot_approve_nor_deny(discord_bot: Discord) -> None:
    task, message = await asked(discord_bot)
    for approve in (True, False):
        response = await click(discord_bot, message, approve, user=GRACE)
        assert response["type"] == 4 and response["data"]["flags"] & EPHEMERAL
        assert response["data"]["content"] == texts.APPROVAL_NOT_ASKER.format(asker="Ada")
    assert not task.done() and buttons(message)  # nothing changed
    await click(discord_bot, message, approve=True)
    assert await asyncio.wait_for(task, 5) is True


async def test_no_answer_in_time_is_a_denial(discord_bot: Discord) -> None:
    task, message = await asked(discord_bot, within=0.3)
    assert await asyncio.wait_for(task, 5) is False
    await discord_bot.fake.wait_for(lambda: not buttons(message))
    assert message.content.endswith(f"-# {outcome_line(Outcome.EXPIRED, 'Ada', 0.3)}")
    response = await click(discord_bot, message, approve=True)
    assert response["data"]["content"] == texts.APPROVAL_UNKNOWN and response["data"]["flags"] & EPHEMERAL


async def test_a_restart_denies_and_a_click_from_before_it_is_told_it_expired(discord_bot: Discord) -> None:
    task, message = await asked(discord_bot)
    adapter = discord_bot.adapter
    adapter._inflight.add(task)  # as the turn that asked is
    await adapter.stop(drain_seconds=1)
    assert await asyncio.wait_for(task, 5) is False
    await discord_bot.fake.wait_for(lambda: not buttons(message))
    assert message.content.endswith(f"-# {texts.APPROVAL_STOPPED}")

    # The next process knows nothing of that request.
    again = DiscordAdapter(adapter._core, adapter._settings, guild_ready_timeout=0.05)
    await asyncio.wait_for(again.start(), 10)
    try:
        discord_bot.adapter = again
        response = await click(discord_bot, message, approve=True)
        assert response["data"]["content"] == texts.APPROVAL_UNKNOWN and response["data"]["flags"] & EPHEMERAL
    finally:
        await again.stop()


async def test_the_request_pings_nobody(discord_bot: Discord) -> None:
    nasty = ToolRequest("c", "@everyone`x`", json.dumps({"q": "@here <@4002> <@&2100> ``` **bold**"}))
    task, message = await asked(discord_bot, nasty)
    assert message.payload["allowed_mentions"]["parse"] == []
    # The arguments stay inside their code block: the fence in them is broken up.
    assert message.content.count("```") == 2
    assert "`@everyone'x'`" in message.content
    task.cancel()


def test_the_asker_name_and_long_arguments_are_shown_safely() -> None:
    content = approval_content(ToolRequest("c", "search", json.dumps({"q": "x" * 5000})), "@everyone *Ada*", "f")
    assert len(content) <= 2000 and texts.APPROVAL_ARGUMENTS_CUT.format(count=5013 - ARGUMENTS_LIMIT) in content
    assert "@everyone" not in content and "\\*Ada\\*" in content


async def test_a_status_line_shows_until_the_answer_replaces_it(discord_bot: Discord) -> None:
    view, reply = await turn_view(discord_bot)
    await view.status("Looking up the time…")
    await discord_bot.fake.wait_for(lambda: len(discord_bot.sent()) == 2)
    status = discord_bot.sent()[1]
    assert status.content == "-# Looking up the time…"
    await view.status(None)
    await reply.feed("It is noon.")
    await reply.finish("It is noon.")
    assert status.content == "It is noon." and len(discord_bot.sent()) == 2


# --- end to end: the fake model calls a tool that needs approval -------------------------------------------------

TOKYO = '[[call:time__now:{"city": "Tokyo"}]]'


async def test_a_tool_call_is_approved_by_the_asker_and_its_result_answers(harness: ToolHarness) -> None:
    harness.fake.chunk_delay = 0.01
    core = harness.core(rules=[ToolRule(("time__*",), approval=True)], approval_seconds=30.0)
    settings = Settings(
        openai_base_url=harness.fake.base_url, db=str(harness.db), discord_token="fake", stream_edit_interval=0.2
    )
    async with FakeDiscord() as fake:
        with fake.patch_discord():
            adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05)
            await asyncio.wait_for(adapter.start(), 10)
            bot = Discord(fake, harness.fake, adapter, harness.db)
            try:
                question = fake.message_create(f"{BOT_MENTION} time in Tokyo? {TOKYO}", mentions=(BOT_USER,))
                await fake.dispatch("MESSAGE_CREATE", question)
                await fake.wait_for(lambda: any(buttons(m) for m in bot.sent()), 10)
                [request] = [m for m in bot.sent() if buttons(m)]
                assert "`time__now`" in request.content and '"city": "Tokyo"' in request.content
                assert str(request.payload["message_reference"]["message_id"]) == question["id"]
                step = status_line(texts.TOOL_STATUS.format(tools="time__now"))
                await fake.wait_for(lambda: any(m.content == step for m in bot.sent()))
                [reply] = [m for m in bot.sent() if m.content == step]
                assert harness.desk.calls == []

                response = await click(bot, request, approve=True, user=GRACE)
                assert response["data"]["content"] == texts.APPROVAL_NOT_ASKER.format(asker="Ada")
                assert harness.desk.calls == []

                await click(bot, request, approve=True)
                answer = "tool results: 14:00 in Tokyo"
                await fake.wait_for(lambda: reply.content.startswith(answer), 10)
                assert [name for name, _, _ in harness.desk.calls] == ["time__now"]
                await fake.wait_for(lambda: not buttons(request))
                assert request.content.endswith(f"-# {texts.APPROVAL_APPROVED.format(asker='Ada')}")
                tool_results = [m for m in harness.fake.requests[-1]["messages"] if m["role"] == "tool"]
                assert [m["content"] for m in tool_results] == ["14:00 in Tokyo"]
            finally:
                await adapter.stop()
