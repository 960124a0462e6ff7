"""The core's backfill: the messages around a mention are stored before its question, each once, a thread read
once per conversation whatever turns, restarts and replicas follow. The real core, real databases (a SQLite file,
the throwaway PostgreSQL) and the loopback fake model; the thread is an in-test :class:`ContextSource`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bot.context import backfill
from bot.conversation import ConversationCore, TurnSettings
from bot.guards import KeySource
from bot.llm import ChatClient, Endpoint, RetryPolicy, TokenCounter, model_http_client
from bot.messages import ContextMessage, ContextRead, ConversationKey, IncomingMessage, ReplyKind
from bot.store import Store, open_store
from tests.fakes.openai import FakeOpenAI
from tests.store import test_store as store_contract

# A database on each engine in turn (the storage contract's fixture), for the tests that take ``url``.
url = store_contract.url

KEY = ConversationKey("slack", "T1", "C1", "100.0")


@pytest.fixture(scope="session")
def counter() -> TokenCounter:
    return TokenCounter.load()


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@contextlib.asynccontextmanager
async def core_on(
    store: Store, model: FakeOpenAI, counter: TokenCounter, history_tokens: int = 4000
) -> AsyncIterator[ConversationCore]:
    async with model_http_client(5.0) as http:
        llm = ChatClient(
            http,
            Endpoint("primary", model.base_url, "fake-model", KeySource(SecretStr("sk-x"))),
            retry=RetryPolicy(max_retries=0),
        )
        yield ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", history_tokens))


def said(n: int, text: str | None = None, *, name: str = "Grace", **kw: Any) -> ContextMessage:
    return ContextMessage(f"slack:T1:C1:{n}.0", f"U{name}", name, text or f"message {n}", **kw)


@dataclass
class Thread:
    """A thread whose messages are numbered by their ``ts``; reads what comes after the cursor, as Slack's
    ``oldest`` does, and records each read's cursor."""

    messages: list[ContextMessage] = field(default_factory=list)
    afters: list[str | None] = field(default_factory=list)
    problem: str | None = None
    #: Hold each read until a second read starts, or this many seconds pass: a race, if the lock lets one happen.
    hold: float = 0.0
    _second: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, *messages: ContextMessage) -> None:
        self.messages.extend(messages)

    def source(self) -> Thread:
        return self

    async def read(self, after: str | None, budget_tokens: int) -> ContextRead:
        self.afters.append(after)
        if len(self.afters) > 1:
            self._second.set()
        if self.hold:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._second.wait(), self.hold)
        if self.problem is not None:
            return ContextRead((), None, problem=self.problem)
        start = float(after) if after is not None else 0.0
        new = [m for m in self.messages if _ts(m) > start]
        return ContextRead(new, f"{_ts(new[-1]):.1f}" if new else None)


def _ts(message: ContextMessage) -> float:
    return float(message.message_id.rsplit(":", 1)[1])


def mention(n: int, text: str, source: Any = None, *, context: Sequence[ContextMessage] = (), key=KEY):
    return IncomingMessage(key, f"slack:T1:C1:{n}.0", "UAda", "Ada", text, context=tuple(context), source=source)


def prompt(model: FakeOpenAI, index: int = -1) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in model.requests[index]["messages"][1:]]


async def test_a_thread_is_stored_before_the_question_in_order_with_names(
    tmp_path: Path, model: FakeOpenAI, counter: TokenCounter
) -> None:
    thread = Thread()
    thread.add(
        said(1, "the deploy failed", name="Grace"),
        said(2, "build 42 red: test_x", name="CI", from_bot=True),
        said(3, "earlier answer", name="teambot", own=True),
        said(4, "I reverted it", name="Linus"),
    )
    store = await open_store(str(tmp_path / "t.db"))
    try:
        async with core_on(store, model, counter) as core:
            reply = await core.handle(mention(5, "what did we decide?", thread))
    finally:
        await store.close()
    assert reply.kind is ReplyKind.ANSWER
    assert prompt(model) == [
        ("user", "Grace: the deploy failed"),
        ("user", "CI (bot): build 42 red: test_x"),
        ("assistant", "earlier answer"),
        ("user", "Linus: I reverted it"),
        ("user", "Ada: what did we decide?"),
    ]
    assert thread.afters == [None]


async def test_a_plain_mention_right_behind_a_threaded_one_comes_after_its_thread_and_question(
    tmp_path: Path, model: FakeOpenAI, counter: TokenCounter
) -> None:
    # The threaded mention claims on arrival and stores its thread, then its question; the plain one, arriving while
    # the first still claims, must not take the one-write path past it into the idle conversation.
    thread = Thread()
    thread.add(said(1, "the deploy failed"), said(2, "I reverted it", name="Linus"))
    store = await open_store(str(tmp_path / "t.db"))
    try:
        async with core_on(store, model, counter) as core:
            threaded, plain = await asyncio.gather(
                core.handle(mention(3, "what did we decide?", thread)), core.handle(mention(4, "and now?"))
            )
    finally:
        await store.close()
    assert threaded.kind is ReplyKind.ANSWER and plain.kind is ReplyKind.ANSWER
    assert prompt(model) == [
        ("user", "Grace: the deploy failed"),
        ("user", "Linus: I reverted it"),
        ("user", "Ada: what did we decide?"),
        ("assistant", "echo: Ada: what did we decide?"),
        ("user", "Ada: and now?"),
    ]


async def test_a_second_mention_reads_only_what_is_new(
    tmp_path: Path, model: FakeOpenAI, counter: TokenCounter
) -> None:
    thread = Thread()
    thread.add(said(1), said(2))
    store = await open_store(str(tmp_path / "t.db"))
    try:
        async with core_on(store, model, counter) as core:
            await core.handle(mention(3, "first question", thread))
            thread.add(said(3, "first question", name="Ada"), said(4, "a new remark"))
            await core.handle(mention(5, "second question", thread))
    finally:
        await store.close()
    assert thread.afters == [None, "2.0"]
    # The first mention, read back from the thread, is not stored twice; nothing is.
    assert prompt(model) == [
        ("user", "Grace: message 1"),
        ("user", "Grace: message 2"),
        ("user", "Ada: first question"),
        ("assistant", "echo: Ada: first question"),
        ("user", "Grace: a new remark"),
        ("user", "Ada: second question"),
    ]


async def test_a_restart_on_the_same_file_does_not_read_the_thread_again(
    tmp_path: Path, model: FakeOpenAI, counter: TokenCounter
) -> None:
    thread = Thread()
    thread.add(said(1), said(2))
    for n, question in ((3, "before the restart"), (4, "after it")):
        store = await open_store(str(tmp_path / "t.db"))  # a new process: a new store object on the same file
        try:
            async with core_on(store, model, counter) as core:
                await core.handle(mention(n, question, thread))
        finally:
            await store.close()
    assert thread.afters == [None, "2.0"]
    assert [c for _, c in prompt(model)][:2] == ["Grace: message 1", "Grace: message 2"]


async def test_two_replicas_on_one_postgresql_read_a_thread_once(
    postgres_url: str, model: FakeOpenAI, counter: TokenCounter
) -> None:
    """Two mentions of one thread at the same moment, one per replica: the database's conversation lock lets one
    read the thread; the other starts from its cursor. (Without the lock both read from the start.)"""
    thread = Thread(hold=0.5)
    thread.add(said(1), said(2), said(3))
    first, second = await open_store(postgres_url), await open_store(postgres_url)
    try:
        async with core_on(first, model, counter) as a, core_on(second, model, counter) as b:
            replies = await asyncio.gather(a.handle(mention(4, "one", thread)), b.handle(mention(5, "two", thread)))
        assert [r.kind for r in replies] == [ReplyKind.ANSWER, ReplyKind.ANSWER]
        assert thread.afters == [None, "3.0"]  # one after the other
        history = await first.load_history(KEY, 100_000, before=10**9)
        assert [m.content for m in history if m.author_name == "Grace"] == ["message 1", "message 2", "message 3"]
    finally:
        await first.close()
        await second.close()


async def test_messages_the_adapter_has_are_stored_once_and_before_the_source(
    tmp_path: Path, model: FakeOpenAI, counter: TokenCounter
) -> None:
    """A replied-to message the adapter already has: stored before what the source reads, unless the source
    read it too (then in the source's place), and never twice."""
    thread = Thread()
    thread.add(said(5), said(6))
    replied = said(2, "the stack trace", name="Linus")
    store = await open_store(str(tmp_path / "t.db"))
    try:
        async with core_on(store, model, counter) as core:
            await core.handle(mention(7, "why?", thread, context=[replied, said(6)]))
            await core.handle(mention(8, "and now?", context=[replied]))
    finally:
        await store.close()
    assert [c for _, c in prompt(model, 0)] == [
        "Linus: the stack trace",
        "Grace: message 5",
        "Grace: message 6",
        "Ada: why?",
    ]
    assert [c for _, c in prompt(model)].count("Linus: the stack trace") == 1


async def test_a_message_stored_as_context_is_still_answered_when_its_own_mention_arrives(
    tmp_path: Path, model: FakeOpenAI, counter: TokenCounter
) -> None:
    """Two mentions in a thread, the later one handled first (its event came first, or on another replica): the
    earlier one is already in the thread it reads, and stored as context. Its own event is still answered."""
    thread = Thread()
    thread.add(said(1), said(2, "question A", name="Ada"))
    store = await open_store(str(tmp_path / "t.db"))
    try:
        async with core_on(store, model, counter) as core:
            later = await core.handle(mention(3, "question B", thread))
            earlier = await core.handle(mention(2, "question A", thread))
            again = await core.handle(mention(2, "question A", thread))  # a redelivery stays silent
    finally:
        await store.close()
    assert later.kind is ReplyKind.ANSWER and earlier.kind is ReplyKind.ANSWER
    assert earlier.text == "echo: Ada: question A"
    assert again.kind is ReplyKind.DUPLICATE
    assert prompt(model)[-1] == ("user", "Ada: question A")


async def test_a_source_that_cannot_read_is_logged_and_the_turn_answered(
    tmp_path: Path, model: FakeOpenAI, counter: TokenCounter, caplog: pytest.LogCaptureFixture
) -> None:
    thread = Thread(problem="conversations.replies: missing_scope (needs channels:history)")
    store = await open_store(str(tmp_path / "t.db"))
    try:
        async with core_on(store, model, counter) as core:
            with caplog.at_level(logging.WARNING):
                reply = await core.handle(mention(3, "hello?", thread))
            assert await store.context_cursor(KEY) is None
    finally:
        await store.close()
    assert reply.kind is ReplyKind.ANSWER and prompt(model) == [("user", "Ada: hello?")]
    [line] = [r.getMessage() for r in caplog.records if "earlier messages" in r.getMessage()]
    assert "missing_scope" in line and "answering from what is stored" in line


async def test_a_source_that_hangs_is_given_up_on(
    tmp_path: Path, model: FakeOpenAI, counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Hanging:
        async def read(self, after: str | None, budget_tokens: int) -> ContextRead:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    monkeypatch.setattr(backfill, "READ_TIMEOUT_S", 0.2)
    store = await open_store(str(tmp_path / "t.db"))
    try:
        async with core_on(store, model, counter) as core:
            reply = await core.handle(mention(3, "still there?", Hanging()))
    finally:
        await store.close()
    assert reply.kind is ReplyKind.ANSWER


async def test_the_source_gets_the_history_budget_and_a_long_message_is_cut(
    tmp_path: Path, model: FakeOpenAI, counter: TokenCounter
) -> None:
    budgets: list[int] = []

    class Long:
        async def read(self, after: str | None, budget_tokens: int) -> ContextRead:
            budgets.append(budget_tokens)
            return ContextRead([said(1, "word " * 5000)], "1.0")

    store = await open_store(str(tmp_path / "t.db"))
    try:
        async with core_on(store, model, counter, history_tokens=1000) as core:
            await core.handle(mention(3, "summarise", Long()))
    finally:
        await store.close()
    assert budgets == [1000]
    first = prompt(model)[0][1]
    assert first.startswith("Grace: word word") and first.endswith("[…]")
    assert counter.count(first) <= 500


class CountingStore:
    """The real store, counting the calls made of it: a plain turn must make no new one."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self._inner, name)


async def test_the_plain_path_makes_no_new_query(tmp_path: Path, model: FakeOpenAI, counter: TokenCounter) -> None:
    inner = await open_store(str(tmp_path / "t.db"))
    store = CountingStore(inner)
    try:
        async with core_on(store, model, counter) as core:  # type: ignore[arg-type]
            store.calls.clear()
            await core.handle(mention(1, "plain"))
            plain = list(store.calls)
            store.calls.clear()
            await core.handle(mention(2, "in a thread", Thread()))
            threaded = list(store.calls)
    finally:
        await inner.close()
    assert "context_cursor" not in plain and "add_context" not in plain
    assert threaded.count("context_cursor") == 1
    # The same calls but for the thread's; the thread's turn claims its message on arrival and stores the question
    # after the thread's messages, where the plain turn does both in one write once it holds the conversation.
    rest = [c for c in threaded if c not in ("context_cursor", "add_context")]
    assert rest.index("claim_message") < rest.index("conversation_lock") < rest.index("add_question")
    one_write = [c for c in rest if c != "claim_message"]
    assert [("begin_turn" if c == "add_question" else c) for c in one_write] == plain


async def test_reset_forgets_the_thread_and_does_not_read_it_back(
    tmp_path: Path, model: FakeOpenAI, counter: TokenCounter
) -> None:
    thread = Thread()
    thread.add(said(1, "a secret"), said(2))
    store = await open_store(str(tmp_path / "t.db"))
    try:
        async with core_on(store, model, counter) as core:
            await core.handle(mention(3, "first", thread))
            await core.reset(KEY)
            await core.handle(mention(4, "after the reset", thread))
    finally:
        await store.close()
    assert thread.afters == [None, "2.0"]
    assert prompt(model) == [("user", "Ada: after the reset")]


async def test_a_lone_surrogate_in_the_thread_is_stored_as_a_question_mark(
    url: str, model: FakeOpenAI, counter: TokenCounter
) -> None:
    thread = Thread()
    thread.add(said(1, "broken \ud800 text", name="Gr\udc00ace"))
    store = await open_store(url)
    try:
        async with core_on(store, model, counter) as core:
            reply = await core.handle(mention(2, "what does it say?", thread))
    finally:
        await store.close()
    assert reply.kind is ReplyKind.ANSWER
    assert prompt(model)[0] == ("user", "Gr?ace: broken ? text")
