"""A loopback OpenAI-compatible chat completions server that can fail on demand.

Started in the test's own event loop on 127.0.0.1, port 0. It answers ``echo: <last user message>`` (or what
``reply`` returns), plain or as SSE, and records every request.

Faults are driven by the input, so a subprocess test can trigger them by typing: a token in the *last user
message* applies to that request. ``[[FAULT]]`` applies every time; ``[[FAULTxN]]`` only to the first N requests
with that same last message, after which it succeeds (so a client's retry can).

    [[429]]  [[429:ra=0.2]]     429 rate_limit_exceeded with Retry-After (default 1 s)
    [[quota]]                   429 insufficient_quota (waiting will not help)
    [[500]] [[502]] [[503]] [[504]]   that status, OpenAI's server_error body
    [[401]] [[403]] [[404]]     invalid_api_key / unsupported_country_region_territory / model_not_found
    [[context]]                 400 context_length_exceeded;  [[llamactx]]: llama.cpp's exceed_context_size_error
    [[slow:S]]                  wait S seconds before the first byte
    [[stall:S]]                 stream: first text chunk, then S seconds of silence, then the rest
    [[cut]]                     stream: about half the text, then the connection is dropped (no [DONE])
    [[midstream]]               stream: some text, then an error event with HTTP 200
    [[malformed]]               a body (or an SSE event) that is not JSON
    [[empty]]                   a successful, empty completion

Run standalone for manual trying: ``python -m tests.fakes.openai --port 8081``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web

_TOKEN = re.compile(r"\[\[(?P<name>[a-z0-9]+)(?::(?P<arg>[a-z]+=)?(?P<value>[0-9.]+))?(?:x(?P<times>\d+))?\]\]")


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly application/json: some clients reject a charset suffix.
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def _error(status: int, message: str, kind: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


class FakeOpenAI:
    """The fake server; use ``async with FakeOpenAI() as fake`` and point a client at ``fake.base_url``."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        chunk_delay: float = 0.0,
        first_byte_delay: float = 0.0,
        context_limit_chars: int | None = None,
        reply: Callable[[list[dict[str, Any]]], str] | None = None,
    ) -> None:
        self.api_key = api_key
        self.chunk_delay = chunk_delay
        self.first_byte_delay = first_byte_delay
        self.context_limit_chars = context_limit_chars
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.base_url = ""
        self._seen: Counter[str] = Counter()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for_requests(self, n: int, within: float = 5.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.calls >= n)

    async def _models(self, request: web.Request) -> web.Response:
        return _json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "tests"}]})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        async with self._changed:
            self._changed.notify_all()
        try:
            return await self._answer(request, body)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _json(401, _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
        messages: list[dict[str, Any]] = body.get("messages") or []
        last_user = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        fault, value = self._fault(last_user)
        delay = self.first_byte_delay + (value if fault == "slow" else 0.0)
        if delay:
            await asyncio.sleep(delay)
        total_chars = sum(len(str(m.get("content", ""))) for m in messages)
        over_limit = self.context_limit_chars is not None and total_chars > self.context_limit_chars
        if over_limit or fault == "context":
            return _json(
                400,
                _error(
                    400,
                    "This model's maximum context length is 4096 tokens.",
                    "invalid_request_error",
                    "context_length_exceeded",
                    "messages",
                ),
            )
        if fault is not None and (early := self._early_fault(fault, value)) is not None:
            return early
        text = "" if fault == "empty" else (self.reply(messages) if self.reply else f"echo: {last_user}")
        usage = {
            "prompt_tokens": _tokens(json.dumps(messages)),
            "completion_tokens": _tokens(text),
            "total_tokens": _tokens(json.dumps(messages)) + _tokens(text),
        }
        model = str(body.get("model", "fake-model"))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, model, text, usage if include_usage else None, fault, value)
        if fault == "malformed":
            return web.Response(status=200, body=b"{not json", content_type="application/json")
        if fault == "cut":
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.content_length = 1000
            await response.prepare(request)
            await response.write(b'{"id": "chatcmpl-cut", "choices": [{"mess')
            assert request.transport is not None
            request.transport.close()
            return response
        return _json(
            200,
            {
                "id": f"chatcmpl-{self.calls}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage,
            },
        )

    def _fault(self, text: str) -> tuple[str | None, float]:
        match = _TOKEN.search(text)
        if match is None:
            return None, 0.0
        times = match.group("times")
        self._seen[text] += 1
        if times is not None and self._seen[text] > int(times):
            return None, 0.0
        value = match.group("value")
        return match.group("name"), float(value) if value else 0.0

    def _early_fault(self, fault: str, value: float) -> web.Response | None:
        if fault == "429":
            retry_after = value if value else 1
            return _json(
                429,
                _error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded"),
                headers={"Retry-After": f"{retry_after:g}"},
            )
        if fault == "quota":
            return _json(
                429, _error(429, "You exceeded your current quota.", "insufficient_quota", "insufficient_quota")
            )
        if fault in ("500", "502", "503", "504"):
            return _json(int(fault), _error(int(fault), "The server had an error.", "server_error", None))
        if fault == "401":
            return _json(401, _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
        if fault == "403":
            return _json(
                403,
                _error(403, "Country not supported.", "request_forbidden", "unsupported_country_region_territory"),
            )
        if fault == "404":
            return _json(404, _error(404, "The model does not exist.", "invalid_request_error", "model_not_found"))
        if fault == "llamactx":
            return _json(
                400,
                {
                    "error": {
                        "code": 400,
                        "message": "the request exceeds the available context size, try increasing it",
                        "type": "exceed_context_size_error",
                    }
                },
            )
        return None

    async def _stream(
        self,
        request: web.Request,
        model: str,
        text: str,
        usage: dict[str, int] | None,
        fault: str | None,
        value: float,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        created = int(time.time())

        def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
            payload = {
                "id": f"chatcmpl-{self.calls}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        await response.write(chunk({"role": "assistant", "content": ""}))
        pieces = re.findall(r"\S+\s*|\s+", text)
        if fault == "malformed":
            await response.write(b"data: {not json\n\n")
        for index, piece in enumerate(pieces):
            if fault in ("cut", "midstream") and index >= max(1, len(pieces) // 2):
                if fault == "midstream":
                    error = _error(500, "The server had an error while processing your request.", "server_error", None)
                    await response.write(f"data: {json.dumps(error)}\n\n".encode())
                    await response.write_eof()
                    return response
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(chunk({"content": piece}))
            if index == len(pieces) // 2:
                await response.write(b": keep-alive\n\n")
            if fault == "stall" and index == 0:
                await asyncio.sleep(value)
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await response.write(chunk({}, "stop"))
        if usage is not None:
            payload = {"id": f"chatcmpl-{self.calls}", "object": "chat.completion.chunk", "created": created}
            payload |= {"model": model, "choices": [], "usage": usage}
            await response.write(f"data: {json.dumps(payload)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the fake OpenAI-compatible API on loopback.")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--chunk-delay", type=float, default=0.02)
    args = parser.parse_args()

    async def serve() -> None:
        fake = FakeOpenAI(chunk_delay=args.chunk_delay)
        await fake.start(port=args.port)
        print(f"fake OpenAI API at {fake.base_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await fake.stop()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
