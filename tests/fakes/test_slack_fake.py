"""The fake Slack answers the real slack_sdk clients the way Slack does."""

from __future__ import annotations

import asyncio

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack import FakeSlack, event_envelope, mention, signed_headers


async def test_web_api_post_update_and_users() -> None:
    async with FakeSlack(users={"U1": {"display_name": "Ada"}}) as fake:
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
        assert (await client.auth_test())["user_id"] == "UBOT"
        assert (await client.users_info(user="U1"))["user"]["profile"]["display_name"] == "Ada"
        ts = (await client.chat_postMessage(channel="C1", text="first"))["ts"]
        await client.chat_update(channel="C1", ts=ts, text="second")
        assert fake.message_text("C1", ts) == "second"
        assert [name for name, _ in fake.calls] == ["auth.test", "users.info", "chat.postMessage", "chat.update"]


async def test_a_wrong_token_is_invalid_auth() -> None:
    async with FakeSlack() as fake:
        client = AsyncWebClient(token="xoxb-wrong", base_url=fake.api_url)
        with pytest.raises(SlackApiError) as caught:
            await client.auth_test()
        assert caught.value.response["error"] == "invalid_auth"


async def test_rate_limit_without_and_with_a_retry_handler() -> None:
    async with FakeSlack() as fake:
        fake.rate_limit("chat.postMessage", times=1, retry_after=0.1)
        plain = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
        with pytest.raises(SlackApiError) as caught:
            await plain.chat_postMessage(channel="C1", text="x")
        assert caught.value.response.status_code == 429 and caught.value.response.headers["retry-after"] == "1"
        fake.rate_limit("chat.postMessage", times=1, retry_after=0.1)
        patient = AsyncWebClient(
            token=fake.bot_token, base_url=fake.api_url, retry_handlers=[AsyncRateLimitErrorRetryHandler(1)]
        )
        await patient.chat_postMessage(channel="C1", text="y")
        assert [p.text for p in fake.posted] == ["y"] and len(fake.limited) == 2


async def test_socket_mode_envelope_and_ack() -> None:
    async with FakeSlack() as fake:
        web = AsyncWebClient(base_url=fake.api_url)
        client = SocketModeClient(app_token="xapp-1-A1-1-x", web_client=web, auto_reconnect_enabled=False)
        received: list[dict] = []

        async def listener(c: SocketModeClient, request: SocketModeRequest) -> None:
            received.append(request.payload)
            await c.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))

        client.socket_mode_request_listeners.append(listener)
        await client.connect()
        try:
            await fake.wait_for_socket()
            envelope = event_envelope(mention("<@UBOT> hi", ts="1.1"))
            envelope_id = await fake.send_envelope("events_api", envelope)
            assert (await fake.wait_for_ack(envelope_id))["envelope_id"] == envelope_id
            assert received == [envelope]
        finally:
            await client.close()
            await asyncio.sleep(0)


def test_signed_headers_verify() -> None:
    headers = signed_headers("secret", '{"a": 1}')
    verifier = SignatureVerifier("secret")
    assert verifier.is_valid('{"a": 1}', headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"])
    assert not verifier.is_valid('{"a": 2}', headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"])
