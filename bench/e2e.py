"""End to end through the real SDKs: from a Slack event or a Discord MESSAGE_CREATE to the final reply text at the
fake platform, with an instant model in its own process. Uses the loopback fakes from ``tests/fakes``."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from adapters.discord import DiscordAdapter
from adapters.slack import SlackAdapter
from bench.core import add_row, percentile
from bench.model import ModelProcess
from bot.config import Settings
from bot.llm import model_http_client
from bot.runtime import open_core
from tests.fakes.discord import BOT_USER, CHANNEL_ID, GUILD_ID, FakeDiscord
from tests.fakes.slack import FakeSlack, event_envelope, mention, signed_headers

SECRET = "bench-secret"
Send = Callable[[int, int], Awaitable[None]]
#: The fake guild knows one text channel; the others are created on the fly by id, as Discord would send them.
DISCORD_CHANNELS = [CHANNEL_ID, *(str(5000 + n) for n in range(99))]


def _settings(model: ModelProcess, db: Path, **platform: Any) -> Settings:
    return Settings(
        openai_base_url=model.base_url,
        openai_model="bench",
        db=str(db),
        user_rate_per_minute=0,
        channel_rate_per_minute=0,
        max_concurrent_calls=1000,
        max_queued_calls=10_000,
        stream_edit_interval=1.0,
        **platform,
    )


async def _measure(
    send: Send, arrived: Callable[[int], bool], wait: Callable[..., Awaitable[None]], single: int, burst: int
) -> tuple[list[float], float]:
    latencies = []
    for i in range(single):
        started = time.perf_counter()
        await send(i, i % 100)
        await wait(lambda i=i: arrived(i), 30)
        latencies.append((time.perf_counter() - started) * 1000)
    first = single
    started = time.perf_counter()
    await asyncio.gather(*(send(first + i, i % 100) for i in range(burst)))
    # Replies are counted, so the last one means all. Counting walks every reply, so it is done every 10 ms rather
    # than on each of the thousands of requests the fake serves meanwhile, which would take the bot's CPU.
    async with asyncio.timeout(120):
        while not arrived(first + burst - 1):  # noqa: ASYNC110 (a poll on purpose, see above)
            await asyncio.sleep(0.01)
    return latencies, burst / (time.perf_counter() - started)


async def slack(
    model: ModelProcess, workdir: Path, socket_mode: bool, single: int, burst: int
) -> tuple[list[float], float]:
    async with FakeSlack() as fake, model_http_client(30) as http:
        transport = {"slack_app_token": "xapp-bench"} if socket_mode else {"slack_signing_secret": SECRET}
        settings = _settings(
            model,
            workdir / f"slack-{socket_mode}.db",
            slack_bot_token=fake.bot_token,
            slack_api_url=fake.api_url,
            http_host="127.0.0.1",
            http_port=0,
            **transport,
        )
        async with open_core(settings) as core:
            adapter = SlackAdapter(core, settings)
            await adapter.start()
            try:
                if socket_mode:
                    await fake.wait_for_socket()

                async def send(i: int, channel: int) -> None:
                    envelope = event_envelope(mention(f"<@UBOT> q{i}", channel=f"C{channel}", ts=f"{i}.1"))
                    if socket_mode:
                        await fake.send_envelope("events_api", envelope)
                        return
                    body = json.dumps(envelope)
                    headers = {"Content-Type": "application/json", **signed_headers(SECRET, body)}
                    await http.post(f"http://127.0.0.1:{adapter.http_port}/slack/events", content=body, headers=headers)

                def arrived(i: int) -> bool:
                    # One final message per mention: the i-th mention has its answer once i+1 replies are whole.
                    return sum(p.text.rstrip().endswith("tok4") for p in fake.posted) >= i + 1

                return await _measure(send, arrived, fake.wait_for, single, burst)
            finally:
                await adapter.stop()


async def discord(model: ModelProcess, workdir: Path, single: int, burst: int) -> tuple[list[float], float]:
    async with FakeDiscord() as fake:
        with fake.patch_discord():
            settings = _settings(model, workdir / "discord.db", discord_token="bench-token")
            async with open_core(settings) as core:
                adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05)
                await adapter.start()
                try:

                    async def send(i: int, channel_index: int) -> None:
                        channel = DISCORD_CHANNELS[channel_index]
                        payload = fake.message_create(
                            f"<@{BOT_USER['id']}> q{i}", mentions=(BOT_USER,), channel_id=channel, guild_id=GUILD_ID
                        )
                        await fake.dispatch("MESSAGE_CREATE", payload)

                    def arrived(i: int) -> bool:
                        return sum(m.content.rstrip().endswith("tok4") for m in fake.messages.values()) >= i + 1

                    return await _measure(send, arrived, fake.wait_for, single, burst)
                finally:
                    await adapter.stop()


def _row(name: str, latencies: list[float], rate: float) -> tuple[str, str]:
    return (
        name,
        f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms; burst {rate:,.0f} mentions/s",
    )


async def run_e2e(quick: bool) -> list[tuple[str, str]]:
    single, burst = (20, 100) if quick else (200, 1000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with ModelProcess(reply_tokens=5) as model:
            add_row(
                rows, _row("Slack HTTP mode, event to final reply", *await slack(model, workdir, False, single, burst))
            )
            add_row(
                rows,
                _row("Slack Socket Mode, envelope to final reply", *await slack(model, workdir, True, single, burst)),
            )
            add_row(rows, _row("Discord, MESSAGE_CREATE to final reply", *await discord(model, workdir, single, burst)))
    return rows
