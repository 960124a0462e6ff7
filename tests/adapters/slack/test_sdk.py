"""adapters.slack.sdk: the SDKs driven with less work per call and per event, with the same results as theirs."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import re
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.payload import Payload, StringPayload
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.kwargs_injection.async_utils import build_async_required_kwargs
from slack_bolt.listener_matcher.async_builtins import AsyncBuiltinListenerMatcher
from slack_bolt.middleware.authorization.async_single_team_authorization import AsyncSingleTeamAuthorization
from slack_bolt.middleware.authorization.internals import _to_authorize_result
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.request.payload_utils import is_assistant_event, is_other_message_sub_event_in_assistant_thread
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.request import HttpRequest as RetryHttpRequest
from slack_sdk.http_retry.response import HttpResponse as RetryHttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.models.blocks import SectionBlock
from slack_sdk.web.async_base_client import AsyncBaseClient
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_internal_utils import _request_with_session
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from slack_sdk.web.internal_utils import _build_req_args, _get_url

from adapters.slack import SlackAdapter
from adapters.slack.app import _ASSISTANT_EVENT_TYPES, _PLAIN_ACK_HEADERS, _aiohttp_response
from adapters.slack.sdk import (
    _ASKED_ONLY_ON_FAILURE,
    _RETRIED_STATUSES,
    BoltApp,
    WebClient,
    _LeanListener,
    _SingleTeamAuthorization,
    lean_arguments,
    web_client,
)
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


@asynccontextmanager
async def _recorder() -> AsyncIterator[tuple[str, list[tuple[str, str, bytes]]]]:
    """A Web API that answers ok to everything and keeps each request as sent: path, content type, body bytes."""
    seen: list[tuple[str, str, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Content-Type", ""), await request.read()))
        return web.json_response({"ok": True, "ts": "1.2"})

    app = web.Application()
    app.router.add_post("/api/{method}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/api/", seen
    finally:
        await runner.cleanup()


BLOCKS = [
    {"type": "markdown", "text": "hi *there*"},
    {"type": "context", "elements": [{"type": "mrkdwn", "text": "x"}]},
]
#: chat.postMessage and chat.update as this adapter makes them (SlackSink, NativeReply, approvals, reasoning), and
#: some it does not (blank text, a model object, a JSON string, an argument more): those take slack_sdk's own way.
MESSAGE_CALLS: list[tuple[str, dict[str, Any]]] = [
    (
        "chat_postMessage",
        {
            "channel": "C1",
            "thread_ts": None,
            "text": "hi",
            "blocks": None,
            "unfurl_links": False,
            "unfurl_media": False,
        },
    ),
    (
        "chat_postMessage",
        {
            "channel": "C1",
            "thread_ts": "1.1",
            "text": "hi",
            "blocks": BLOCKS,
            "unfurl_links": False,
            "unfurl_media": False,
        },
    ),
    ("chat_postMessage", {"channel": "C1", "text": "hi", "blocks": tuple(BLOCKS)}),
    ("chat_postMessage", {"channel": "C1", "text": "hi", "blocks": []}),
    ("chat_postMessage", {"channel": "C1", "text": "hi", "unfurl_links": True}),
    ("chat_postMessage", {"channel": "C1", "text": " ", "blocks": BLOCKS}),
    ("chat_postMessage", {"channel": "C1", "text": "hi", "blocks": [SectionBlock(text="hi")]}),
    ("chat_postMessage", {"channel": "C1", "text": "hi", "blocks": json.dumps(BLOCKS)}),
    ("chat_postMessage", {"channel": "C1", "text": "hi", "mrkdwn": False, "thread_ts": "1.1"}),
    ("chat_update", {"channel": "C1", "ts": "1.2", "text": "hi", "blocks": None}),
    ("chat_update", {"channel": "C1", "ts": "1.2", "text": "hi", "blocks": BLOCKS}),
    ("chat_update", {"channel": "C1", "ts": "1.2", "text": "hi", "blocks": [SectionBlock(text="hi")]}),
    ("chat_update", {"channel": "C1", "ts": "1.2", "text": "hi", "file_ids": ["F1", "F2"]}),
]


async def test_message_calls_send_what_slack_sdk_sends() -> None:
    # The same request, byte for byte (JSON keys in slack_sdk's order), and the same answer, from our client's
    # chat_postMessage and chat_update as from slack_sdk's, also through a Bolt request's copy (its team_id).
    async with _recorder() as (url, seen), aiohttp.ClientSession() as session:
        for team in (None, "T1"):
            ours = web_client("xoxb-1", url, [])
            theirs = AsyncWebClient(token="xoxb-1", base_url=url, session=session)
            ours.session = session
            if team is not None:
                ours.default_params = theirs.default_params = {"team_id": team}
            for method, args in MESSAGE_CALLS:
                answers = []
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # slack_sdk's warning about a blank text: the same for both
                    for client in (ours, theirs):
                        answers.append((await getattr(client, method)(**args)).data)
                assert seen[-2] == seen[-1], (method, args)
                assert answers[0] == answers[1] == {"ok": True, "ts": "1.2"}
        assert len(seen) == 4 * len(MESSAGE_CALLS)


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


def _source_digest(function: Any) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def test_the_copied_request_loop_is_slack_sdks() -> None:
    # WebClient._request is slack_sdk's _request_with_session (3.48) asking its handlers less often: a slack_sdk that
    # changes that loop, or how its client calls it, must be read against the copy before this digest is updated.
    assert _source_digest(_request_with_session) == "64b6e97f294ff6ca"
    assert _source_digest(AsyncBaseClient._request) == "21bb87ee0e6c1b8d"


@pytest.mark.parametrize("handler", sorted(_ASKED_ONLY_ON_FAILURE, key=lambda cls: cls.__name__))
async def test_the_builtin_handlers_pass_by_other_answers(handler: type[AsyncRetryHandler]) -> None:
    # The lean path skips asking these handlers about any answer but 429, 500 and 503: each must say no to every
    # other answer, and to those three only as _RETRIED_STATUSES says, at any attempt.
    instance = handler(max_retry_count=5)  # type: ignore[call-arg]
    request = RetryHttpRequest(method="POST", url="https://slack.com/api/x", headers={})
    for attempt in range(5):
        state = RetryState(current_attempt=attempt)
        for status in (200, 201, 204, 301, 400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504):
            response = RetryHttpResponse(status_code=status, headers={"Retry-After": "0"}, body={"ok": True})
            retries = await instance.can_retry_async(state=state, request=request, response=response)
            if retries:
                assert status in _RETRIED_STATUSES, (handler.__name__, status)
    limited = RetryHttpResponse(status_code=429, headers={}, body={})
    assert await AsyncRateLimitErrorRetryHandler().can_retry_async(
        state=RetryState(), request=request, response=limited
    )


def _outcome(result: Any) -> Any:
    if isinstance(result, BaseException):
        return type(result).__name__, str(result)
    return result.status_code, result.data


FAILURES = {
    "answered": lambda fake: None,
    "rate limited": lambda fake: fake.rate_limit("users.info", times=1, retry_after=0),
    "error page": lambda fake: fake.error_page("users.info", status=500),
    "error pages": lambda fake: fake.error_page("users.info", status=503, times=5),
    "HTML said to be JSON": lambda fake: fake.error_page("users.info", status=502, content_type="application/json"),
    "plain text 503": lambda fake: fake.error_page("users.info", status=503, content_type="text/plain"),
    "dropped": lambda fake: fake.drop("users.info", times=1),
    "dropped for good": lambda fake: fake.drop("users.info", times=10),
    "refused": lambda fake: fake.refuse("users.info", "user_not_found", times=1),
}


@pytest.mark.parametrize("failure", FAILURES)
async def test_answers_and_failures_as_slack_sdk_gives_them(failure: str) -> None:
    # The same answer, error or exception from our client as from slack_sdk's own, with the same retries.
    outcomes, calls = [], []
    async with FakeSlack(users={"U1": {"display_name": "Ada"}}) as fake, aiohttp.ClientSession() as session:
        for ours in (True, False):
            handlers = [
                AsyncConnectionErrorRetryHandler(),
                AsyncRateLimitErrorRetryHandler(max_retry_count=1),
                AsyncServerErrorRetryHandler(max_retry_count=1),
            ]
            if ours:
                client: AsyncWebClient = web_client(fake.bot_token, fake.api_url, handlers)
            else:
                client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url, retry_handlers=handlers)
            client.session = session
            before = len(fake.calls_to("users.info"))
            FAILURES[failure](fake)
            try:
                result: Any = await client.users_info(user="U1")
            except Exception as exc:  # compared below: the same exception, or the same answer
                result = exc
            outcomes.append(_outcome(result))
            calls.append(len(fake.calls_to("users.info")) - before)
    assert outcomes[0] == outcomes[1]
    assert calls[0] == calls[1]


def _aiohttp_view(response: web.Response) -> tuple[Any, ...]:
    body = response.body
    assert isinstance(body, Payload)
    return response.status, type(body), body.decode(), response.content_type, response.charset, dict(response.headers)


async def _on_the_wire(response: web.Response) -> bytes:
    """What a client reads of ``response`` served by aiohttp (its Date header masked)."""

    async def handler(request: web.Request) -> web.Response:
        return response

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()
    finally:
        await runner.cleanup()
    return re.sub(rb"Date: [^\r]*", b"Date: -", head)


async def test_the_plain_ack() -> None:
    # Bolt's ack of an event is what the fast path recognises, and the response made of it is, byte for byte, the
    # one Bolt makes (an empty body: Content-Length 0, nothing after the headers).
    assert BoltResponse(status=200, body="").headers == _PLAIN_ACK_HEADERS
    ours = await _on_the_wire(await _aiohttp_response(BoltResponse(status=200, body="")))
    theirs = await _on_the_wire(await to_aiohttp_response(BoltResponse(status=200, body="")))
    assert ours == theirs and b"Content-Length: 0\r\n" in ours
    # Anything else is Bolt's own conversion.
    for other in (BoltResponse(status=200, body='{"text": "hi"}'), BoltResponse(status=401, body="")):
        made = await _aiohttp_response(other)
        assert _aiohttp_view(made)[:2] == (other.status, StringPayload)


def _events() -> list[dict[str, Any]]:
    bodies = []
    types = ["app_mention", "message", "assistant_thread_started", "assistant_thread_context_changed", "reaction_added"]
    types += ["member_joined_channel", "app_home_opened", "link_shared", "file_shared", "function_executed"]
    for event_type in types:
        for channel_type in ("im", "channel", None):
            for thread_ts in (None, "1.0"):
                for subtype in (None, "file_share", "message_changed", "message_deleted", "bot_message"):
                    for bot_id in (None, "B1"):
                        event: dict[str, Any] = {"type": event_type, "channel": "D1", "ts": "1.1", "user": "U1"}
                        extra = {"channel_type": channel_type, "thread_ts": thread_ts, "subtype": subtype}
                        event.update({k: v for k, v in extra.items() if v is not None})
                        if bot_id:
                            event["bot_id"] = bot_id
                        if subtype == "message_changed":
                            event["message"] = {"thread_ts": "1.0", "user": "U1"}
                            event["previous_message"] = {"thread_ts": "1.0", "user": "U1"}
                        bodies.append(event_envelope(event))
    return bodies


def test_assistant_event_types() -> None:
    # The assistant middleware's quick pass: Bolt's checks take no event outside _ASSISTANT_EVENT_TYPES.
    taken = set()
    for body in _events():
        if is_assistant_event(body) or is_other_message_sub_event_in_assistant_thread(body):
            taken.add(body["event"]["type"])
    assert taken == _ASSISTANT_EVENT_TYPES


@pytest.mark.parametrize("token", ["xoxb-bot", "xoxp-user"])
@pytest.mark.parametrize("user", ["U2", None])
async def test_the_authorization_is_bolts(fake: FakeSlack, token: str, user: str | None) -> None:
    # Each request's AuthorizeResult is copied from one made once per auth.test answer and token: it must be what
    # Bolt makes for that request, attribute for attribute, and a new object each time.
    async with aiohttp.ClientSession() as session:
        base = _client(fake)
        base.session = session
        auth_test = await base.auth_test()
        app = BoltApp(client=base, request_verification_enabled=False)
        lean = next(m for m in app._async_middleware_list if isinstance(m, AsyncSingleTeamAuthorization))
        assert type(lean) is _SingleTeamAuthorization
        app.authenticated(auth_test)
        results = []
        for _ in range(2):
            req = _request({"team_id": "T1", "event": {"type": "app_mention", **({"user": user} if user else {})}})
            app._init_context(req)
            req.context.client.token = token
            passed = []

            async def next_() -> None:
                passed.append(True)  # noqa: B023

            await lean.async_process(req=req, resp=BoltResponse(status=200), next=next_)
            assert passed
            results.append(req.context)
        expected = _to_authorize_result(auth_test, token, user)
        for context in results:
            got = context["authorize_result"]
            assert type(got) is AuthorizeResult and got == expected and vars(got) == vars(expected)
            for key in ("bot_id", "bot_user_id", "bot_token", "user_id", "user_token"):
                assert context.get(key) == getattr(expected, key) or key not in context, key
        first, second = (context["authorize_result"] for context in results)
        scopes = "bot_scopes" if token.startswith("xoxb-") else "user_scopes"
        assert first is not second and first[scopes] is not second[scopes] and first[scopes]


async def test_bolt_builds_its_debug_lines_only_for_a_debug_log(fake: FakeSlack) -> None:
    # Bolt builds an "Applying <middleware>" line per middleware and request when its logger's level reads DEBUG
    # or NOTSET: the app's framework logger gives the effective level, so only a debug log pays for them.
    app = BoltApp(client=_client(fake), request_verification_enabled=False)
    bolt, framework = logging.getLogger("slack_bolt"), logging.getLogger(app._framework_logger.name)
    levels = bolt.level, framework.level
    try:
        framework.setLevel(logging.NOTSET)  # as Bolt leaves it, copied from a base logger at NOTSET
        bolt.setLevel(logging.INFO)
        assert app._framework_logger.level == logging.INFO
        bolt.setLevel(logging.DEBUG)
        assert app._framework_logger.level == logging.DEBUG
    finally:
        bolt.setLevel(levels[0])
        framework.setLevel(levels[1])


def test_the_copied_answer_is_slack_sdks() -> None:
    # WebClient._send sets the attributes AsyncSlackResponse.__init__ sets, after what slack_sdk's _send does to the
    # arguments: a slack_sdk that changes either must be read against the copy before these digests are updated.
    assert _source_digest(AsyncSlackResponse.__init__) == "7e57640ac927a286"
    assert _source_digest(AsyncBaseClient._send) == "4fb879aac9187934"


@pytest.mark.parametrize("method", ["users.info", "chat.postMessage", "chat.update"])
async def test_the_answer_is_slack_sdks(fake: FakeSlack, method: str) -> None:
    # The same call through slack_sdk's _send and ours: answers equal attribute for attribute, the same logger.
    async with aiohttp.ClientSession() as session:
        client = _client(fake)
        client.session = session
        calls = {
            "users.info": lambda: {"http_verb": "GET", "params": {"user": "U1", "include_locale": True}},
            "chat.postMessage": lambda: {"json": {"channel": "C1", "text": "hi"}},
            "chat.update": lambda: {"json": {"channel": "C1", "ts": "1.1", "text": "x"}},
        }
        answers = []
        for send in (AsyncBaseClient._send, WebClient._send):
            call = calls[method]()
            verb = call.pop("http_verb", "POST")
            req_args = _build_req_args(
                token=client.token,
                http_verb=verb,
                files=None,  # type: ignore[arg-type]
                data=None,  # type: ignore[arg-type]
                default_params=client.default_params,
                params=call.get("params"),  # type: ignore[arg-type]
                json=call.get("json"),  # type: ignore[arg-type]
                headers=dict(client.headers),
                auth=None,  # type: ignore[arg-type]
                ssl=client.ssl,
                proxy=client.proxy,
            )
            url = _get_url(client.base_url, method)
            try:
                answers.append(vars(await send(client, http_verb=verb, api_url=url, req_args=req_args)))
            except SlackApiError as exc:
                answers.append({"error": str(exc), **vars(exc.response)})
        ours, theirs = answers[1], answers[0]
        assert ours.keys() == theirs.keys()
        for key in ours:
            if key in ("data", "_initial_data"):  # each post is a new message: its ts differs
                ts = re.compile(r"\b1700000\d+\.\d+")
                assert ts.sub("ts", json.dumps(ours[key])) == ts.sub("ts", json.dumps(theirs[key])), key
                assert (ours["data"] is ours["_initial_data"]) == (theirs["data"] is theirs["_initial_data"])
            elif key != "headers":
                assert ours[key] == theirs[key], key
        assert ours["_logger"] is theirs["_logger"]
        assert {k: v for k, v in ours["headers"].items() if k != "Date"} == {
            k: v for k, v in theirs["headers"].items() if k != "Date"
        }
