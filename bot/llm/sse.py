"""Reading a completion off the wire: server-sent events chunk by chunk, or one plain JSON body."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bot import errors
from bot.llm.errors import error_from_body
from bot.messages import Usage

OnDelta = Callable[[str], Awaitable[None]]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
#: The fields in which servers send a model's thinking beside its answer: ``reasoning_content`` (vLLM, llama.cpp,
#: DeepSeek), ``reasoning`` (OpenRouter, newer vLLM and Ollama).
REASONING_FIELDS = ("reasoning_content", "reasoning")


class ThinkSplitter:
    """Separates a ``<think>…</think>`` block at the start of the answer (Ollama-served reasoning models put their
    thinking in the content) from the answer itself, fed piece by piece as it streams.

    A tag may arrive split over several pieces (``<th`` + ``ink>``): text that could still be the start of a tag
    is held back until the next piece decides. Only a block at the very start counts, as the models emit it: a
    ``<think>`` later in an answer is text the model meant to show (an answer about these tags, say).
    """

    __slots__ = ("_held", "_mode")

    def __init__(self) -> None:
        self._mode = (
            "lead"  # before the first visible character; then "think", "after" (the block just ended), "answer"
        )
        self._held = ""

    @property
    def undecided(self) -> bool:
        """Whether the text may still hold thinking: False once the answer itself has begun."""
        return self._mode != "answer"

    def feed(self, piece: str) -> tuple[str, str]:
        """The (thinking, answer) text that ``piece`` settles."""
        if self._mode == "answer":
            return "", piece  # the plain path, every token of every answer: one comparison
        text = self._held + piece
        self._held = ""
        thinking = ""
        if self._mode == "lead":
            start = text.lstrip()
            if len(start) < len(THINK_OPEN) and THINK_OPEN.startswith(start):
                self._held = text  # nothing yet, or what may become "<think>"
                return "", ""
            if not start.startswith(THINK_OPEN):
                self._mode = "answer"
                return "", text
            self._mode, text = "think", start[len(THINK_OPEN) :]
        if self._mode == "think":
            end = text.find(THINK_CLOSE)
            if end < 0:
                keep = _partial_suffix(text, THINK_CLOSE)
                self._held = text[len(text) - keep :] if keep else ""
                return text[: len(text) - keep], ""
            thinking, text = text[:end], text[end + len(THINK_CLOSE) :]
            self._mode = "after"
        # "after": the blank lines that separate the block from the answer are not part of the answer.
        answer = text.lstrip()
        if answer:
            self._mode = "answer"
        return thinking, answer

    def close(self) -> tuple[str, str]:
        """What is still held back when the text ends: an unfinished tag is text, an unclosed block thinking."""
        held, self._held = self._held, ""
        if self._mode == "think":
            return held, ""
        return "", held if held.strip() else ""


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that is a beginning of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function the model asked to call: its call id, the tool's name, and the arguments as the JSON text the
    model wrote (parsed by the tool loop, which answers malformed JSON with an error the model can read)."""

    id: str
    name: str
    arguments: str

    def wire(self) -> dict[str, Any]:
        """The call as an assistant message's ``tool_calls`` entry."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _tool_calls_from(raw: object) -> tuple[ToolCall, ...]:
    """The ``tool_calls`` of a whole (non-streamed) message; entries without a function name are dropped."""
    calls = []
    for n, entry in enumerate(raw if isinstance(raw, list) else ()):
        function = entry.get("function") if isinstance(entry, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            continue
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            # Some servers send the arguments as an object instead of its JSON text.
            arguments = json.dumps(arguments) if arguments is not None else "{}"
        calls.append(ToolCall(str(entry.get("id") or f"call_{n}"), function["name"], arguments))
    return tuple(calls)


@dataclass(slots=True)
class StreamResult:
    text: str = ""
    #: The model's thinking, kept apart: never part of ``text``, so never shown as the answer or stored with it.
    reasoning: str = ""
    usage: Usage | None = None
    model: str | None = None
    finish_reason: str | None = None
    done: bool = False
    splitter: ThinkSplitter = field(default_factory=ThinkSplitter)
    #: Streamed tool calls being put together, by their ``index``: [id, name, argument fragments].
    tool_parts: dict[int, list[Any]] | None = None
    #: The tool calls of a whole (non-streamed) message.
    whole_tool_calls: tuple[ToolCall, ...] = ()
    #: When the stream's head or its last event came (the event loop's clock), for the stall limit; None before.
    seen: float | None = None

    def add_tool_deltas(self, deltas: object) -> None:
        """Join streamed ``delta.tool_calls`` fragments by their ``index``: the id and the name come once, the
        arguments in pieces that may split anywhere, even inside a JSON string."""
        if not isinstance(deltas, list):
            return
        parts = self.tool_parts if self.tool_parts is not None else {}
        self.tool_parts = parts
        for delta in deltas:
            if not isinstance(delta, dict):
                continue
            index = delta.get("index")
            index = index if isinstance(index, int) else len(parts)
            part = parts.setdefault(index, ["", "", []])
            if isinstance(delta.get("id"), str) and delta["id"]:
                part[0] = delta["id"]
            function = delta.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str) and function["name"] and not part[1]:
                    part[1] = function["name"]
                if isinstance(function.get("arguments"), str):
                    part[2].append(function["arguments"])

    def tool_calls(self) -> tuple[ToolCall, ...]:
        """Every tool call the answer made, in the order of their index."""
        if self.tool_parts is None:
            return self.whole_tool_calls
        return tuple(
            ToolCall(ident or f"call_{index}", name, "".join(pieces))
            for index, (ident, name, pieces) in sorted(self.tool_parts.items())
            if name
        )

    async def add(self, content: str, thinking: str, on_delta: OnDelta | None, on_reasoning: OnDelta | None) -> None:
        """Take one piece of the answer's content and of the thinking a server sent apart from it."""
        more_thinking, answer = self.splitter.feed(content) if content else ("", "")
        await self._take(thinking + more_thinking, answer, on_delta, on_reasoning)

    async def close(self, on_delta: OnDelta | None, on_reasoning: OnDelta | None) -> None:
        thinking, answer = self.splitter.close()
        if thinking or answer:  # mostly nothing is held back: no coroutine for it
            await self._take(thinking, answer, on_delta, on_reasoning)

    async def _take(self, thinking: str, answer: str, on_delta: OnDelta | None, on_reasoning: OnDelta | None) -> None:
        if thinking:
            self.reasoning += thinking
            if on_reasoning is not None:
                await on_reasoning(thinking)
        if answer:
            self.text += answer
            if on_delta is not None:
                await on_delta(answer)


class SSEDecoder:
    """Splits a byte stream into the ``data`` of its server-sent events; comment lines (``: keep-alive``) are
    skipped. Fed raw chunks, line by line: any line ending (CRLF, CR, LF), several ``data`` lines to an event.
    :func:`consume_sse` uses it only for what its faster split cannot take (a CR in the stream, an event of
    several lines)."""

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


async def drain(content: aiohttp.StreamReader) -> None:
    """Read what follows ``[DONE]`` to the end of the body, so the connection goes back to the pool instead of
    being closed; a server that keeps the stream open after ``[DONE]`` gets a second, then is left alone."""
    if content.is_eof():
        return  # the body's end came with [DONE] (the caller looks first, the usual case); no timer to set
    try:
        async with asyncio.timeout(1.0):
            while await content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError):
        pass  # the answer is already whole; only the connection's reuse is lost


_DATA = b"data: "
_DONE = b"[DONE]"
_DONE_EVENT = _DATA + _DONE


async def consume_sse(
    content: aiohttp.StreamReader,
    result: StreamResult,
    on_delta: OnDelta,
    clock: Callable[[], float],
    on_reasoning: OnDelta | None = None,
) -> None:
    """Read events into ``result`` up to ``[DONE]``; after each event ``result.seen`` is set to ``clock()``, never
    for a comment line, so the caller's time limits see a server that only keeps the connection busy as a stalled
    one.

    Every token of every answer is an event, so the usual shape is taken on a short path: the bytes split on the
    blank lines between events, an event of one ``data:`` line handed to orjson as bytes, as they came. Anything
    else (a CR in the stream, an event of several lines or fields, bytes that are not UTF-8 JSON) goes through
    :class:`SSEDecoder` and :func:`take_event`, as every event did before, with the same result.
    """
    read = content.readany
    rest = b""
    decoder: SSEDecoder | None = None
    # Whether the answer is known not to start with a <think> block (then never again in doubt): read from the
    # splitter only until then, not once per token.
    decided = False
    # ``find`` and not ``in``: for bytes, ``in`` first tries its operand as an integer and builds (and drops) a
    # TypeError's message before it searches, about 2,000 instructions each time (callgrind), twice per token.
    while chunk := await read():
        if decoder is None and chunk.find(b"\r") < 0:
            blocks = (rest + chunk).split(b"\n\n")
            rest = blocks.pop()
            for block in blocks:
                if block.startswith(_DATA) and block.find(b"\n") < 0:
                    if block == _DONE_EVENT:
                        # Every stream's end: compared, not handed to orjson, whose refusal (an exception built
                        # and caught) cost more than all the comparisons of a stream's events.
                        result.done = True
                        await result.close(on_delta, on_reasoning)
                        return
                    try:
                        # orjson: every streamed token of every answer is one event to parse (BENCHMARKS.md).
                        event = orjson.loads(block[6:])
                    except orjson.JSONDecodeError:
                        # [DONE], or bytes that are not JSON as they stand (not UTF-8, a lone surrogate escaped).
                        if await take_data(block[6:], result, on_delta, on_reasoning):
                            await result.close(on_delta, on_reasoning)
                            return
                        result.seen = clock()
                        continue
                    piece = _token(event, result) if decided else None
                    if piece is not None:
                        # A token of an answer under way, the event of every token: read without a coroutine
                        # of its own (two fewer per token, BENCHMARKS.md); anything else as below, the same.
                        result.text += piece
                        await on_delta(piece)
                    else:
                        if await _take_chunk(event, result, on_delta, on_reasoning):
                            await result.close(on_delta, on_reasoning)
                            return
                        decided = not result.splitter.undecided
                    result.seen = clock()
                    continue
                # A comment, an empty block (more blank lines than one), several lines: line by line.
                for data in SSEDecoder().feed(block + b"\n\n"):
                    if await take_event(data, result, on_delta, on_reasoning):
                        await result.close(on_delta, on_reasoning)
                        return
                    result.seen = clock()
            continue
        if decoder is None:
            # A CR ends lines too (CRLF, or CR alone): from here on, the whole stream line by line.
            decoder, chunk, rest = SSEDecoder(), rest + chunk, b""
        for data in decoder.feed(chunk):
            if await take_event(data, result, on_delta, on_reasoning):
                await result.close(on_delta, on_reasoning)
                return
            result.seen = clock()
    if decoder is None:
        decoder = SSEDecoder()
        tail = decoder.feed(rest)
    else:
        tail = []
    for data in tail + decoder.close():
        if await take_event(data, result, on_delta, on_reasoning):
            break
    # Text held back as a possible tag is the answer's after all (or, in an unclosed block, thinking).
    await result.close(on_delta, on_reasoning)


def _token(chunk: Any, result: StreamResult) -> str | None:
    """The text of the commonest event, with its model noted in ``result`` as :func:`_take_chunk` notes it: one
    choice whose delta holds text and no thinking, nothing that ends or fails the answer. None, with nothing noted,
    for any other event: :func:`_take_chunk` reads it. Only once the answer is known not to start with thinking."""
    if not isinstance(chunk, dict) or "error" in chunk or isinstance(chunk.get("usage"), dict):
        return None
    choices = chunk.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        return None
    choice = choices[0]
    if not isinstance(choice, dict) or choice.get("finish_reason"):
        return None
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return None
    piece = delta.get("content")
    if not isinstance(piece, str) or not piece:
        return None
    if ("reasoning_content" in delta or "reasoning" in delta) and _thinking(delta):
        return None
    result.model = chunk.get("model") or result.model
    return piece


async def take_data(data: bytes, result: StreamResult, on_delta: OnDelta, on_reasoning: OnDelta | None) -> bool:
    """:func:`take_event` for an event's data as it came off the wire: the same outcome, without decoding the bytes
    first where they are JSON as they stand."""
    if data == _DONE:
        result.done = True
        return True
    try:
        # orjson: every streamed token of every answer is one event to parse (BENCHMARKS.md).
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        # Not UTF-8, a lone surrogate escaped (half an emoji), a [DONE] with spaces: as any event always was.
        return await take_event(data.decode("utf-8", "replace"), result, on_delta, on_reasoning)
    return await _take_chunk(chunk, result, on_delta, on_reasoning)


async def take_event(data: str, result: StreamResult, on_delta: OnDelta, on_reasoning: OnDelta | None = None) -> bool:
    """Apply one event's data to ``result``; True once the stream says ``[DONE]``."""
    if data.strip() == "[DONE]":
        result.done = True
        return True
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        # orjson refuses what json accepts from some servers (a lone surrogate escaped: half an emoji).
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise errors.MalformedResponse("an SSE event was not JSON") from None
    return await _take_chunk(chunk, result, on_delta, on_reasoning)


async def _take_chunk(chunk: Any, result: StreamResult, on_delta: OnDelta, on_reasoning: OnDelta | None) -> bool:
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
        thinking = _thinking(delta)
        if thinking or result.splitter.undecided:
            await result.add(piece if isinstance(piece, str) else "", thinking, on_delta, on_reasoning)
            if "tool_calls" in delta:
                result.add_tool_deltas(delta["tool_calls"])
        elif isinstance(piece, str) and piece:
            # The plain path, every token of every answer once its start is known not to be a <think> block.
            result.text += piece
            await on_delta(piece)
        elif "tool_calls" in delta:
            # Only where a chunk carries no text: a text token never pays for tool calls.
            result.add_tool_deltas(delta["tool_calls"])
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]
    return False


def read_plain(status: int, raw: bytes, result: StreamResult) -> None:
    """A whole (non-streamed) answer's body into ``result``."""
    try:
        # orjson where it can: what it takes, json reads the same; what it refuses, json still may.
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise errors.MalformedResponse("the response body was not JSON") from None
    if not isinstance(body, dict):
        raise errors.MalformedResponse("the response body was not a JSON object")
    if "error" in body:
        raise error_from_body(status, body, model=str(body.get("model", "")), retry_after=None)
    try:
        choice = body["choices"][0]
        message = choice["message"]
        content = message.get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise errors.MalformedResponse("the response had no choices[0].message") from None
    # Split as a stream is: one call with the whole content, then the end.
    thinking, answer = result.splitter.feed(content if isinstance(content, str) else "")
    more_thinking, rest = result.splitter.close()
    result.reasoning = _thinking(message) + thinking + more_thinking
    result.text = answer + rest
    result.finish_reason = choice.get("finish_reason")
    if message.get("tool_calls"):
        result.whole_tool_calls = _tool_calls_from(message["tool_calls"])
    result.model = body.get("model")
    result.done = True
    if isinstance(body.get("usage"), dict):
        result.usage = usage_from(body["usage"])


def _thinking(part: dict[str, Any]) -> str:
    for name in REASONING_FIELDS:
        value = part.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def usage_from(raw: dict[str, Any]) -> Usage | None:
    try:
        prompt, completion = int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return None
    # Both are parts of the totals above. A server that leaves them out (llama.cpp, older vLLM) says nothing about
    # them: None, not 0, so a report never claims "no cache hits" for a server that cannot tell.
    cached = _detail(raw.get("prompt_tokens_details"), "cached_tokens", prompt)
    reasoning = _detail(raw.get("completion_tokens_details"), "reasoning_tokens", completion)
    # Positional: a frozen dataclass called with keywords costs about half again as much (timeit).
    return Usage(prompt, completion, True, cached, reasoning)


#: A tuple, not ``int | float``: that union is an object built anew each time the expression runs.
_NUMBERS = (int, float)


def _detail(details: object, name: str, total: int) -> int | None:
    if not isinstance(details, dict):
        return None  # absent (many servers send no details): unknown
    value = details.get(name)
    if isinstance(value, bool) or not isinstance(value, _NUMBERS) or value < 0:
        return None  # absent, null or garbled: unknown
    # Never more than the total it is part of: a cached count above the prompt would price the prompt below zero.
    return min(int(value), total)
