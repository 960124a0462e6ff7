"""The fake Discord drives the real discord.py client: ready, events, sends, edits, 429s, interactions, resume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import discord
import pytest
from discord import app_commands

from tests.fakes.discord import ADA, BOT_USER, CHANNEL_ID, GUILD_ID, FakeDiscord


@pytest.fixture
async def connected() -> AsyncIterator[tuple[FakeDiscord, discord.Client, list[discord.Message]]]:
    seen: list[discord.Message] = []
    async with FakeDiscord() as fake:
        with fake.patch_discord():
            intents = discord.Intents.none()
            intents.guilds = intents.guild_messages = intents.dm_messages = True
            client = discord.Client(
                intents=intents, allowed_mentions=discord.AllowedMentions.none(), guild_ready_timeout=0.05
            )
            tree = app_commands.CommandTree(client)

            @tree.command(name="ping", description="test")
            async def ping(interaction: discord.Interaction) -> None:
                await interaction.response.send_message("pong", ephemeral=True)

            @client.event
            async def on_message(message: discord.Message) -> None:
                seen.append(message)

            runner = asyncio.create_task(client.start("token"))
            try:
                await asyncio.wait_for(client.wait_until_ready(), 10)
                yield fake, client, seen
            finally:
                await client.close()
                await asyncio.gather(runner, return_exceptions=True)


async def test_ready_with_the_guild_and_channels(connected) -> None:
    fake, client, _ = connected
    guild = client.get_guild(int(GUILD_ID))
    assert guild is not None and guild.get_channel(int(CHANNEL_ID)) is not None
    assert client.user is not None and client.user.id == int(BOT_USER["id"])
    assert fake.identify_count == 1


async def test_message_create_send_edit_and_429(connected) -> None:
    fake, client, seen = connected
    await fake.dispatch("MESSAGE_CREATE", fake.message_create("hello", mentions=(BOT_USER,)))
    await fake.wait_for(lambda: bool(seen))
    assert seen[0].content == "hello" and seen[0].author.id == int(ADA["id"]) and client.user in seen[0].mentions
    sent = await seen[0].channel.send("reply")
    fake.rate_limit("PATCH", r"channels/\d+/messages/\d+", times=1, retry_after=0.1)
    await sent.edit(content="edited")
    [stored] = fake.channel_messages(CHANNEL_ID)
    assert stored.content == "edited" and len(fake.limited) == 1
    assert stored.payload["allowed_mentions"]["parse"] == []


async def test_interaction_reaches_the_command_tree(connected) -> None:
    fake, _, _ = connected
    await fake.dispatch("INTERACTION_CREATE", fake.interaction_create("ping"))
    await fake.wait_for(lambda: bool(fake.interaction_responses))
    assert fake.interaction_responses[0]["data"] == {"content": "pong", "flags": 64} | {
        k: v for k, v in fake.interaction_responses[0]["data"].items() if k not in ("content", "flags")
    }


async def test_disconnect_then_resume(connected) -> None:
    fake, _, seen = connected
    await fake.disconnect()
    await fake.wait_for(lambda: fake.resume_count == 1, 15)
    await fake.dispatch("MESSAGE_CREATE", fake.message_create("after"))
    await fake.wait_for(lambda: any(m.content == "after" for m in seen))
    assert fake.identify_count == 1
