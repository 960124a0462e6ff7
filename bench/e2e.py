"""End to end through the real SDKs: from a Slack event or a Discord MESSAGE_CREATE to the final reply text at the
fake platform, with an instant model. The model and the fake platform (with what sends the mentions and times the
replies) each run in a process of their own (``bench.model``, ``bench.platforms``), so this process does only the
bot's work."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from adapters.discord import DiscordAdapter
from adapters.slack import SlackAdapter
from bench.core import add_row, percentile
from bench.model import ModelProcess
from bench.platforms import SLACK_BOT_TOKEN, PlatformProcess
from bot.config import Settings
from bot.runtime import open_core
from tests.fakes.discord import point_discord_at

SECRET = "bench-secret"
REPLY_TOKENS = 5
#: A reply is final once its text ends with the model's last token.
LAST_TOKEN = f"tok{REPLY_TOKENS - 1}"


@dataclass(frozen=True, slots=True)
class Measured:
    latencies_ms: list[float]
    rate: float
    #: Share of one core each process used during the burst: which of them is the limit.
    bot_cpu: float
    platform_cpu: float


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


async def _measure(platform: PlatformProcess, single: int, burst: int) -> Measured:
    latencies = await platform.singles(single)
    cpu = time.process_time()
    result = await platform.burst(single, burst)
    bot_cpu = time.process_time() - cpu
    return Measured(latencies, burst / result.seconds, bot_cpu / result.seconds, result.cpu_seconds / result.seconds)


async def slack(model: ModelProcess, workdir: Path, socket_mode: bool, single: int, burst: int) -> Measured:
    kind: Literal["slack-socket", "slack-http"] = "slack-socket" if socket_mode else "slack-http"
    async with PlatformProcess(kind, secret=SECRET, last_token=LAST_TOKEN) as platform:
        transport = {"slack_app_token": "xapp-bench"} if socket_mode else {"slack_signing_secret": SECRET}
        settings = _settings(
            model,
            workdir / f"slack-{socket_mode}.db",
            slack_bot_token=SLACK_BOT_TOKEN,
            slack_api_url=f"{platform.url}/api/",
            http_host="127.0.0.1",
            http_port=0,
            **transport,
        )
        async with open_core(settings) as core:
            adapter = SlackAdapter(core, settings)
            await adapter.start()
            try:
                events_url = None if socket_mode else f"http://127.0.0.1:{adapter.http_port}/slack/events"
                await platform.connect(events_url)
                return await _measure(platform, single, burst)
            finally:
                await adapter.stop()


async def discord(model: ModelProcess, workdir: Path, single: int, burst: int) -> Measured:
    async with PlatformProcess("discord", secret=SECRET, last_token=LAST_TOKEN) as platform:
        with point_discord_at(platform.url):
            settings = _settings(model, workdir / "discord.db", discord_token="bench-token")
            async with open_core(settings) as core:
                adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05)
                await adapter.start()
                try:
                    await platform.connect()
                    return await _measure(platform, single, burst)
                finally:
                    await adapter.stop()


def _row(name: str, measured: Measured) -> tuple[str, str]:
    latencies = measured.latencies_ms
    return (
        name,
        f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms; "
        f"burst {measured.rate:,.0f} mentions/s (CPU in the burst: bot {measured.bot_cpu:.0%}, "
        f"fake platform {measured.platform_cpu:.0%} of a core)",
    )


async def run_e2e(quick: bool) -> list[tuple[str, str]]:
    single, burst = (20, 100) if quick else (200, 1000)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with ModelProcess(reply_tokens=REPLY_TOKENS) as model:
            add_row(
                rows, _row("Slack HTTP mode, event to final reply", await slack(model, workdir, False, single, burst))
            )
            add_row(
                rows,
                _row("Slack Socket Mode, envelope to final reply", await slack(model, workdir, True, single, burst)),
            )
            add_row(rows, _row("Discord, MESSAGE_CREATE to final reply", await discord(model, workdir, single, burst)))
    return rows
