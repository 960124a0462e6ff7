"""The fake Discord drives the real discord.py client: ready, events, sends, edits, 429s, interactions, resume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import discord
import discord.gateway
import discord.http
import pytest
from discord import app_commands

from tests.fakes.discord import (
    ADA,
    BOT_USER,
    CHANNEL_ID,
    EPHEMERAL,
    GUILD_ID,
    INTENT_DM_MESSAGES,
    INTENT_GUILD_MESSAGES,
    INTENT_GUILDS,
    FakeDiscord,
    point_discord_at,
)


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

            @tree.command(name="later", description="test")
            async def later(interaction: discord.Interaction) -> None:
                await interaction.response.defer(ephemeral=True, thinking=True)
                await interaction.followup.send("done", ephemeral=True)

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


async def test_watchers_see_each_message_sent_or_edited(connected) -> None:
    fake, client, _ = connected
    seen: list[tuple[str, str]] = []
    fake.watchers.append(lambda message: seen.append((message.id, message.content)))
    channel = client.get_channel(int(CHANNEL_ID))
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("reply")
    await sent.edit(content="edited")
    assert seen == [(str(sent.id), "reply"), (str(sent.id), "edited")]


async def test_point_discord_at_reaches_a_fake_by_url_and_restores_the_defaults() -> None:
    default_base, default_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with FakeDiscord() as fake:
        with point_discord_at(fake.url):
            client = discord.Client(intents=discord.Intents.none(), guild_ready_timeout=0.05)
            runner = asyncio.create_task(client.start("token"))
            try:
                await asyncio.wait_for(client.wait_until_ready(), 10)
            finally:
                await client.close()
                await asyncio.gather(runner, return_exceptions=True)
        assert fake.identify_count == 1
    assert default_base == discord.http.Route.BASE
    assert default_gateway == discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY


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
    await fake.dispatch("MESSAGE_CREATE", fake.message_create("after", mentions=(BOT_USER,)))
    await fake.wait_for(lambda: any(m.content == "after" for m in seen))
    assert fake.identify_count == 1


async def test_identify_intents_are_recorded(connected) -> None:
    fake, _, _ = connected
    assert fake.intents == {0: INTENT_GUILDS | INTENT_GUILD_MESSAGES | INTENT_DM_MESSAGES}


async def test_a_privileged_intent_the_app_lacks_closes_the_gateway_with_4014() -> None:
    async with FakeDiscord() as fake:
        with fake.patch_discord():
            intents = discord.Intents.none()
            intents.guilds = intents.message_content = True
            client = discord.Client(intents=intents, guild_ready_timeout=0.05)
            with pytest.raises(discord.PrivilegedIntentsRequired):
                await asyncio.wait_for(client.start("token"), 10)
            await client.close()
    assert fake.identify_count == 1 and not fake.ready


async def test_content_is_blank_without_the_message_content_intent(connected) -> None:
    fake, _, seen = connected
    bots = fake.message_create("an answer", author=BOT_USER)
    await fake.dispatch("MESSAGE_CREATE", fake.message_create("unseen", referenced=bots))
    await fake.dispatch("MESSAGE_CREATE", fake.message_create("pinged", mentions=(BOT_USER,)))
    await fake.dispatch("MESSAGE_CREATE", fake.message_create("direct", channel_id="7001", guild_id=None))
    await fake.wait_for(lambda: len(seen) == 3)
    assert [m.content for m in seen] == ["", "pinged", "direct"]
    # The bot's own message, quoted in the reply, keeps its content.
    assert seen[0].reference is not None and isinstance(seen[0].reference.resolved, discord.Message)
    assert seen[0].reference.resolved.content == "an answer"


async def test_an_invalid_session_makes_the_client_identify_again(connected) -> None:
    fake, client, seen = connected
    ready_again = asyncio.create_task(client.wait_for("ready", timeout=20))
    await fake.invalidate_session()
    await ready_again  # discord.py waits 5 s before identifying again
    assert fake.identify_count == 2 and fake.resume_count == 0
    await fake.dispatch("MESSAGE_CREATE", fake.message_create("after", mentions=(BOT_USER,)))
    await fake.wait_for(lambda: any(m.content == "after" for m in seen))


async def test_events_during_a_disconnect_are_replayed_on_resume(connected) -> None:
    fake, _, seen = connected
    missed = fake.message_create("while away", mentions=(BOT_USER,))
    await fake.disconnect(queued=(("MESSAGE_CREATE", missed),))
    await fake.wait_for(lambda: fake.resume_count == 1, 15)
    await fake.wait_for(lambda: any(m.content == "while away" for m in seen))
    assert [f["d"]["id"] for f in fake.replayed if f["t"] == "MESSAGE_CREATE"] == [missed["id"]]
    assert fake.identify_count == 1


async def test_a_deferred_interaction_answers_with_a_followup(connected) -> None:
    fake, _, _ = connected
    await fake.dispatch("INTERACTION_CREATE", fake.interaction_create("later"))
    await fake.wait_for(lambda: bool(fake.followups))
    [deferral] = fake.interaction_responses
    assert deferral["type"] == 5 and deferral["data"]["flags"] == EPHEMERAL
    [followup] = fake.followups
    assert followup["content"] == "done" and followup["flags"] & EPHEMERAL


async def test_a_late_interaction_response_is_unknown(connected, caplog: pytest.LogCaptureFixture) -> None:
    fake, _, _ = connected
    fake.interaction_deadline = 0.0  # as if the answer took longer than Discord's 3 s
    await fake.dispatch("INTERACTION_CREATE", fake.interaction_create("ping"))
    await fake.wait_for(lambda: any(path.endswith("/callback") for _, path, _ in fake.rest_calls))
    await fake.wait_for(lambda: "10062" in caplog.text)
    assert fake.interaction_responses == []
