"""adapters.slack.sdk: the SDKs driven with less work per call and per event, with the same results as theirs."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.kwargs_injection.async_utils import build_async_required_kwargs
from slack_bolt.listener_matcher.async_builtins import AsyncBuiltinListenerMatcher
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import SlackAdapter
from adapters.slack.sdk import BoltApp, WebClient, _LeanListener, lean_arguments, web_client
from bot.config import Settings
from bot.runtime import open_core
from tests.fakes.slack import (
    FakeSlack,
    block_actions,
    direct_message,
    event_envelope,
    form_body,
    mention,
    message_action,
    slash_command_form,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(users={"U1": {"display_name": "Ada"}}) as server:
        yield server


def _client(fake: FakeSlack) -> WebClient:
    return web_client(fake.bot_token, fake.api_url, [AsyncRateLimitErrorRetryHandler(max_retry_count=1)])


async def test_each_method_url_follows_the_base_url(fake: FakeSlack) -> None:
    client = _client(fake)
    assert (await client.users_info(user="U1"))["user"]["profile"]["display_name"] == "Ada"
    async with FakeSlack(users={"U1": {"display_name": "Ada elsewhere"}}) as other:
        # Pointed elsewhere after its first call, the client calls the new place, not the URL it made before.
        client.base_url = other.api_url
        assert (await client.users_info(user="U1"))["user"]["profile"]["display_name"] == "Ada elsewhere"
        assert len(other.calls_to("users.info")) == 1
    assert len(fake.calls_to("users.info")) == 1


async def test_a_deprecated_method_is_still_warned_about(fake: FakeSlack) -> None:
    client = _client(fake)
    with pytest.warns(UserWarning, match="channels.list is deprecated"):
        await client.api_call("channels.list", http_verb="GET")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        await client.api_call("channels.list", http_verb="GET")
    assert len(fake.calls_to("channels.list")) == 2


async def test_calls_carry_what_slack_sdk_sends(fake: FakeSlack) -> None:
    # The arguments as JSON, as a form, and as a query, and the token, the way slack_sdk's own client sends them.
    ours, theirs = _client(fake), AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
    for client in (ours, theirs):
        await client.chat_postMessage(channel="C1", text="hi", blocks=[{"type": "markdown", "text": "hi"}])
        await client.api_call("chat.postEphemeral", data={"channel": "C1", "user": "U1", "text": "x", "skip": None})
        await client.users_info(user="U1", include_locale=True)
    sent = fake.calls
    half = len(sent) // 2
    assert sent[:half] == sent[half:]
    assert all(method and args for method, args in sent)


def _request(body: dict[str, Any] | str, team: str | None = "T1") -> AsyncBoltRequest:
    req = AsyncBoltRequest(body=body if isinstance(body, str) else json.dumps(body), mode="http")
    if team is not None:
        req.context["team_id"] = team
    return req


async def test_the_request_client_is_bolts_own_made_cheaper(fake: FakeSlack) -> None:
    async with aiohttp.ClientSession() as session:
        base = _client(fake)
        base.session = session
        app = BoltApp(client=base, request_verification_enabled=False)
        ours, bolts = _request({"team_id": "T1"}), _request({"team_id": "T1"})
        app._init_context(ours)
        AsyncApp._init_context(app, bolts)
        mine, theirs = ours.context.client, bolts.context.client
        assert mine is not base and mine is not theirs
        assert isinstance(mine, AsyncWebClient)
        for name in ("token", "base_url", "timeout", "ssl", "proxy", "session", "trust_env_in_session", "headers"):
            assert getattr(mine, name) == getattr(theirs, name), name
        assert mine.default_params == theirs.default_params == {"team_id": "T1"}
        assert mine.logger is theirs.logger is base.logger
        assert [type(h) for h in mine.retry_handlers] == [type(h) for h in theirs.retry_handlers]
        assert mine.retry_handlers is not base.retry_handlers
        for key in ("logger", "token", "listener_runner"):
            assert ours.context[key] is bolts.context[key], key
        # Bolt's reason for a client per request: a listener changing its token changes nobody else's.
        mine.token = "xoxb-changed"
        mine.default_params["extra"] = "x"
        assert base.token == fake.bot_token and base.default_params == {}
        with pytest.raises(SlackApiError, match="invalid_auth"):  # the changed token went out: the fake refuses it
            await mine.auth_test()
        other = _request({}, team=None)
        app._init_context(other)
        assert other.context.client.token == fake.bot_token and other.context.client.default_params == {}


@pytest.fixture
async def adapter(fake: FakeSlack, tmp_path: Path) -> AsyncIterator[SlackAdapter]:
    settings = Settings(
        openai_base_url="http://127.0.0.1:9/v1",
        openai_model="m",
        db=str(tmp_path / "t.db"),
        slack_bot_token=fake.bot_token,
        slack_signing_secret="s",
        slack_api_url=fake.api_url,
    )
    async with open_core(settings) as core:
        yield SlackAdapter(core, settings)


REQUESTS = {
    "mention": event_envelope(mention("<@UBOT> hi", ts="1.1")),
    "dm": event_envelope(direct_message("hi", ts="1.2")),
    "command": form_body(slash_command_form("/reset", "now", response_url="http://127.0.0.1:9/r")),
    "feedback": block_actions({"action_id": "teambot_feedback", "value": "good:1"}),
    "shortcut": message_action("teambot_ask", {"ts": "1.3", "text": "what?", "user": "U1"}),
}


@pytest.mark.parametrize("kind", REQUESTS)
async def test_listeners_get_and_match_what_bolt_gives_them(adapter: SlackAdapter, kind: str) -> None:
    resp = BoltResponse(status=200, body="")
    listeners = adapter.app._async_listeners
    assert listeners
    matched = []
    for listener in listeners:
        req = _request(REQUESTS[kind])
        adapter.app._init_context(req)
        names = list(listener.arg_names)
        # Our listeners are bound methods: their names start with "self", which Bolt drops and so must we.
        lean = lean_arguments(names, req)
        everything = build_async_required_kwargs(
            logger=listener.logger, required_arg_names=names, request=req, response=resp, this_func=None
        )
        # Every listener of the adapter takes only arguments the lean path makes, gets Bolt's values for them, and
        # is registered as the lean listener (else Bolt builds all thirty arguments for it).
        assert lean == {name: everything[name] for name in names}
        assert isinstance(listener, _LeanListener), listener.ack_function
        primary = listener.matchers[0]
        assert isinstance(primary, AsyncBuiltinListenerMatcher)
        bolts = AsyncBuiltinListenerMatcher(func=primary.func)
        verdict = await primary.async_matches(req, resp)
        assert verdict == await bolts.async_matches(req, resp)
        matched.append(verdict)
    assert any(matched), f"no listener takes a {kind}"
