"""The Slack adapter through the real slack-bolt and slack_sdk, against the loopback fake Slack and model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import TEXT_LIMIT, SlackAdapter
from adapters.slack.app import _SocketModeClient
from adapters.slack.format import markdown_to_mrkdwn
from bot import texts
from bot.config import DEFAULT_SYSTEM_PROMPT, Settings
from bot.conversation import ConversationCore
from bot.logcontext import TurnFilter
from bot.runtime import open_core
from tests.bot_process import start_bot
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import (
    FakeSlack,
    direct_message,
    event_envelope,
    form_body,
    mention,
    signed_headers,
    slash_command_form,
)

SECRET = "test-signing-secret"
USERS = {"U1": {"display_name": "Ada"}, "U2": {"display_name": "", "real_name": "Grace Hopper"}}


@dataclass
class Slack:
    fake: FakeSlack
    model: FakeOpenAI
    adapter: SlackAdapter
    http: httpx.AsyncClient
    db: Path = Path()

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.adapter.http_port}/slack/events"

    async def send(self, payload: dict[str, Any], *, retry: int | None = None, secret: str = SECRET, **kw: Any):
        body = json.dumps(payload)
        headers = {"Content-Type": "application/json", **signed_headers(secret, body, **kw)}
        if retry is not None:
            headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
        return await self.http.post(self.events_url, content=body, headers=headers)

    async def event(self, event: dict[str, Any], **kw: Any) -> httpx.Response:
        response = await self.send(event_envelope(event), **kw)
        assert response.status_code == 200
        return response

    def posts(self) -> list[dict[str, Any]]:
        return self.fake.calls_to("chat.postMessage")

    async def wait_posts(self, n: int) -> None:
        await self.fake.wait_for(lambda: len(self.posts()) >= n)

    async def wait_replies(self, n: int) -> None:
        """Until ``n`` messages are out, posted or natively streamed (and no stream is still open)."""
        await self.fake.wait_for(lambda: len(self.fake.posted) >= n and not any(m.streaming for m in self.fake.posted))


def settings_for(fake: FakeSlack, model: FakeOpenAI, db: Path | str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_base_url": model.base_url,
        "openai_model": "fake-model",
        "db": str(db),
        "max_retries": 0,
        "slack_bot_token": fake.bot_token,
        "slack_signing_secret": SECRET,
        "slack_api_url": fake.api_url,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "stream_edit_interval": 0.2,
        "slack_native_streaming": False,  # see the ``native`` fixture
    }
    return Settings(**(values | overrides))


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(users=USERS) as server:
        yield server


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def native() -> bool:
    """Native streaming is off here: these tests hold the post-then-edit path, which is also its fallback.
    ``test_slack_assistant`` switches it on for the whole AI-app surface."""
    return False


@pytest.fixture
async def slack(
    fake: FakeSlack, model: FakeOpenAI, tmp_path: Path, overrides: dict[str, Any], native: bool
) -> AsyncIterator[Slack]:
    values = {"slack_native_streaming": native} | overrides
    settings = settings_for(fake, model, tmp_path / "teambot.db", **values)
    async with open_core(settings) as core, httpx.AsyncClient() as http:
        adapter = SlackAdapter(core, settings)
        await adapter.start()
        # As a bot that has been up a while: the workspace's people are known (the load at start has ended).
        await asyncio.wait_for(adapter.names_ready(), 10)
        try:
            yield Slack(fake, model, adapter, http, tmp_path / "teambot.db")
        finally:
            await adapter.stop()


def newcomer(slack: Slack, user_id: str = "U3", name: str = "Lin") -> str:
    """Someone who joined the workspace after the bot started (and whose team_join it did not get): not among the
    names loaded at start, so their name is looked up with users.info when they write."""
    slack.fake.users[user_id] = {"display_name": name}
    return user_id


def final_text(slack: Slack, post_index: int = 0) -> str:
    post = slack.fake.posted[post_index]
    return post.text


async def test_channel_mention_is_answered_in_the_channel(slack: Slack) -> None:
    await slack.event(mention("<@UBOT> what is *HTTP* 429?", ts="1700000000.000100"))
    await slack.wait_posts(1)
    post = slack.posts()[0]
    assert post["channel"] == "C1" and "thread_ts" not in post
    assert final_text(slack) == "echo: Ada: what is _HTTP_ 429?"  # the model's Markdown italics, in mrkdwn
    prompt = slack.model.requests[0]["messages"]
    assert prompt[-1] == {"role": "user", "content": "Ada: what is *HTTP* 429?"}


async def test_the_first_event_waits_for_no_auth_test(slack: Slack) -> None:
    # The adapter asks Slack who it is at start; Bolt's authorization takes that answer instead of asking again on
    # the first event, which would wait for the round trip before the event went any further.
    await slack.event(mention("<@UBOT> hello", ts="1700000000.000100"))
    await slack.wait_posts(1)
    assert len(slack.fake.calls_to("auth.test")) == 1
    assert slack.model.requests[0]["messages"][-1] == {"role": "user", "content": "Ada: hello"}  # the bot's id known


async def test_thread_mention_is_answered_in_the_thread_with_its_own_history(slack: Slack) -> None:
    await slack.event(mention("<@UBOT> in the channel", ts="1700000000.000100"))
    await slack.wait_replies(1)
    await slack.event(mention("<@UBOT> in the thread", ts="1700000000.000300", thread_ts="1700000000.000200"))
    await slack.wait_replies(2)
    assert slack.fake.posted[1].thread_ts == "1700000000.000200"
    thread_prompt = [m["content"] for m in slack.model.requests[1]["messages"][1:]]
    assert thread_prompt == ["Ada: in the thread"]
    await slack.event(mention("<@UBOT> channel again", ts="1700000000.000400"))
    await slack.wait_replies(3)
    channel_prompt = [m["content"] for m in slack.model.requests[2]["messages"][1:]]
    assert channel_prompt == ["Ada: in the channel", "echo: Ada: in the channel", "Ada: channel again"]


@pytest.mark.parametrize("overrides", [{"slack_reply_in_thread": True}])
async def test_reply_in_thread_starts_a_thread_per_mention(slack: Slack) -> None:
    await slack.event(mention("<@UBOT> hi", ts="1700000000.000100"))
    await slack.wait_replies(1)
    assert slack.fake.posted[0].thread_ts == "1700000000.000100"


async def test_direct_messages_need_no_mention(slack: Slack) -> None:
    await slack.event(direct_message("hello <@U2>", ts="1700000000.000100"))
    await slack.wait_posts(1)
    assert slack.posts()[0]["channel"] == "D1"
    assert final_text(slack) == "echo: Ada: hello @Grace Hopper"


async def test_bots_self_and_subtypes_are_ignored(slack: Slack) -> None:
    await slack.event(direct_message("from another bot", ts="1.1", bot_id="B2"))
    await slack.event(direct_message("edited", ts="1.2", subtype="message_changed"))
    await slack.event(direct_message("joined", ts="1.3", subtype="channel_join"))
    await slack.event(direct_message("from myself", ts="1.4", user="UBOT", bot_id="B1"))
    await slack.event(mention("<@UBOT> a mention from a bot", ts="1.5") | {"bot_id": "B2"})
    await slack.event(direct_message("a person", ts="1.6"))
    await slack.wait_posts(1)
    await slack.model.wait_for_requests(1)
    assert [m["content"] for m in slack.model.requests[0]["messages"][1:]] == ["Ada: a person"]
    assert slack.model.calls == 1 and len(slack.posts()) == 1


@pytest.mark.parametrize("content_type", ["text/html", "text/plain", "application/json"])
async def test_an_error_page_from_users_info_still_gets_an_answer(
    slack: Slack, content_type: str, caplog: pytest.LogCaptureFixture
) -> None:
    user = newcomer(slack)
    slack.fake.error_page("users.info", content_type=content_type)
    await slack.event(mention("<@UBOT> hello", ts="1.1", user=user))
    await slack.wait_posts(1)
    assert final_text(slack) == "echo: U3: hello"  # the id stands in for the name
    assert "users.info for U3 failed: http_500" in caplog.text
    # A passing failure is not remembered as the name: the next message asks again.
    await slack.event(mention("<@UBOT> again", ts="1.2", user=user))
    await slack.wait_posts(2)
    assert slack.fake.posted[1].text == "echo: Lin: again"
    assert len(slack.fake.calls_to("users.info")) == 2


async def test_the_event_is_acknowledged_before_the_work_is_done(slack: Slack) -> None:
    response = await slack.event(mention("<@UBOT> [[slow:1.5]] take your time", ts="1.1"))
    # Slack's 3-second limit must never wait on the model: the 200 is back while nothing is posted yet.
    assert response.status_code == 200 and slack.fake.posted == []
    await slack.model.wait_for_requests(1)
    assert slack.fake.posted == []  # the model is still thinking, after the acknowledgement
    await slack.wait_posts(1)
    assert final_text(slack).endswith("take your time")


async def test_names_are_looked_up_once_per_person(slack: Slack) -> None:
    user = newcomer(slack)
    await slack.event(mention("<@UBOT> one", ts="1.1", user=user))
    await slack.wait_posts(1)
    await slack.event(mention("<@UBOT> two, ask <@U3>", ts="1.2", user=user))
    await slack.wait_posts(2)
    assert slack.fake.posted[1].text == "echo: Lin: two, ask @Lin"
    assert [c["user"] for c in slack.fake.calls_to("users.info")] == ["U3"]


@pytest.mark.parametrize(("overrides", "answered"), [({"ignore_bots": False}, True), ({}, False)])
async def test_other_bots_are_answered_only_when_configured(slack: Slack, answered: bool) -> None:
    await slack.event(mention("<@UBOT> from a bot", ts="1.1", user="U2") | {"bot_id": "B2"})
    await slack.event(mention("<@UBOT> from a person", ts="1.2"))
    await slack.fake.wait_for(lambda: any(p.text == "echo: Ada: from a person" for p in slack.fake.posted))
    await slack.fake.wait_for(lambda: len(stored(slack)) == (4 if answered else 2))
    from_bot = [p.text for p in slack.fake.posted if "from a bot" in p.text]
    assert from_bot == (["echo: Grace Hopper: from a bot"] if answered else [])


@pytest.mark.parametrize("overrides", [{"reset_command": "forget"}])
async def test_the_reset_command_can_be_renamed(slack: Slack) -> None:
    await slack.event(mention("<@UBOT> remember me", ts="1.1"))
    await slack.wait_posts(1)
    answer = await slash(slack, "/forget", rid="f1")
    assert answer["text"] == texts.RESET_DONE.format(count=2, s="s") and answer["response_type"] == "ephemeral"
    assert stored(slack) == []


async def test_slack_escapes_reach_the_model_unescaped(slack: Slack) -> None:
    await slack.event(mention("<@UBOT> is a &amp;&amp; b &lt;= c &gt; d?", ts="1.1"))
    await slack.wait_posts(1)
    assert slack.model.requests[0]["messages"][-1]["content"] == "Ada: is a && b <= c > d?"
    assert final_text(slack) == "echo: Ada: is a &amp;&amp; b &lt;= c &gt; d?"  # escaped again on the way out


async def test_an_empty_mention_gets_a_hint_without_a_model_call(slack: Slack) -> None:
    await slack.event(mention("<@UBOT>   ", ts="1.1"))
    await slack.wait_posts(1)
    assert final_text(slack) == texts.EMPTY_MENTION and slack.model.calls == 0


async def test_a_redelivered_event_is_answered_once_also_after_a_restart(
    fake: FakeSlack, model: FakeOpenAI, tmp_path: Path
) -> None:
    db = tmp_path / "teambot.db"
    envelope = event_envelope(mention("<@UBOT> once please", ts="1700000000.000100"), event_id="Ev1")
    for run in (1, 2):  # the second process is a restart on the same database
        settings = settings_for(fake, model, db)
        async with open_core(settings) as core, httpx.AsyncClient() as http:
            adapter = SlackAdapter(core, settings)
            await adapter.start()
            slack = Slack(fake, model, adapter, http)
            try:
                assert (await slack.send(envelope)).status_code == 200
                assert (await slack.send(envelope, retry=1)).status_code == 200
                # Each process asks Slack who it is on start (readiness follows the answer; Bolt's authorization
                # takes that answer): this one's call is new.
                await fake.wait_for(lambda: len(fake.calls_to("auth.test")) == run)  # noqa: B023
                # Both deliveries reached this process's core: the first run answers one and skips the other,
                # the restarted one skips both, because the database remembers the message.
                await fake.wait_for(lambda: duplicates(core) == run)  # noqa: B023
                await slack.wait_posts(1)
            finally:
                await adapter.stop()
    assert model.calls == 1 and len(fake.calls_to("chat.postMessage")) == 1


def duplicates(core: ConversationCore) -> float:
    """How many deliveries this process's core recognised as already answered."""
    value = core.metrics.registry.get_sample_value("teambot_replies_total", {"platform": "slack", "kind": "duplicate"})
    return value or 0.0


async def test_the_same_event_delivered_twice_at_once_is_answered_once(slack: Slack) -> None:
    envelope = event_envelope(mention("<@UBOT> twice", ts="1.1"), event_id="EvTwice")
    responses = await asyncio.gather(slack.send(envelope), slack.send(envelope, retry=1))
    assert [r.status_code for r in responses] == [200, 200]
    await slack.wait_posts(1)
    await slack.fake.wait_for(lambda: len(stored(slack)) == 2)
    assert slack.model.calls == 1 and len(slack.posts()) == 1


async def test_reset_forgets_the_channel_and_answers_ephemerally(slack: Slack) -> None:
    await slack.event(mention("<@UBOT> remember me", ts="1.1"))
    await slack.wait_posts(1)
    form = slash_command_form("/reset", response_url=slack.fake.response_url("r1"))
    body = form_body(form)
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(SECRET, body)}
    response = await slack.http.post(slack.events_url, content=body, headers=headers)
    assert response.status_code == 200
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 1)
    answer = slack.fake.responses[0]
    assert answer["response_type"] == "ephemeral"
    assert answer["text"] == texts.RESET_DONE.format(count=2, s="s")
    await slack.event(mention("<@UBOT> who am I?", ts="1.2"))
    await slack.wait_posts(2)
    assert [m["content"] for m in slack.model.requests[-1]["messages"][1:]] == ["Ada: who am I?"]


@pytest.mark.parametrize(
    ("tamper", "kw"),
    [("bad signature", {"secret": "not-the-secret"}), ("stale", {"timestamp": int(time.time()) - 600})],
)
async def test_unsigned_or_stale_requests_are_refused(slack: Slack, tamper: str, kw: dict[str, Any]) -> None:
    response = await slack.send(event_envelope(mention("<@UBOT> hi", ts="1.1")), **kw)
    assert response.status_code == 401
    assert slack.model.calls == 0


async def test_streaming_posts_once_then_throttled_updates_hold_the_whole_reply(slack: Slack) -> None:
    words = " ".join(f"word{i}" for i in range(60))
    slack.model.chunk_delay = 0.02  # about 1.2 s of streaming
    await slack.event(mention(f"<@UBOT> {words}", ts="1.1"))
    await slack.fake.wait_for(lambda: bool(slack.fake.posted) and slack.fake.posted[0].text.endswith("word59"))
    updates = slack.fake.calls_to("chat.update")
    assert len(slack.posts()) == 1
    assert 2 <= len(updates) <= 10  # about one per 0.2 s, not one per token
    assert final_text(slack) == f"echo: Ada: {words}"


async def test_a_fast_reply_is_posted_once_without_updates(slack: Slack) -> None:
    await slack.event(mention("<@UBOT> quick", ts="1.1"))
    await slack.fake.wait_for(lambda: bool(slack.fake.posted) and slack.fake.posted[0].text == "echo: Ada: quick")
    [post] = slack.posts()
    updates = slack.fake.calls_to("chat.update")
    # An instant model: the whole reply in the post, or, when the first words raced ahead of the rest, those
    # words and one final edit; never a series of edits.
    assert [post["text"], *[u["text"] for u in updates]][-1] == "echo: Ada: quick"
    assert len(updates) <= 1 and "echo: Ada: quick".startswith(post["text"])


async def test_a_429_on_update_is_waited_out(slack: Slack, caplog: pytest.LogCaptureFixture) -> None:
    slack.model.chunk_delay = 0.02
    slack.fake.rate_limit("chat.update", times=2, retry_after=1)
    words = " ".join(f"w{i}" for i in range(40))
    await slack.event(mention(f"<@UBOT> {words}", ts="1.1"))
    await slack.fake.wait_for(lambda: bool(slack.fake.posted) and slack.fake.posted[0].text.endswith("w39"), 10)
    assert len(slack.fake.limited) == 2
    assert final_text(slack) == f"echo: Ada: {words}"
    assert "streaming update failed" not in caplog.text  # waited out, not dropped and caught up later


async def test_a_429_on_post_is_waited_out(slack: Slack, caplog: pytest.LogCaptureFixture) -> None:
    slack.fake.rate_limit("chat.postMessage", times=1, retry_after=1)
    await slack.event(mention("<@UBOT> hi", ts="1.1"))
    await slack.wait_posts(1)
    assert len(slack.fake.limited) == 1 and final_text(slack) == "echo: Ada: hi"
    assert "streaming update failed" not in caplog.text


def long_reply(messages: list[dict[str, Any]]) -> str:
    paragraphs = [f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 20 for i in range(90)]
    code = "```python\n" + "\n".join(f"print({i})" for i in range(300)) + "\n```"
    return "\n\n".join([*paragraphs[:45], code, *paragraphs[45:]])


async def test_a_50000_character_reply_is_split_cleanly(slack: Slack) -> None:
    slack.model.reply = long_reply
    assert len(long_reply([])) > 50_000
    expected = long_reply([]).replace("```python", " ").replace("```", " ").split()

    def shown() -> list[str]:
        return " ".join(p.text for p in slack.fake.posted).replace("```", " ").split()

    await slack.event(mention("<@UBOT> essay please", ts="1.1"))
    await slack.fake.wait_for(lambda: shown() == expected, 15)
    texts_posted = [p.text for p in slack.fake.posted]
    assert len(texts_posted) >= 13
    assert all(len(t) <= TEXT_LIMIT for t in texts_posted)
    assert all(t.count("```") % 2 == 0 for t in texts_posted)


async def test_mass_mentions_in_model_output_are_neutralised(slack: Slack) -> None:
    slack.model.reply = lambda messages: "<!channel> <!here> <@U1> <!subteam^S1> **ping**"
    await slack.event(mention("<@UBOT> hi", ts="1.1"))
    await slack.wait_posts(1)
    text = final_text(slack)
    assert "<!" not in text and "<@" not in text
    assert text == "&lt;!channel&gt; &lt;!here&gt; &lt;@U1&gt; &lt;!subteam^S1&gt; *ping*"


async def test_model_failure_is_explained_in_the_thread(slack: Slack) -> None:
    await slack.event(mention("<@UBOT> [[401]]", ts="1.2", thread_ts="1.1"))
    await slack.wait_replies(1)
    assert slack.fake.posted[0].thread_ts == "1.1"
    assert final_text(slack) == texts.KEY_REJECTED


async def test_healthz(slack: Slack) -> None:
    response = await slack.http.get(f"http://127.0.0.1:{slack.adapter.http_port}/healthz")
    assert response.status_code == 200


@pytest.fixture
def socket_settings(fake: FakeSlack, model: FakeOpenAI, tmp_path: Path) -> Callable[[], Settings]:
    return lambda: settings_for(
        fake, model, tmp_path / "s.db", slack_app_token="xapp-1-A1-123-abc", slack_signing_secret=None
    )


@contextlib.asynccontextmanager
async def socket_mode_adapter(fake: FakeSlack, settings: Settings) -> AsyncIterator[SlackAdapter]:
    """A Slack adapter in Socket Mode, connected to the fake, stopped again on exit."""
    async with open_core(settings) as core:
        adapter = SlackAdapter(core, settings)
        await adapter.start()
        try:
            await fake.wait_for_socket()
            yield adapter
        finally:
            await adapter.stop()


async def test_socket_mode_acks_the_envelope_and_answers(
    fake: FakeSlack, model: FakeOpenAI, socket_settings: Callable[[], Settings]
) -> None:
    async with socket_mode_adapter(fake, socket_settings()) as adapter:
        envelope_id = await fake.send_envelope(
            "events_api", event_envelope(mention("<@UBOT> over the socket", ts="1.1"))
        )
        ack = await fake.wait_for_ack(envelope_id)
        assert ack["envelope_id"] == envelope_id
        await fake.wait_for(lambda: len(fake.calls_to("chat.postMessage")) == 1)
        assert fake.posted[0].text == "echo: Ada: over the socket"
        assert adapter.http_port is None  # no HTTP endpoint in Socket Mode


async def test_socket_mode_readiness_follows_the_socket(
    fake: FakeSlack, model: FakeOpenAI, socket_settings: Callable[[], Settings]
) -> None:
    async with socket_mode_adapter(fake, socket_settings()) as adapter:
        assert adapter.connected
        opened = len(fake.calls_to("apps.connections.open"))
        await fake.drop_socket()
        await fake.wait_for(lambda: not adapter.connected, 10)
        # slack_sdk opens a new connection by itself; once it is up, the adapter is ready again.
        await fake.wait_for(lambda: len(fake.calls_to("apps.connections.open")) > opened, 30)
        await fake.wait_for_socket(30)
        await fake.wait_for(lambda: adapter.connected, 10)


async def slash(
    slack: Slack, command: str, text: str = "", *, user_id: str = "U1", channel_id: str = "C1", rid: str = "r1"
) -> dict[str, Any]:
    """Type ``command text`` in ``channel_id``; the private answer Slack's ``response_url`` got."""
    form = slash_command_form(
        command, text, user_id=user_id, channel_id=channel_id, response_url=slack.fake.response_url(rid)
    )
    body = form_body(form)
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(SECRET, body)}
    assert (await slack.http.post(slack.events_url, content=body, headers=headers)).status_code == 200
    await slack.fake.wait_for(lambda: any(r["rid"] == rid for r in slack.fake.responses))
    return next(r for r in slack.fake.responses if r["rid"] == rid)


async def test_system_prompt_is_for_workspace_admins_only(slack: Slack) -> None:
    slack.fake.users["U9"] = {"display_name": "Boss", "is_admin": True}
    refused = await slash(slack, "/system", "Answer in French.", user_id="U1", rid="r1")
    assert (
        refused["text"] == texts.ADMIN_ONLY.format(admins=texts.ADMINS_SLACK)
        and refused["response_type"] == "ephemeral"
    )
    done = await slash(slack, "/system", "Answer in French.", user_id="U9", rid="r2")
    assert done["text"] == texts.SYSTEM_SET
    await slack.event(mention("<@UBOT> bonjour", ts="1.1"))
    await slack.wait_posts(1)
    assert slack.model.requests[-1]["messages"][0]["content"].startswith("Answer in French.")
    shown = await slash(slack, "/system", user_id="U1", rid="r3")  # anyone may look
    assert "Answer in French." in shown["text"]


@pytest.mark.parametrize("overrides", [{"admin_users": frozenset({"U1"}), "models": frozenset({"big-model"})}])
async def test_model_command_honours_the_admin_list_and_the_allowlist(slack: Slack) -> None:
    refused = await slash(slack, "/model", "big-model", user_id="U2", rid="r0")  # neither listed nor an admin
    assert refused["text"] == texts.ADMIN_ONLY.format(admins=texts.ADMINS_SLACK)
    assert (await slash(slack, "/model", "huge", rid="r1"))["text"].startswith("huge is not on the list")
    assert (await slash(slack, "/model", "big-model", rid="r2"))["text"] == texts.MODEL_SET.format(model="big-model")
    await slack.event(mention("<@UBOT> hi", ts="1.1"))
    await slack.wait_posts(1)
    assert slack.model.requests[-1]["model"] == "big-model"


@pytest.mark.parametrize("overrides", [{"budget_user_daily": 60, "budget_soft_percent": 50}])
async def test_usage_is_private_and_budgets_warn_then_refuse_in_the_channel(slack: Slack) -> None:
    await slack.event(mention("<@UBOT> " + "word " * 30, ts="1.1"))
    await slack.fake.wait_for(lambda: len(slack.fake.posted) == 2)  # the answer, then the one warning
    assert slack.fake.posted[1].text.startswith("Heads-up: your daily budget is")
    await slack.event(mention("<@UBOT> again", ts="1.2"))
    await slack.fake.wait_for(lambda: len(slack.fake.posted) == 3)
    assert slack.fake.posted[2].text.startswith("Sorry, your daily budget is used up; it resets at")
    assert slack.model.calls == 1
    usage = await slash(slack, "/usage", rid="u1")
    assert usage["response_type"] == "ephemeral"
    assert "• You: today" in usage["text"] and "Your daily budget:" in usage["text"]


def stored(slack: Slack) -> list[tuple[str, str]]:
    with sqlite3.connect(slack.db) as db:
        return db.execute("SELECT role, content FROM messages ORDER BY id").fetchall()


@pytest.mark.parametrize(
    "text",
    [
        "x" * 100_000,
        "nul\x00 and bell\x07 and escape\x1b[31m",
        "emoji 🎉👩‍💻 and right-to-left שלום عليكم",
        "```python\nprint('only code')\n```",
        "@everyone <!everyone> <!here> ping them all",
    ],
    ids=["100k-chars", "control-chars", "emoji-rtl", "only-code", "everyone"],
)
async def test_bad_input_gets_a_clear_answer_and_nothing_is_lost(slack: Slack, text: str) -> None:
    await slack.event(mention(f"<@UBOT> {text}", ts="1.1"))
    await slack.fake.wait_for(lambda: [role for role, _ in stored(slack)] == ["user", "assistant"], 10)
    [(_, question), (_, answer)] = stored(slack)
    assert question and "\x00" not in question and "\x07" not in question
    shown = " ".join(p.text for p in slack.fake.posted)
    rendered = markdown_to_mrkdwn(answer)
    await slack.fake.wait_for(lambda: " ".join(p.text for p in slack.fake.posted).endswith(rendered[-20:].rstrip()), 10)
    assert "<!" not in shown and "<@" not in shown  # nothing in the answer can ping anyone
    assert all(len(p.text) <= TEXT_LIMIT for p in slack.fake.posted)


async def test_every_log_line_of_a_turn_names_it(slack: Slack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(TurnFilter())  # what cli.py puts on the real handler
    slack.fake.error_page("users.info")  # logged before the core sees the message
    slack.fake.refuse("assistant.threads.setStatus", "internal_error", times=1)  # logged in a background task
    await slack.event(mention("<@UBOT> hi", ts="1.2", thread_ts="1.1", user=newcomer(slack)))
    await slack.wait_replies(1)
    loggers = {"adapters.slack.names", "adapters.slack.stream", "bot.conversation"}
    await slack.fake.wait_for(lambda: loggers <= {r.name for r in caplog.records})
    ours = [r for r in caplog.records if r.name.startswith(("adapters.", "bot."))]
    assert {getattr(r, "turn", None) for r in ours} == {"slack:T1:C1:1.1 slack:T1:C1:1.2"}


async def test_a_command_that_fails_gets_a_private_apology(slack: Slack) -> None:
    with sqlite3.connect(slack.db) as db:
        db.execute("DROP TABLE messages")  # the database breaks under the bot
    answer = await slash(slack, "/reset", rid="x1")
    assert answer["text"] == markdown_to_mrkdwn(texts.APOLOGY) and answer["response_type"] == "ephemeral"


async def test_an_admin_of_another_workspace_is_not_an_admin_here(slack: Slack) -> None:
    # In a Slack Connect channel users.info describes people of other workspaces too, with their own workspace's
    # admin and owner flags: those give no say over this one.
    slack.fake.users["U7"] = {"display_name": "Guest boss", "is_admin": True, "is_owner": True, "team_id": "T2"}
    refused = await slash(slack, "/system", "Answer in French.", user_id="U7", rid="r1")
    assert refused["text"] == texts.ADMIN_ONLY.format(admins=texts.ADMINS_SLACK)
    assert slack.fake.calls_to("users.info") == [{"user": "U7"}]  # it was asked, and the answer read
    slack.fake.users["U8"] = {"display_name": "Home boss", "is_admin": True}  # of T1, where the command runs
    assert (await slash(slack, "/system", "Answer in French.", user_id="U8", rid="r2"))["text"] == texts.SYSTEM_SET


@pytest.mark.parametrize("fault", ["dropped", "stalled", "error page"])
async def test_a_network_failure_of_users_info_still_gets_an_answer(
    slack: Slack, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The event is acked before the name is looked up, so Slack never sends it again: silence would lose it.
    if fault == "dropped":
        slack.fake.drop("users.info", times=5)  # slack_sdk and aiohttp retry a dropped connection by themselves
    elif fault == "stalled":
        # The SDK's timeout (30 s by default) is the adapter's HTTP session's, made on start: shorter here.
        await slack.adapter.stop()
        slack.adapter.client.timeout = 1
        await slack.adapter.start()
        await asyncio.wait_for(slack.adapter.names_ready(), 10)
        slack.fake.stall("users.info", 3)
    else:
        slack.fake.error_page("users.info", status=502)
    await slack.event(mention("<@UBOT> hello", ts="1.1", user=newcomer(slack)))
    await slack.wait_posts(1)
    assert final_text(slack) == "echo: U3: hello"  # the id stands in for the name it could not get
    assert slack.model.calls == 1
    assert "users.info for U3 failed" in caplog.text


def signed_command(slack: Slack, command: str, rid: str, *, timestamp: int) -> tuple[str, dict[str, str]]:
    """A slash command's form body and headers as Slack signs them at ``timestamp``: the exact bytes to replay."""
    body = form_body(slash_command_form(command, response_url=slack.fake.response_url(rid)))
    return body, {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(SECRET, body, timestamp)}


async def test_a_replayed_slash_command_is_refused(slack: Slack, caplog: pytest.LogCaptureFixture) -> None:
    await slack.event(mention("<@UBOT> remember me", ts="1.1"))
    await slack.wait_posts(1)
    body, headers = signed_command(slack, "/reset", "r1", timestamp=int(time.time()))
    # A forgery carrying that signature over other bytes is refused by Bolt's check, which comes first: it claims
    # nothing, or it could block the real request.
    forged = body.replace("reset", "usage")
    assert (await slack.http.post(slack.events_url, content=forged, headers=headers)).status_code == 401
    assert (await slack.http.post(slack.events_url, content=body, headers=headers)).status_code == 200
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 1)
    await slack.event(mention("<@UBOT> said after the reset", ts="1.2"))
    await slack.wait_posts(2)
    # The same bytes again, well within the five minutes the signature is good for: refused before any listener.
    replay = await slack.http.post(slack.events_url, content=body, headers=headers)
    assert replay.status_code == 401 and replay.headers["X-Slack-No-Retry"] == "1"
    assert "refused a replayed Slack request" in caplog.text
    # Someone typing /reset again is a new request (Slack signs it anew): it runs.
    body, headers = signed_command(slack, "/reset", "r2", timestamp=int(time.time()) - 1)
    assert (await slack.http.post(slack.events_url, content=body, headers=headers)).status_code == 200
    await slack.fake.wait_for(lambda: any(r["rid"] == "r2" for r in slack.fake.responses))
    assert [r["rid"] for r in slack.fake.responses] == ["r1", "r2"]  # the replay did not reset a second time
    assert slack.fake.responses[1]["text"] == texts.RESET_DONE.format(count=2, s="s")  # the message and its reply
    assert [role for role, _ in stored(slack)] == []


async def test_the_same_signed_event_twice_is_acked_and_answered_once(slack: Slack) -> None:
    # Events are left to the message-id check: a repeat is acknowledged (so Slack stops retrying it) and
    # recognised as answered, at no extra database write per mention.
    envelope = event_envelope(mention("<@UBOT> once", ts="1.1"), event_id="EvSame")
    now = int(time.time())
    assert (await slack.send(envelope, timestamp=now)).status_code == 200
    assert (await slack.send(envelope, timestamp=now, retry=1)).status_code == 200
    await slack.wait_posts(1)
    await slack.fake.wait_for(lambda: duplicates(slack.adapter._core) == 1)
    assert slack.model.calls == 1


async def test_a_slash_command_replayed_to_another_replica_is_refused(
    fake: FakeSlack, model: FakeOpenAI, postgres_url: str
) -> None:
    settings = settings_for(fake, model, postgres_url)
    async with (
        open_core(settings) as first_core,
        open_core(settings) as second_core,
        httpx.AsyncClient() as http,
    ):
        first, second = SlackAdapter(first_core, settings), SlackAdapter(second_core, settings)
        await first.start()
        await second.start()
        try:
            one = Slack(fake, model, first, http)
            body, headers = signed_command(one, "/usage", "r1", timestamp=int(time.time()))
            assert (await http.post(one.events_url, content=body, headers=headers)).status_code == 200
            await fake.wait_for(lambda: len(fake.responses) == 1)
            other = Slack(fake, model, second, http)
            assert (await http.post(other.events_url, content=body, headers=headers)).status_code == 401
            assert len(fake.responses) == 1
        finally:
            await first.stop()
            await second.stop()


async def test_a_command_in_a_dm_gets_an_apology_when_its_thread_cannot_be_looked_up(slack: Slack) -> None:
    # In a DM the command's thread comes from the stored history, read after the ack: a failure there is answered.
    with sqlite3.connect(slack.db) as db:
        db.execute("DROP TABLE messages")
    answer = await slash(slack, "/reset", channel_id="D1", rid="d1")
    assert answer["text"] == markdown_to_mrkdwn(texts.APOLOGY) and answer["response_type"] == "ephemeral"


async def test_every_command_can_be_renamed_in_the_running_bot(tmp_path: Path) -> None:
    # A workspace where other apps already own /usage, /system and /model: the bot takes the names it is given.
    renamed = {"usage": "teambot-usage", "system": "teambot-system", "model": "teambot-model"}
    env = {f"TEAMBOT_{name.upper()}_COMMAND": slash for name, slash in renamed.items()} | {"TEAMBOT_MODELS": "m2"}
    async with (
        FakeOpenAI() as model,
        FakeSlack(users={"U1": {"display_name": "Ada"}}) as fake,
        httpx.AsyncClient() as http,
    ):
        bot = await start_bot(model, fake, tmp_path / "teambot.db", http, env=env)
        try:
            for rid, command in enumerate(["/teambot-usage", "/teambot-system", "/teambot-model"]):
                form = slash_command_form(command, response_url=fake.response_url(str(rid)))
                assert await bot.command(http, form) == 200
                await fake.wait_for(lambda rid=rid: any(r["rid"] == str(rid) for r in fake.responses), 15)
            answers = {r["rid"]: r["text"] for r in fake.responses}
            assert answers["0"].startswith("_Usage_") and "This workspace: today 0 tokens" in answers["0"]
            assert answers["1"] == texts.SYSTEM_SHOW.format(prompt=DEFAULT_SYSTEM_PROMPT)
            assert "m2" in answers["2"]
            # The default names are left to the other apps that own them: the bot does not answer them.
            assert await bot.command(http, slash_command_form("/usage", response_url=fake.response_url("x"))) == 404
        finally:
            bot.proc.terminate()
            assert await bot.wait() == 0


async def test_web_api_debug_lines_follow_the_logging_configuration(
    slack: Slack, caplog: pytest.LogCaptureFixture
) -> None:
    # slack_sdk builds its per-call debug lines (arguments, headers, body) only when its logger's ``level`` is
    # DEBUG or below: that must follow the configured level, not sit at NOTSET and build them for every call.
    sdk = logging.getLogger("slack_sdk")
    assert slack.adapter.client.logger.level == logging.getLogger("slack_sdk.web.async_client").getEffectiveLevel()
    with caplog.at_level(logging.INFO, logger="slack_sdk"):
        assert slack.adapter.client.logger.level == logging.INFO
        await slack.adapter.client.users_info(user="U1")
    assert not [r for r in caplog.records if r.name.startswith("slack_sdk.web")]
    with caplog.at_level(logging.DEBUG, logger="slack_sdk"):
        assert sdk.getEffectiveLevel() == logging.DEBUG
        await slack.adapter.client.users_info(user="U1")
    sent = [r.getMessage() for r in caplog.records if r.name == "slack_sdk.web.async_client"]
    assert any(line.startswith("Sending a request - url: ") and "users.info" in line for line in sent)
    assert all("xoxb" not in line for line in sent)  # the token stays redacted, as slack_sdk does it


async def test_socket_mode_messages_go_to_the_listeners_in_order_and_bad_json_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The client starts each message's listeners at once, without slack_sdk's queue: in the order received, a
    # message that is not JSON logged and dropped (as slack_sdk's queue task does), the next ones still served.
    client = _SocketModeClient("xapp-1", AsyncWebClient(token="xoxb-1"))
    seen: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def listener(_client: Any, message: dict[str, Any], raw: str) -> None:
        seen.append(message)
        if len(seen) == 3:
            done.set()

    client.message_listeners.append(listener)
    try:
        with caplog.at_level(logging.ERROR, logger="slack_sdk.socket_mode"):
            for raw in ('{"n": 1}', "{not json", '{"n": 2}', "hello"):
                await client.enqueue_message(raw)
            async with asyncio.timeout(10):
                await done.wait()
        assert seen == [{"n": 1}, {"n": 2}, {}]  # a text that is not an object reaches them empty, as in slack_sdk
        assert "Failed to process a message" in caplog.text
    finally:
        await client.close()
