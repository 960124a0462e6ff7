"""Attachments on Discord messages through the real discord.py against the fake Discord: fetched from Discord's
own file hosts only (here the fake, as the overridden API base), and what reaches the model."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from adapters.discord import DiscordAdapter
from adapters.discord.app import file_hosts
from bot import texts
from bot.config import Settings
from bot.runtime import open_core
from tests.adapters.discord.test_app import BOT_MENTION, Discord
from tests.context import samples
from tests.fakes.discord import BOT_USER, CHANNEL_ID, FakeDiscord
from tests.fakes.elsewhere import Elsewhere
from tests.fakes.openai import FakeOpenAI, image_parts


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def elsewhere() -> AsyncIterator[Elsewhere]:
    async with Elsewhere() as server:
        yield server


@pytest.fixture
async def discord_bot(model: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Discord]:
    values: dict[str, Any] = {
        "openai_base_url": model.base_url,
        "db": str(tmp_path / "teambot.db"),
        "max_retries": 0,
        "discord_token": "fake-discord-token",
        "stream_edit_interval": 0.2,
    }
    settings = Settings(**values)
    async with FakeDiscord() as fake, open_core(settings) as core:
        with fake.patch_discord():
            adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05)
            await asyncio.wait_for(adapter.start(), 10)
            try:
                yield Discord(fake, model, adapter, Path(settings.db))
            finally:
                await adapter.stop()


async def ask(bot: Discord, text: str, *attachments: dict[str, Any], posts: int = 1) -> list[str]:
    message = bot.fake.message_create(f"{BOT_MENTION} {text}", mentions=(BOT_USER,), attachments=attachments)
    await bot.fake.dispatch("MESSAGE_CREATE", message)
    await bot.fake.wait_for(lambda: len(bot.sent()) >= posts and bot.model.calls >= 1)
    await bot.fake.wait_for(lambda: bot.sent()[0].content.startswith("echo: ") and len(bot.sent()) >= posts)
    return [m.content for m in bot.sent()]


async def test_an_image_attachment_reaches_the_model_downscaled(discord_bot: Discord) -> None:
    photo = discord_bot.fake.add_attachment("photo.png", samples.png(4000, 3000), "image/png")
    await ask(discord_bot, "what is this?", photo)
    [part] = image_parts(discord_bot.model.requests[-1]["messages"][-1])
    data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
    assert Image.open(io.BytesIO(data)).size == (1024, 768)
    assert discord_bot.fake.attachment_requests == [f"{CHANNEL_ID}/{photo['id']}/photo.png"]


async def test_a_text_file_and_a_pdf_are_read_and_a_zip_named(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    notes = fake.add_attachment("notes.txt", samples.CP1252_TEXT.encode("cp1252"), "text/plain; charset=windows-1252")
    report = fake.add_attachment("report.pdf", samples.pdf("Revenue grew 12 percent."), "application/pdf")
    archive = fake.add_attachment("code.zip", samples.zip_file(), "application/zip")
    out = await ask(discord_bot, "summarise", notes, report, archive, posts=2)
    question = discord_bot.model.requests[-1]["messages"][-1]["content"]
    assert samples.CP1252_TEXT.strip() in question and "--- page 1 ---\nRevenue grew 12 percent." in question
    assert out[1] == texts.FILES_NOT_READ.format(files="code.zip (not a type I can read)")


async def test_an_attachment_url_on_another_host_is_never_fetched(discord_bot: Discord, elsewhere: Elsewhere) -> None:
    planted = {**discord_bot.fake.add_attachment("a.txt", b"x", "text/plain"), "url": f"{elsewhere.url}/a.txt"}
    out = await ask(discord_bot, "read", planted, posts=2)
    assert elsewhere.requests == []
    assert texts.FILE_HOST_REFUSED in out[1]


def test_the_file_hosts_are_discords_cdn_and_an_overridden_api_base(monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = file_hosts()
    assert hosts.allows("https://cdn.discordapp.com/attachments/1/2/a.png?ex=1")
    assert hosts.allows("https://media.discordapp.net/attachments/1/2/a.png")
    assert not hosts.allows("http://cdn.discordapp.com/attachments/1/2/a.png")  # not over plain HTTP
    assert not hosts.allows("https://cdn.discordapp.com.evil.example/a.png")
    assert not hosts.allows("https://discord.com/api/v10/attachments/a.png")
    monkeypatch.setattr("discord.http.Route.BASE", "http://127.0.0.1:4321/api/v10")
    assert file_hosts().allows("http://127.0.0.1:4321/attachments/a.png")
    assert not file_hosts().allows("http://127.0.0.1:4322/attachments/a.png")  # another port: another server
