"""OpenAI-compatible chat completions over httpx: plain and streaming calls, retries, error mapping, fallback.

Works against OpenAI, Ollama, vLLM, llama.cpp's server and OpenRouter. Every failure leaves as one of the
:mod:`bot.errors` types; the key never appears in a URL, a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_aiohttp import HttpxAiohttpClient

from bot import errors
from bot.keys import KeySource
from bot.messages import Usage
from bot.redact import redact

log = logging.getLogger(__name__)

ChatMessage = dict[str, str]
OnDelta = Callable[[str], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]

_CONTEXT_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error", "context_window_exceeded"})
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


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
    """Exponential backoff with full jitter, bounded by a deadline for the whole call."""

    max_retries: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    #: Longer server waits are not sat out: the person is told when to try again instead.
    max_retry_after: float = 30.0
    deadline: float = 120.0

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
        try:
            return await self._with_retries(self.primary, messages, model, on_delta)
        except errors.LLMError as exc:
            if self.fallback is None or not exc.fallback_worthy:
                raise
            log.warning(
                "model endpoint %s failed after retries (%s); using fallback endpoint %s",
                self.primary.name,
                type(exc).__name__,
                self.fallback.name,
            )
            return await self._with_retries(self.fallback, messages, None, on_delta)

    async def _with_retries(
        self, endpoint: Endpoint, messages: list[ChatMessage], model: str | None, on_delta: OnDelta | None
    ) -> Completion:
        policy = self._retry
        deadline = time.monotonic() + policy.deadline
        reloaded_key = False
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.Timeout("deadline passed before the model answered")
            try:
                return await self._attempt(endpoint, messages, model or endpoint.model, on_delta, remaining)
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
                if time.monotonic() + delay >= deadline:
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
        remaining: float,
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
        result = _StreamResult()
        try:
            async with asyncio.timeout(remaining) as scope:
                async with self._http.stream("POST", url, json=body, headers=headers) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise _error_from_response(response, model, key)
                    content_type = response.headers.get("content-type", "")
                    if on_delta is not None and content_type.startswith("text/event-stream"):
                        # Once text flows, the read timeout between chunks governs, not the call deadline.
                        chunks = response.aiter_bytes()
                        await _consume_sse(chunks, result, on_delta, scope.reschedule)
                        await _drain(chunks)
                    else:
                        await response.aread()
                        _read_plain(response, result)
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
            raise _interrupted_or(result, errors.Timeout(f"{type(exc).__name__} talking to {endpoint.name}")) from None
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


@dataclass(slots=True)
class _StreamResult:
    text: str = ""
    usage: Usage | None = None
    model: str | None = None
    finish_reason: str | None = None
    done: bool = False


def _timed_out(exc: BaseException) -> bool:
    """Whether a timeout really is one: httpx-aiohttp reports every aiohttp connection error, a refused
    connection and an unknown host included, as ``ConnectTimeout``, with the real error as its cause."""
    cause = exc.__cause__
    return not isinstance(exc, httpx.TimeoutException) or cause is None or isinstance(cause, TimeoutError)


def _interrupted_or(result: _StreamResult, exc: errors.LLMError) -> errors.LLMError:
    if result.text:
        return errors.StreamInterrupted(str(exc), partial=result.text, cause=exc)
    return exc


class SSEDecoder:
    """Splits a byte stream into the ``data`` of its server-sent events; comment lines (``: keep-alive``) are
    skipped. Fed raw chunks, not lines: every token of a stream is a chunk, and one pass over its bytes costs a
    fraction of httpx's text and line iterators stacked on each other."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        buffer = self._buffer + chunk
        # A CR at the very end may be the first half of a CRLF: keep it for the next chunk.
        keep_cr = buffer.endswith(b"\r")
        if keep_cr:
            buffer = buffer[:-1]
        lines = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._buffer = lines.pop() + (b"\r" if keep_cr else b"")
        return self._events(lines)

    def close(self) -> list[str]:
        """The last event, where a stream ended without the blank line that closes it."""
        rest, self._buffer = self._buffer.rstrip(b"\r"), b""
        return self._events([rest, b""] if rest else [b""])

    def _events(self, lines: list[bytes]) -> list[str]:
        events = []
        for raw in lines:
            if not raw:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
                continue
            line = raw.decode("utf-8", "replace")
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if name == "data":
                self._data.append(value.removeprefix(" "))
        return events


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows ``[DONE]`` to the end of the body, so the connection goes back to the pool instead of
    being closed; a server that keeps the stream open after ``[DONE]`` gets a second, then is left alone."""
    try:
        async with asyncio.timeout(1.0):
            async for _ in chunks:
                pass
    except (TimeoutError, httpx.HTTPError):
        pass  # the answer is already whole; only the connection's reuse is lost


async def _consume_sse(
    chunks: AsyncIterator[bytes],
    result: _StreamResult,
    on_delta: OnDelta,
    reschedule: Callable[[float | None], None],
) -> None:
    decoder = SSEDecoder()
    async for chunk in chunks:
        for data in decoder.feed(chunk):
            if await _take_event(data, result, on_delta, reschedule):
                return
    for data in decoder.close():
        if await _take_event(data, result, on_delta, reschedule):
            return


async def _take_event(
    data: str, result: _StreamResult, on_delta: OnDelta, reschedule: Callable[[float | None], None]
) -> bool:
    """Apply one event's data to ``result``; True once the stream says ``[DONE]``."""
    if data.strip() == "[DONE]":
        result.done = True
        return True
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise errors.MalformedResponse("an SSE event was not JSON") from None
    if not isinstance(chunk, dict):
        raise errors.MalformedResponse("an SSE event was not a JSON object")
    if "error" in chunk:
        # Errors after the stream started arrive as data with HTTP 200 (OpenRouter, vLLM).
        raise _error_from_body(None, chunk, model=result.model or "", retry_after=None)
    result.model = chunk.get("model") or result.model
    if isinstance(chunk.get("usage"), dict):
        result.usage = _usage(chunk["usage"])
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        piece = delta.get("content")
        if isinstance(piece, str) and piece:
            if not result.text:
                reschedule(None)
            result.text += piece
            await on_delta(piece)
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]
    return False


def _read_plain(response: httpx.Response, result: _StreamResult) -> None:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise errors.MalformedResponse("the response body was not JSON") from None
    if not isinstance(body, dict):
        raise errors.MalformedResponse("the response body was not a JSON object")
    if "error" in body:
        raise _error_from_body(response.status_code, body, model=str(body.get("model", "")), retry_after=None)
    try:
        choice = body["choices"][0]
        content = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise errors.MalformedResponse("the response had no choices[0].message") from None
    result.text = content if isinstance(content, str) else ""
    result.finish_reason = choice.get("finish_reason")
    result.model = body.get("model")
    result.done = True
    if isinstance(body.get("usage"), dict):
        result.usage = _usage(body["usage"])


def _usage(raw: dict[str, Any]) -> Usage | None:
    try:
        return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))
    except (TypeError, ValueError):
        return None


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, when.timestamp() - time.time()) if when else None


def _error_from_response(response: httpx.Response, model: str, key: str | None) -> errors.LLMError:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = {"error": {"message": response.text[:200]}}
    if not isinstance(body, dict):
        body = {}
    exc = _error_from_body(response.status_code, body, model=model, retry_after=_retry_after(response.headers))
    log.debug("model endpoint answered HTTP %d: %s", response.status_code, redact(str(body)[:500], key))
    return exc


def _error_from_body(
    status: int | None, body: dict[str, Any], *, model: str, retry_after: float | None
) -> errors.LLMError:
    raw = body.get("error")
    err: dict[str, Any] = raw if isinstance(raw, dict) else {"message": raw}
    code = err.get("code")
    code = str(code) if code is not None and not isinstance(code, int) else None
    kind = err.get("type") if isinstance(err.get("type"), str) else None
    message = redact(str(err.get("message") or ""))[:200]
    tags = {t for t in (code, kind) if t}
    detail = f"HTTP {status if status is not None else 'stream'} {code or kind or ''}: {message}".strip()
    if tags & _CONTEXT_CODES:
        return errors.ContextTooLong(detail)
    if tags & _QUOTA_CODES or status == 402:
        return errors.QuotaExhausted(detail)
    if status == 401 or code == "invalid_api_key":
        return errors.AuthFailed(detail)
    if status == 403:
        return errors.Forbidden(detail)
    if status == 404 or code == "model_not_found":
        return errors.ModelNotFound(detail, model=model)
    if status == 429 or code == "rate_limit_exceeded":
        return errors.RateLimited(detail, retry_after=retry_after)
    if status == 408:
        return errors.Timeout(detail)
    if status is None or status == 409 or status >= 500:
        return errors.ServiceUnavailable(detail)
    return errors.BadRequest(detail, status=status, code=code or kind)
