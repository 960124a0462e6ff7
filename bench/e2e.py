"""End to end through the real SDKs: from a Slack event or a Discord MESSAGE_CREATE to the final reply text at the
fake platform, with an instant model. The model and the fake platform (with what sends the mentions and times the
replies) each run in a process of their own (``bench.model``, ``bench.platforms``), so this process does only the
bot's work."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.discord import DiscordAdapter
from adapters.slack import SlackAdapter
from bench.core import ModelPace, add_row, percentile
from bench.model import ModelProcess
from bench.platforms import CHANNELS, KINDS, SLACK_BOT_TOKEN, Kind, PlatformProcess
from bot import heap
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


def _settings(model: ModelProcess, db: Path, burst: int, **platform: Any) -> Settings:
    """The defaults, guards on (rate limits, the call gate, per-conversation queues), with the gate and the queues
    sized for a burst of ``burst`` mentions over :data:`CHANNELS` channels: at the defaults (8 calls at once, 64
    queued, 8 per conversation) most of a burst would be told the bot is busy, and the row would measure refusals."""
    return Settings(
        openai_base_url=model.base_url,
        openai_model="bench",
        db=str(db),
        max_concurrent_calls=max(burst, 8),
        max_queued_calls=max(burst, 64),
        max_queued_per_conversation=max(burst // CHANNELS, 8),
        stream_edit_interval=1.0,
        **platform,
    )


@asynccontextmanager
async def _bot(
    kind: Kind, model: ModelProcess, workdir: Path, burst: int, last_token: str
) -> AsyncIterator[PlatformProcess]:
    """The fake platform in its process and the bot on it, connected."""
    async with PlatformProcess(kind, secret=SECRET, last_token=last_token) as platform:
        db = workdir / f"{kind}-{last_token}.db"
        if kind == "discord":
            with point_discord_at(platform.url):
                settings = _settings(model, db, burst, discord_token="bench-token")
                async with open_core(settings) as core:
                    adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05)
                    await adapter.start()
                    try:
                        await platform.connect()
                        heap.settle()  # as `teambot run` does once it is up
                        yield platform
                    finally:
                        await adapter.stop()
            return
        socket_mode = kind == "slack-socket"
        transport = {"slack_app_token": "xapp-bench"} if socket_mode else {"slack_signing_secret": SECRET}
        settings = _settings(
            model,
            db,
            burst,
            slack_bot_token=SLACK_BOT_TOKEN,
            slack_api_url=f"{platform.url}/api/",
            http_host="127.0.0.1",
            http_port=0,
            **transport,
        )
        async with open_core(settings) as core:
            slack = SlackAdapter(core, settings)
            await slack.start()
            try:
                await platform.connect(None if socket_mode else f"http://127.0.0.1:{slack.http_port}/slack/events")
                # The workspace's people, listed at start, are known before the measured rows: a bot up for a while.
                await asyncio.wait_for(slack.names_ready(), 120)
                heap.settle()
                yield platform
            finally:
                await slack.stop()


async def _measure(platform: PlatformProcess, single: int, burst: int) -> Measured:
    latencies = await platform.singles(single)
    cpu = time.process_time()
    result = await platform.burst(single, burst)
    bot_cpu = time.process_time() - cpu
    return Measured(latencies, burst / result.seconds, bot_cpu / result.seconds, result.cpu_seconds / result.seconds)


async def measure(kind: Kind, model: ModelProcess, workdir: Path, single: int, burst: int) -> Measured:
    """Latency one mention at a time, then the burst: ``burst`` mentions at once."""
    async with _bot(kind, model, workdir, burst, LAST_TOKEN) as platform:
        return await _measure(platform, single, burst)


async def first_words(kind: Kind, model: ModelProcess, workdir: Path, count: int) -> list[float]:
    """Milliseconds from each of ``count`` mentions (one at a time) to the first text of its reply on the platform,
    less the model's time to its first token: what the bot adds before a person sees the answer start."""
    async with _bot(kind, model, workdir, count, f"tok{FIRST_WORD_PACE.reply_tokens - 1}") as platform:
        firsts, _ = await platform.first_words(0, count)
    return [ms - FIRST_WORD_PACE.first_byte * 1000 for ms in firsts]


def _row(name: str, measured: Measured) -> tuple[str, str]:
    latencies = measured.latencies_ms
    return (
        name,
        f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms; "
        f"burst {measured.rate:,.0f} mentions/s (CPU in the burst: bot {measured.bot_cpu:.0%}, "
        f"fake platform {measured.platform_cpu:.0%} of a core)",
    )


NAMES: dict[Kind, str] = {
    "slack-http": "Slack HTTP mode, event to final reply",
    "slack-socket": "Slack Socket Mode, envelope to final reply",
    "discord": "Discord, MESSAGE_CREATE to final reply",
}
#: The model of the first-visible-word row: 200 ms to its first token, as in the overhead rows.
FIRST_WORD_PACE = ModelPace()


async def run_e2e(quick: bool) -> list[tuple[str, str]]:
    single, burst = (20, 100) if quick else (200, 1000)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with ModelProcess(reply_tokens=REPLY_TOKENS) as model:
            for kind in KINDS:
                add_row(rows, _row(NAMES[kind], await measure(kind, model, workdir, single, burst)))
        pace = FIRST_WORD_PACE
        async with ModelProcess(
            first_byte=pace.first_byte, tokens_per_second=pace.tokens_per_second, reply_tokens=pace.reply_tokens
        ) as model:
            found = {kind: await first_words(kind, model, workdir, 5 if quick else 50) for kind in KINDS}
        add_row(
            rows,
            (
                f"time to first visible word: from the event to the reply's first text on the platform (first post "
                f"or stream start), less the model's {pace.first_byte * 1000:.0f} ms to its first token; target "
                "10 ms",
                "; ".join(
                    f"{name} p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms"
                    for name, ms in (
                        ("Slack HTTP", found["slack-http"]),
                        ("Socket Mode", found["slack-socket"]),
                        ("Discord", found["discord"]),
                    )
                ),
            ),
        )
    return rows
