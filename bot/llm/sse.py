"""Reading a completion off the wire: server-sent events chunk by chunk, or one plain JSON body."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bot import errors
from bot.llm.errors import error_from_body
from bot.messages import Usage

OnDelta = Callable[[str], Awaitable[None]]


@dataclass(slots=True)
class StreamResult:
    text: str = ""
    usage: Usage | None = None
    model: str | None = None
    finish_reason: str | None = None
    done: bool = False


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


async def drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows ``[DONE]`` to the end of the body, so the connection goes back to the pool instead of
    being closed; a server that keeps the stream open after ``[DONE]`` gets a second, then is left alone."""
    try:
        async with asyncio.timeout(1.0):
            async for _ in chunks:
                pass
    except (TimeoutError, httpx.HTTPError):
        pass  # the answer is already whole; only the connection's reuse is lost


async def consume_sse(
    chunks: AsyncIterator[bytes],
    result: StreamResult,
    on_delta: OnDelta,
    progress: Callable[[], None],
) -> None:
    """Read events into ``result`` up to ``[DONE]``; ``progress`` is called after each event, never for a comment
    line, so the caller's time limits see a server that only keeps the connection busy as a stalled one."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for data in decoder.feed(chunk):
            if await take_event(data, result, on_delta):
                return
            progress()
    for data in decoder.close():
        if await take_event(data, result, on_delta):
            return


async def take_event(data: str, result: StreamResult, on_delta: OnDelta) -> bool:
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
        raise error_from_body(None, chunk, model=result.model or "", retry_after=None)
    result.model = chunk.get("model") or result.model
    if isinstance(chunk.get("usage"), dict):
        result.usage = usage_from(chunk["usage"])
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        piece = delta.get("content")
        if isinstance(piece, str) and piece:
            result.text += piece
            await on_delta(piece)
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]
    return False


def read_plain(response: httpx.Response, result: StreamResult) -> None:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise errors.MalformedResponse("the response body was not JSON") from None
    if not isinstance(body, dict):
        raise errors.MalformedResponse("the response body was not a JSON object")
    if "error" in body:
        raise error_from_body(response.status_code, body, model=str(body.get("model", "")), retry_after=None)
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
        result.usage = usage_from(body["usage"])


def usage_from(raw: dict[str, Any]) -> Usage | None:
    try:
        prompt, completion = int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return None
    # Both are parts of the totals above. A server that leaves them out (llama.cpp, older vLLM) says nothing about
    # them: None, not 0, so a report never claims "no cache hits" for a server that cannot tell.
    cached = _detail(raw, "prompt_tokens_details", "cached_tokens", prompt)
    reasoning = _detail(raw, "completion_tokens_details", "reasoning_tokens", completion)
    return Usage(prompt, completion, cached_tokens=cached, reasoning_tokens=reasoning)


def _detail(raw: dict[str, Any], group: str, name: str, total: int) -> int | None:
    details = raw.get(group)
    value = details.get(name) if isinstance(details, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None  # absent, null or garbled: unknown
    # Never more than the total it is part of: a cached count above the prompt would price the prompt below zero.
    return min(int(value), total)
