"""Slack threads through the real slack-bolt and slack_sdk: a mention in a thread sees the thread's earlier
messages (``conversations.replies`` on the fake Slack), read once whatever turns, restarts and replicas follow."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters import registry
from adapters.slack import SlackAdapter
from bot.config import Settings
from bot.runtime import open_core
from tests.adapters.slack import test_app as base
from tests.adapters.slack.test_app import USERS, Slack, settings_for
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import SCOPES, FakeSlack, assistant_message, mention

# The Slack fixtures of test_app: a fake Slack and model, and the adapter started against them over HTTP.
fake, model, overrides, native, slack = base.fake, base.model, base.overrides, base.native, base.slack

ROOT = "1700000000.000100"
REPLIES = "conversations.replies"
#: After the fake Slack's first posts (its ts count from 1700000101): what people write after the bot answered.
LATER = "1700000500.000100"


def written(fake: FakeSlack, n: int, text: str, **kw: Any) -> str:
    """A message a person (or a bot) writes in the thread; its ts, numbered after the root."""
    ts = f"1700000000.{n:06d}"
    fake.thread_message(text, ts=ts, thread_ts=ROOT, **kw)
    return ts


async def ask(slack: Slack, ts: str, text: str, *, user: str = "U1", answers: int) -> None:
    """A mention in the thread, written there as in Slack, then its event; until ``answers`` replies are in."""
    slack.fake.thread_message(f"<@UBOT> {text}", ts=ts, thread_ts=ROOT, user=user)
    await slack.event(mention(f"<@UBOT> {text}", ts=ts, thread_ts=ROOT, user=user))
    await slack.model.wait_for_requests(answers)
    await slack.wait_replies(answers)


def prompt(slack: Slack, index: int = -1) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in slack.model.requests[index]["messages"][1:]]


def a_thread(fake: FakeSlack) -> None:
    fake.thread_message("the deploy of 4.2 failed", ts=ROOT, thread_ts=ROOT, user="U2")
    written(fake, 200, "I see a <https://ci.example.com/42|red build>", user="U1")
    written(fake, 300, "build 42: test_login failed", user=None, bot_id="B9", bot_name="CI")
    written(fake, 350, "", user="U3", subtype="channel_join")
    written(fake, 400, "reverting <@U1>'s change now", user="U2")


async def test_a_mention_in_a_thread_sees_its_messages_in_order_with_names(slack: Slack) -> None:
    a_thread(slack.fake)
    await ask(slack, "1700000000.000500", "what did we decide?", answers=1)
    assert prompt(slack) == [
        ("user", "Grace Hopper: the deploy of 4.2 failed"),
        ("user", "Ada: I see a red build (https://ci.example.com/42)"),
        ("user", "CI (bot): build 42: test_login failed"),
        ("user", "Grace Hopper: reverting @Ada's change now"),
        ("user", "Ada: what did we decide?"),
    ]
    [call] = slack.fake.calls_to(REPLIES)
    assert (call["channel"], call["ts"], call["latest"]) == ("C1", ROOT, "1700000000.000500")
    assert "oldest" not in call
    assert slack.fake.posted[0].thread_ts == ROOT


async def test_a_second_mention_fetches_only_what_is_new(slack: Slack) -> None:
    a_thread(slack.fake)
    await ask(slack, "1700000000.000500", "what did we decide?", answers=1)
    [reply] = slack.fake.posted
    assert reply.ts < LATER  # the bot's reply is in the thread too, read back with what follows it
    slack.fake.thread_message("it is back up", ts=LATER, thread_ts=ROOT, user="U2")
    await ask(slack, f"{LATER}1", "so are we done?", answers=2)
    _, second = slack.fake.calls_to(REPLIES)
    assert second["oldest"] == "1700000000.000500" and second["latest"] == f"{LATER}1"
    # Nothing of the first read is stored twice, and the bot's own reply comes once, from the store.
    assert prompt(slack)[4:] == [
        ("user", "Ada: what did we decide?"),
        ("assistant", "echo: Ada: what did we decide?"),
        ("user", "Grace Hopper: it is back up"),
        ("user", "Ada: so are we done?"),
    ]
    assert len(prompt(slack)) == 8


async def test_a_bots_message_with_only_attachments_is_read_from_them(slack: Slack) -> None:
    slack.fake.thread_message("deploys today?", ts=ROOT, thread_ts=ROOT, user="U2")
    posted = written(slack.fake, 200, "", user=None, bot_id="B9", bot_name="Deploys")
    [report] = slack.fake.threads[("C1", ROOT)][-1:]
    assert report["ts"] == posted
    report["attachments"] = [{"fallback": "deploy 17 to prod: failed", "color": "danger"}]
    await ask(slack, "1700000000.000300", "what failed?", answers=1)
    assert prompt(slack)[1] == ("user", "Deploys (bot): deploy 17 to prod: failed")


async def test_a_top_level_mention_reads_no_thread(slack: Slack) -> None:
    await slack.event(mention("<@UBOT> hello", ts="1700000000.000100"))
    await slack.wait_replies(1)
    assert slack.fake.calls_to(REPLIES) == []


async def test_a_thread_under_the_bots_own_answer_starts_from_that_answer(slack: Slack) -> None:
    """People reply in a thread under the bot's channel answer: that thread's conversation never stored the answer,
    so it comes from the thread, as the bot's own words."""
    await slack.event(mention("<@UBOT> what is a 429?", ts="1700000000.000100"))
    await slack.wait_replies(1)
    answer = slack.fake.posted[0]
    assert answer.thread_ts is None
    slack.fake.thread_message(answer.text, ts=answer.ts, thread_ts=answer.ts, user="UBOT", bot_id="B1")
    ts = "1700000200.000100"
    slack.fake.thread_message("<@UBOT> and a 503?", ts=ts, thread_ts=answer.ts)
    await slack.event(mention("<@UBOT> and a 503?", ts=ts, thread_ts=answer.ts))
    await slack.wait_replies(2)
    assert prompt(slack) == [("assistant", "echo: Ada: what is a 429?"), ("user", "Ada: and a 503?")]


async def test_the_assistant_panes_threads_are_read_too(slack: Slack) -> None:
    # The pane's thread root is the app's own (not something it said to anyone): left out.
    slack.fake.thread_message("New Assistant Thread", ts=ROOT, thread_ts=ROOT, channel="D1", user="UBOT", bot_id="B1")
    slack.fake.thread_message("notes from yesterday", ts="1700000000.000200", thread_ts=ROOT, channel="D1")
    slack.fake.thread_message("more notes", ts="1700000000.000300", thread_ts=ROOT, channel="D1")
    await slack.event(assistant_message("summarise", thread_ts=ROOT, ts="1700000000.000400"))
    await slack.model.wait_for_requests(1)
    [call] = slack.fake.calls_to(REPLIES)
    assert (call["channel"], call["ts"]) == ("D1", ROOT)
    assert [c for _, c in prompt(slack)] == ["Ada: notes from yesterday", "Ada: more notes", "Ada: summarise"]


async def test_a_rate_limit_with_a_short_wait_is_waited_out_once(slack: Slack) -> None:
    a_thread(slack.fake)
    slack.fake.rate_limit(REPLIES, times=1, retry_after=1)
    await ask(slack, "1700000000.000500", "what did we decide?", answers=1)
    assert len(slack.fake.limited) == 1 and len(slack.fake.calls_to(REPLIES)) == 1
    assert len(prompt(slack)) == 5


async def test_a_long_rate_limit_answers_from_what_is_stored_and_asks_slack_no_more_meanwhile(
    slack: Slack, caplog: pytest.LogCaptureFixture
) -> None:
    a_thread(slack.fake)
    slack.fake.rate_limit(REPLIES, times=1, retry_after=60)
    with caplog.at_level(logging.WARNING):
        await ask(slack, "1700000000.000500", "what did we decide?", answers=1)
        await ask(slack, "1700000000.000600", "anyone?", answers=2)
    assert prompt(slack, 0) == [("user", "Ada: what did we decide?")]
    assert len(slack.fake.limited) == 1 and slack.fake.calls_to(REPLIES) == []  # the minute is not over
    lines = [r.getMessage() for r in caplog.records if "earlier messages could not be read" in r.getMessage()]
    assert len(lines) == 2 and "Retry-After 60 s" in lines[0] and "not asked again" in lines[1]


@pytest.mark.parametrize("overrides", [{"history_tokens": 400}])
async def test_a_thread_bigger_than_the_budget_keeps_its_newest_messages(
    slack: Slack, caplog: pytest.LogCaptureFixture
) -> None:
    slack.fake.thread_message("the very first message", ts=ROOT, thread_ts=ROOT, user="U2")
    for n in range(1, 120):
        written(slack.fake, 1000 + n, f"remark number {n} about the outage and what we saw then", user="U2")
    slack.fake.replies_page_cap = 15  # Slack's page for apps outside the Marketplace: 121 messages in nine pages
    with caplog.at_level(logging.INFO):
        await ask(slack, "1700000000.002000", "summarise", answers=1)
    contents = [c for _, c in prompt(slack)]
    assert contents[-1] == "Ada: summarise"
    assert contents[-2].startswith("Grace Hopper: remark number 119 ")
    assert "Grace Hopper: the very first message" not in contents
    assert len(slack.fake.calls_to(REPLIES)) == 9
    assert any("oldest earlier messages were left out" in r.getMessage() for r in caplog.records)


async def test_a_missing_scope_is_logged_and_the_mention_answered(
    fake: FakeSlack, model: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.scopes = [s for s in SCOPES if s != "channels:history"]
    a_thread(fake)
    async with running(fake, model, tmp_path / "t.db") as slack:
        with caplog.at_level(logging.WARNING):
            await ask(slack, "1700000000.000500", "what did we decide?", answers=1)
            await ask(slack, "1700000000.000600", "hello?", answers=2)
    assert prompt(slack, 0) == [("user", "Ada: what did we decide?")]
    first, second = [r.getMessage() for r in caplog.records if "earlier messages could not be read" in r.getMessage()]
    assert "missing_scope" in first and "channels:history" in first
    # Asking again cannot help until the app is changed: the next mention answers without asking.
    assert len(fake.calls_to(REPLIES)) == 1 and "missing_scope" in second and "not asked again" in second


async def test_teambot_check_names_the_missing_history_scopes(fake: FakeSlack) -> None:
    fake.scopes = [s for s in SCOPES if s not in ("groups:history", "mpim:history")]
    results = await registry.check(
        Settings(slack_bot_token=fake.bot_token, slack_signing_secret="s", slack_api_url=fake.api_url)
    )
    [scopes] = [r for r in results if r.name == "slack scopes"]
    assert not scopes.ok
    assert "groups:history (threads in private channels)" in scopes.detail and "mpim:history" in scopes.detail
    assert "channels:history" not in scopes.detail


@contextlib.asynccontextmanager
async def running(fake: FakeSlack, model: FakeOpenAI, db: Path | str) -> AsyncIterator[Slack]:
    """One teambot process's worth: a core on ``db`` and a Slack adapter, stopped on exit."""
    settings = settings_for(fake, model, db)
    async with open_core(settings) as core, httpx.AsyncClient() as http:
        adapter = SlackAdapter(core, settings)
        await adapter.start()
        try:
            yield Slack(fake, model, adapter, http, Path(str(db)))
        finally:
            await adapter.stop()


async def test_a_restart_does_not_read_the_thread_again(fake: FakeSlack, model: FakeOpenAI, tmp_path: Path) -> None:
    a_thread(fake)
    async with running(fake, model, tmp_path / "t.db") as slack:
        await ask(slack, "1700000000.000500", "what did we decide?", answers=1)
    async with running(fake, model, tmp_path / "t.db") as slack:  # a new process on the same file
        await ask(slack, "1700000000.000600", "and now?", answers=2)
    first, second = fake.calls_to(REPLIES)
    assert "oldest" not in first and second["oldest"] == "1700000000.000500"
    contents = [c for _, c in prompt(slack)]
    assert contents.count("Grace Hopper: the deploy of 4.2 failed") == 1 and contents[-1] == "Ada: and now?"


async def test_two_replicas_on_one_postgresql_read_a_thread_once(
    fake: FakeSlack, model: FakeOpenAI, postgres_url: str
) -> None:
    """Two mentions in one thread at the same moment, one to each replica. Slack answers slowly: without the
    conversation lock both replicas would read the whole thread."""
    a_thread(fake)
    fake.stall(REPLIES, 0.3, times=2)
    async with running(fake, model, postgres_url) as one, running(fake, model, postgres_url) as two:
        mentions = []
        for slack, ts, text in ((one, "1700000000.000500", "first"), (two, "1700000000.000510", "second")):
            fake.thread_message(f"<@UBOT> {text}", ts=ts, thread_ts=ROOT)
            mentions.append(slack.event(mention(f"<@UBOT> {text}", ts=ts, thread_ts=ROOT)))
        await asyncio.gather(*mentions)
        await model.wait_for_requests(2)
        await one.wait_replies(2)
    reads = fake.calls_to(REPLIES)
    # The whole thread is read once. Whichever replica takes the lock second reads from the cursor on; when that is
    # the earlier mention, nothing can lie between the cursor and it, so it asks Slack nothing.
    assert ["oldest" in r for r in reads].count(False) == 1 and len(reads) in (1, 2)
    everything = [c for request in model.requests for _, c in prompt_of(request)]
    assert max(everything.count(f"{name}: {text}") for name, text in THREAD_LINES) == 2  # the second saw it once


THREAD_LINES = [("Grace Hopper", "the deploy of 4.2 failed"), ("CI (bot)", "build 42: test_login failed")]


def prompt_of(request: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request["messages"][1:]]


async def test_the_users_names_are_looked_up_once(slack: Slack) -> None:
    a_thread(slack.fake)
    await ask(slack, "1700000000.000500", "what did we decide?", answers=1)
    looked_up = [c["user"] for c in slack.fake.calls_to("users.info")]
    assert sorted(looked_up) == sorted(set(looked_up)) and set(looked_up) <= set(USERS)
