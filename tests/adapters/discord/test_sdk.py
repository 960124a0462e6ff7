"""adapters.discord.sdk: an answer's messages sent as discord.py's own ``reply`` and ``send`` send them (these are
its internals: the tests fail when discord.py's requests change), with a partial message as the handle."""

from __future__ import annotations

import asyncio
from typing import Any

import discord
import pytest

from adapters.discord.app import feedback_view
from adapters.discord.sdk import send_message
from tests.adapters.discord import test_app as base
from tests.adapters.discord.test_app import Discord
from tests.fakes.discord import CHANNEL_ID, THREAD_ID

model, overrides, granted_intents, discord_bot = base.model, base.overrides, base.granted_intents, base.discord_bot

DM_CHANNEL = "9100"
NONE = discord.AllowedMentions.none()


async def trigger_in(bot: Discord, where: str) -> discord.Message:
    """A message from someone in a guild channel, a thread or a DM, as discord.py hands it to the adapter."""
    client = bot.adapter.client
    fake = bot.fake
    channel, guild = {"channel": (CHANNEL_ID, base.GUILD_ID), "thread": (THREAD_ID, base.GUILD_ID)}.get(
        where, (DM_CHANNEL, None)
    )
    payload = fake.message_create("a question", channel_id=channel, guild_id=guild)
    waiting = asyncio.ensure_future(client.wait_for("message", check=lambda m: m.id == int(payload["id"])))
    await asyncio.sleep(0)  # the waiter is registered before the event goes out
    await fake.dispatch("MESSAGE_CREATE", payload)
    return await asyncio.wait_for(waiting, 5)


def last_create(bot: Discord, channel_id: int) -> dict[str, Any]:
    return bot.fake.calls("POST", f"channels/{channel_id}/messages")[-1]


def without_nonce(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "nonce"}


@pytest.mark.parametrize("where", ["channel", "thread", "dm"])
@pytest.mark.parametrize("reply", [True, False])
@pytest.mark.parametrize("buttons", [True, False])
async def test_the_request_is_discord_pys_own(discord_bot: Discord, where: str, reply: bool, buttons: bool) -> None:
    trigger = await trigger_in(discord_bot, where)
    channel_id = trigger.channel.id
    extra: dict[str, Any] = {"view": feedback_view(42)} if buttons else {}
    if reply:
        theirs = await trigger.reply("the answer", mention_author=False, allowed_mentions=NONE, **extra)
    else:
        theirs = await trigger.channel.send("the answer", allowed_mentions=NONE, **extra)
    expected = last_create(discord_bot, channel_id)

    handle = await send_message(trigger, "the answer", reply=reply, view=extra.get("view"))
    sent = last_create(discord_bot, channel_id)

    assert without_nonce(sent) == without_nonce(expected)
    assert sent["allowed_mentions"] == {"parse": [], "replied_user": False} if reply else {"parse": []}
    assert ("message_reference" in sent) is reply
    assert bool(sent["components"]) is buttons
    # A nonce of its own each time, as discord.py's: Discord enforces it, and drops a second send with the same one.
    await send_message(trigger, "more of the answer", reply=False)
    nonces = {body["nonce"] for body in discord_bot.fake.calls("POST", f"channels/{channel_id}/messages")}
    assert len(nonces) == 3 and all(0 <= int(nonce) < 2**64 for nonce in nonces)
    assert sent["enforce_nonce"] is True
    # The handle is the new message, in the trigger's channel, and edits it as discord.py's message would.
    assert isinstance(handle, discord.PartialMessage) and handle.id != theirs.id
    assert handle.channel.id == channel_id
    [stored] = [m for m in discord_bot.sent(str(channel_id)) if m.id == str(handle.id)]
    assert stored.content == "the answer"
    await handle.edit(content="the answer, whole", allowed_mentions=NONE)
    await theirs.edit(content="the answer, whole", allowed_mentions=NONE)
    ours_edit, their_edit = discord_bot.fake.calls("PATCH", rf"channels/{channel_id}/messages/\d+")[-2:]
    assert ours_edit["content"] == their_edit["content"] == stored.content == "the answer, whole"
    assert ours_edit["allowed_mentions"] == their_edit["allowed_mentions"] == {"parse": []}


async def test_a_refused_send_raises_as_discord_py_does(discord_bot: Discord) -> None:
    trigger = await trigger_in(discord_bot, "channel")
    discord_bot.fake.forbid("POST", f"channels/{CHANNEL_ID}/messages")
    with pytest.raises(discord.Forbidden):
        await send_message(trigger, "the answer", reply=True)
