"""People's names on Slack: the workspace listed at start (users.list), kept fresh by user_change and team_join,
users.info for anyone else; through the real slack-bolt and slack_sdk against the loopback fake Slack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)

from adapters.slack import SlackAdapter
from adapters.slack.names import CACHE_SIZE, PAGE_SIZE, SlackNames
from adapters.slack.sdk import web_client
from bot.runtime import open_core
from tests.adapters.slack import test_app as base
from tests.adapters.slack.test_app import Slack, settings_for
from tests.adapters.slack.test_threads import a_thread, ask, prompt
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import SCOPES, FakeSlack, mention

LIST = "users.list"
INFO = "users.info"


# The Slack fixtures of test_app: a fake Slack (with its people) and a fake model.
fake, model = base.fake, base.model


@contextlib.asynccontextmanager
async def running(fake: FakeSlack, model: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Slack]:
    """The adapter started; the load of names left to run (a test that needs it done awaits ``names_ready``)."""
    settings = settings_for(fake, model, tmp_path / "teambot.db")
    async with open_core(settings) as core, httpx.AsyncClient() as http:
        adapter = SlackAdapter(core, settings)
        await adapter.start()
        try:
            yield Slack(fake, model, adapter, http, tmp_path / "teambot.db")
        finally:
            await adapter.stop()


@pytest.fixture
async def slack(fake: FakeSlack, model: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Slack]:
    async with running(fake, model, tmp_path) as slack:
        await asyncio.wait_for(slack.adapter.names_ready(), 10)
        yield slack


def people(count: int) -> dict[str, dict[str, str]]:
    return {f"U{n:05d}": {"display_name": f"person {n}"} for n in range(count)}


def names_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "adapters.slack.names" and r.levelno >= logging.WARNING]


async def test_a_listed_person_is_named_without_a_users_info_call(slack: Slack) -> None:
    assert slack.fake.calls_to(LIST) == [{"limit": str(PAGE_SIZE)}]
    await slack.event(mention("<@UBOT> hi, ask <@U2>", ts="1.1"))
    await slack.wait_posts(1)
    # U2 has no display name: the full name stands in, as users.info's answer would give it.
    assert slack.fake.posted[0].text == "echo: Ada: hi, ask @Grace Hopper"
    assert slack.fake.calls_to(INFO) == []


async def test_a_thread_of_listed_people_is_read_without_users_info(slack: Slack) -> None:
    a_thread(slack.fake)
    await ask(slack, "1700000000.000500", "what did we decide?", answers=1)
    assert ("user", "Grace Hopper: the deploy of 4.2 failed") in prompt(slack)
    assert slack.fake.calls_to(INFO) == []


@pytest.mark.parametrize("count", [PAGE_SIZE * 2 + 50, PAGE_SIZE])
async def test_the_people_are_read_page_by_page(
    model: FakeOpenAI, tmp_path: Path, count: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "adapters.slack.names")
    workspace = people(count) | {"U9": {"display_name": "Gone", "deleted": True}}
    async with FakeSlack(users=workspace) as fake, running(fake, model, tmp_path) as slack:
        await asyncio.wait_for(slack.adapter.names_ready(), 10)
        pages = -(-(count + 1) // PAGE_SIZE)
        cursors = [c.get("cursor") for c in fake.calls_to(LIST)]
        assert cursors == [None] + [f"people:{PAGE_SIZE * n}" for n in range(1, pages)]
        assert len(slack.adapter.names) == count and "U9" not in slack.adapter.names  # the deleted are left out
        last = f"U{count - 1:05d}"
        await slack.event(mention("<@UBOT> hi", ts="1.1", user=last))
        await slack.wait_posts(1)
        assert fake.posted[0].text == f"echo: person {count - 1}: hi"
        assert fake.calls_to(INFO) == []
    assert f"loaded the names of {count} people of the workspace (users.list)" in caplog.text


async def test_the_load_stops_at_the_bound(fake: FakeSlack, caplog: pytest.LogCaptureFixture) -> None:
    """A workspace larger than the cache: the first ``size`` people are loaded, the pages after are not asked for,
    one line says so, and the others are looked up when they write, within the same bound."""
    caplog.set_level(logging.INFO)
    fake.users = people(1000)
    client = web_client(fake.bot_token, fake.api_url, [AsyncConnectionErrorRetryHandler()])
    names = SlackNames(client, size=250)
    names.start()
    await asyncio.wait_for(names.loaded(), 10)
    assert len(names) == 250 and "U00249" in names and "U00250" not in names
    assert len(fake.calls_to(LIST)) == 2  # 400 listed, 250 kept; the other three pages never asked for
    bound = [r for r in caplog.records if "looked up (users.info) when they first write" in r.getMessage()]
    assert len(bound) == 1 and bound[0].levelno == logging.INFO
    assert await names.name("U00900") == "person 900"
    assert fake.calls_to(INFO) == [{"user": "U00900"}] and len(names) == 250
    assert CACHE_SIZE == 10_000


async def test_user_change_renames_and_team_join_adds(slack: Slack) -> None:
    names = slack.adapter.names
    slack.fake.users["U1"] = {"display_name": "Ada L."}
    await slack.event({"type": "user_change", "user": slack.fake.member("U1"), "event_ts": "1.0", "cache_ts": 1})
    slack.fake.users["U5"] = {"display_name": "", "real_name": "Newcomer Nia"}
    await slack.event({"type": "team_join", "user": slack.fake.member("U5"), "event_ts": "1.0"})
    await slack.fake.wait_for(lambda: "U5" in names)
    await slack.event(mention("<@UBOT> hi", ts="1.1"))
    await slack.event(mention("<@UBOT> hello", ts="1.2", user="U5"))
    await slack.wait_posts(2)
    assert sorted(p.text for p in slack.fake.posted) == ["echo: Ada L.: hi", "echo: Newcomer Nia: hello"]
    assert slack.fake.calls_to(INFO) == []
    # Someone deleted is forgotten: a thread that still shows their messages asks users.info.
    slack.fake.users["U1"]["deleted"] = True
    await slack.event({"type": "user_change", "user": slack.fake.member("U1"), "event_ts": "1.0", "cache_ts": 2})
    await slack.fake.wait_for(lambda: "U1" not in names)


async def test_events_for_strangers_do_not_push_people_out_of_a_full_cache(fake: FakeSlack) -> None:
    client = web_client(fake.bot_token, fake.api_url, [AsyncConnectionErrorRetryHandler()])
    names = SlackNames(client, size=2)
    names.start()
    await names.loaded()
    assert len(names) == 2
    fake.users["U7"] = {"display_name": "Status changer"}
    names.changed(fake.member("U7"))
    assert "U7" not in names and len(names) == 2
    fake.users["U1"] = {"display_name": "Ada again"}
    names.changed(fake.member("U1"))
    assert await names.name("U1") == "Ada again"
    names.changed({"type": "not a user"})
    names.changed(None)
    assert len(names) == 2 and fake.calls_to(INFO) == []


FAILURES = {
    "missing scope": lambda fake: setattr(fake, "scopes", [s for s in SCOPES if s != "users:read"]),
    "rate limited past the retries": lambda fake: fake.rate_limit(LIST, times=6, retry_after=0),
    "network": lambda fake: fake.drop(LIST, times=5),
    "error page": lambda fake: fake.error_page(LIST, status=502, times=5),
}


@pytest.mark.parametrize("failure", FAILURES)
async def test_a_failed_load_is_one_warning_and_users_info_names_people(
    fake: FakeSlack, model: FakeOpenAI, tmp_path: Path, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    FAILURES[failure](fake)
    async with running(fake, model, tmp_path) as slack:
        await asyncio.wait_for(slack.adapter.names_ready(), 30)
        await slack.event(mention("<@UBOT> hi", ts="1.1"))
        await slack.wait_posts(1)
        assert fake.posted[0].text == "echo: Ada: hi"
        assert fake.calls_to(INFO) == [{"user": "U1"}]
    [warning] = names_warnings(caplog)
    assert warning.startswith("could not load the workspace's people (users.list: ")
    assert fake.bot_token not in caplog.text
    if failure == "missing scope":
        assert "missing_scope" in warning and "users:read scope" in warning


async def test_the_adapters_client_waits_out_a_rate_limit_on_the_list(
    fake: FakeSlack, model: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.users = people(PAGE_SIZE + 1)
    fake.rate_limit(LIST, times=1, retry_after=0)
    async with running(fake, model, tmp_path) as slack:
        await asyncio.wait_for(slack.adapter.names_ready(), 10)
        assert len(slack.adapter.names) == PAGE_SIZE + 1
    assert len(fake.limited) == 1 and names_warnings(caplog) == []
    assert any(isinstance(h, AsyncRateLimitErrorRetryHandler) for h in slack.adapter.client.retry_handlers)


async def test_a_mention_does_not_wait_for_the_load_and_stop_cancels_it(
    fake: FakeSlack, model: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.stall(LIST, 5)  # Slack is slow to list the workspace
    async with running(fake, model, tmp_path) as slack:
        await fake.wait_for(lambda: len(fake.calls_to(LIST)) == 1)
        await slack.event(mention("<@UBOT> hi", ts="1.1"))
        await slack.wait_posts(1)
        assert fake.posted[0].text == "echo: Ada: hi"  # looked up on its own, the list still under way
        assert fake.calls_to(INFO) == [{"user": "U1"}]
        await asyncio.wait_for(slack.adapter.stop(), 10)
        await asyncio.wait_for(slack.adapter.names_ready(), 1)  # at once once stopped
        # The list was not waited for: had stop() let it finish, Grace would be known by now.
        assert "U1" in slack.adapter.names and "U2" not in slack.adapter.names
    assert names_warnings(caplog) == [] and "loaded the names" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
