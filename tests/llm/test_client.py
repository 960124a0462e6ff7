"""The model client's SSE parsing, retries and error mapping, over the wire: a loopback server answering from a
script (tests/llm/script.py), or the fake OpenAI server."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import socket
import weakref
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from bot import errors
from bot.guards import KeySource
from bot.llm import ChatClient, Endpoint, RetryPolicy, SSEDecoder, model_http_client
from bot.llm.sse import StreamResult, consume_sse
from tests.fakes.openai import FakeOpenAI
from tests.llm.script import (
    HANG_UP,
    KEY,
    PROMPT,
    SILENT,
    Reply,
    Script,
    Seen,
    Sleeps,
    chunk,
    error,
    json_reply,
    plain,
    sse,
    streamed,
)


async def collect(c: ChatClient) -> tuple[str, list[str]]:
    pieces: list[str] = []

    async def on_delta(piece: str) -> None:
        pieces.append(piece)

    completion = await c.stream(PROMPT, on_delta)
    return completion.text, pieces


async def test_plain_call_sends_the_openai_request_and_reads_usage(script: Script) -> None:
    script.answer(plain("hello Ada"))
    completion = await script.client().complete(PROMPT)
    assert completion.text == "hello Ada"
    assert completion.usage is not None and completion.usage.total_tokens == 10
    request = script.requests[0]
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert KEY not in request.path and "cookie" not in request.headers
    body = json.loads(request.content)
    assert body == {"model": "m", "messages": PROMPT, "max_tokens": 50, "temperature": 0.2}


async def test_no_key_sends_no_authorization_header(script: Script) -> None:
    script.answer(plain("ok"))
    await script.client(keys=KeySource()).complete(PROMPT)
    assert "authorization" not in script.requests[0].headers


async def test_streaming_parses_sse_with_comments_usage_and_done(script: Script) -> None:
    body = b": keep-alive\n\n" + sse(
        {"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        chunk("Hel"),
        chunk("lo"),
        chunk(finish="stop"),
        {"model": "m", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}},
    )
    script.answer(streamed(body))
    c = script.client()
    pieces: list[str] = []

    async def on_delta(piece: str) -> None:
        pieces.append(piece)

    completion = await c.stream(PROMPT, on_delta)
    assert pieces == ["Hel", "lo"]
    assert completion.text == "Hello" and completion.finish_reason == "stop"
    assert completion.usage is not None and (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        9,
        2,
    )
    sent = json.loads(script.requests[0].content)
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_a_server_that_ignores_stream_true_still_works(script: Script) -> None:
    script.answer(plain("whole answer"))
    text, pieces = await collect(script.client())
    assert text == "whole answer" and pieces == ["whole answer"]


async def test_multiline_sse_data_is_joined(script: Script) -> None:
    event = json.dumps(chunk("x", "stop"))
    cut = event.index(" ")  # the spec joins data lines with a newline, which JSON reads as the space it replaces
    body = f"data: {event[:cut]}\ndata: {event[cut + 1 :]}\n\ndata: [DONE]\n\n".encode()
    script.answer(streamed(body))
    assert (await collect(script.client()))[0] == "x"


STREAM = (
    ": keep-alive\r\n\r\n"
    'data: {"a": "h\u00e9llo \u05e9\u05dc\u05d5\u05dd \U0001f600"}\r\n\r\n'
    "event: ignored\ndata: line one\ndata:line two\n\n"
    "data: cr only\r\r"
    "data: [DONE]\n\n"
).encode()
EVENTS = ['{"a": "h\u00e9llo \u05e9\u05dc\u05d5\u05dd \U0001f600"}', "line one\nline two", "cr only", "[DONE]"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(STREAM)])
def test_the_sse_decoder_gives_the_same_events_however_the_bytes_are_cut(size: int) -> None:
    # Cut every `size` bytes: through CRLF pairs, multi-byte characters and field names alike.
    decoder = SSEDecoder()
    events = [e for start in range(0, len(STREAM), size) for e in decoder.feed(STREAM[start : start + size])]
    assert events + decoder.close() == EVENTS


def test_the_sse_decoder_keeps_an_event_the_stream_did_not_close() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: first\n\ndata: last") == ["first"]
    assert decoder.close() == ["last"]


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (error(401, "invalid_api_key"), errors.AuthFailed),
        (error(403, "unsupported_country_region_territory"), errors.Forbidden),
        (error(404, "model_not_found"), errors.ModelNotFound),
        (error(400, "context_length_exceeded"), errors.ContextTooLong),
        (error(400, None, kind="exceed_context_size_error"), errors.ContextTooLong),
        (error(500, None, kind="exceed_context_size_error"), errors.ContextTooLong),
        (error(429, "insufficient_quota", kind="insufficient_quota"), errors.QuotaExhausted),
        (error(402, None), errors.QuotaExhausted),
        (error(400, "invalid_value"), errors.BadRequest),
        (error(422, None), errors.BadRequest),
    ],
)
async def test_errors_that_must_not_be_retried(
    script: Script, response: Reply, expected: type[errors.LLMError]
) -> None:
    script.answer(response, plain("never reached"))
    sleeps = Sleeps()
    with pytest.raises(expected) as caught:
        await script.client(sleeps=sleeps).complete(PROMPT)
    assert len(script.requests) == 1 and sleeps.calls == []
    assert KEY not in str(caught.value) and KEY not in caught.value.user_message


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409])
async def test_server_errors_are_retried_with_backoff(script: Script, status: int) -> None:
    script.answer(error(status, None, kind="server_error"), error(status, None, kind="server_error"), plain("ok"))
    sleeps = Sleeps()
    completion = await script.client(sleeps=sleeps).complete(PROMPT)
    assert completion.text == "ok"
    assert sleeps.calls == [0.5, 1.0]  # full jitter with rand=1.0 gives the cap of each step


async def test_backoff_is_jittered(script: Script) -> None:
    script.answer(error(503, None), error(503, None), plain("ok"))
    sleeps = Sleeps()
    await script.client(sleeps=sleeps, rand=lambda: 0.25).complete(PROMPT)
    assert sleeps.calls == [0.125, 0.25]  # a quarter of each step's cap: replicas retrying together spread out


async def test_rate_limit_honours_retry_after_then_succeeds(script: Script) -> None:
    script.answer(error(429, "rate_limit_exceeded", kind="requests", **{"retry-after": "2"}), plain("ok"))
    sleeps = Sleeps()
    assert (await script.client(sleeps=sleeps).complete(PROMPT)).text == "ok"
    assert sleeps.calls == [2.0]


async def test_retry_after_ms_wins_over_retry_after(script: Script) -> None:
    headers = {"retry-after": "9", "retry-after-ms": "250"}
    script.answer(error(429, "rate_limit_exceeded", **headers), plain("ok"))
    sleeps = Sleeps()
    await script.client(sleeps=sleeps).complete(PROMPT)
    assert sleeps.calls == [0.25]


GARBLED_RETRY_AFTER = [
    "soon",
    " ",
    "12abc",
    "Wed, 31 Feb 2015 07:28:00 GMT",
    "Wed, 21 Oct 99999 07:28:00 GMT",
    "inf",
    "nan",
    "-5",
]


@pytest.mark.parametrize("value", GARBLED_RETRY_AFTER)
@pytest.mark.parametrize("header", ["retry-after", "retry-after-ms"])
async def test_a_garbled_retry_after_is_absent_and_the_retry_still_happens(
    script: Script, header: str, value: str
) -> None:
    script.answer(
        error(429, "rate_limit_exceeded", **{header: value}), error(503, None, **{header: value}), plain("ok")
    )
    sleeps = Sleeps()
    assert (await script.client(sleeps=sleeps).complete(PROMPT)).text == "ok"
    assert sleeps.calls == [0.5, 1.0]  # the ordinary backoff, as if the header were not there


@pytest.mark.parametrize("value", GARBLED_RETRY_AFTER)
async def test_a_garbled_retry_after_still_reaches_the_fallback(script: Script, value: str) -> None:
    seen: list[str] = []

    def route(request: Seen) -> Reply:
        seen.append(request.endpoint)
        if request.endpoint == "primary":
            return error(503, None, **{"retry-after": value})
        return plain("from fallback")

    c = script.client(*[route] * 3, fallback=script.fallback(), retry=RetryPolicy(max_retries=0))
    assert (await c.complete(PROMPT)).text == "from fallback"
    assert seen == ["primary", "fallback"]


async def test_a_long_retry_after_is_reported_not_waited(script: Script) -> None:
    script.answer(error(429, "rate_limit_exceeded", **{"retry-after": "45"}))
    sleeps = Sleeps()
    with pytest.raises(errors.RateLimited) as caught:
        await script.client(sleeps=sleeps).complete(PROMPT)
    assert sleeps.calls == []
    assert caught.value.user_message == "The AI service is busy, try again in 45 s."


async def test_retries_stop_after_max_retries(script: Script) -> None:
    script.answer(*[error(503, None) for _ in range(3)])
    sleeps = Sleeps()
    with pytest.raises(errors.ServiceUnavailable):
        await script.client(sleeps=sleeps, retry=RetryPolicy(max_retries=2)).complete(PROMPT)
    assert len(script.requests) == 3 and len(sleeps.calls) == 2


async def test_retries_stop_at_the_deadline(script: Script) -> None:
    script.answer(error(503, None), plain("too late"))
    with pytest.raises(errors.ServiceUnavailable):
        await script.client(retry=RetryPolicy(max_retries=5, base_delay=10, deadline=1)).complete(PROMPT)
    assert len(script.requests) == 1


async def test_timeouts_and_connection_errors_are_retried(script: Script) -> None:
    script.answer(SILENT, HANG_UP, plain("ok"))
    assert (await script.client().complete(PROMPT)).text == "ok"
    assert len(script.requests) == 3


async def test_connection_failure_after_retries_is_typed(script: Script) -> None:
    script.answer(*[HANG_UP for _ in range(4)])
    with pytest.raises(errors.ConnectionFailed) as caught:
        await script.client().complete(PROMPT)
    assert caught.value.user_message == "I cannot reach the AI service right now, try again in a minute."


async def test_malformed_json_is_typed_and_retried(script: Script) -> None:
    script.answer(Reply(200, b"{not json"), plain("ok"))
    assert (await script.client().complete(PROMPT)).text == "ok"
    script.answer(*[Reply(200, b"{not json") for _ in range(4)])
    with pytest.raises(errors.MalformedResponse):
        await script.client().complete(PROMPT)


async def test_error_before_any_text_in_a_stream_is_retried(script: Script) -> None:
    bad = sse({"error": {"message": "overloaded", "type": "server_error", "code": None}}, done=False)
    script.answer(streamed(bad), streamed(sse(chunk("fine", "stop"))))
    assert (await collect(script.client()))[0] == "fine"


async def test_error_after_text_in_a_stream_keeps_the_partial_and_is_not_retried(script: Script) -> None:
    body = sse(chunk("The first half"), {"error": {"message": "boom", "type": "server_error"}}, done=False)
    script.answer(streamed(body))
    with pytest.raises(errors.StreamInterrupted) as caught:
        await collect(script.client())
    assert caught.value.partial == "The first half"
    assert isinstance(caught.value.cause, errors.ServiceUnavailable)
    assert len(script.requests) == 1


async def test_a_stream_that_ends_without_finish_or_done_is_interrupted(script: Script) -> None:
    body = sse(chunk("half an ans"), done=False)
    script.answer(streamed(body))
    with pytest.raises(errors.StreamInterrupted) as caught:
        await collect(script.client())
    assert caught.value.partial == "half an ans"


async def test_an_event_the_fast_parser_refuses_but_json_reads_is_still_an_answer(script: Script) -> None:
    # The SSE events are parsed with orjson, which refuses a lone surrogate escaped in a string (half an emoji, as
    # some servers send a token); json reads it, as the client always did: the answer must not become an error.
    body = sse('{"model": "m", "choices": [{"index": 0, "delta": {"content": "half \\ud83d"}}]}', chunk(finish="stop"))
    script.answer(streamed(body))
    text, pieces = await collect(script.client())
    assert text == "half \ud83d" and pieces == [text]


async def test_malformed_sse_event_is_typed(script: Script) -> None:
    body = sse("{not json", done=True)
    script.answer(*[streamed(body)] * 4)
    with pytest.raises(errors.MalformedResponse):
        await collect(script.client())


@pytest.mark.parametrize(
    ("failure", "tries"),
    [
        # An exhausted quota is not retried on the same endpoint; the others get their one retry first.
        (lambda: error(503, None), 2),
        (lambda: error(429, "insufficient_quota", kind="insufficient_quota"), 1),
        (lambda: SILENT, 2),
        (lambda: HANG_UP, 2),
    ],
    ids=["5xx", "quota", "timeout", "refused"],
)
async def test_fallback_is_used_after_the_primary_fails_its_retries(
    script: Script, caplog: pytest.LogCaptureFixture, failure: Callable[[], Reply | str], tries: int
) -> None:
    seen: list[str] = []
    keys: list[str] = []

    def route(request: Seen) -> Reply | str:
        seen.append(request.endpoint)
        if request.endpoint == "primary":
            return failure()
        keys.append(request.headers["authorization"])
        assert request.json()["model"] == "small"
        return plain("from fallback")

    script.answer(*[route] * 10)
    fallback = script.fallback(keys=KeySource(SecretStr("sk-fallback-key-000000")))
    with caplog.at_level(logging.WARNING):
        completion = await script.client(fallback=fallback, retry=RetryPolicy(max_retries=1)).complete(PROMPT)
    assert completion.text == "from fallback" and completion.endpoint == "fallback"
    assert seen == ["primary"] * tries + ["fallback"]
    assert keys == ["Bearer sk-fallback-key-000000"]
    assert "using fallback endpoint fallback" in caplog.text


async def test_fallback_is_not_used_for_a_bad_request(script: Script) -> None:
    script.answer(error(400, "invalid_value"), plain("never"))
    with pytest.raises(errors.BadRequest):
        await script.client(fallback=script.fallback()).complete(PROMPT)
    assert len(script.requests) == 1


async def test_401_rereads_a_rotated_key_file_once(script: Script, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-old-key-0000000000\n")
    keys = KeySource(file=key_file)

    def rotate_then_reject(request: Seen) -> Reply:
        key_file.write_text("sk-new-key-1111111111-longer\n")
        return error(401, "invalid_api_key")

    script.answer(rotate_then_reject, plain("ok"))
    assert (await script.client(keys=keys).complete(PROMPT)).text == "ok"
    assert [r.headers["authorization"] for r in script.requests] == [
        "Bearer sk-old-key-0000000000",
        "Bearer sk-new-key-1111111111-longer",
    ]


async def test_401_with_an_unchanged_key_is_reported(script: Script, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-same-key-000000000")
    script.answer(error(401, "invalid_api_key"), plain("never"))
    with pytest.raises(errors.AuthFailed) as caught:
        await script.client(keys=KeySource(file=key_file)).complete(PROMPT)
    assert "OPENAI_API_KEY" in caught.value.user_message
    assert len(script.requests) == 1


async def test_key_never_reaches_logs_or_errors(script: Script, caplog: pytest.LogCaptureFixture) -> None:
    leaky = json_reply(401, {"error": {"message": f"Incorrect API key provided: {KEY}", "code": None}})
    script.answer(leaky)
    with caplog.at_level(logging.DEBUG), pytest.raises(errors.AuthFailed) as caught:
        await script.client().complete(PROMPT)
    assert KEY not in str(caught.value)
    assert KEY not in caplog.text


@pytest.mark.parametrize("late_end", [False, True], ids=["end-with-done", "end-after-done"])
async def test_a_stream_is_read_to_its_end_so_the_connection_is_reused(late_end: bool) -> None:
    peers: list[object] = []
    answered = asyncio.Event()

    async def completions(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(chunk("whole", "stop"), done=True))
        if late_end:
            # The body's end comes only once the client has the answer: it must still read on to it.
            await answered.wait()
            answered.clear()
        await response.write_eof()
        return response

    async def on_delta(piece: str) -> None:
        answered.set()

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        async with model_http_client(30) as http:
            c = ChatClient(http, Endpoint("primary", base, "m"))
            for _ in range(3):
                assert (await c.stream(PROMPT, on_delta)).text == "whole"
    finally:
        await runner.cleanup()
    assert len(peers) == 3 and len(set(peers)) == 1  # one TCP connection served all three


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connection_over_the_wire_is_a_connection_failure_not_a_timeout() -> None:
    async with model_http_client(30) as http:
        c = ChatClient(
            http,
            Endpoint("primary", f"http://127.0.0.1:{closed_port()}/v1", "m"),
            retry=RetryPolicy(max_retries=1, base_delay=0.01),
        )
        with pytest.raises(errors.ConnectionFailed) as caught:
            await collect(c)
    assert caught.value.user_message == "I cannot reach the AI service right now, try again in a minute."


async def test_a_refused_primary_over_the_wire_falls_back() -> None:
    async with FakeOpenAI() as fake, model_http_client(30) as http:
        c = ChatClient(
            http,
            Endpoint("primary", f"http://127.0.0.1:{closed_port()}/v1", "m"),
            fallback=Endpoint("fallback", fake.base_url, "small"),
            retry=RetryPolicy(max_retries=1, base_delay=0.01),
        )
        text, _ = await collect(c)
    assert text and len(fake.requests) == 1 and fake.requests[0]["model"] == "small"


def _json(status: int, body: object) -> Reply:
    return json_reply(status, body)


def _text(status: int, text: str) -> Reply:
    return Reply(status, text.encode(), {"Content-Type": "text/plain; charset=utf-8"})


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # A path the server does not serve (a base URL without /v1), as each server words it.
        (_text(404, "404 page not found"), errors.EndpointNotFound),  # Ollama
        (_json(404, {"error": {"message": "Invalid URL (POST /chat/completions)", "type": "invalid_request_error",
                               "param": None, "code": None}}), errors.EndpointNotFound),  # OpenAI, older
        (_json(404, {"error": {"message": "Unknown request URL: POST /chat/completions. Please check the URL for "
                               "typos.", "type": "invalid_request_error", "param": None, "code": "unknown_url"}}),
         errors.EndpointNotFound),  # OpenAI
        (_json(404, {"detail": "Not Found"}), errors.EndpointNotFound),  # vLLM, llama-cpp-python (FastAPI)
        (_text(404, "<html>\n<head><title>404 Not Found</title></head>\n</html>\n"),
         errors.EndpointNotFound),  # nginx in front of it
        (_json(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}),
         errors.EndpointNotFound),  # llama.cpp
        # A model the server does not have.
        (_json(404, {"error": {"message": "The model `m` does not exist or you do not have access to it.",
                               "type": "invalid_request_error", "param": None, "code": "model_not_found"}}),
         errors.ModelNotFound),  # OpenAI
        (_json(404, {"error": {"message": 'model "m" not found, try pulling it first', "type": "api_error",
                               "param": None, "code": None}}), errors.ModelNotFound),  # Ollama
        (_json(404, {"object": "error", "message": "The model `m` does not exist.", "type": "NotFoundError",
                     "param": None, "code": 404}), errors.ModelNotFound),  # vLLM, top-level error
        (_json(404, {"error": {"message": "The model `m` does not exist.", "type": "NotFoundError",
                               "param": "model", "code": 404}}), errors.ModelNotFound),  # vLLM, newer
    ],
)  # fmt: skip
async def test_a_404_for_the_path_is_told_from_a_404_for_the_model(
    script: Script, response: Reply, expected: type[errors.LLMError]
) -> None:
    script.answer(response, plain("never reached"))
    with pytest.raises(expected) as caught:
        await script.client().complete(PROMPT)
    assert len(script.requests) == 1
    if expected is errors.EndpointNotFound:
        # The base URL here already ends in /v1: no /v1 to suggest, only to check it.
        assert str(caught.value).startswith(f"HTTP 404 for {script.url}/v1/chat/completions: ")
        assert "\n" not in str(caught.value)
        assert str(caught.value).endswith("the base URL must be the server's OpenAI-compatible API root")
        assert "OPENAI_BASE_URL" in caught.value.user_message
    else:
        assert "OPENAI_MODEL" in caught.value.user_message


async def test_a_base_url_without_v1_over_the_wire_suggests_it() -> None:
    async with FakeOpenAI(models=frozenset({"m"})) as fake, model_http_client(30) as http:
        root = fake.base_url.removesuffix("/v1")
        c = ChatClient(http, Endpoint("primary", root, "m"), retry=RetryPolicy(max_retries=3, base_delay=0.01))
        with pytest.raises(errors.EndpointNotFound) as caught:
            await collect(c)
        assert str(caught.value) == (
            f"HTTP 404 for {root}/chat/completions: the server has no such path "
            f"(404 page not found); the base URL usually ends in /v1: try {fake.base_url}"
        )
        assert fake.not_found == ["POST /chat/completions"]  # a configuration mistake: not retried

        right = ChatClient(http, Endpoint("primary", fake.base_url, "llama3.2"), retry=RetryPolicy(max_retries=0))
        with pytest.raises(errors.ModelNotFound) as unknown:
            await collect(right)
        assert "'llama3.2'" in unknown.value.user_message


@pytest.mark.parametrize("key", [None, KEY])
async def test_the_404_detail_shows_no_password_from_the_base_url(script: Script, key: str | None) -> None:
    base = script.url.replace("http://", "http://bot:pw-never-shown@") + "/llm"
    keys = KeySource(SecretStr(key)) if key else KeySource()
    c = script.client(_text(404, "Not Found"), base_url=base, keys=keys)
    with pytest.raises(errors.EndpointNotFound) as caught:
        await c.complete(PROMPT)
    assert str(caught.value) == (
        f"HTTP 404 for {script.url}/llm/chat/completions: the server has no such path (Not Found); "
        f"the base URL usually ends in /v1: try {script.url}/llm/v1"
    )
    # The user:password goes as basic authorization (in place of any key, as httpx sent it), never in the path.
    [request] = script.requests
    assert request.path == "/llm/chat/completions"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"bot:pw-never-shown").decode()


@pytest.mark.parametrize("streamed", [True, False])
async def test_a_finished_call_leaves_nothing_for_the_cyclic_collector(streamed: bool) -> None:
    """The response of a call is freed when the call returns, by reference counting alone: left to the cyclic
    collector, each turn's response piles up until a collection walks them all on the event loop (BENCHMARKS.md,
    "Round three")."""
    responses: list[weakref.ref[aiohttp.ClientResponse]] = []

    async def keep(session: object, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams) -> None:
        responses.append(weakref.ref(params.response))

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(keep)
    async with FakeOpenAI() as fake, model_http_client(30, trace_configs=[trace]) as http:
        c = ChatClient(http, Endpoint("primary", fake.base_url, "m"))
        gc.disable()
        try:
            text = (await collect(c))[0] if streamed else (await c.complete(PROMPT)).text
            assert text
            assert len(responses) == 1
            assert responses[0]() is None, "the response is still alive: something holds it in a reference cycle"
        finally:
            gc.enable()


async def test_a_cookie_the_server_sets_is_never_sent_back(script: Script) -> None:
    one = plain("one")
    with_cookie = Reply(one.status, one.body, {**one.headers, "Set-Cookie": "session=abc123; Path=/"})
    # A host name, not an address: aiohttp's cookie jar would keep no cookie of an IP address anyway.
    c = script.client(with_cookie, plain("two"), base_url=script.url.replace("127.0.0.1", "localhost") + "/v1")
    assert (await c.complete(PROMPT)).text == "one"
    assert (await c.complete(PROMPT)).text == "two"
    assert [r.headers.get("cookie") for r in script.requests] == [None, None]


async def test_a_proxy_from_the_environment_carries_the_calls(script: Script, monkeypatch: pytest.MonkeyPatch) -> None:
    # The script's server plays the proxy: the request comes to it in absolute form, for the model's host.
    monkeypatch.setenv("HTTP_PROXY", script.url.replace("http://", "http://proxyuser:proxypw@"))
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    c = script.client(plain("through the proxy"), base_url="http://model.invalid/v1")
    assert (await c.complete(PROMPT)).text == "through the proxy"
    [request] = script.requests
    assert (request.host, request.path) == ("model.invalid", "/v1/chat/completions")
    assert request.headers["proxy-authorization"] == "Basic " + base64.b64encode(b"proxyuser:proxypw").decode()
    assert request.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("with_port", [False, True])
async def test_no_proxy_exempts_a_host(script: Script, monkeypatch: pytest.MonkeyPatch, with_port: bool) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there: used, it would refuse
    # An entry may name the port too (NO_PROXY=localhost:11434), as httpx honoured it.
    monkeypatch.setenv("NO_PROXY", script.url.removeprefix("http://") if with_port else "127.0.0.1")
    monkeypatch.delenv("no_proxy", raising=False)
    assert (await script.client(plain("direct")).complete(PROMPT)).text == "direct"


async def test_a_proxy_named_without_a_scheme_is_an_http_proxy(script: Script, monkeypatch: pytest.MonkeyPatch) -> None:
    # HTTP_PROXY=host:port (no http://) is common, and httpx read it as an HTTP proxy: so must the model calls, not
    # fail every one of them with the proxy's URL, user:password and all, in the log line.
    monkeypatch.setenv("HTTP_PROXY", script.url.replace("http://", "proxyuser:proxypw@"))
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    c = script.client(plain("through the proxy"), base_url="http://model.invalid/v1")
    assert (await c.complete(PROMPT)).text == "through the proxy"
    [request] = script.requests
    assert (request.host, request.path) == ("model.invalid", "/v1/chat/completions")
    assert request.headers["proxy-authorization"] == "Basic " + base64.b64encode(b"proxyuser:proxypw").decode()


async def test_a_response_head_that_cannot_be_read_shows_no_query_of_the_url(caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp's error for an unreadable answer names the URL asked, query and all: the log text must not."""

    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    caplog.set_level(logging.DEBUG)
    try:
        async with model_http_client(5.0) as http:
            c = ChatClient(
                http,
                Endpoint("primary", f"http://127.0.0.1:{port}/v1?token=secret-in-query", "m"),
                retry=RetryPolicy(max_retries=1, base_delay=0.01),
            )
            with pytest.raises(errors.ConnectionFailed) as caught:
                await c.complete(PROMPT)
    finally:
        server.close()
        await server.wait_closed()
    assert str(caught.value).startswith("ClientResponseError: cannot reach primary: 400, message=")
    assert "secret-in-query" not in str(caught.value)
    assert caplog.records and "secret-in-query" not in caplog.text


async def test_a_base_url_without_a_host_shows_no_query_of_the_url(script: Script) -> None:
    # aiohttp's InvalidURL is the URL itself: the log text says what is wrong with it, not the query it carries.
    c = script.client(retry=RetryPolicy(max_retries=0), base_url="http:///v1?token=secret-in-query")
    with pytest.raises(errors.ConnectionFailed) as caught:
        await c.complete(PROMPT)
    assert str(caught.value).startswith("InvalidUrlClientError: cannot reach primary: not a valid URL")
    assert "secret-in-query" not in str(caught.value)


async def test_what_broke_is_told_in_the_log_text(script: Script) -> None:
    """The detail of each failure as the log shows it (the person gets the one sentence of its type)."""
    one_try = RetryPolicy(max_retries=0)
    with pytest.raises(errors.Timeout) as slow:
        await script.client(SILENT, retry=one_try).complete(PROMPT)
    assert str(slow.value) == "ReadTimeout talking to primary"
    with pytest.raises(errors.ConnectionFailed) as dropped:
        await script.client(HANG_UP, retry=one_try).complete(PROMPT)
    assert str(dropped.value) == "ServerDisconnectedError: cannot reach primary: Server disconnected"
    port = closed_port()
    refused = script.client(retry=one_try, base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(errors.ConnectionFailed) as caught:
        await refused.complete(PROMPT)
    assert str(caught.value).startswith(
        f"ClientConnectorError: cannot reach primary: Cannot connect to host 127.0.0.1:{port}"
    )


class Pieces:
    """aiohttp's reader of a body, as consume_sse uses it: the stream handed out in pieces of a given size."""

    def __init__(self, stream: bytes, size: int) -> None:
        self._pieces = iter([stream[i : i + size] for i in range(0, len(stream), size)])

    async def readany(self) -> bytes:
        return next(self._pieces, b"")


#: Events as servers send them: comments, runs of blank lines, an event of two data lines, another field, a "data:"
#: without its space, bytes that are not UTF-8 (read as the line decoder always read them), a [DONE] with a space.
LF_STREAM = (
    b": keep-alive\n\n"
    + sse(chunk("H\u00e9llo "), done=False)
    + b"\n\n"
    + b'data: {"model": "m", "choices": [{"index": 0,\ndata: "delta": {"content": "w\xc3\xb6rld "}}]}\n\n'
    + b'event: token\ndata: {"model": "m", "choices": [{"delta": {"content": "\xf0\x9f\x98\x80 "}}]}\n\n'
    + b'data:{"model": "m", "choices": [{"delta": {"content": "bad\xff "}}]}\n\n'
    + sse(chunk("end", "stop"), done=False)
    + b"data: [DONE] \n\n"
    + b'data: {"model": "m", "choices": [{"delta": {"content": "after done"}}]}\n\n'
)
LF_PIECES = ["H\u00e9llo ", "w\u00f6rld ", "\U0001f600 ", "bad\ufffd ", "end"]


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13, 64, 10_000])
async def test_the_stream_gives_the_same_answer_however_its_bytes_are_cut(size: int, crlf: bool) -> None:
    stream = LF_STREAM.replace(b"\n", b"\r\n") if crlf else LF_STREAM
    pieces: list[str] = []
    progress: list[None] = []

    async def on_delta(piece: str) -> None:
        pieces.append(piece)

    result = StreamResult()
    await consume_sse(Pieces(stream, size), result, on_delta, lambda: progress.append(None) or 0.0)  # type: ignore[arg-type]
    assert pieces == LF_PIECES and result.text == "".join(LF_PIECES)
    assert result.done and result.finish_reason == "stop"
    assert len(progress) == 5  # one per event before [DONE]; none for a comment or a blank line


async def test_a_stream_without_a_last_blank_line_still_gives_its_last_event() -> None:
    pieces: list[str] = []

    async def on_delta(piece: str) -> None:
        pieces.append(piece)

    result = StreamResult()
    stream = (
        sse(chunk("first ")).replace(b"data: [DONE]\n\n", b"") + b'data: {"choices": [{"delta": {"content": "last"}}]}'
    )
    await consume_sse(Pieces(stream, 4), result, on_delta, lambda: 0.0)  # type: ignore[arg-type]
    assert pieces == ["first ", "last"]
