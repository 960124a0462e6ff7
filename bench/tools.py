"""The cost of the tool loop: a turn with one tool round, an instant model and an instant tool."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.core import COUNTER, _noop, add_row, percentile
from bench.model import ModelProcess
from bot.conversation import ConversationCore, TurnSettings
from bot.guards import Accounting, ConcurrencyGate, Guards, PriceTable
from bot.llm import ChatClient, Endpoint, model_http_client
from bot.messages import ConversationKey, IncomingMessage
from bot.store import open_store
from bot.tools import ToolCallContext, ToolLoop, ToolPolicy, ToolRegistry, ToolSpec


class InstantTool:
    """A tool provider whose one tool answers at once; it keeps the time spent inside it, to subtract."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def specs(self) -> Sequence[ToolSpec]:
        return [ToolSpec("bench__now", "The time now.", {"type": "object", "properties": {}})]

    async def call(self, name: str, arguments: dict[str, Any], context: ToolCallContext) -> str:
        started = time.monotonic()
        result = f"it is {time.time():.0f}"
        self.seconds += time.monotonic() - started
        return result


async def tool_round_overhead(turns: int, workdir: Path) -> dict[str, float]:
    """Per turn with one tool round: the turn's time less the model's (both requests, first to last byte) and the
    tool's own. What is left is the core's and the loop's work, the two round trips to the loopback model included,
    as in the plain overhead row."""
    samples: list[float] = []
    tool = InstantTool()
    async with ModelProcess(reply_tokens=20) as model:
        store = await open_store(str(workdir / "tools.db"))
        spans: dict[str, tuple[float, float, float]] = {}
        try:
            async with model_http_client(60) as http:
                llm = ChatClient(http, Endpoint("bench", model.base_url, "bench"))
                guards = Guards(gate=ConcurrencyGate(100, 100), accounting=Accounting(store, PriceTable(), []))
                tools = ToolLoop(ToolRegistry([tool]), ToolPolicy(), COUNTER)
                core = ConversationCore(
                    store, llm, COUNTER, TurnSettings("You are a benchmark.", 4000), guards, tools=tools
                )
                for t in range(turns):
                    tag = f"tools-t{t}"
                    before = tool.seconds
                    started = time.monotonic()
                    await core.handle(
                        IncomingMessage(ConversationKey("bench", "W", f"T{t}"), tag, "U", "u", tag), _noop
                    )
                    spans[f"u: {tag}"] = (started, time.monotonic(), tool.seconds - before)
        finally:
            await store.close()
        async with httpx.AsyncClient() as client:
            rounds = await model.rounds(client)
    for tag, (started, finished, in_tool) in spans.items():
        assert len(rounds[tag]) == 2, rounds[tag]  # the call, then the answer
        in_model = sum(last - arrived for arrived, last in rounds[tag])
        samples.append(finished - started - in_model - in_tool)
    ms = [s * 1000 for s in samples[1:]]  # the first turn warms up
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "n": len(ms)}


async def run_tools(quick: bool, workdir: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    result = await tool_round_overhead(30 if quick else 300, workdir)
    add_row(
        rows,
        (
            "bot overhead per mention with one tool round (instant model and tool; target < 10 ms p50)",
            f"p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms (n={result['n']:.0f})",
        ),
    )
    return rows
