"""Discord sharding through the real discord.py AutoShardedClient: each replica runs its share of the shards.

The fake Discord sends a guild's events only on the connection of that guild's shard, as Discord does, so a
replica that did not run a shard would never see its mentions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.discord import DiscordAdapter
from bot.config import Settings
from bot.messages import ConversationKey
from bot.runtime import open_core
from tests.fakes.discord import ADA, BOT_USER, CHANNEL_ID, GUILD_ID, SECOND_CHANNEL_ID, SECOND_GUILD_ID, FakeDiscord
from tests.fakes.openai import FakeOpenAI

MENTION = f"<@{BOT_USER['id']}>"
DM_CHANNEL = "7001"


@contextlib.asynccontextmanager
async def replica(model: FakeOpenAI, db: Path, **shards: Any) -> AsyncIterator[DiscordAdapter]:
    settings = Settings(
        openai_base_url=model.base_url, db=str(db), max_retries=0, discord_token="fake-discord-token", **shards
    )
    async with open_core(settings) as core:
        adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05)
        await asyncio.wait_for(adapter.start(), 10)
        try:
            yield adapter
        finally:
            await adapter.stop()


async def ask_everywhere(fake: FakeDiscord) -> None:
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{MENTION} first guild", mentions=(BOT_USER,)))
    second = fake.message_create(
        f"{MENTION} second guild", channel_id=SECOND_CHANNEL_ID, guild_id=SECOND_GUILD_ID, mentions=(BOT_USER,)
    )
    await fake.dispatch("MESSAGE_CREATE", second)
    await fake.dispatch("MESSAGE_CREATE", fake.message_create("in a DM", channel_id=DM_CHANNEL, guild_id=None))
    for channel, text in (
        (CHANNEL_ID, "echo: Ada: first guild"),
        (SECOND_CHANNEL_ID, "echo: Ada: second guild"),
        (DM_CHANNEL, "echo: Ada: in a DM"),
    ):
        await fake.wait_for(lambda c=channel, t=text: any(m.content == t for m in fake.channel_messages(c)), 10)


async def count(db: Path, key: ConversationKey) -> int:
    settings = Settings(db=str(db), openai_base_url="http://127.0.0.1:9")
    async with open_core(settings) as core:
        return await core.store.count_messages(key)


async def test_two_replicas_split_the_shards_and_dms_come_on_shard_zero(tmp_path: Path) -> None:
    first_db, second_db = tmp_path / "first.db", tmp_path / "second.db"
    async with FakeOpenAI() as model, FakeDiscord(shards=2) as fake:
        assert fake.shard_of(GUILD_ID) == 0 and fake.shard_of(SECOND_GUILD_ID) == 1
        with fake.patch_discord():
            async with (
                replica(model, first_db, discord_shards=2, discord_shard_ids=(0,)),
                replica(model, second_db, discord_shards=2, discord_shard_ids=(1,)),
            ):
                await fake.wait_ready()
                assert sorted(fake.identified_shards) == [0, 1]
                assert sorted(tuple(p["shard"]) for p in fake.identify_payloads) == [(0, 2), (1, 2)]
                await ask_everywhere(fake)
    # Each message was answered once, by the replica that runs its shard.
    assert model.calls == 3
    assert sum(len(fake.channel_messages(c)) for c in (CHANNEL_ID, SECOND_CHANNEL_ID, DM_CHANNEL)) == 3
    assert await count(first_db, ConversationKey("discord", GUILD_ID, CHANNEL_ID)) == 2
    assert await count(first_db, ConversationKey("discord", f"dm-{ADA['id']}", DM_CHANNEL)) == 2
    assert await count(second_db, ConversationKey("discord", SECOND_GUILD_ID, SECOND_CHANNEL_ID)) == 2
    assert await count(first_db, ConversationKey("discord", SECOND_GUILD_ID, SECOND_CHANNEL_ID)) == 0


async def test_one_process_can_run_every_shard(tmp_path: Path) -> None:
    async with FakeOpenAI() as model, FakeDiscord(shards=2) as fake:
        with fake.patch_discord():
            async with replica(model, tmp_path / "t.db", discord_shards=2):
                await fake.wait_ready()
                assert sorted(fake.identified_shards) == [0, 1]
                await ask_everywhere(fake)
    assert model.calls == 3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TEAMBOT_DISCORD_SHARD_IDS": "0"}, "needs TEAMBOT_DISCORD_SHARDS"),
        ({"TEAMBOT_DISCORD_SHARDS": "2", "TEAMBOT_DISCORD_SHARD_IDS": "0,2"}, "from 0 to TEAMBOT_DISCORD_SHARDS - 1"),
        ({"TEAMBOT_DISCORD_SHARDS": "2", "TEAMBOT_DISCORD_SHARD_IDS": "zero"}, "TEAMBOT_DISCORD_SHARD_IDS"),
    ],
)
def test_shard_settings_are_checked_at_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    from bot.config import load_settings
    from bot.errors import ConfigError

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        load_settings(None)
