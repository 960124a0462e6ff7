"""A mention in a 200-message Slack thread, through the real slack-bolt and slack_sdk: what reading the thread
(``conversations.replies``, the names, storing it before the question) costs the bot the first time, beyond the
fake Slack's own time, and that the second mention refetches nothing.

The fake Slack runs in this process (its time is measured from the client's side and taken off), the model in a
process of its own (bench.model), instant.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from adapters.slack import SlackAdapter
from bench.core import COUNTER, add_row
from bench.model import ModelProcess
from bot.config import Settings
from bot.context import Backfill
from bot.messages import IncomingMessage
from bot.runtime import open_core
from tests.fakes.slack import FakeSlack, event_envelope, mention, signed_headers

SECRET = "bench-secret"
MESSAGES = 200
PEOPLE = {f"U{n}": {"display_name": f"Person {n}"} for n in range(5)}


#: One mention's backfill: its seconds, the Web API's seconds and calls per method, the messages stored.
_Run = tuple[float, dict[str, float], dict[str, int], int]


class _TimedBackfill(Backfill):
    """The core's backfill, timed: (seconds, messages stored) per run."""

    runs: list[tuple[float, int]]

    async def run(self, msg: IncomingMessage) -> int:
        started = time.perf_counter()
        stored = await super().run(msg)
        self.runs.append((time.perf_counter() - started, stored))
        return stored


def _timed(client: Any, spent: dict[str, float], counts: dict[str, int]) -> None:
    """Time every Web API call ``client`` makes, per method: the fake Slack's share of a turn."""
    call: Callable[..., Awaitable[Any]] = client.api_call

    async def api_call(api_method: str, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await call(api_method, **kwargs)
        finally:
            spent[api_method] += time.perf_counter() - started
            counts[api_method] += 1

    setattr(client, "api_call", api_call)  # noqa: B010 - an instance's method, replaced for the measurement


def _fill(fake: FakeSlack, root: str, base: int) -> None:
    fake.thread_message("the release is blocked, see below", ts=root, thread_ts=root, user="U0")
    for n in range(1, MESSAGES):
        ts = f"{base + n}.000100"
        if n % 10 == 0:
            fake.thread_message(f"build {n}: 3 tests failed", ts=ts, thread_ts=root, user=None, bot_id="B9")
        else:
            text = f"remark {n}: the <@U{n % 5}> fix for the login timeout needs another look at the retry loop"
            fake.thread_message(text, ts=ts, thread_ts=root, user=f"U{n % 5}")


async def run_threads(quick: bool) -> list[tuple[str, str]]:
    repeats = 3 if quick else 10
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            ModelProcess(reply_tokens=5) as model,
            FakeSlack(users=PEOPLE) as fake,
            httpx.AsyncClient() as http,
        ):
            values: dict[str, Any] = {
                "openai_base_url": model.base_url,
                "openai_model": "bench",
                "db": str(Path(tmp) / "threads.db"),
                "user_rate_per_minute": 0,
                "channel_rate_per_minute": 0,
                "history_tokens": 32_000,  # the whole thread fits: every message is read and stored
                "slack_bot_token": fake.bot_token,
                "slack_signing_secret": SECRET,
                "slack_api_url": fake.api_url,
                "slack_native_streaming": False,
                "http_host": "127.0.0.1",
                "http_port": 0,
            }
            settings = Settings(**values)
            async with open_core(settings) as core:
                timed = _TimedBackfill(core.store, COUNTER, settings.history_tokens)
                timed.runs = []
                core.backfill = timed
                adapter = SlackAdapter(core, settings)
                await adapter.start()
                spent: dict[str, float] = defaultdict(float)
                counts: dict[str, int] = defaultdict(int)
                _timed(adapter.client, spent, counts)
                _timed(adapter.threads.client, spent, counts)
                url = f"http://127.0.0.1:{adapter.http_port}/slack/events"
                first: list[_Run] = []
                second: list[_Run] = []
                try:
                    for i in range(repeats):
                        base = 1_600_000_000 + i * 10_000
                        root = f"{base}.000100"
                        _fill(fake, root, base)
                        for ts, results in (
                            (f"{base + MESSAGES}.000100", first),
                            (f"{1_800_000_000 + i}.000100", second),
                        ):
                            spent.clear()
                            counts.clear()
                            answered = len(fake.posted)
                            event = mention("<@UBOT> what is blocking us?", ts=ts, thread_ts=root, user="U1")
                            fake.thread_message(event["text"], ts=ts, thread_ts=root, user="U1")
                            body = json.dumps(event_envelope(event))
                            headers = {"Content-Type": "application/json", **signed_headers(SECRET, body)}
                            await http.post(url, content=body, headers=headers)
                            await fake.wait_for(_more_than(fake, answered), 30)
                            seconds, stored = timed.runs[-1]
                            results.append((seconds, dict(spent), dict(counts), stored))
                finally:
                    await adapter.stop()
    add_row(rows, _first(first))
    add_row(rows, _second(second))
    return rows


def _more_than(fake: FakeSlack, posts: int) -> Callable[[], bool]:
    return lambda: len(fake.posted) > posts


def _slack_time(spent: dict[str, float]) -> float:
    return spent.get("conversations.replies", 0.0) + spent.get("users.info", 0.0)


def _first(results: list[_Run]) -> tuple[str, str]:
    total = statistics.median(r[0] for r in results) * 1000
    slack = statistics.median(_slack_time(r[1]) for r in results) * 1000
    ours = statistics.median((r[0] - _slack_time(r[1])) for r in results) * 1000
    _, _, counts, stored = results[-1]
    return (
        f"Slack thread of {MESSAGES} messages, first mention: backfill",
        f"{ours:.1f} ms beyond the fake Slack's {slack:.1f} ms (total {total:.1f} ms, median of {len(results)}); "
        f"{stored} messages stored, {counts.get('conversations.replies', 0)} conversations.replies pages",
    )


def _second(results: list[_Run]) -> tuple[str, str]:
    total = statistics.median(r[0] for r in results) * 1000
    _, _, counts, _ = results[-1]
    stored = max(r[3] for r in results)
    return (
        f"Slack thread of {MESSAGES} messages, second mention: backfill",
        f"{total:.1f} ms (median of {len(results)}); {counts.get('conversations.replies', 0)} conversations.replies "
        f"call from the cursor, {stored} messages stored again",
    )
