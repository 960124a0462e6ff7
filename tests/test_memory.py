"""Memory past the window: the real core, a real SQLite file and the loopback fake model, which writes summaries
that carry a marker word."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bot import texts
from bot.commands import CommandContext, CommandPolicy, Commands
from bot.conversation import ConversationCore, TurnSettings
from bot.guards import Accounting, Budget, ConcurrencyGate, Guards, KeySource, Period, PriceTable, ScopeKind
from bot.llm import ChatClient, Endpoint, RetryPolicy, TokenCounter, model_http_client
from bot.memory import INSTRUCTIONS, PREAMBLE
from bot.messages import ConversationKey, IncomingMessage, ReplyKind
from bot.store import Store, UsageScope, open_store
from tests.fakes.openai import FakeOpenAI
from tests.test_conversation import until

KEY = ConversationKey("slack", "T1", "C1")
THREAD = ConversationKey("slack", "T1", "C1", "1700000000.000100")
#: The fake's summaries start with this, so a test can tell a summary in a prompt from anything people said.
MARKER = "MEMORY-MARK"
_SUMMARY_START = INSTRUCTIONS.split("{", 1)[0]
FILLER = "tell me something about the weather in a few words, please, " * 5


def is_summary_request(messages: list[dict[str, Any]]) -> bool:
    return bool(messages) and str(messages[0].get("content", "")).startswith(_SUMMARY_START)


def fake_reply(messages: list[dict[str, Any]]) -> str:
    """The fake model: a summary names the marker and every code word it was given (the old summary's included);
    anything else is echoed."""
    last = str(messages[-1]["content"])
    if is_summary_request(messages):
        words = sorted(set(re.findall(r"code word is (\w+)", last)))
        return f"{MARKER}: " + "; ".join(f"the code word is {w}" for w in words)
    return f"echo: {last}"[:80]


@dataclass
class Memory:
    core: ConversationCore
    fake: FakeOpenAI
    store: Store
    n: int = 0

    async def say(self, text: str, *, key: ConversationKey = KEY, author: str = "Ada") -> Any:
        self.n += 1
        reply = await self.core.handle(IncomingMessage(key, f"m{self.n}", f"U-{author}", author, text))
        return reply

    def summary_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.fake.requests if is_summary_request(r["messages"])]

    def turn_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.fake.requests if not is_summary_request(r["messages"])]


@pytest.fixture(scope="session")
def counter() -> TokenCounter:
    return TokenCounter.load()


@contextlib.asynccontextmanager
async def _memory(
    tmp_path: Path,
    counter: TokenCounter,
    *,
    summaries: bool = True,
    guards: Callable[[Store], Guards] | None = None,
    model: str | None = None,
) -> AsyncIterator[Memory]:
    store = await open_store(str(tmp_path / "teambot.db"))
    async with contextlib.AsyncExitStack() as stack:
        # Closed even when the test fails: the writer thread of an open store keeps the process alive.
        stack.push_async_callback(store.close)
        fake = await stack.enter_async_context(FakeOpenAI(api_key="sk-test", reply=fake_reply))
        http = await stack.enter_async_context(model_http_client(5.0))
        llm = ChatClient(
            http,
            Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr("sk-test"))),
            retry=RetryPolicy(max_retries=0, base_delay=0.01, deadline=10.0),
        )
        settings = TurnSettings("You are a test bot.", 400, False, summaries=summaries, summary_model=model)
        core = ConversationCore(store, llm, counter, settings, guards(store) if guards else None)
        try:
            yield Memory(core, fake, store)
        finally:
            await core.aclose(5.0)


@pytest.fixture
async def memory(tmp_path: Path, counter: TokenCounter) -> AsyncIterator[Memory]:
    async with _memory(tmp_path, counter) as m:
        yield m


async def _long_conversation(m: Memory, turns: int = 24) -> None:
    """A first turn with a code word, then enough filler to fill the window three times over."""
    await m.say("remember this: the code word is PLUM")
    for i in range(turns):
        await m.say(f"{FILLER} ({i})")
        await m.core.memory.wait_idle()


async def test_a_conversation_three_times_the_window_still_knows_its_first_turn(memory: Memory) -> None:
    await _long_conversation(memory)
    # Three times the window at least: everything said is far more than the history budget.
    said = sum(memory.core._counter.count_message(f"Ada: {FILLER}") for _ in range(24))
    assert said > 3 * memory.core.settings.history_tokens

    await memory.say("what was the code word?")
    prompt = memory.turn_requests()[-1]["messages"]
    system, history = prompt[0]["content"], prompt[1:]
    # The first turn fell out of the window long ago...
    assert not any("PLUM" in m["content"] for m in history)
    # ...and is still there, through the summary right after the system prompt.
    assert system.startswith("You are a test bot.")
    assert f"{PREAMBLE}{MARKER}: the code word is PLUM" in system
    # Refreshed as more fell out: more than one summary call, each folding the summary so far into the next.
    summaries = memory.summary_requests()
    assert len(summaries) >= 2
    assert f"{MARKER}: the code word is PLUM" in summaries[-1]["messages"][-1]["content"]


async def test_summary_command_shows_it_and_reset_deletes_it(memory: Memory) -> None:
    commands = Commands(memory.core, CommandPolicy())
    ctx = CommandContext(KEY, "U-Ada")
    assert await commands.run("summary", ctx) == texts.SUMMARY_NONE
    await _long_conversation(memory, turns=12)
    shown = await commands.run("summary", ctx)
    assert shown == texts.SUMMARY_SHOW.format(summary=f"{MARKER}: the code word is PLUM")

    await commands.run("reset", ctx)
    assert await commands.run("summary", ctx) == texts.SUMMARY_NONE
    assert await memory.store.summary(KEY) is None
    await memory.say("hello again")
    assert MARKER not in memory.turn_requests()[-1]["messages"][0]["content"]


async def test_a_channel_reset_deletes_the_summaries_of_its_threads(memory: Memory) -> None:
    await memory.say("remember this: the code word is FIG", key=THREAD)
    for i in range(12):
        await memory.say(f"{FILLER} ({i})", key=THREAD)
        await memory.core.memory.wait_idle()
    assert await memory.store.summary(THREAD) is not None
    await Commands(memory.core).run("reset", CommandContext(KEY, "U-Ada"))
    assert await memory.store.summary(THREAD) is None
    await memory.say("anything?", key=THREAD)
    assert MARKER not in memory.turn_requests()[-1]["messages"][0]["content"]


async def test_a_short_conversation_makes_no_summary_call(memory: Memory) -> None:
    for i in range(4):
        await memory.say(f"short question {i}")
        await memory.core.memory.wait_idle()
    assert memory.summary_requests() == []
    assert memory.fake.calls == 4


async def test_summaries_off_leaves_the_window_alone(tmp_path: Path, counter: TokenCounter) -> None:
    async with _memory(tmp_path, counter, summaries=False) as m:
        await _long_conversation(m, turns=12)
        await m.say("what was the code word?")
        assert m.summary_requests() == []
        assert "PLUM" not in str(m.fake.requests[-1]["messages"])
        assert await Commands(m.core).run("summary", CommandContext(KEY, "U-Ada")) == texts.SUMMARY_OFF


async def test_the_summary_model_is_used_and_the_call_charged_to_the_person_whose_turn_made_it(
    tmp_path: Path, counter: TokenCounter
) -> None:
    def guards(store: Store) -> Guards:
        return Guards(accounting=Accounting(store, PriceTable({"cheap-model": (1.0, 1.0)}), []))

    async with _memory(tmp_path, counter, guards=guards, model="cheap-model") as m:
        store = m.store
        await m.say("remember this: the code word is PLUM", author="Ada")
        for i in range(12):
            await m.say(f"{FILLER} ({i})", author="Grace")
            await m.core.memory.wait_idle()
        summaries = m.summary_requests()
        assert summaries and all(r["model"] == "cheap-model" for r in summaries)
        # Each summary call is in the ledger, priced at the summary model's price, charged to Grace.
        grace = await store.usage_since(UsageScope("slack", "T1", user_id="U-Grace"), 0)
        turns = len(m.turn_requests())
        assert grace.calls == turns - 1 + len(summaries)
        assert grace.cost > 0


async def test_a_used_up_budget_stops_the_summaries_too(tmp_path: Path, counter: TokenCounter) -> None:
    def guards(store: Store) -> Guards:
        return Guards(accounting=Accounting(store, PriceTable(), [Budget(ScopeKind.USER, Period.DAY, 1)]))

    async with _memory(tmp_path, counter, guards=guards) as m:
        # The first answer uses the budget up: every later turn is refused, and so is the summary of the first.
        assert (await m.say("remember this: the code word is PLUM")).kind is ReplyKind.ANSWER
        m.core.memory.after_turn(IncomingMessage(KEY, "mx", "U-Ada", "Ada", "x"), None, 10**9)
        await m.core.memory.wait_idle()
        assert m.summary_requests() == []


async def test_the_reply_never_waits_for_the_summary(memory: Memory) -> None:
    memory.fake.hold = asyncio.Event()
    memory.fake.hold_if = is_summary_request
    await memory.say("remember this: the code word is PLUM")
    for i in range(12):
        reply = await asyncio.wait_for(memory.say(f"{FILLER} ({i})"), 5)
        assert reply.kind is ReplyKind.ANSWER
    # A summary call is under way (held), and only one per conversation however many turns came since.
    await memory.fake.wait_until(lambda: len(memory.summary_requests()) == 1)
    assert len(memory.summary_requests()) == 1
    memory.fake.hold.set()
    await memory.core.memory.wait_idle()
    await memory.say("and now?")
    await memory.core.memory.wait_idle()
    assert MARKER in memory.turn_requests()[-1]["messages"][0]["content"]


async def test_the_summary_takes_a_slot_of_the_gate(tmp_path: Path, counter: TokenCounter) -> None:
    gate = ConcurrencyGate(1, 8)
    async with _memory(tmp_path, counter, guards=lambda _: Guards(gate=gate)) as m:
        m.fake.hold = asyncio.Event()
        m.fake.hold_if = is_summary_request
        await m.say("remember this: the code word is PLUM")
        for i in range(12):
            await m.say(f"{FILLER} ({i})")
            # Stop as soon as a refresh starts: with one slot, a further question would wait for it.
            if m.core.memory.refreshing:
                break
        await m.fake.wait_until(lambda: len(m.summary_requests()) == 1)
        # The only slot is the summary's: the next question waits for it.
        turn = asyncio.create_task(m.say("next question"))
        await until(lambda: gate.waiting == 1)
        assert not turn.done()
        m.fake.hold.set()
        assert (await asyncio.wait_for(turn, 5)).kind is ReplyKind.ANSWER


async def test_shutdown_cancels_a_summary_under_way_and_charges_it(tmp_path: Path, counter: TokenCounter) -> None:
    def guards(store: Store) -> Guards:
        return Guards(accounting=Accounting(store, PriceTable(), []))

    async with _memory(tmp_path, counter, guards=guards) as m:
        store = m.store
        m.fake.hold = asyncio.Event()
        m.fake.hold_if = is_summary_request
        await m.say("remember this: the code word is PLUM")
        for i in range(12):
            await m.say(f"{FILLER} ({i})")
            # Stop as soon as a refresh starts: with one slot, a further question would wait for it.
            if m.core.memory.refreshing:
                break
        await m.fake.wait_until(lambda: len(m.summary_requests()) == 1)
        before = await store.usage_since(UsageScope("slack", "T1"), 0)
        await asyncio.wait_for(m.core.aclose(0.05), 5)
        after = await store.usage_since(UsageScope("slack", "T1"), 0)
        assert after.calls == before.calls + 1
        assert await store.summary(KEY) is None


async def test_a_new_conversation_starts_no_refresh_until_something_falls_out(memory: Memory) -> None:
    # Another conversation first, so this one's first message is not the database's first (id 1 needs no refresh).
    await memory.say("a question elsewhere", key=THREAD)
    for i in range(3):
        await memory.say(f"short question {i}")
        # Its first turn's history came back empty: nothing before that question can fall out of a window, so no
        # turn starts a refresh (a task and a read of the store) only to find nothing to fold in.
        assert memory.core.memory.refreshing == 0
    assert memory.summary_requests() == []


async def test_an_empty_history_for_want_of_room_is_not_taken_for_a_new_conversation(memory: Memory) -> None:
    await memory.say("remember this: the code word is PLUM")
    # A question as long as a question may be, refused once as too long: asked again with half the budget, which
    # leaves no room for any history. Its empty history says nothing about what came before it.
    reply = await memory.say(f"[[contextx1]] {FILLER * 4}")
    assert reply.kind is ReplyKind.ANSWER
    assert memory.turn_requests()[-1]["messages"][1:-1] == []
    for i in range(12):
        await memory.say(f"{FILLER} ({i})")
        await memory.core.memory.wait_idle()
    await memory.say("what was the code word?")
    assert f"{MARKER}: the code word is PLUM" in memory.turn_requests()[-1]["messages"][0]["content"]
