"""Losing the gateway after being connected: discord.py's own reconnect loop, logged as one line per attempt."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from adapters.discord import DiscordAdapter
from bot.config import Settings
from bot.runtime import open_core
from tests.fakes.discord import FakeDiscord
from tests.fakes.openai import FakeOpenAI


async def test_a_lost_gateway_is_one_warning_line_per_attempt_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = Settings(
        openai_base_url="http://127.0.0.1:9/v1", db=str(tmp_path / "teambot.db"), discord_token="fake-discord-token"
    )
    async with FakeOpenAI(), open_core(settings) as core:
        fake = FakeDiscord()
        await fake.start()
        with fake.patch_discord():
            adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05)
            await asyncio.wait_for(adapter.start(), 10)
            try:
                await fake.stop()  # Discord goes away: every reconnect is refused
                async with asyncio.timeout(20):
                    while not [r for r in caplog.records if "the gateway connection failed" in r.getMessage()]:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            finally:
                await adapter.stop()
    [line, *_] = [r for r in caplog.records if "the gateway connection failed" in r.getMessage()]
    assert line.name == "discord.client" and line.levelname == "WARNING" and line.exc_info is None
    assert line.getMessage().startswith("Discord: the gateway connection failed (")
    assert "check the network" in line.getMessage() and "retrying in " in line.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
