"""The model client's SSE parsing, retries and error mapping, with httpx.MockTransport injected."""

from __future__ import annotations

import gc
import json
import logging
import socket
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from bot import errors
from bot.guards import KeySource
from bot.llm import ChatClient, Endpoint, GenerationParams, RetryPolicy, SSEDecoder, model_http_client
from tests.fakes.openai import FakeOpenAI

KEY = "sk-test-0123456789abcdef"
PROMPT = [{"role": "user", "content": "Ada: hi"}]


def sse(*events: object, done: bool = True) -> bytes:
    out = [f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n" for e in events]
    if done:
        out.append("data: [DONE]\n\n")
    return "".join(out).encode()


def chunk(text: str | None = None, finish: str | None = None) -> dict[str, object]:
    delta = {"content": text} if text is not None else {}
    return {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def plain(text: str, usage: tuple[int, int] = (7, 3)) -> httpx.Response:
    body = {
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
    }
    return httpx.Response(200, json=body)


def error(status: int, code: str | None, kind: str = "invalid_request_error", **headers: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"message": "nope", "type": kind, "code": code, "param": None}}, headers=headers
    )


class Script:
    """Answers requests from a list of responses (or exceptions), recording each request."""

    def __init__(self, *steps: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]) -> None:
        self._steps: Iterator[httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]] = iter(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = next(self._steps)
        if isinstance(step, Exception):
            raise step
        return step(request) if callable(step) else step


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def client(
    script: Script,
    *,
    sleeps: Sleeps | None = None,
    fallback: Endpoint | None = None,
    keys: KeySource | None = None,
    retry: RetryPolicy | None = None,
    rand: Callable[[], float] = lambda: 1.0,
) -> ChatClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(script))
    primary = Endpoint("primary", "http://model.test/v1", "m", keys or KeySource(SecretStr(KEY)))
    return ChatClient(
        http,
        primary,
        fallback=fallback,
        params=GenerationParams(temperature=0.2, max_output_tokens=50),
        retry=retry or RetryPolicy(max_retries=3),
        sleep=sleeps or Sleeps(),
        rand=rand,
    )


async def collect(c: ChatClient) -> tuple[str, list[str]]:
    pieces: list[str] = []

    async def on_delta(piece: str) -> None:
        pieces.append(piece)

    completion = await c.stream(PROMPT, on_delta)
    return completion.text, pieces


async def test_plain_call_sends_the_openai_request_and_reads_usage() -> None:
    script = Script(plain("hello Ada"))
    completion = await client(script).complete(PROMPT)
    assert completion.text == "hello Ada"
    assert completion.usage is not None and completion.usage.total_tokens == 10
    request = script.requests[0]
    assert str(request.url) == "http://model.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in str(request.url)
    body = json.loads(request.content)
    assert body == {"model": "m", "messages": PROMPT, "max_tokens": 50, "temperature": 0.2}


async def test_no_key_sends_no_authorization_header() -> None:
    script = Script(plain("ok"))
    await client(script, keys=KeySource()).complete(PROMPT)
    assert "authorization" not in script.requests[0].headers


async def test_streaming_parses_sse_with_comments_usage_and_done() -> None:
    body = b": keep-alive\n\n" + sse(
        {"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        chunk("Hel"),
        chunk("lo"),
        chunk(finish="stop"),
        {"model": "m", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}},
    )
    script = Script(httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}))
    c = client(script)
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


async def test_a_server_that_ignores_stream_true_still_works() -> None:
    script = Script(plain("whole answer"))
    text, pieces = await collect(client(script))
    assert text == "whole answer" and pieces == ["whole answer"]


async def test_multiline_sse_data_is_joined() -> None:
    event = json.dumps(chunk("x", "stop"))
    cut = event.index(" ")  # the spec joins data lines with a newline, which JSON reads as the space it replaces
    body = f"data: {event[:cut]}\ndata: {event[cut + 1 :]}\n\ndata: [DONE]\n\n".encode()
    script = Script(httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}))
    assert (await collect(client(script)))[0] == "x"


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
async def test_errors_that_must_not_be_retried(response: httpx.Response, expected: type[errors.LLMError]) -> None:
    script = Script(response, plain("never reached"))
    sleeps = Sleeps()
    with pytest.raises(expected) as caught:
        await client(script, sleeps=sleeps).complete(PROMPT)
    assert len(script.requests) == 1 and sleeps.calls == []
    assert KEY not in str(caught.value) and KEY not in caught.value.user_message


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409])
async def test_server_errors_are_retried_with_backoff(status: int) -> None:
    script = Script(error(status, None, kind="server_error"), error(status, None, kind="server_error"), plain("ok"))
    sleeps = Sleeps()
    completion = await client(script, sleeps=sleeps).complete(PROMPT)
    assert completion.text == "ok"
    assert sleeps.calls == [0.5, 1.0]  # full jitter with rand=1.0 gives the cap of each step


async def test_backoff_is_jittered() -> None:
    script = Script(error(503, None), error(503, None), plain("ok"))
    sleeps = Sleeps()
    await client(script, sleeps=sleeps, rand=lambda: 0.25).complete(PROMPT)
    assert sleeps.calls == [0.125, 0.25]  # a quarter of each step's cap: replicas retrying together spread out


async def test_rate_limit_honours_retry_after_then_succeeds() -> None:
    script = Script(error(429, "rate_limit_exceeded", kind="requests", **{"retry-after": "2"}), plain("ok"))
    sleeps = Sleeps()
    assert (await client(script, sleeps=sleeps).complete(PROMPT)).text == "ok"
    assert sleeps.calls == [2.0]


async def test_retry_after_ms_wins_over_retry_after() -> None:
    headers = {"retry-after": "9", "retry-after-ms": "250"}
    script = Script(error(429, "rate_limit_exceeded", **headers), plain("ok"))
    sleeps = Sleeps()
    await client(script, sleeps=sleeps).complete(PROMPT)
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
async def test_a_garbled_retry_after_is_absent_and_the_retry_still_happens(header: str, value: str) -> None:
    script = Script(
        error(429, "rate_limit_exceeded", **{header: value}), error(503, None, **{header: value}), plain("ok")
    )
    sleeps = Sleeps()
    assert (await client(script, sleeps=sleeps).complete(PROMPT)).text == "ok"
    assert sleeps.calls == [0.5, 1.0]  # the ordinary backoff, as if the header were not there


@pytest.mark.parametrize("value", GARBLED_RETRY_AFTER)
async def test_a_garbled_retry_after_still_reaches_the_fallback(value: str) -> None:
    seen: list[str] = []

    def route(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "model.test":
            return error(503, None, **{"retry-after": value})
        return plain("from fallback")

    fallback = Endpoint("fallback", "http://backup.test/v1", "small")
    c = client(Script(*[route] * 3), fallback=fallback, retry=RetryPolicy(max_retries=0))
    assert (await c.complete(PROMPT)).text == "from fallback"
    assert seen == ["model.test", "backup.test"]


async def test_a_long_retry_after_is_reported_not_waited() -> None:
    script = Script(error(429, "rate_limit_exceeded", **{"retry-after": "45"}))
    sleeps = Sleeps()
    with pytest.raises(errors.RateLimited) as caught:
        await client(script, sleeps=sleeps).complete(PROMPT)
    assert sleeps.calls == []
    assert caught.value.user_message == "The AI service is busy, try again in 45 s."


async def test_retries_stop_after_max_retries() -> None:
    script = Script(*[error(503, None) for _ in range(3)])
    sleeps = Sleeps()
    with pytest.raises(errors.ServiceUnavailable):
        await client(script, sleeps=sleeps, retry=RetryPolicy(max_retries=2)).complete(PROMPT)
    assert len(script.requests) == 3 and len(sleeps.calls) == 2


async def test_retries_stop_at_the_deadline() -> None:
    script = Script(error(503, None), plain("too late"))
    with pytest.raises(errors.ServiceUnavailable):
        await client(script, retry=RetryPolicy(max_retries=5, base_delay=10, deadline=1)).complete(PROMPT)
    assert len(script.requests) == 1


async def test_timeouts_and_connection_errors_are_retried() -> None:
    script = Script(httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), plain("ok"))
    assert (await client(script).complete(PROMPT)).text == "ok"
    assert len(script.requests) == 3


async def test_connection_failure_after_retries_is_typed() -> None:
    script = Script(*[httpx.ConnectError("refused") for _ in range(4)])
    with pytest.raises(errors.ConnectionFailed) as caught:
        await client(script).complete(PROMPT)
    assert caught.value.user_message == "I cannot reach the AI service right now, try again in a minute."


async def test_malformed_json_is_typed_and_retried() -> None:
    script = Script(httpx.Response(200, content=b"{not json"), plain("ok"))
    assert (await client(script).complete(PROMPT)).text == "ok"
    script = Script(*[httpx.Response(200, content=b"{not json") for _ in range(4)])
    with pytest.raises(errors.MalformedResponse):
        await client(script).complete(PROMPT)


async def test_error_before_any_text_in_a_stream_is_retried() -> None:
    bad = sse({"error": {"message": "overloaded", "type": "server_error", "code": None}}, done=False)
    script = Script(
        httpx.Response(200, content=bad, headers={"content-type": "text/event-stream"}),
        httpx.Response(200, content=sse(chunk("fine", "stop")), headers={"content-type": "text/event-stream"}),
    )
    assert (await collect(client(script)))[0] == "fine"


async def test_error_after_text_in_a_stream_keeps_the_partial_and_is_not_retried() -> None:
    body = sse(chunk("The first half"), {"error": {"message": "boom", "type": "server_error"}}, done=False)
    script = Script(httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}))
    with pytest.raises(errors.StreamInterrupted) as caught:
        await collect(client(script))
    assert caught.value.partial == "The first half"
    assert isinstance(caught.value.cause, errors.ServiceUnavailable)
    assert len(script.requests) == 1


async def test_a_stream_that_ends_without_finish_or_done_is_interrupted() -> None:
    body = sse(chunk("half an ans"), done=False)
    script = Script(httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}))
    with pytest.raises(errors.StreamInterrupted) as caught:
        await collect(client(script))
    assert caught.value.partial == "half an ans"


async def test_an_event_the_fast_parser_refuses_but_json_reads_is_still_an_answer() -> None:
    # The SSE events are parsed with orjson, which refuses a lone surrogate escaped in a string (half an emoji, as
    # some servers send a token); json reads it, as the client always did: the answer must not become an error.
    body = sse('{"model": "m", "choices": [{"index": 0, "delta": {"content": "half \\ud83d"}}]}', chunk(finish="stop"))
    script = Script(httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}))
    text, pieces = await collect(client(script))
    assert text == "half \ud83d" and pieces == [text]


async def test_malformed_sse_event_is_typed() -> None:
    body = sse("{not json", done=True)
    script = Script(*[httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})] * 4)
    with pytest.raises(errors.MalformedResponse):
        await collect(client(script))


@pytest.mark.parametrize(
    ("failure", "tries"),
    [
        # An exhausted quota is not retried on the same endpoint; the others get their one retry first.
        (lambda: error(503, None), 2),
        (lambda: error(429, "insufficient_quota", kind="insufficient_quota"), 1),
        (lambda: httpx.ReadTimeout("slow"), 2),
        (lambda: httpx.ConnectError("refused"), 2),
    ],
    ids=["5xx", "quota", "timeout", "refused"],
)
async def test_fallback_is_used_after_the_primary_fails_its_retries(
    caplog: pytest.LogCaptureFixture, failure: Callable[[], httpx.Response | Exception], tries: int
) -> None:
    seen: list[str] = []

    def route(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "model.test":
            outcome = failure()
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        assert request.headers["authorization"] == "Bearer sk-fallback-key-000000"
        assert json.loads(request.content)["model"] == "small"
        return plain("from fallback")

    script = Script(*[route] * 10)
    fallback = Endpoint("fallback", "http://backup.test/v1", "small", KeySource(SecretStr("sk-fallback-key-000000")))
    with caplog.at_level(logging.WARNING):
        completion = await client(script, fallback=fallback, retry=RetryPolicy(max_retries=1)).complete(PROMPT)
    assert completion.text == "from fallback" and completion.endpoint == "fallback"
    assert seen == ["model.test"] * tries + ["backup.test"]
    assert "using fallback endpoint fallback" in caplog.text


async def test_fallback_is_not_used_for_a_bad_request() -> None:
    script = Script(error(400, "invalid_value"), plain("never"))
    fallback = Endpoint("fallback", "http://backup.test/v1", "small")
    with pytest.raises(errors.BadRequest):
        await client(script, fallback=fallback).complete(PROMPT)
    assert len(script.requests) == 1


async def test_401_rereads_a_rotated_key_file_once(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-old-key-0000000000\n")
    keys = KeySource(file=key_file)

    def rotate_then_reject(request: httpx.Request) -> httpx.Response:
        key_file.write_text("sk-new-key-1111111111-longer\n")
        return error(401, "invalid_api_key")

    def accept(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer sk-new-key-1111111111-longer"
        return plain("ok")

    script = Script(rotate_then_reject, accept)
    assert (await client(script, keys=keys).complete(PROMPT)).text == "ok"


async def test_401_with_an_unchanged_key_is_reported(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-same-key-000000000")
    script = Script(error(401, "invalid_api_key"), plain("never"))
    with pytest.raises(errors.AuthFailed) as caught:
        await client(script, keys=KeySource(file=key_file)).complete(PROMPT)
    assert "OPENAI_API_KEY" in caught.value.user_message
    assert len(script.requests) == 1


async def test_key_never_reaches_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    leaky = httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {KEY}", "code": None}})
    script = Script(leaky)
    with caplog.at_level(logging.DEBUG), pytest.raises(errors.AuthFailed) as caught:
        await client(script).complete(PROMPT)
    assert KEY not in str(caught.value)
    assert KEY not in caplog.text


async def test_a_stream_is_read_to_its_end_so_the_connection_is_reused() -> None:
    peers: list[object] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse(chunk("whole", "stop"), done=True))
        await response.write_eof()
        return response

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
                assert (await collect(c))[0] == "whole"
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


def _json(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # A path the server does not serve (a base URL without /v1), as each server words it.
        (httpx.Response(404, text="404 page not found"), errors.EndpointNotFound),  # Ollama
        (_json(404, {"error": {"message": "Invalid URL (POST /chat/completions)", "type": "invalid_request_error",
                               "param": None, "code": None}}), errors.EndpointNotFound),  # OpenAI, older
        (_json(404, {"error": {"message": "Unknown request URL: POST /chat/completions. Please check the URL for "
                               "typos.", "type": "invalid_request_error", "param": None, "code": "unknown_url"}}),
         errors.EndpointNotFound),  # OpenAI
        (_json(404, {"detail": "Not Found"}), errors.EndpointNotFound),  # vLLM, llama-cpp-python (FastAPI)
        (httpx.Response(404, text="<html>\n<head><title>404 Not Found</title></head>\n</html>\n"),
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
    response: httpx.Response, expected: type[errors.LLMError]
) -> None:
    script = Script(response, plain("never reached"))
    with pytest.raises(expected) as caught:
        await client(script).complete(PROMPT)
    assert len(script.requests) == 1
    if expected is errors.EndpointNotFound:
        # The base URL here already ends in /v1: no /v1 to suggest, only to check it.
        assert str(caught.value).startswith("HTTP 404 for http://model.test/v1/chat/completions: ")
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


async def test_the_404_detail_shows_no_password_from_the_base_url() -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(404, text="Not Found")))
    c = ChatClient(http, Endpoint("primary", "http://bot:pw-never-shown@proxy.test/llm", "m"))
    with pytest.raises(errors.EndpointNotFound) as caught:
        await c.complete(PROMPT)
    assert str(caught.value) == (
        "HTTP 404 for http://proxy.test/llm/chat/completions: the server has no such path (Not Found); "
        "the base URL usually ends in /v1: try http://proxy.test/llm/v1"
    )


@pytest.mark.parametrize("streamed", [True, False])
async def test_a_finished_call_leaves_nothing_for_the_cyclic_collector(streamed: bool) -> None:
    """The response of a call is freed when the call returns, by reference counting alone: left to the cyclic
    collector, each turn's response piles up until a collection walks them all on the event loop (BENCHMARKS.md,
    "Round three")."""
    responses: list[weakref.ref[httpx.Response]] = []

    async def keep(response: httpx.Response) -> None:
        responses.append(weakref.ref(response))

    async with FakeOpenAI() as fake, model_http_client(30) as http:
        http.event_hooks["response"].append(keep)
        c = ChatClient(http, Endpoint("primary", fake.base_url, "m"))
        gc.disable()
        try:
            text = (await collect(c))[0] if streamed else (await c.complete(PROMPT)).text
            assert text
            assert len(responses) == 1
            assert responses[0]() is None, "the response is still alive: something holds it in a reference cycle"
        finally:
            gc.enable()
