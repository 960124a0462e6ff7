"""A loopback OpenAI-compatible model for the benchmark: fixed latency and token rate, timestamps per request.

It runs in a process of its own (``python -m bench.model``), so its work does not land on the bot's event loop.
The timestamps (``time.monotonic``: on Linux one clock for every process) mark when a request arrived and when
its last byte was written, so the benchmark can subtract the model's own time from a turn and keep only what the
bot adds. ``GET /timings`` hands them over.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx
from aiohttp import web

from bot import eventloop


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


class BenchModel:
    def __init__(self, *, first_byte: float = 0.0, tokens_per_second: float = 0.0, reply_tokens: int = 20) -> None:
        self.first_byte = first_byte
        self.tokens_per_second = tokens_per_second
        self.reply_tokens = reply_tokens
        #: request tag (the last user message) -> (arrived, last byte written)
        self.timings: dict[str, tuple[float, float]] = {}
        #: request tag -> (arrived, last byte written) of every request with that tag: a turn with tool rounds
        #: sends several (bench.tools)
        self.rounds: dict[str, list[tuple[float, float]]] = {}
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        # Every answer is the same stream: encoded once, so the fake spends its CPU on the sockets, not on JSON.
        self._chunks = [
            _event({"model": "bench", "choices": [{"index": 0, "delta": {"content": f"tok{i} "}}]})
            for i in range(reply_tokens)
        ]
        done = {"model": "bench", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        usage = {"model": "bench", "choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": reply_tokens}}
        self._ending = _event(done) + _event(usage) + b"data: [DONE]\n\n"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_get("/timings", self._timings)
        app.router.add_get("/rounds", self._rounds)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _timings(self, request: web.Request) -> web.Response:
        return web.json_response(self.timings)

    async def _rounds(self, request: web.Request) -> web.Response:
        return web.json_response(self.rounds)

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        body = await request.json()
        messages = body["messages"]
        if messages[-1]["role"] != "user":
            # A tool round: the turn is still the one its question names; answered in words, the tools had their go.
            tag = next(str(m["content"]) for m in reversed(messages) if m["role"] == "user")
        else:
            tag = str(messages[-1]["content"])
            if body.get("tools"):
                return await self._call_tool(request, body, tag, arrived)
        if self.first_byte:
            await asyncio.sleep(self.first_byte)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        gap = 1 / self.tokens_per_second if self.tokens_per_second else 0.0
        for chunk in self._chunks:
            await response.write(chunk)
            if gap:
                await asyncio.sleep(gap)
        await response.write(self._ending)
        self.timings[tag] = (arrived, time.monotonic())
        self.rounds.setdefault(tag, []).append(self.timings[tag])
        await response.write_eof()
        return response

    async def _call_tool(
        self, request: web.Request, body: dict[str, object], tag: str, arrived: float
    ) -> web.StreamResponse:
        """Call the first tool offered, at once, with its arguments in two pieces as a real stream splits them."""
        tools = body["tools"]
        assert isinstance(tools, list)
        name = tools[0]["function"]["name"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        deltas = [
            {"index": 0, "id": "call_bench", "type": "function", "function": {"name": name, "arguments": "{"}},
            {"index": 0, "function": {"arguments": "}"}},
        ]
        for delta in deltas:
            chunk = {"model": "bench", "choices": [{"index": 0, "delta": {"tool_calls": [delta]}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        done = {"model": "bench", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        usage = {"model": "bench", "choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 5}}
        await response.write(f"data: {json.dumps(done)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        self.rounds.setdefault(tag, []).append((arrived, time.monotonic()))
        await response.write_eof()
        return response


class ModelProcess:
    """A BenchModel in a subprocess; ``async with ModelProcess(...) as model`` gives its base_url and timings."""

    def __init__(self, *, first_byte: float = 0.0, tokens_per_second: float = 0.0, reply_tokens: int = 20) -> None:
        self._args = [str(first_byte), str(tokens_per_second), str(reply_tokens)]
        self.base_url = ""
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> ModelProcess:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.model", *self._args, stdout=asyncio.subprocess.PIPE
        )
        assert self._proc.stdout is not None
        self.base_url = (await self._proc.stdout.readline()).decode().strip()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            await self._proc.wait()

    async def rounds(self, http: httpx.AsyncClient) -> dict[str, list[tuple[float, float]]]:
        data = (await http.get(self.base_url.removesuffix("/v1") + "/rounds")).json()
        return {tag: [(pair[0], pair[1]) for pair in pairs] for tag, pairs in data.items()}

    async def timings(self, http: httpx.AsyncClient) -> dict[str, tuple[float, float]]:
        data = (await http.get(self.base_url.removesuffix("/v1") + "/timings")).json()
        return {tag: (pair[0], pair[1]) for tag, pair in data.items()}


async def _serve(first_byte: float, tokens_per_second: float, reply_tokens: int) -> None:
    model = BenchModel(first_byte=first_byte, tokens_per_second=tokens_per_second, reply_tokens=reply_tokens)
    await model.start()
    print(model.base_url, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    # The fake runs on the bot's default loop too: a slow fake adds its own lag to what is counted as the bot's.
    eventloop.run(_serve(float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])), use_uvloop=True)
