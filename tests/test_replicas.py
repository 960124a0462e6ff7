"""Two ``teambot run`` processes sharing one PostgreSQL database behind one Slack app, as behind a load balancer.

Each mention goes to one replica, some to both (a redelivery, a load balancer retry): the database, not memory,
decides who answers, which turn of a conversation comes first, and whose request the rate limit refuses.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from bot import texts
from tests.bot_process import Bot, start_bot
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack, event_envelope, mention

CHANNELS = 100
MENTIONS = 1_000
_QUESTION = re.compile(r"q(\d+)\b")
_ANSWER = re.compile(r"a(\d+) after \d+")


def numbered_reply(messages: list[dict[str, Any]]) -> str:
    """Names the question and how many earlier questions of the conversation the model was shown."""
    contents = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
    question = _QUESTION.findall(contents[-1])[-1]
    return f"a{question} after {len(contents) - 1}"


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeOpenAI, FakeSlack, httpx.AsyncClient]]:
    users = {f"U{n}": {"display_name": f"Person {n}"} for n in range(5)}
    limits = httpx.Limits(max_connections=64)
    async with (
        FakeOpenAI(reply=numbered_reply) as fake,
        FakeSlack(users=users) as slack,
        httpx.AsyncClient(limits=limits, timeout=30) as http,
    ):
        yield fake, slack, http


async def start_replicas(
    fake: FakeOpenAI, slack: FakeSlack, http: httpx.AsyncClient, url: str, tmp_path: Path, env: dict[str, str]
) -> list[Bot]:
    common = {"TEAMBOT_STREAM": "false", "TEAMBOT_LOG_LEVEL": "WARNING", **env}
    return list(await asyncio.gather(*(start_bot(fake, slack, url, http, cwd=tmp_path, env=common) for _ in range(2))))


async def stop(replicas: list[Bot]) -> None:
    for bot in replicas:
        if bot.proc.returncode is None:
            bot.proc.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*(bot.wait() for bot in replicas))
    assert codes == [0, 0], "".join(line for bot in replicas for line in bot.stderr)


@pytest.mark.timeout(240)
async def test_two_replicas_answer_each_of_1000_mentions_once_and_in_order(
    fakes, postgres_url: str, tmp_path: Path
) -> None:
    fake, slack, http = fakes
    # Every mention of a channel goes to the same replica (n % 2), and on a loaded machine they may all wait there
    # at once: the queues are sized for that, so a "busy" refusal never stands in for a lost answer here.
    unlimited = {
        "TEAMBOT_USER_RATE_PER_MINUTE": "0",
        "TEAMBOT_CHANNEL_RATE_PER_MINUTE": "0",
        "TEAMBOT_MAX_QUEUED_CALLS": str(MENTIONS),
        "TEAMBOT_MAX_QUEUED_PER_CONVERSATION": str(MENTIONS // CHANNELS * 2),
    }
    replicas = await start_replicas(fake, slack, http, postgres_url, tmp_path, unlimited)
    rng = random.Random(7)
    sends = asyncio.Semaphore(48)

    async def deliver(n: int) -> None:
        channel = f"C{n % CHANNELS:03d}"
        event = mention(f"<@UBOT> q{n}", channel=channel, user=f"U{n % 5}", ts=f"{1_700_000_000 + n}.000100")
        envelope = event_envelope(event, event_id=f"Ev{n:05d}")
        targets = [replicas[n % 2]]
        if rng.random() < 0.2:
            targets.append(replicas[(n + 1) % 2])  # delivered to both, at the same moment
        async with sends:
            await asyncio.gather(*(bot.send(http, envelope) for bot in targets))

    try:
        await asyncio.gather(*(deliver(n) for n in range(MENTIONS)))
        await slack.wait_for(lambda: len(slack.posted) >= MENTIONS, 180)
    finally:
        await stop(replicas)  # both drain, so a second answer in flight would land before we count

    answers = Counter(m.group(1) for p in slack.posted if (m := _ANSWER.fullmatch(p.text)))
    assert len(slack.posted) == MENTIONS, f"{len(slack.posted) - MENTIONS} extra posts"
    assert answers == Counter(str(n) for n in range(MENTIONS)), "some mention was answered twice or not at all"
    assert fake.calls == MENTIONS

    conn = await asyncpg.connect(postgres_url)
    try:
        stored = await conn.fetch(
            "SELECT c.channel, m.id, m.role, m.content, m.reply_to FROM messages m "
            "JOIN conversations c ON c.id = m.conversation_id ORDER BY c.channel, m.id"
        )
        ledger = await conn.fetchrow("SELECT count(*), bool_and(exact), sum(completion_tokens) FROM usage")
    finally:
        await conn.close()
    by_channel: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for row in stored:
        by_channel[row["channel"]].append(row)
    assert len(by_channel) == CHANNELS
    for channel, rows in by_channel.items():
        # Serialised across replicas: question, its answer, the next question... and each answer saw every
        # earlier turn of its conversation, which two turns run at once would not have.
        assert [r["role"] for r in rows] == ["user", "assistant"] * (MENTIONS // CHANNELS), channel
        for k, (question, answer) in enumerate(zip(rows[::2], rows[1::2], strict=True)):
            assert answer["reply_to"] == question["id"]
            number = _QUESTION.findall(question["content"])[-1]
            assert answer["content"] == f"a{number} after {k}", channel
    assert ledger[0] == fake.calls and ledger[1] is True
    assert ledger[2] > 0


async def test_rate_limits_hold_across_replicas(fakes, postgres_url: str, tmp_path: Path) -> None:
    fake, slack, http = fakes
    replicas = await start_replicas(fake, slack, http, postgres_url, tmp_path, {"TEAMBOT_USER_RATE_PER_MINUTE": "3"})
    try:
        for n in range(6):  # one person, alternating between the replicas: three answers a minute in all
            event = mention(f"<@UBOT> q{n}", channel=f"C{n}", user="U1", ts=f"1700000000.{n:06d}")
            await replicas[n % 2].send(http, event_envelope(event))
            await slack.wait_for(lambda n=n: len(slack.posted) == n + 1, 20)
    finally:
        await stop(replicas)
    texts_posted = [p.text for p in slack.posted]
    assert [t.startswith("a") for t in texts_posted] == [True] * 3 + [False] * 3, json.dumps(texts_posted)
    slow_down = texts.SLOW_DOWN.split("{")[0]
    assert all(t.startswith(slow_down) for t in texts_posted[3:]), texts_posted
    assert fake.calls == 3


async def test_a_budget_spent_on_one_replica_is_spent_on_the_other(fakes, postgres_url: str, tmp_path: Path) -> None:
    fake, slack, http = fakes
    budget = {"TEAMBOT_BUDGET_USER_DAILY": "1", "TEAMBOT_BUDGET_UNIT": "tokens"}
    replicas = await start_replicas(fake, slack, http, postgres_url, tmp_path, budget)
    used_up = texts.BUDGET_REACHED.split("{")[0]
    try:
        # The same person, first on one replica, then on the other.
        await replicas[0].send(http, event_envelope(mention("<@UBOT> q0", channel="C0", ts="1700000000.000001")))
        await slack.wait_for(lambda: any(_ANSWER.fullmatch(p.text) for p in slack.posted), 20)
        await replicas[1].send(http, event_envelope(mention("<@UBOT> q1", channel="C1", ts="1700000000.000002")))
        await slack.wait_for(lambda: any(p.text.startswith(used_up) for p in slack.posted), 20)
    finally:
        await stop(replicas)
    in_second_channel = [p.text for p in slack.posted if p.channel == "C1"]
    assert len(in_second_channel) == 1 and in_second_channel[0].startswith(used_up), in_second_channel
    assert fake.calls == 1
