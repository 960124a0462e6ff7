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


async def test_native_streaming_keeps_the_text_and_checks_its_arguments() -> None:
    async with FakeSlack() as fake:
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
        with pytest.raises(SlackApiError) as caught:  # a channel needs the recipient, every stream a thread
            await client.chat_startStream(channel="C1", thread_ts="1.1", markdown_text="x")
        assert caught.value.response["error"] == "invalid_arguments"
        ts = (
            await client.chat_startStream(
                channel="C1", thread_ts="1.1", markdown_text="**Hel", recipient_team_id="T1", recipient_user_id="U1"
            )
        )["ts"]
        await client.chat_appendStream(channel="C1", ts=ts, markdown_text="lo**")
        await client.chat_stopStream(channel="C1", ts=ts, markdown_text=" world")
        assert fake.message_text("C1", ts) == "**Hello** world"
        assert fake.streamed()[0].appends == ["**Hel", "lo**", " world"] and fake.streamed()[0].thread_ts == "1.1"
        with pytest.raises(SlackApiError) as caught:
            await client.chat_appendStream(channel="C1", ts=ts, markdown_text="late")
        assert caught.value.response["error"] == "message_not_in_streaming_state"
        with pytest.raises(SlackApiError) as caught:
            await client.chat_startStream(channel="D1", thread_ts="1.1", markdown_text="x" * 12_001)
        assert caught.value.response["error"] == "msg_too_long"


async def test_the_sdk_chat_stream_helper_works_against_the_fake() -> None:
    async with FakeSlack() as fake:
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
        stream = await client.chat_stream(channel="D1", thread_ts="1.1", buffer_size=4)
        await stream.append(markdown_text="one ")
        await stream.append(markdown_text="two")
        await stream.stop()
        assert [m.text for m in fake.streamed()] == ["one two"]


async def test_refuse_makes_a_method_fail_until_told_otherwise() -> None:
    async with FakeSlack() as fake:
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
        fake.refuse("chat.startStream", "not_allowed_token_type")
        for _ in range(2):
            with pytest.raises(SlackApiError) as caught:
                await client.chat_startStream(channel="D1", thread_ts="1.1", markdown_text="x")
            assert caught.value.response["error"] == "not_allowed_token_type"
        assert fake.posted == [] and len(fake.calls_to("chat.startStream")) == 2


async def test_assistant_thread_methods_are_recorded_and_checked() -> None:
    async with FakeSlack() as fake:
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
        await client.assistant_threads_setStatus(channel_id="D1", thread_ts="1.1", status="is thinking...")
        await client.assistant_threads_setStatus(channel_id="D1", thread_ts="1.1", status="")
        await client.assistant_threads_setTitle(channel_id="D1", thread_ts="1.1", title="HTTP 429")
        prompts = [{"title": "Explain", "message": "Explain HTTP 429"}]
        await client.assistant_threads_setSuggestedPrompts(channel_id="D1", thread_ts="1.1", prompts=prompts)
        assert [c["status"] for c in fake.calls_to("assistant.threads.setStatus")] == ["is thinking...", ""]
        assert fake.calls_to("assistant.threads.setTitle")[0]["title"] == "HTTP 429"
        assert fake.calls_to("assistant.threads.setSuggestedPrompts")[0]["prompts"] == prompts
        with pytest.raises(SlackApiError) as caught:
            await client.assistant_threads_setSuggestedPrompts(channel_id="D1", prompts=prompts * 5)
        assert caught.value.response["error"] == "invalid_arguments"


async def test_error_page_answers_a_non_json_page_once() -> None:
    async with FakeSlack(users={"U1": {"display_name": "Ada"}}) as fake:
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
        fake.error_page("users.info", status=502, content_type="text/plain")
        with pytest.raises(SlackApiError) as caught:
            await client.users_info(user="U1")
        assert caught.value.response.status_code == 502 and isinstance(caught.value.response.data, str)
        assert (await client.users_info(user="U1"))["user"]["profile"]["display_name"] == "Ada"
        assert len(fake.calls_to("users.info")) == 2


async def test_watchers_see_each_text_as_it_is_set() -> None:
    async with FakeSlack() as fake:
        seen: list[tuple[str, str]] = []
        fake.watchers.append(lambda message: seen.append((message.ts, message.text)))
        client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
        posted = (await client.chat_postMessage(channel="C1", text="first"))["ts"]
        await client.chat_update(channel="C1", ts=posted, text="second")
        streamed = (
            await client.chat_startStream(
                channel="C1", thread_ts="1.1", markdown_text="a", recipient_team_id="T1", recipient_user_id="U1"
            )
        )["ts"]
        await client.chat_appendStream(channel="C1", ts=streamed, markdown_text="b")
        await client.chat_stopStream(channel="C1", ts=streamed, markdown_text="c")
        with pytest.raises(SlackApiError):
            await client.chat_update(channel="C1", ts="9.9", text="no such message")
        assert seen == [(posted, "first"), (posted, "second"), (streamed, "a"), (streamed, "ab"), (streamed, "abc")]
