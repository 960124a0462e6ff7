"""A loopback model server that answers from a script, for the wire details of the model client's tests.

Each request gets the next step: a :class:`Reply` (status, body, headers), :data:`HANG_UP` (the connection is
dropped before any answer, as a server that dies or a proxy that gives up does), :data:`SILENT` (no answer at all,
until the client's read limit gives up), or a function of the request that returns one of those. Every request is
recorded as it came: method, path, headers and body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy
from pydantic import SecretStr

from bot.guards import KeySource
from bot.llm import ChatClient, Endpoint, GenerationParams, ModelHTTP, RetryPolicy, model_http_client

KEY = "sk-test-0123456789abcdef"
PROMPT = [{"role": "user", "content": "Ada: hi"}]
#: The read limit of the clients made here: a SILENT step times out after it.
READ_TIMEOUT = 1.0


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


HANG_UP = "hang up"
SILENT = "silent"


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    #: The request target's host: the proxy's view of where the request is going (absolute-form through a proxy).
    host: str | None
    headers: CIMultiDictProxy[str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def endpoint(self) -> str:
        """Which of the client's two endpoints was asked: the fallback's base URL is under /backup."""
        return "fallback" if self.path.startswith("/backup/") else "primary"


Step = Reply | str | Callable[[Seen], "Reply | str"]


def json_reply(status: int, body: object, **headers: str) -> Reply:
    return Reply(status, json.dumps(body).encode(), {"Content-Type": "application/json", **headers})


def plain(text: str, usage: tuple[int, int] = (7, 3)) -> Reply:
    body = {
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
    }
    return json_reply(200, body)


def error(status: int, code: str | None, kind: str = "invalid_request_error", **headers: str) -> Reply:
    return json_reply(status, {"error": {"message": "nope", "type": kind, "code": code, "param": None}}, **headers)


def streamed(body: bytes) -> Reply:
    return Reply(200, body, {"Content-Type": "text/event-stream"})


def sse(*events: object, done: bool = True) -> bytes:
    out = [f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n" for e in events]
    if done:
        out.append("data: [DONE]\n\n")
    return "".join(out).encode()


def chunk(text: str | None = None, finish: str | None = None) -> dict[str, object]:
    delta = {"content": text} if text is not None else {}
    return {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class Sleeps:
    """The client's sleep between retries, recorded instead of slept."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class Script:
    """``async with Script() as script``: a server on 127.0.0.1 and a model client pointed at it."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.url = ""
        self.http: ModelHTTP = model_http_client(READ_TIMEOUT)
        self._steps: Iterator[Step] = iter(())
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Script:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        await self.http.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.http.__aexit__(exc_type, exc, tb)
        if self._runner is not None:
            await self._runner.cleanup()

    def answer(self, *steps: Step) -> Script:
        """Answer the next requests with ``steps``, in order."""
        self._steps = iter(steps)
        return self

    def client(
        self,
        *steps: Step,
        sleeps: Sleeps | None = None,
        fallback: Endpoint | None = None,
        keys: KeySource | None = None,
        retry: RetryPolicy | None = None,
        rand: Callable[[], float] = lambda: 1.0,
        base_url: str | None = None,
    ) -> ChatClient:
        """A client of this server's ``/v1`` (the fallback, if any, is for the caller to point at ``/backup/v1``)."""
        if steps:
            self.answer(*steps)
        primary = Endpoint("primary", base_url or f"{self.url}/v1", "m", keys or KeySource(SecretStr(KEY)))
        return ChatClient(
            self.http,
            primary,
            fallback=fallback,
            params=GenerationParams(temperature=0.2, max_output_tokens=50),
            retry=retry or RetryPolicy(max_retries=3),
            sleep=sleeps or Sleeps(),
            rand=rand,
        )

    def fallback(self, model: str = "small", keys: KeySource | None = None) -> Endpoint:
        return Endpoint("fallback", f"{self.url}/backup/v1", model, keys or KeySource())

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, request.path, request.url.host, request.headers, await request.read())
        self.requests.append(seen)
        step = next(self._steps)
        if callable(step):
            step = step(seen)
        if step == HANG_UP:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if step == SILENT:
            await asyncio.Event().wait()  # until the client hangs up, which cancels this handler
        assert isinstance(step, Reply)
        return web.Response(status=step.status, body=step.body, headers=step.headers)
