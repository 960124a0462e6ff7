"""The fake platform in a process of its own (``bench.platforms``) drives a real Slack app and times its replies
from the moment a mention is sent until its final text reaches the fake."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bench.platforms import SLACK_BOT_TOKEN, PlatformProcess

SECRET = "platform-secret"


def _work(text: str) -> float:
    """How long the app takes to answer mention ``q{i}``: 50 ms plus 5 ms per index, so the last of a burst is the
    slowest."""
    return 0.05 + int(text.rsplit("q", 1)[1]) * 0.005


async def test_singles_and_burst_time_the_final_reply_of_every_mention() -> None:
    async with PlatformProcess("slack-http", secret=SECRET, last_token="done") as platform:
        app = AsyncApp(
            client=AsyncWebClient(token=SLACK_BOT_TOKEN, base_url=f"{platform.url}/api/"), signing_secret=SECRET
        )

        @app.event("app_mention")
        async def answer(event: dict[str, Any], client: AsyncWebClient) -> None:
            # A first text that is not final, the final one after the work: only the final one may count.
            ts = (await client.chat_postMessage(channel=event["channel"], text="thinking"))["ts"]
            await asyncio.sleep(_work(event["text"]))
            await client.chat_update(channel=event["channel"], ts=ts, text="answer done")

        runner = web.AppRunner(app.web_app(path="/slack/events"), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            await platform.connect(f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events")
            latencies = await platform.singles(3)
            assert len(latencies) == 3
            assert all(ms >= _work(f"q{i}") * 1000 for i, ms in enumerate(latencies)), latencies
            burst = await platform.burst(3, 20)
            # Mentions 3..22 run at once; the burst ends with the slowest, q22.
            assert burst.seconds >= _work("q22"), burst
            assert burst.cpu_seconds > 0
        finally:
            await runner.cleanup()
