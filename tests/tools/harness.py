"""A turn with tools, end to end: the real core and tool loop, a real SQLite file, the loopback fake model, and a
small tool provider of the tests' own (a real implementation of bot.tools.ToolProvider, not a mock)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bot.conversation import ConversationCore, TurnSettings
from bot.guards import Guards, KeySource
from bot.llm import ChatClient, Endpoint, RetryPolicy, TokenCounter, model_http_client
from bot.messages import ConversationKey, IncomingMessage, Reply, ToolRequest
from bot.store import Store, open_store
from bot.tools import LoopSettings, ToolCallContext, ToolError, ToolLoop, ToolPolicy, ToolRegistry, ToolRule, ToolSpec
from tests.fakes.openai import FakeOpenAI

KEY = ConversationKey("slack", "T1", "C1")
OBJECT: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}}}


class Desk:
    """The tests' tools: ``time__now`` (the time in a city), ``big__dump`` (a long output), ``bad__fail`` (a
    ToolError), ``slow__wait`` (never answers), ``pair__meet`` (answers only once two calls are running at once)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], ToolCallContext]] = []
        self.names = ["time__now", "big__dump", "bad__fail", "slow__wait", "pair__meet"]
        self._meeting = 0
        self._met = asyncio.Event()

    def specs(self) -> Sequence[ToolSpec]:
        return [ToolSpec(name, f"the {name} tool", OBJECT) for name in self.names]

    async def call(self, name: str, arguments: dict[str, Any], context: ToolCallContext) -> str:
        self.calls.append((name, arguments, context))
        if name == "time__now":
            return f"14:00 in {arguments.get('city', 'UTC')}"
        if name == "big__dump":
            return " ".join(f"word{n}" for n in range(20_000))
        if name == "bad__fail":
            raise ToolError("the backend is down")
        if name == "slow__wait":
            await asyncio.Event().wait()
        if name == "pair__meet":
            self._meeting += 1
            if self._meeting >= 2:
                self._met.set()
            await self._met.wait()  # sequential calls would wait here until the tool timeout
            return "met"
        raise AssertionError(name)


@dataclass
class View:
    """A TurnView that records what the turn showed and answers approvals as told."""

    answer: bool = True
    statuses: list[str | None] = field(default_factory=list)
    asked: list[tuple[ToolRequest, str, float]] = field(default_factory=list)

    async def status(self, text: str | None) -> None:
        self.statuses.append(text)

    async def approve(self, request: ToolRequest, asker_id: str, within: float) -> bool:
        self.asked.append((request, asker_id, within))
        return self.answer


@pytest.fixture(scope="session")
def counter() -> TokenCounter:
    return TokenCounter.load()


@dataclass
class ToolHarness:
    store: Store
    llm: ChatClient
    counter: TokenCounter
    fake: FakeOpenAI
    desk: Desk
    db: Path
    n: int = 0
    cores: list[ConversationCore] = field(default_factory=list)

    def core(
        self,
        *,
        rules: Sequence[ToolRule] = (),
        guards: Guards | None = None,
        history_tokens: int = 4000,
        stream: bool = True,
        tools: bool = True,
        admins: frozenset[str] = frozenset(),
        **loop: Any,
    ) -> ConversationCore:
        settings = LoopSettings(**({"timeout": 2.0} | loop))
        tool_loop = ToolLoop(ToolRegistry([self.desk]), ToolPolicy(rules, admins), self.counter, settings)
        core = ConversationCore(
            self.store,
            self.llm,
            self.counter,
            TurnSettings("You are a test bot.", history_tokens, stream),
            guards,
            tools=tool_loop if tools else None,
        )
        self.cores.append(core)
        return core

    def message(self, text: str, *, key: ConversationKey = KEY, author: str = "Ada", **kw: Any) -> IncomingMessage:
        self.n += 1
        return IncomingMessage(key, f"m{self.n}", f"U-{author}", author, text, **kw)

    async def say(self, core: ConversationCore, text: str, view: View | None = None, **kw: Any) -> Reply:
        pieces: list[str] = []

        async def on_text(piece: str) -> None:
            pieces.append(piece)

        reply = await core.handle(self.message(text, **kw), on_text, view=view)
        if pieces:
            # What streamed is the start of what is shown: the adapters finish with the whole text.
            assert reply.text.startswith("".join(pieces)), (pieces, reply.text)
        return reply


@pytest.fixture
async def harness(tmp_path: Path, counter: TokenCounter) -> AsyncIterator[ToolHarness]:
    db = tmp_path / "teambot.db"
    store = await open_store(str(db))
    async with FakeOpenAI(api_key="sk-test-key-123456") as fake, model_http_client(5.0) as http:
        llm = ChatClient(
            http,
            Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr("sk-test-key-123456"))),
            retry=RetryPolicy(max_retries=1, base_delay=0.01, deadline=10.0),
        )
        h = ToolHarness(store, llm, counter, fake, Desk(), db)
        yield h
    await h.store.close()  # a test may have reopened it (a restart)
