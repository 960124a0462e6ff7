"""OpenAI-compatible chat completions over aiohttp: plain and streaming calls, retries, fallback.

Works against OpenAI, Ollama, vLLM, llama.cpp's server and OpenRouter. Every failure leaves as one of the
:mod:`bot.errors` types; the key never appears in a URL, a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bot import errors
from bot.guards import KeySource, redact
from bot.llm.errors import error_from_response
from bot.llm.sse import OnDelta, StreamResult, ToolCall, consume_sse, drain, read_plain
from bot.llm.transport import ModelHTTP, Target, target
from bot.messages import Usage

log = logging.getLogger(__name__)

#: One message of the chat format: ``content`` is text, or a list of parts (text, images); an assistant message
#: may carry ``tool_calls`` and a ``tool`` message a ``tool_call_id``.
ChatMessage = dict[str, Any]
Sleep = Callable[[float], Awaitable[None]]


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
    #: The thinking the server sent apart from the answer (or in a leading ``<think>`` block); never in ``text``.
    reasoning: str = ""
    #: The functions the model asked to call (only when the request offered ``tools``), in its order.
    tool_calls: tuple[ToolCall, ...] = ()


#: The values of ``reasoning_effort`` that OpenAI's models take (each model takes some of them).
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


def model_choice(choice: str | None) -> tuple[str | None, str | None]:
    """A channel's ``/model`` choice, as stored: the model, then optionally its reasoning effort (``"gpt-5 high"``).

    Kept in the one column that holds the channel's model, so a choice of effort needs no change to the schema and
    travels with the model it was chosen for (picking another model drops it). None means the configured default.
    """
    if not choice:
        return None, None
    model, _, effort = choice.partition(" ")
    return model, effort.strip() or None


@dataclass(frozen=True, slots=True)
class GenerationParams:
    temperature: float | None = None
    max_output_tokens: int = 1024
    max_tokens_param: str = "max_tokens"
    #: Sent as ``reasoning_effort`` unless a channel chose its own; None sends nothing (the model's default).
    reasoning_effort: str | None = None


#: What to do when a model refuses one of the parameters we send: send it under another name, or not at all.
#: Reasoning models (o-series, gpt-5) refuse ``max_tokens`` and any ``temperature`` but their default; older models
#: and other servers refuse ``reasoning_effort``; a few servers know only ``max_tokens``.
_INSTEAD: dict[str, str | None] = {
    "max_tokens": "max_completion_tokens",
    "max_completion_tokens": "max_tokens",
    "temperature": None,
    "reasoning_effort": None,
}
_REFUSALS = frozenset({"unsupported_parameter", "unsupported_value"})
_QUOTED_PARAM = re.compile(r"'(" + "|".join(_INSTEAD) + r")'")


class ChatClient:
    """Calls ``POST {base_url}/chat/completions`` on one shared :class:`~bot.llm.transport.ModelHTTP`."""

    def __init__(
        self,
        http: ModelHTTP,
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
        #: Per (server, model): the parameters it refused, each mapped to the name to use instead (None: leave out).
        self._refused: dict[tuple[str, str], dict[str, str | None]] = {}
        #: Each endpoint's completions URL (and proxy), worked out once: not again for every call.
        self._targets: dict[str, Target] = {}

    @property
    def reasoning_effort(self) -> str | None:
        """The configured effort (TEAMBOT_REASONING_EFFORT), for calls that name none."""
        return self._params.reasoning_effort

    def complete(
        self,
        messages: list[ChatMessage],
        *,
        model: str | None = None,
        effort: str | None = None,
        on_reasoning: OnDelta | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
    ) -> Coroutine[Any, Any, Completion]:
        """One plain (non-streaming) call; ``on_reasoning`` gets the model's thinking, if any, in one piece.
        ``tools`` (OpenAI's function format) and ``tool_choice`` are sent only when given."""
        # The call's coroutine itself, not one around it: each coroutine between the task and the stream is passed
        # through again every time the task wakes (at each piece of the answer).
        return self._call(messages, model, _Call(None, on_reasoning, effort, tools, tool_choice))

    def stream(
        self,
        messages: list[ChatMessage],
        on_delta: OnDelta,
        *,
        model: str | None = None,
        effort: str | None = None,
        on_reasoning: OnDelta | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
    ) -> Coroutine[Any, Any, Completion]:
        """A streaming call; ``on_delta`` gets each piece of the answer as it arrives, ``on_reasoning`` each piece of
        the model's thinking (never part of the answer). ``effort`` overrides the configured reasoning effort;
        ``tools`` and ``tool_choice`` are sent only when given, and the calls streamed back come in
        :attr:`Completion.tool_calls`."""
        return self._call(messages, model, _Call(on_delta, on_reasoning, effort, tools, tool_choice))

    async def _call(self, messages: list[ChatMessage], model: str | None, call: _Call) -> Completion:
        """The primary endpoint with its retries, then the fallback with its own, all within the cap on the call."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        cap = now + self._retry.max_call
        primary = self.primary
        deadline = min(now + self._retry.deadline, cap)
        try:
            if now >= deadline:
                raise errors.Timeout("deadline passed before the model answered")
            try:
                # The first attempt, and most calls' only one, awaited from here: a coroutine fewer to pass through
                # at every piece of the answer. What it raises goes to the retries, as if raised there.
                return await self._attempt(primary, messages, model or primary.model, call, deadline, cap)
            except errors.LLMError as exc:
                failed = exc  # retried outside this handler: what the retries raise is not chained to it
            return await self._with_retries(primary, messages, model, call, cap, deadline, failed)
        except errors.LLMError as exc:
            if self.fallback is None or not exc.fallback_worthy or loop.time() >= cap:
                raise
            log.warning(
                "model endpoint %s failed after retries (%s); using fallback endpoint %s",
                primary.name,
                type(exc).__name__,
                self.fallback.name,
            )
            return await self._with_retries(self.fallback, messages, None, call, cap)

    async def _with_retries(
        self,
        endpoint: Endpoint,
        messages: list[ChatMessage],
        model: str | None,
        call: _Call,
        cap: float,
        deadline: float | None = None,
        failed: errors.LLMError | None = None,
    ) -> Completion:
        """Attempts on ``endpoint`` until one answers or the errors say stop; ``failed`` is the first attempt's
        error when that attempt was made by the caller (within ``deadline``)."""
        policy = self._retry
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = min(loop.time() + policy.deadline, cap)
        reloaded_key = False
        attempt = 0
        while True:
            if failed is None and loop.time() >= deadline:
                raise errors.Timeout("deadline passed before the model answered")
            try:
                if failed is not None:
                    first, failed = failed, None
                    raise first
                return await self._attempt(endpoint, messages, model or endpoint.model, call, deadline, cap)
            except errors.BadRequest as exc:
                # A refused parameter is learned, and the call made again at once without it; each parameter once.
                if not self._learn(endpoint, model or endpoint.model, exc):
                    raise
                continue
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

    def _learn(self, endpoint: Endpoint, model: str, exc: errors.BadRequest) -> bool:
        """Whether ``exc`` is a refusal of a parameter not refused before, now remembered: then call again."""
        if exc.code not in _REFUSALS:
            return False
        match = _QUOTED_PARAM.search(str(exc))
        param = exc.param if exc.param in _INSTEAD else match.group(1) if match else None
        refused = self._refused.setdefault((endpoint.base_url, model), {})
        if param is None or param in refused:
            return False
        instead = _INSTEAD[param]
        if instead is not None and instead in refused:
            return False  # both names refused: nothing left to try
        refused[param] = instead
        log.warning(
            "model %s at %s refuses %s (%s); %s from now on",
            model,
            endpoint.name,
            param,
            exc.code,
            f"sending {instead} instead" if instead else "leaving it out",
        )
        return True

    def _body(self, endpoint: Endpoint, messages: list[ChatMessage], model: str, call: _Call) -> dict[str, Any]:
        params = self._params
        wanted: dict[str, Any] = {params.max_tokens_param: params.max_output_tokens}
        if params.temperature is not None:
            wanted["temperature"] = params.temperature
        effort = call.effort or params.reasoning_effort
        if effort is not None:
            wanted["reasoning_effort"] = effort
        body: dict[str, Any] = {"model": model, "messages": messages}
        if call.tools:
            body["tools"] = call.tools
            if call.tool_choice is not None:
                body["tool_choice"] = call.tool_choice
        refused = self._refused.get((endpoint.base_url, model))
        if refused is None:
            return body | wanted
        for name, value in wanted.items():
            target = refused.get(name, name)
            if target is not None:
                body[target] = value
        return body

    async def _attempt(
        self,
        endpoint: Endpoint,
        messages: list[ChatMessage],
        model: str,
        call: _Call,
        deadline: float,
        cap: float,
    ) -> Completion:
        on_delta = call.on_delta
        body = self._body(endpoint, messages, model, call)
        if on_delta is not None:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        where = self._targets.get(endpoint.base_url)
        if where is None:
            where = self._targets[endpoint.base_url] = target(endpoint.base_url)
        headers = {"Accept": "text/event-stream" if on_delta else "application/json"}
        key = endpoint.keys.get()
        if where.basic is not None:
            # A user:password in the base URL (a proxy in front of the model) is sent as basic authorization in
            # place of the key's bearer header, as httpx did.
            headers["Authorization"] = where.basic
        elif key:
            headers["Authorization"] = f"Bearer {key}"
        headers["Content-Type"] = "application/json"
        if where.proxy_authorization is not None:
            headers["Proxy-Authorization"] = where.proxy_authorization
        # The prompt (the history: several KB) is serialized for every call: orjson does it in a third of the time
        # of json.dumps, to the same compact UTF-8. What it refuses (a lone surrogate) goes through the encoder
        # httpx used, which fails the same way it always did.
        try:
            content = orjson.dumps(body)
        except orjson.JSONEncodeError:
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        result = StreamResult()
        loop = asyncio.get_running_loop()
        # The read timeout counts bytes, and a comment line is bytes: between events it is applied again, to events
        # only, so a stream that sends nothing but ": keep-alive" stalls out like a silent one.
        stall = self._http.read_timeout
        watch = _Watch(loop, result, deadline, cap, stall)
        try:
            try:
                # Awaited rather than entered: ``async with`` adds a coroutine around the request and three to leave
                # it (aiohttp's own and the response's); release() in the finally below is what leaving does.
                response = await self._http.session.request(
                    "POST",
                    where.url,
                    data=content,
                    headers=headers,
                    allow_redirects=False,
                    proxy=where.proxy,
                    proxy_headers=where.proxy_headers,
                )
                try:
                    if response.status >= 400:
                        raise error_from_response(
                            response.status,
                            await response.read(),
                            response.headers,
                            response.charset,
                            where.written,
                            model,
                            key,
                        )
                    content_type = response.headers.get("content-type", "")
                    if on_delta is not None and content_type.startswith("text/event-stream"):
                        result.seen = loop.time()
                        _own_stall_limit(response)
                        await consume_sse(response.content, result, on_delta, loop.time, call.on_reasoning)
                        # The answer is whole; drain() has its own short limit, and must not turn into a timeout.
                        watch.disarm()
                        if not response.content.is_eof():
                            await drain(response.content)
                    else:
                        read_plain(response.status, await response.read(), result)
                        if call.on_reasoning is not None and result.reasoning:
                            await call.on_reasoning(result.reasoning)
                        if on_delta is not None and result.text:
                            await on_delta(result.text)
                finally:
                    # The connection back to the pool, or closed if the body was not read to its end.
                    response.release()
            except asyncio.CancelledError:
                if watch.close():
                    raise TimeoutError from None  # the watch's own cancellation: a limit ran out
                raise
            finally:
                watch.close()
        except errors.LLMError as exc:
            if result.text and on_delta is not None:
                raise errors.StreamInterrupted(str(exc), partial=result.text, cause=exc) from None
            raise
        except TimeoutError as exc:
            # Ours (the deadline, the cap, the stall limit) or aiohttp's (connect, read): a timeout either way.
            limit = _which_limit(exc, loop.time(), cap, stall, endpoint)
            raise _interrupted_or(result, errors.Timeout(limit)) from None
        except aiohttp.ClientPayloadError:
            # The body broke off (the connection dropped inside a chunked answer).
            raise _interrupted_or(
                result, errors.ConnectionFailed(f"ReadError: connection to {endpoint.name} broke")
            ) from None
        except aiohttp.ClientError as exc:
            # Refused, reset, an unknown host, a TLS failure, a server that hung up before it answered.
            raise _interrupted_or(
                result,
                errors.ConnectionFailed(f"{type(exc).__name__}: cannot reach {endpoint.name}: {_told(exc)}"),
            ) from None
        if on_delta is not None and result.finish_reason is None and not result.done:
            raise _interrupted_or(result, errors.ConnectionFailed("the stream ended before the answer was complete"))
        return Completion(
            result.text,
            result.usage,
            result.model or model,
            result.finish_reason,
            endpoint.name,
            result.reasoning,
            result.tool_calls(),
        )


@dataclass(slots=True)
class _Call:
    """What one call asks for besides the prompt: where its answer and thinking go, and its reasoning effort."""

    on_delta: OnDelta | None
    on_reasoning: OnDelta | None
    effort: str | None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | None = None


class _Watch:
    """The time limits of one attempt on one loop timer: the deadline for the answer to start, then the cap on the
    whole call, and the stall limit (no event for ``stall`` seconds, once the stream has begun).

    A stream's events only note the time they came (``StreamResult.seen``, a float): the timer looks at it when it
    fires and sets itself again for the limit as it stands then, or cancels the task, as ``asyncio.timeout`` does
    (and :meth:`close` turns that cancellation into a ``TimeoutError``, as ``asyncio.timeout`` does). Moving a
    timer at every event cost a timer's cancelling and making (a handle, a copy of the context) per token, and an
    ``asyncio.timeout`` its own coroutines for every call."""

    __slots__ = (
        "_cancelling",
        "_cap",
        "_deadline",
        "_fired",
        "_handle",
        "_loop",
        "_result",
        "_stall",
        "_task",
        "_when",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, result: StreamResult, deadline: float, cap: float, stall: float
    ) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a model call runs in a task")
        self._loop = loop
        self._task = task
        # Cancellations asked for before this one are not ours to take back (as asyncio.timeout counts them).
        self._cancelling = task.cancelling()
        self._result = result
        self._deadline = deadline
        self._cap = cap
        self._stall = stall
        self._fired = False
        # No limit is ever earlier than this one: a stream's stall limit counts from its head, which comes later;
        # the timer finds out then which limit holds.
        self._when = min(deadline, loop.time() + stall)
        self._handle: asyncio.TimerHandle | None = loop.call_at(self._when, self._check)

    def _check(self) -> None:
        result = self._result
        # Once text flows (thinking counts: the model is at work), the deadline for the answer to start is met; the
        # cap on the call remains.
        limit = self._cap if result.text or result.reasoning else self._deadline
        if result.seen is not None:
            limit = min(limit, result.seen + self._stall)
        if limit > self._when:
            # An event came (or the answer began) since the timer was set: not yet.
            self._when = limit
            self._handle = self._loop.call_at(limit, self._check)
            return
        self._handle = None
        self._fired = True
        self._task.cancel()

    def disarm(self) -> None:
        """No limit from here on (what the timer already did stands)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> bool:
        """Stop the timer; True once if it ran out and the task's cancellation was its alone (then taken back)."""
        self.disarm()
        if not self._fired:
            return False
        self._fired = False
        return self._task.uncancel() <= self._cancelling


def _own_stall_limit(response: aiohttp.ClientResponse) -> None:
    """From here on the stream's silences are timed by :class:`_Watch` (the stall limit, event by event): aiohttp's own
    read limit on the connection is switched off for the rest of this body, as aiohttp does itself for a websocket.
    It cancelled a timer and made a new one (a handle, a libuv timer, a copy of the context) for every piece of the
    body, every token: the event loop's work and the collector's churn. The next request on the connection sets the
    limit again. A timer already set (at the response's head) still runs until the next piece arrives."""
    connection = response.connection
    if connection is not None and connection.protocol is not None:
        connection.protocol.read_timeout = None


def _which_limit(exc: TimeoutError, now: float, cap: float, stall: float, endpoint: Endpoint) -> str:
    """What ran out, for the log: the cap on the whole call, or the wait for the answer or its next event."""
    if now >= cap:
        return f"the call to {endpoint.name} reached TEAMBOT_MAX_CALL_SECONDS"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        # Named as httpx named them, for the log lines people already search for.
        kind = "ReadTimeout" if isinstance(exc, aiohttp.SocketTimeoutError) else "ConnectTimeout"
        return f"{kind} talking to {endpoint.name}"
    return f"{endpoint.name} sent no answer, or no event for {stall:g} s (comment lines do not count)"


def _told(exc: aiohttp.ClientError) -> str:
    """What aiohttp says went wrong, without the URL that some of its errors name: a query there may carry a key
    (see ``shown_url``), and the endpoint is named beside it anyway."""
    if isinstance(exc, aiohttp.ClientResponseError):
        # An answer whose head could not be read, a proxy that refused: aiohttp's text, less its "url=...".
        return redact(f"{exc.status}, message={exc.message!r}")
    if isinstance(exc, aiohttp.InvalidURL):
        return f"not a valid URL ({exc.description})" if exc.description else "not a valid URL"
    return redact(str(exc))


def _interrupted_or(result: StreamResult, exc: errors.LLMError) -> errors.LLMError:
    if result.text:
        return errors.StreamInterrupted(str(exc), partial=result.text, cause=exc)
    return exc
