"""OpenAI-compatible chat completions over httpx: plain and streaming calls, retries, fallback.

Works against OpenAI, Ollama, vLLM, llama.cpp's server and OpenRouter. Every failure leaves as one of the
:mod:`bot.errors` types; the key never appears in a URL, a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_aiohttp import HttpxAiohttpClient

from bot import errors
from bot.guards import KeySource, redact
from bot.llm.errors import error_from_response
from bot.llm.sse import OnDelta, StreamResult, consume_sse, drain, read_plain
from bot.messages import Usage

log = logging.getLogger(__name__)

ChatMessage = dict[str, str]
Sleep = Callable[[float], Awaitable[None]]


def model_http_client(timeout: httpx.Timeout | float, *, max_connections: int = 256) -> httpx.AsyncClient:
    """The one HTTP client for model calls: httpx's API over aiohttp's connection pool.

    httpcore's own pool looks at every open connection for every request (and polls the idle ones), so its cost
    per request grows with the number of concurrent calls; measured through the core with 200 concurrent
    conversations it took over half the process's time (``python -m bench``, BENCHMARKS.md).
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return HttpxAiohttpClient(timeout=timeout, limits=limits)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One OpenAI-compatible server and the model to ask there."""

    name: str
    base_url: str
    model: str
    keys: KeySource = field(default_factory=KeySource)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, within two limits of time.

    ``deadline`` bounds the wait for an answer to start, retries included, on each endpoint. ``max_call`` bounds
    the whole call, whatever happens: retries, the fallback and the streaming of the answer. Without it a server
    that keeps a stream open (with ``: keep-alive`` comments, or a token a minute) would hold the turn's
    concurrency slot and its conversation's lock for ever.
    """

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    #: Longer server waits are not sat out: the person is told when to try again instead.
    max_retry_after: float = 30.0
    deadline: float = 120.0
    max_call: float = 300.0

    def backoff(self, attempt: int, rand: float) -> float:
        return rand * min(self.max_delay, self.base_delay * 2**attempt)


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    usage: Usage | None
    model: str
    finish_reason: str | None
    endpoint: str


@dataclass(frozen=True, slots=True)
class GenerationParams:
    temperature: float | None = None
    max_output_tokens: int = 1024
    max_tokens_param: str = "max_tokens"


class ChatClient:
    """Calls ``POST {base_url}/chat/completions`` on one shared ``httpx.AsyncClient``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        primary: Endpoint,
        *,
        fallback: Endpoint | None = None,
        params: GenerationParams | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._http = http
        self.primary = primary
        self.fallback = fallback
        self._params = params or GenerationParams()
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rand = rand

    async def complete(self, messages: list[ChatMessage], *, model: str | None = None) -> Completion:
        """One plain (non-streaming) call."""
        return await self._with_fallback(messages, model, on_delta=None)

    async def stream(self, messages: list[ChatMessage], on_delta: OnDelta, *, model: str | None = None) -> Completion:
        """A streaming call; ``on_delta`` gets each piece of text as it arrives."""
        return await self._with_fallback(messages, model, on_delta=on_delta)

    async def _with_fallback(
        self, messages: list[ChatMessage], model: str | None, on_delta: OnDelta | None
    ) -> Completion:
        loop = asyncio.get_running_loop()
        cap = loop.time() + self._retry.max_call
        try:
            return await self._with_retries(self.primary, messages, model, on_delta, cap)
        except errors.LLMError as exc:
            if self.fallback is None or not exc.fallback_worthy or loop.time() >= cap:
                raise
            log.warning(
                "model endpoint %s failed after retries (%s); using fallback endpoint %s",
                self.primary.name,
                type(exc).__name__,
                self.fallback.name,
            )
            return await self._with_retries(self.fallback, messages, None, on_delta, cap)

    async def _with_retries(
        self,
        endpoint: Endpoint,
        messages: list[ChatMessage],
        model: str | None,
        on_delta: OnDelta | None,
        cap: float,
    ) -> Completion:
        policy = self._retry
        loop = asyncio.get_running_loop()
        deadline = min(loop.time() + policy.deadline, cap)
        reloaded_key = False
        attempt = 0
        while True:
            if loop.time() >= deadline:
                raise errors.Timeout("deadline passed before the model answered")
            try:
                return await self._attempt(endpoint, messages, model or endpoint.model, on_delta, deadline, cap)
            except errors.AuthFailed:
                # A rotated key file may already hold the new key: re-read it once before giving up.
                if reloaded_key or not endpoint.keys.reload():
                    raise
                reloaded_key = True
                log.info("model endpoint %s rejected the key; retrying once with the re-read key", endpoint.name)
                continue
            except errors.LLMError as exc:
                if not exc.retryable or attempt >= policy.max_retries:
                    raise
                retry_after = exc.retry_after if isinstance(exc, errors.RateLimited) else None
                if retry_after is not None and retry_after > policy.max_retry_after:
                    raise
                delay = retry_after if retry_after is not None else policy.backoff(attempt, self._rand())
                if loop.time() + delay >= deadline:
                    raise
                attempt += 1
                log.warning(
                    "model endpoint %s: %s; retry %d/%d in %.2f s",
                    endpoint.name,
                    exc,
                    attempt,
                    policy.max_retries,
                    delay,
                )
                await self._sleep(delay)

    async def _attempt(
        self,
        endpoint: Endpoint,
        messages: list[ChatMessage],
        model: str,
        on_delta: OnDelta | None,
        deadline: float,
        cap: float,
    ) -> Completion:
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            self._params.max_tokens_param: self._params.max_output_tokens,
        }
        if self._params.temperature is not None:
            body["temperature"] = self._params.temperature
        if on_delta is not None:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        headers = {"Accept": "text/event-stream" if on_delta else "application/json"}
        key = endpoint.keys.get()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = f"{endpoint.base_url}/chat/completions"
        result = StreamResult()
        loop = asyncio.get_running_loop()
        # The read timeout counts bytes, and a comment line is bytes: between events it is applied again here,
        # to events only, so a stream that sends nothing but ": keep-alive" stalls out like a silent one.
        stall = self._http.timeout.read
        # Each reschedule makes a new timer (about 3 µs); for every token that is waste, and moving the limit in
        # steps of a twentieth of the stall time is as good.
        step = stall / 20 if stall is not None else 0.0
        try:
            async with asyncio.timeout_at(deadline) as scope:

                def progress() -> None:
                    # Once text flows, the deadline for the answer to start is met; the cap on the call remains.
                    limit = cap if result.text else deadline
                    if stall is not None:
                        limit = min(limit, loop.time() + stall)
                    when = scope.when()
                    later = limit - when if when is not None else -1.0  # None is no limit: any is earlier
                    # Earlier always; later in steps, except to a hard limit, which is kept to the letter.
                    if later < 0 or later > step or (later > 0 and limit in (deadline, cap)):
                        scope.reschedule(limit)

                async with self._http.stream("POST", url, json=body, headers=headers) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from_response(response, model, key)
                    content_type = response.headers.get("content-type", "")
                    if on_delta is not None and content_type.startswith("text/event-stream"):
                        progress()
                        chunks = response.aiter_bytes()
                        await consume_sse(chunks, result, on_delta, progress)
                        # The answer is whole; drain() has its own short limit, and must not turn into a timeout.
                        scope.reschedule(None)
                        await drain(chunks)
                    else:
                        await response.aread()
                        read_plain(response, result)
                        if on_delta is not None and result.text:
                            await on_delta(result.text)
        except errors.LLMError as exc:
            if result.text and on_delta is not None:
                raise errors.StreamInterrupted(str(exc), partial=result.text, cause=exc) from None
            raise
        except (TimeoutError, httpx.TimeoutException) as exc:
            if not _timed_out(exc):
                raise _interrupted_or(
                    result,
                    errors.ConnectionFailed(
                        f"{type(exc.__cause__).__name__}: cannot reach {endpoint.name}: {redact(str(exc))}"
                    ),
                ) from None
            limit = _which_limit(exc, loop.time(), cap, stall, endpoint)
            raise _interrupted_or(result, errors.Timeout(limit)) from None
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise _interrupted_or(
                result, errors.ConnectionFailed(f"{type(exc).__name__}: connection to {endpoint.name} broke")
            ) from None
        except httpx.TransportError as exc:
            raise _interrupted_or(
                result,
                errors.ConnectionFailed(f"{type(exc).__name__}: cannot reach {endpoint.name}: {redact(str(exc))}"),
            ) from None
        if on_delta is not None and result.finish_reason is None and not result.done:
            raise _interrupted_or(result, errors.ConnectionFailed("the stream ended before the answer was complete"))
        return Completion(result.text, result.usage, result.model or model, result.finish_reason, endpoint.name)


def _timed_out(exc: BaseException) -> bool:
    """Whether a timeout really is one: httpx-aiohttp reports every aiohttp connection error, a refused
    connection and an unknown host included, as ``ConnectTimeout``, with the real error as its cause."""
    cause = exc.__cause__
    return not isinstance(exc, httpx.TimeoutException) or cause is None or isinstance(cause, TimeoutError)


def _which_limit(exc: BaseException, now: float, cap: float, stall: float | None, endpoint: Endpoint) -> str:
    """What ran out, for the log: the cap on the whole call, or the wait for the answer or its next event."""
    if now >= cap:
        return f"the call to {endpoint.name} reached TEAMBOT_MAX_CALL_SECONDS"
    if isinstance(exc, TimeoutError) and stall is not None:
        return f"{endpoint.name} sent no answer, or no event for {stall:g} s (comment lines do not count)"
    return f"{type(exc).__name__} talking to {endpoint.name}"


def _interrupted_or(result: StreamResult, exc: errors.LLMError) -> errors.LLMError:
    if result.text:
        return errors.StreamInterrupted(str(exc), partial=result.text, cause=exc)
    return exc
