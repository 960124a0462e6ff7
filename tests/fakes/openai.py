"""A loopback OpenAI-compatible chat completions server that can fail on demand.

Started in the test's own event loop on 127.0.0.1, port 0. ``POST /v1/chat/completions`` answers
``echo: <last user message>`` (or what ``reply`` returns), plain or as SSE, and records every request;
``GET /v1/models`` lists one model.

Faults are driven by the input, so a subprocess test can trigger them by typing: a token in the content of the
*last user message* applies to that request. ``[[FAULT]]`` applies every time; ``[[FAULTxN]]`` only to the first
N requests with that same last message, after which the request succeeds (so a client's retry can). Several tokens
may share one message (``[[slow:0.2]] [[cut]]``); each keeps its own count. Unknown tokens are plain text.

    [[429]]  [[429:ra=S]]       429 rate_limit_exceeded, ``Retry-After: S`` (default 1; S may be fractional)
    [[quota]]                   429 insufficient_quota, no Retry-After (waiting will not help)
    [[500]] [[502]] [[503]] [[504]]   that status with OpenAI's server_error body
    [[401]] [[403]] [[404]]     invalid_api_key / unsupported_country_region_territory / model_not_found
    [[context]]                 400 context_length_exceeded (param "messages")
    [[llamactx]]                400 in llama.cpp's shape: numeric code, type exceed_context_size_error
    [[slow:S]]                  wait S seconds before the first byte, then answer normally
    [[stall:S]]                 stream: role chunk and first text chunk, S seconds of silence, then the rest
    [[keepalive:S]]             stream: role chunk and first text chunk, then only a ``: keep-alive`` comment
                                every S seconds (default 0.05) until the client hangs up: busy, but no answer
    [[cut]]                     stream: role chunk and about half the text, then the connection drops (no finish,
                                no usage, no [DONE]); plain: a truncated JSON body, then the connection drops
    [[midstream]]               stream: some text, then an error event with HTTP 200, then the stream ends
    [[malformed]]               plain: 200 with body ``{not json``; stream: a ``data: {not json`` event after the
                                role chunk
    [[empty]]                   a successful completion whose content is "" (stream: no text chunks)
    [[long:N]]                  instead of the echo, a reply of exactly N characters (numbered paragraphs of words)
    [[thinking]]                the model thinks first (:data:`THOUGHT`), sent apart from the answer in
                                ``reasoning_content`` (vLLM, llama.cpp, DeepSeek): stream deltas, or in the message
    [[reasoning]]               the same in OpenRouter's ``reasoning`` field
    [[think]]                   the same as a ``<think>…</think>`` block leading the content (Ollama); streamed in
                                pieces of five characters, so the tags are split across chunks
    [[reasoning_tokens:N]]      with ``usage_details``: the answer "thought" N tokens more, reported as
                                ``completion_tokens_details.reasoning_tokens`` and counted in ``completion_tokens``

Like a real server, a path it does not serve (a base URL without ``/v1``) answers 404 with Ollama's plain-text
``404 page not found``, not an OpenAI error body (``not_found`` records the paths asked); with ``models=`` given,
any other model is refused with OpenAI's 404 ``model_not_found``.

Images: a model whose name starts with ``text-only-`` refuses any ``image_url`` part with HTTP 400, as OpenAI
answers for a model without vision (``Invalid content type. image_url is only supported by certain models.``).

Parameters are refused by model name, as OpenAI refuses them (HTTP 400, ``param`` naming the parameter):

    o1…, o3…, o4…, gpt-5…       ``max_tokens`` (unsupported_parameter: use max_completion_tokens), a ``temperature``
                                other than 1 (unsupported_value); o-series also ``reasoning_effort: minimal``
                                (unsupported_value)
    gpt-4…, gpt-3.5…            ``reasoning_effort`` (unsupported_parameter)
    legacy-…                    ``max_completion_tokens`` (unsupported_parameter): a server that knows only the old name

Usage details and a prompt cache like OpenAI's (``FakeOpenAI(usage_details=True)``; without it usage has only the
three totals, as llama.cpp sends): ``prompt_tokens_details.cached_tokens`` counts the prompt's leading tokens that
an earlier request of the last ``cache_ttl`` seconds (5 minutes) shared, in OpenAI's steps: nothing below 1,024
tokens, then 1,024 plus whole blocks of 128. Tokens are the fake's usual four characters each, counted over the
messages' contents in order (roles must match too), the same measure as ``prompt_tokens``: a prefix is the whole
messages two prompts share plus the common start of the first message where they differ.

Tools: a request that offers ``tools`` (and no ``tool_choice: "none"``) gets tool calls instead of text when the last
user message holds these tokens; once the last message is a tool result, the model answers
``tool results: <each result> | <...>`` (so a test sees the real result reach the model), unless it never stops:

    [[call:NAME]]               call NAME with ``{}``; several tokens make several calls in one answer (parallel)
    [[call:NAME:{"a": 1}]]      call NAME with those arguments (the JSON may hold no ``]]``)
    [[badargs:NAME]]            call NAME with arguments that are not valid JSON
    [[callforever:NAME]]        call NAME again on every request that offers tools: a model that never stops
    [[preface]]                 with the calls, the model first writes :data:`PREFACE` (text, then the calls)
Streamed, each call comes as OpenAI sends it: the id and name in a first delta, then the arguments in pieces of
three characters (split inside strings and keys), keyed by ``index``; ``finish_reason`` is ``tool_calls``.

Examples: ``[[500x2]]`` fails twice then succeeds; ``[[429:ra=0.2x1]]`` is rate limited once for 0.2 s.

Run standalone for a first try of the bot without a key: ``python -m tests.fakes.openai`` (from a checkout) serves
it on port 8081 and prints the ``OPENAI_BASE_URL=...`` line to start ``teambot console`` with.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web

_FAULTS = (
    "429",
    "quota",
    "500",
    "502",
    "503",
    "504",
    "401",
    "403",
    "404",
    "context",
    "llamactx",
    "slow",
    "stall",
    "keepalive",
    "cut",
    "midstream",
    "malformed",
    "empty",
    "long",
    "thinking",
    "reasoning",
    "think",
    "reasoning_tokens",
    "preface",
)
# The name is an explicit alternation so that "x" in "[[500x2]]" can never be swallowed into the name.
_TOKEN = re.compile(
    r"\[\[(?P<name>" + "|".join(_FAULTS) + r")"
    r"(?::(?:ra=)?(?P<value>\d+(?:\.\d+)?))?"
    r"(?:x(?P<times>\d+))?\]\]"
)
_CALL = re.compile(r"\[\[(?P<kind>call|badargs|callforever):(?P<name>[A-Za-z0-9_-]+)(?::(?P<args>\{.*?\}))?\]\]")
#: What the model writes before its calls with ``[[preface]]``.
PREFACE = "Let me look that up."
#: The arguments of ``[[badargs:NAME]]``: cut off inside a string, as a model that ran out of tokens writes them.
BAD_ARGUMENTS = '{"city": "Tok'
_SERVER_ERRORS = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
    504: "Gateway timeout.",
}
_MODEL = "fake-model"
#: What the model thinks before it answers, with the ``[[thinking]]``, ``[[reasoning]]`` or ``[[think]]`` token: a
#: test asserts that this word never reaches the answer, the history or a channel where only the answer belongs.
THOUGHT_MARK = "PONDERING"
THOUGHT = f"The person wants an echo. {THOUGHT_MARK} whether to add anything: no."
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")
_OLDER_MODEL = re.compile(r"^gpt-(4|3\.5)")
#: OpenAI's prompt cache: prefixes shorter than this are not cached at all, longer ones in blocks of _CACHE_BLOCK.
CACHE_MIN_TOKENS = 1024
CACHE_BLOCK = 128
_CACHE_ENTRIES = 512


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly "application/json": json_response would add "; charset=utf-8", which is not what OpenAI sends.
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def _error(
    status: int,
    message: str,
    kind: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return _json(status, {"error": {"message": message, "type": kind, "param": param, "code": code}}, headers)


def _bad_key() -> web.Response:
    # The real message quotes a masked key; ours quotes none, so a test can assert no secret is ever echoed.
    return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")


def _context_exceeded() -> web.Response:
    return _error(
        400,
        "This model's maximum context length is 4096 tokens. However, your messages resulted in more tokens. "
        "Please reduce the length of the messages.",
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
    )


def _tokens(chars: int) -> int:
    # A deterministic stand-in for a tokenizer, so tests can predict the numbers.
    return math.ceil(chars / 4)


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else json.dumps(content) if content is not None else ""


#: A model by this prefix cannot see images: it answers 400 to a request with an image part.
TEXT_ONLY_PREFIX = "text-only-"


def image_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``image_url`` parts of a chat message (none when its content is plain text)."""
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [p for p in content if isinstance(p, dict) and p.get("type") == "image_url"]


def long_text(chars: int) -> str:
    """``chars`` characters of numbered paragraphs, the reply to ``[[long:N]]``: a test can tell where a cut fell."""
    paragraphs = (f"Paragraph {n}: " + "lorem ipsum dolor sit amet " * 8 + "\n\n" for n in itertools.count(1))
    text = ""
    while len(text) < chars:
        text += next(paragraphs)
    return text[:chars]


def _shared_chars(prompt: list[tuple[str, str]], earlier: list[tuple[str, str]]) -> int:
    """The characters of content two prompts share from their beginning."""
    shared = 0
    for (role, content), (earlier_role, earlier_content) in zip(prompt, earlier, strict=False):
        if role != earlier_role:
            break
        if content != earlier_content:
            same = next((i for i, (a, b) in enumerate(zip(content, earlier_content, strict=False)) if a != b), None)
            return shared + (min(len(content), len(earlier_content)) if same is None else same)
        shared += len(content)
    return shared


def _sse(payload: object) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


class FakeOpenAI:
    """A fake OpenAI-compatible server; ``async with FakeOpenAI() as fake`` and point a client at ``fake.base_url``.

    ``requests`` and ``headers`` record every chat completion request in order; ``calls`` counts them, failed ones
    included; ``in_flight`` and ``max_in_flight`` show how many were being answered at once. While ``hold`` is an
    Event that is not set, requests wait for it before answering: a test sees what happens while a call runs.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        chunk_delay: float = 0.0,
        first_byte_delay: float = 0.0,
        context_limit_chars: int | None = None,
        reply: Callable[[list[dict[str, Any]]], str] | None = None,
        models: frozenset[str] | None = None,
        usage_details: bool = False,
        cache_ttl: float = 300.0,
    ) -> None:
        self.api_key = api_key
        self.chunk_delay = chunk_delay
        #: The text piece after which ``[[stall:S]]`` falls silent (0: the first, sent with the stream's head).
        self.stall_at = 0
        self.first_byte_delay = first_byte_delay
        self.context_limit_chars = context_limit_chars
        self.reply = reply
        self.models = models
        self.not_found: list[str] = []
        self.usage_details = usage_details
        self.cache_ttl = cache_ttl
        #: (when, the prompt as (role, content) pairs) of recent requests, newest last: the prompt cache.
        self._prompts: list[tuple[float, list[tuple[str, str]]]] = []
        #: The usage each successful chat completion reported, in order.
        self.usages: list[dict[str, Any]] = []
        self.base_url = ""
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold: asyncio.Event | None = None
        #: With ``hold``: only the requests whose messages this accepts wait for it (None: all of them).
        self.hold_if: Callable[[list[dict[str, Any]]], bool] | None = None
        #: ``[[keepalive]]`` streams still being kept open (a client that hangs up ends its stream).
        self.keepalive_streams = 0
        self._seen: Counter[tuple[str, str]] = Counter()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        # Last: only what no route above serves.
        app.router.add_route("*", "/{path:.*}", self._no_route)
        # A short shutdown timeout: a test that leaves a [[stall]] stream open must not hold stop() for a minute.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_port = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound_port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # The parameter is named `timeout` because it is part of the fake's agreed API; ASYNC109 would rename it.
    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Return once ``n`` chat completion requests have arrived; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.calls >= n)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Return once ``predicate()`` holds, checked whenever a request arrives or a stream ends."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def _no_route(self, request: web.Request) -> web.Response:
        # What Ollama's router answers for a path it does not serve: plain text, no OpenAI error object.
        self.not_found.append(f"{request.method} {request.path}")
        return web.Response(status=404, text="404 page not found")

    async def _models(self, request: web.Request) -> web.Response:
        # Like OpenAI, listing models needs the key too: `teambot check` relies on that.
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _bad_key()
        listed = sorted(self.models) if self.models is not None else [_MODEL]
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "teambot-tests"} for name in listed]
        return _json(200, {"object": "list", "data": data})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            try:
                body = await request.json()
            except json.JSONDecodeError:
                body = None
            if isinstance(body, dict):
                self.requests.append(body)
                self.headers.append(dict(request.headers))
            async with self._changed:
                self._changed.notify_all()
            held = self.hold_if is None or (isinstance(body, dict) and self.hold_if(body.get("messages") or []))
            if self.hold is not None and held:
                await self.hold.wait()
            if self.first_byte_delay:
                await asyncio.sleep(self.first_byte_delay)
            if not isinstance(body, dict):
                return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
            return await self._answer(request, body)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _bad_key()
        messages: list[dict[str, Any]] = body.get("messages") or []
        last_user = next((_content(m) for m in reversed(messages) if m.get("role") == "user"), "")
        faults = self._faults(last_user)
        if "slow" in faults:
            await asyncio.sleep(faults["slow"])
        prompt_chars = sum(len(_content(m)) for m in messages)
        if "context" in faults or (self.context_limit_chars is not None and prompt_chars > self.context_limit_chars):
            return _context_exceeded()
        model = str(body.get("model") or _MODEL)
        if self.models is not None and model not in self.models:
            faults["404"] = 0.0
        if (failure := self._failure(faults, model) or _refused_parameter(body, model)) is not None:
            return failure
        if model.startswith(TEXT_ONLY_PREFIX) and any(image_parts(m) for m in messages):
            return _error(
                400,
                "Invalid content type. image_url is only supported by certain models.",
                "invalid_request_error",
                None,
                "messages.[1].content.[1].type",
            )
        calls = _tool_calls(body, messages, last_user, self.calls)
        if calls:
            preface = PREFACE if "preface" in faults else None
            return await self._call_tools(request, body, model, calls, _tokens(prompt_chars), preface)
        text = "" if "empty" in faults else self.reply(messages) if self.reply else f"echo: {last_user}"
        if messages and messages[-1].get("role") == "tool" and self.reply is None:
            text = "tool results: " + " | ".join(
                _content(m) for m in _since_last_user(messages) if m.get("role") == "tool"
            )
        if "long" in faults:
            text = long_text(int(faults["long"]))
        thinking = {"thinking": "reasoning_content", "reasoning": "reasoning"}
        field = next((thinking[name] for name in thinking if name in faults), None)
        prompt_tokens, completion_tokens = _tokens(prompt_chars), _tokens(len(text))
        reasoning = int(faults.get("reasoning_tokens", 0)) if self.usage_details else 0
        completion_tokens += reasoning
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if self.usage_details:
            usage["prompt_tokens_details"] = {"cached_tokens": self._cached(messages, prompt_tokens), "audio_tokens": 0}
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning, "audio_tokens": 0}
        self.usages.append(usage)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, model, text, usage if include_usage else None, faults, field)
        if "malformed" in faults:
            return web.Response(status=200, body=b"{not json", content_type="application/json")
        if "cut" in faults:
            # Promise more bytes than we send, so the client sees a truncated body rather than a short valid one.
            response = web.StreamResponse(status=200)
            response.content_type = "application/json"
            response.content_length = 1000
            await response.prepare(request)
            await response.write(b'{"id": "chatcmpl-cut", "object": "chat.completion", "choices": [{"mess')
            self._drop(request)
            return response
        return _json(
            200,
            {
                "id": f"chatcmpl-fake{self.calls}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None}
                        | ({field: THOUGHT} if field else {})
                        | ({"content": f"<think>\n{THOUGHT}\n</think>\n\n{text}"} if "think" in faults else {}),
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            },
        )

    async def _call_tools(
        self,
        request: web.Request,
        body: dict[str, Any],
        model: str,
        calls: list[dict[str, Any]],
        prompt_tokens: int,
        preface: str | None = None,
    ) -> web.StreamResponse:
        completion_tokens = _tokens(sum(len(c["function"]["arguments"]) + len(c["function"]["name"]) for c in calls))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        self.usages.append(usage)
        ident, created = f"chatcmpl-fake{self.calls}", int(time.time())
        if not body.get("stream"):
            message = {"role": "assistant", "content": preface, "tool_calls": calls, "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
            return _json(
                200,
                {"id": ident, "object": "chat.completion", "created": created, "model": model, "choices": [choice]}
                | {"usage": usage},
            )
        response = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
        response.content_type = "text/event-stream"
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse(
                {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
                | {"choices": [choice]}
            )

        await response.write(chunk({"role": "assistant", "content": None}))
        for word in re.findall(r"\s*\S+\s*", preface or ""):
            await response.write(chunk({"content": word}))
        for index, call in enumerate(calls):
            first = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            await response.write(chunk({"tool_calls": [first]}))
            arguments = call["function"]["arguments"]
            for start in range(0, len(arguments), 3):
                piece = {"index": index, "function": {"arguments": arguments[start : start + 3]}}
                await response.write(chunk({"tool_calls": [piece]}))
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
        await response.write(chunk({}, "tool_calls"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await response.write(
                _sse(
                    {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
                    | {"choices": [], "usage": usage}
                )
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _cached(self, messages: list[dict[str, Any]], prompt_tokens: int) -> int:
        """How many of this prompt's leading tokens the prompt cache holds; then the prompt joins the cache."""
        now = time.monotonic()
        prompt = [(str(m.get("role")), _content(m)) for m in messages]
        self._prompts = [(at, p) for at, p in self._prompts[-_CACHE_ENTRIES:] if now - at <= self.cache_ttl]
        shared = max((_shared_chars(prompt, earlier) for _, earlier in self._prompts), default=0)
        self._prompts.append((now, prompt))
        tokens = shared // 4  # whole tokens only: a partly shared token is not a cache hit
        if tokens < CACHE_MIN_TOKENS:
            return 0
        return min(prompt_tokens, CACHE_MIN_TOKENS + (tokens - CACHE_MIN_TOKENS) // CACHE_BLOCK * CACHE_BLOCK)

    def _faults(self, text: str) -> dict[str, float]:
        faults: dict[str, float] = {}
        for match in _TOKEN.finditer(text):
            # Counted per message text, so "[[500x2]] hi" and "[[500x2]] bye" each fail twice on their own.
            seen = (text, match.group(0))
            self._seen[seen] += 1
            times = match.group("times")
            if times is not None and self._seen[seen] > int(times):
                continue
            value = match.group("value")
            faults[match.group("name")] = float(value) if value else 0.0
        return faults

    def _failure(self, faults: dict[str, float], model: str) -> web.Response | None:
        if "429" in faults:
            retry_after = faults["429"] or 1.0
            return _error(
                429,
                f"Rate limit reached for {model} on requests per min (RPM): Limit 3, Used 3, Requested 1. "
                f"Please try again in {retry_after:g}s.",
                "requests",
                "rate_limit_exceeded",
                headers={"Retry-After": f"{retry_after:g}"},
            )
        if "quota" in faults:
            return _error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            )
        for status, message in _SERVER_ERRORS.items():
            if str(status) in faults:
                return _error(status, message, "server_error", None)
        if "401" in faults:
            return _bad_key()
        if "403" in faults:
            return _error(
                403,
                "Country, region, or territory not supported",
                "request_forbidden",
                "unsupported_country_region_territory",
            )
        if "404" in faults:
            return _error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        if "llamactx" in faults:
            body = {
                "error": {
                    "code": 400,
                    "message": "the request exceeds the available context size, try increasing it",
                    "type": "exceed_context_size_error",
                }
            }
            return _json(400, body)
        return None

    async def _stream(
        self,
        request: web.Request,
        model: str,
        text: str,
        usage: dict[str, Any] | None,
        faults: dict[str, float],
        thinking_field: str | None = None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
        response.content_type = "text/event-stream"
        await response.prepare(request)
        created = int(time.time())
        ident = f"chatcmpl-fake{self.calls}"

        def chunk(delta: dict[str, str | None], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                }
            )

        await response.write(chunk({"role": "assistant", "content": ""}))
        if "malformed" in faults:
            await response.write(b"data: {not json\n\n")
        if thinking_field is not None:
            for word in re.findall(r"\s*\S+\s*", THOUGHT):
                # DeepSeek sends "content": null beside the thinking; OpenRouter leaves content out.
                await response.write(chunk({thinking_field: word, "content": None}))
        # Words with their trailing whitespace: the pieces concatenate back to exactly the text.
        pieces = re.findall(r"\s*\S+\s*", text) or ([text] if text else [])
        if "think" in faults:
            whole = f"<think>\n{THOUGHT}\n</think>\n\n{text}"
            pieces = [whole[i : i + 5] for i in range(0, len(whole), 5)]
        half = len(pieces) // 2
        for index, piece in enumerate(pieces):
            if index == half:
                await response.write(b": keep-alive\n\n")
                if "cut" in faults:
                    self._drop(request)
                    return response
                if "midstream" in faults and index > 0:
                    return await self._midstream_error(response)
            await response.write(chunk({"content": piece}))
            if "keepalive" in faults:
                return await self._keep_alive_for_ever(request, response, faults["keepalive"] or 0.05)
            if "stall" in faults and index == self.stall_at:
                await asyncio.sleep(faults["stall"])
            elif self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        if not pieces:
            await response.write(b": keep-alive\n\n")
        if "cut" in faults:
            self._drop(request)
            return response
        if "midstream" in faults:
            # Too few pieces to split: the error still arrives after whatever text there was.
            return await self._midstream_error(response)
        await response.write(chunk({}, "stop"))
        if usage is not None:
            await response.write(
                _sse(
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _keep_alive_for_ever(
        self, request: web.Request, response: web.StreamResponse, interval: float
    ) -> web.StreamResponse:
        self.keepalive_streams += 1
        try:
            while request.transport is not None and not request.transport.is_closing():
                await response.write(b": keep-alive\n\n")
                await asyncio.sleep(interval)
        except ConnectionResetError:
            pass  # the client hung up, which is what it should do
        finally:
            self.keepalive_streams -= 1
            async with self._changed:
                self._changed.notify_all()
        return response

    @staticmethod
    async def _midstream_error(response: web.StreamResponse) -> web.StreamResponse:
        error = {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "code": None,
            }
        }
        await response.write(_sse(error))
        await response.write_eof()
        return response

    @staticmethod
    def _drop(request: web.Request) -> None:
        # close(), not abort(): what was already written is flushed, then the socket goes away without the
        # terminating chunk, which is what a client sees when a proxy or the upstream dies mid-answer.
        if request.transport is not None:
            request.transport.close()


def _since_last_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    return messages[last + 1 :]


def _tool_calls(body: dict[str, Any], messages: list[dict[str, Any]], last_user: str, n: int) -> list[dict[str, Any]]:
    """The calls the ``[[call:…]]`` tokens of the last user message ask for; none once the tools have answered
    (unless the model never stops), nor when the request offers no tools or forbids calling them."""
    if not body.get("tools") or body.get("tool_choice") == "none":
        return []
    found = list(_CALL.finditer(last_user))
    answered = bool(messages) and messages[-1].get("role") == "tool"
    if answered and not any(m.group("kind") == "callforever" for m in found):
        return []
    calls = []
    for index, match in enumerate(found):
        arguments = BAD_ARGUMENTS if match.group("kind") == "badargs" else match.group("args") or "{}"
        function = {"name": match.group("name"), "arguments": arguments}
        calls.append({"id": f"call_{n}_{index}", "type": "function", "function": function})
    return calls


def _refused_parameter(body: dict[str, Any], model: str) -> web.Response | None:
    """OpenAI's 400 for a parameter the model does not take, as its reasoning and older models answer."""
    if _REASONING_MODEL.match(model):
        if "max_tokens" in body:
            return _error(
                400,
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "invalid_request_error",
                "unsupported_parameter",
                "max_tokens",
            )
        if "temperature" in body and body["temperature"] != 1:
            return _error(
                400,
                f"Unsupported value: 'temperature' does not support {body['temperature']} with this model. "
                "Only the default (1) value is supported.",
                "invalid_request_error",
                "unsupported_value",
                "temperature",
            )
        if model.startswith("o") and body.get("reasoning_effort") == "minimal":
            return _error(
                400,
                "Unsupported value: 'reasoning_effort' does not support 'minimal' with this model. "
                "Supported values are: 'low', 'medium', and 'high'.",
                "invalid_request_error",
                "unsupported_value",
                "reasoning_effort",
            )
    if _OLDER_MODEL.match(model) and "reasoning_effort" in body:
        return _error(
            400,
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
            "invalid_request_error",
            "unsupported_parameter",
            "reasoning_effort",
        )
    if model.startswith("legacy-") and "max_completion_tokens" in body:
        return _error(
            400,
            "Unrecognized request argument supplied: max_completion_tokens",
            "invalid_request_error",
            "unsupported_parameter",
            "max_completion_tokens",
        )
    return None


def main() -> None:
    """``python -m tests.fakes.openai``: an offline echo model for a first try of the bot, no key needed."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.openai",
        description="Serve the fake OpenAI-compatible API on loopback: it answers 'echo: <your message>'.",
    )
    parser.add_argument("--port", type=int, default=8081, help="port on 127.0.0.1 (default 8081; 0: any free port)")
    parser.add_argument("--api-key", default=None, help="require this bearer key (default: accept any)")
    parser.add_argument("--chunk-delay", type=float, default=0.02, help="seconds between streamed chunks")
    args = parser.parse_args()

    async def serve() -> None:
        fake = FakeOpenAI(api_key=args.api_key, chunk_delay=args.chunk_delay)
        try:
            await fake.start(port=args.port)
        except OSError as exc:
            raise SystemExit(
                f"python -m tests.fakes.openai: cannot listen on port {args.port}: "
                f"{os.strerror(exc.errno) if exc.errno else exc}"
            ) from None
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        print(f"fake OpenAI-compatible API (an echo model, no key needed) at {fake.base_url}", flush=True)
        print("In another terminal, from this checkout:", flush=True)
        print(f"  OPENAI_BASE_URL={fake.base_url} .venv/bin/teambot console", flush=True)
        print("Ctrl-C stops it.", flush=True)
        try:
            await stop.wait()
        finally:
            await fake.stop()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
