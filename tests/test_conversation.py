"""The turn, end to end: the real core, a real SQLite file and the loopback fake model server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot import texts
from bot.commands import CommandContext, CommandPolicy, Commands
from bot.conversation import ConversationCore, KeyedLocks, TurnSettings
from bot.guards import Guards, KeySource, RateLimiter
from bot.llm import REASONING_EFFORTS, ChatClient, Endpoint, RetryPolicy, TokenCounter, model_http_client
from bot.messages import ConversationKey, IncomingMessage, ReplyKind
from bot.store import TokenBuckets, open_store
from tests.fakes.openai import THOUGHT, THOUGHT_MARK, FakeOpenAI

KEY = ConversationKey("slack", "T1", "C1")


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Until ``condition()`` holds, for state inside the core that no fake hears about."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - nothing to wait on: the core signals no event for it
            await asyncio.sleep(0.01)


OTHER = ConversationKey("slack", "T1", "C2")


@pytest.fixture(scope="session")
def counter() -> TokenCounter:
    return TokenCounter.load()


@dataclass
class Harness:
    core: ConversationCore
    fake: FakeOpenAI
    db: Path
    n: int = 0

    def message(self, text: str, *, key: ConversationKey = KEY, author: str = "Ada", mid: str | None = None):
        self.n += 1
        return IncomingMessage(key, mid or f"m{self.n}", f"U-{author}", author, text)

    async def say(self, text: str, **kw: object):
        return await self.core.handle(self.message(text, **kw))  # type: ignore[arg-type]


@dataclass
class Knobs:
    history_tokens: int = 4000
    request_timeout: float = 5.0
    max_retries: int = 2
    deadline: float = 10.0


@pytest.fixture
def knobs(request: pytest.FixtureRequest) -> Knobs:
    return getattr(request, "param", Knobs())


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-test-key-123456") as server:
        yield server


@pytest.fixture
async def harness(tmp_path: Path, fake: FakeOpenAI, counter: TokenCounter, knobs: Knobs) -> AsyncIterator[Harness]:
    db = tmp_path / "teambot.db"
    store = await open_store(str(db))
    async with model_http_client(knobs.request_timeout) as http:
        llm = ChatClient(
            http,
            Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr("sk-test-key-123456"))),
            retry=RetryPolicy(max_retries=knobs.max_retries, base_delay=0.01, deadline=knobs.deadline),
        )
        core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", knobs.history_tokens))
        yield Harness(core, fake, db)
    await store.close()


def user_contents(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


async def test_multi_turn_memory_with_named_speakers(harness: Harness) -> None:
    first = await harness.say("my favourite colour is teal")
    assert first.kind is ReplyKind.ANSWER and first.text == "echo: Ada: my favourite colour is teal"
    await harness.say("what is my favourite colour?", author="Grace")

    messages = harness.fake.requests[-1]["messages"]
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("You are a test bot.")
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "Ada: my favourite colour is teal"),
        ("assistant", "echo: Ada: my favourite colour is teal"),
        ("user", "Grace: what is my favourite colour?"),
    ]


async def test_streaming_hands_out_pieces_that_add_up_to_the_reply(harness: Harness) -> None:
    pieces: list[str] = []

    async def on_text(piece: str) -> None:
        pieces.append(piece)

    reply = await harness.core.handle(harness.message("stream this long sentence please"), on_text)
    assert reply.kind is ReplyKind.ANSWER
    assert len(pieces) > 1 and "".join(pieces) == reply.text
    assert harness.fake.requests[-1]["stream"] is True
    assert reply.usage is not None and reply.usage.exact


async def test_on_complete_hears_the_whole_answer_before_it_is_stored(harness: Harness) -> None:
    # An adapter that has shown nothing yet waits for the reply and posts it in one message: it must hear that the
    # text is whole after the last piece and before the reply is stored (which the reply's id waits for).
    pieces: list[str] = []
    heard: list[tuple[str, int]] = []

    async def on_text(piece: str) -> None:
        pieces.append(piece)

    def on_complete() -> None:
        with contextlib.closing(sqlite3.connect(harness.db)) as db:
            answers = db.execute("SELECT count(*) FROM messages WHERE role = 'assistant'").fetchone()[0]
        heard.append(("".join(pieces), answers))

    reply = await harness.core.handle(harness.message("stream this please"), on_text, on_complete=on_complete)
    assert reply.kind is ReplyKind.ANSWER
    assert heard == [(reply.text, 0)]  # once, with all the text, before the reply was stored


async def test_on_complete_is_not_called_for_an_error(harness: Harness) -> None:
    heard: list[None] = []
    reply = await harness.core.handle(harness.message("[[500x9]] hello"), on_complete=lambda: heard.append(None))
    assert reply.kind is ReplyKind.ERROR and heard == []


async def test_conversations_do_not_share_history(harness: Harness) -> None:
    await harness.say("secret in C1")
    await harness.say("hello from C2", key=OTHER)
    assert user_contents(harness.fake.requests[-1]) == ["Ada: hello from C2"]


async def test_redelivered_message_is_answered_once(harness: Harness) -> None:
    first = await harness.say("hi", mid="slack:T1:C1:1.0")
    again = await harness.say("hi", mid="slack:T1:C1:1.0")
    assert first.kind is ReplyKind.ANSWER
    assert again.kind is ReplyKind.DUPLICATE and not again.should_post
    assert harness.fake.calls == 1


async def test_concurrent_redeliveries_are_answered_once(harness: Harness) -> None:
    msg = harness.message("twice at once", mid="dup")
    replies = await asyncio.gather(*(harness.core.handle(msg) for _ in range(5)))
    assert sorted(r.kind.value for r in replies) == ["answer"] + ["duplicate"] * 4
    assert harness.fake.calls == 1


async def test_turns_in_one_conversation_are_serialised_in_order(harness: Harness) -> None:
    harness.fake.chunk_delay = 0.01
    msgs = [harness.message(f"question {i}") for i in range(5)]
    tasks = []
    for m in msgs:
        tasks.append(asyncio.create_task(harness.core.handle(m, _ignore)))
        await asyncio.sleep(0)  # start them in order, as a platform delivers them
    await asyncio.gather(*tasks)
    # Each request saw every earlier question *and its answer*: no turn started before the previous ended.
    for i, request in enumerate(harness.fake.requests):
        assert user_contents(request) == [f"Ada: question {j}" for j in range(i + 1)]
        assert sum(m["role"] == "assistant" for m in request["messages"]) == i


async def test_different_conversations_run_in_parallel(harness: Harness) -> None:
    harness.fake.first_byte_delay = 0.3
    keys = [ConversationKey("discord", "G", str(c)) for c in range(4)]
    await asyncio.gather(*(harness.say("hi", key=k) for k in keys))
    assert harness.fake.max_in_flight == 4


async def test_history_is_trimmed_to_the_budget_oldest_first(harness: Harness, knobs: Knobs) -> None:
    for i in range(40):
        await harness.say(f"turn {i} " + "word " * 40)
    request = harness.fake.requests[-1]
    users = user_contents(request)
    assert users[-1].startswith("Ada: turn 39")
    assert "turn 0 " not in " ".join(users)  # the oldest went first
    assert request["messages"][0]["role"] == "system"
    sent = sum(len(m["content"]) for m in request["messages"])
    assert sent < knobs.history_tokens * 4  # far below what 40 turns would take


async def test_a_message_larger_than_the_budget_is_truncated(harness: Harness, knobs: Knobs) -> None:
    reply = await harness.say("x " * 100_000)
    assert reply.kind is ReplyKind.ANSWER
    sent = user_contents(harness.fake.requests[-1])[-1]
    assert sent.endswith("[…]") and len(sent) < knobs.history_tokens * 4
    # The person is told, in a notice beside the answer, rather than left to think it was all read.
    assert reply.notice is not None and reply.notice.startswith(texts.MESSAGE_CUT.split("{")[0])
    short = await harness.say("a short one")
    assert short.notice is None


@pytest.mark.parametrize("knobs", [Knobs(history_tokens=2000)], indirect=True)
async def test_one_long_answer_is_cut_to_fit_rather_than_erase_the_history(
    harness: Harness, knobs: Knobs, counter: TokenCounter
) -> None:
    await harness.say("my favourite colour is teal")
    essay = await harness.say("write me an essay [[long:50000]]")
    assert len(essay.text) == 50_000 and essay.notice is None

    follow = await harness.say("what was the first paragraph about?")
    messages = harness.fake.requests[-1]["messages"]
    # The essay alone is over the budget: it comes cut to fit instead of leaving the model with no history at all.
    assert [m["role"] for m in messages] == ["system", "assistant", "user"]
    cut = messages[1]["content"]
    assert cut.endswith(" […]") and essay.text.startswith(cut.removesuffix(" […]")) and len(cut) > 2_000
    assert sum(counter.count_message(m["content"]) for m in messages) <= knobs.history_tokens
    # The person is told that the model saw only part of it, and nothing before it.
    assert follow.kind is ReplyKind.ANSWER and follow.notice == texts.HISTORY_CUT

    # Once the long answer is not the newest any more, the window is the usual one again, with no notice.
    again = await harness.say("thanks")
    assert user_contents(harness.fake.requests[-1]) == ["Ada: what was the first paragraph about?", "Ada: thanks"]
    assert again.notice is None


@pytest.mark.parametrize("knobs", [Knobs(history_tokens=2000)], indirect=True)
async def test_a_partial_answer_after_a_long_one_says_the_history_was_cut(harness: Harness) -> None:
    await harness.say("write me an essay [[long:50000]]")
    reply = await harness.core.handle(harness.message("[[cut]] and what comes after that essay?"), _ignore)
    assert reply.kind is ReplyKind.PARTIAL and reply.notice == texts.HISTORY_CUT


@pytest.mark.parametrize("knobs", [Knobs(history_tokens=256)], indirect=True)
async def test_a_cut_too_small_to_say_anything_is_left_out(harness: Harness, counter: TokenCounter) -> None:
    await harness.say("write me an essay [[long:50000]]")
    # A question that leaves the history 8 tokens once a context-too-long error has halved the budget to 128.
    system = counter.count_message(harness.fake.requests[-1]["messages"][0]["content"])
    question = "[[contextx1]]"
    while counter.count_message(f"Ada: {question} more") <= 128 - system - 8:
        question += " more"
    reply = await harness.say(question)
    failed, succeeded = harness.fake.requests[-2:]
    assert [m["role"] for m in failed["messages"]] == ["system", "assistant", "user"]
    # Four tokens of the essay would be " […]" and nothing else: the retry goes without it, and says so.
    assert [m["role"] for m in succeeded["messages"]] == ["system", "user"]
    assert reply.kind is ReplyKind.ANSWER and reply.notice == texts.HISTORY_CUT


async def test_control_characters_and_nuls_are_dropped(harness: Harness) -> None:
    await harness.say("a\x00b\x07c\td\ne ☃ שלום 🎉")
    assert user_contents(harness.fake.requests[-1])[-1] == "Ada: abc\td\ne ☃ שלום 🎉"


async def test_a_lone_surrogate_from_the_model_or_a_person_is_stored_as_a_question_mark(
    tmp_path: Path, counter: TokenCounter
) -> None:
    # "\ud800" is valid JSON but no encoding writes it: storing it as it is would make the database refuse the turn.
    async with FakeOpenAI(api_key="sk-test-key-123456", reply=lambda messages: "odd \ud800 text") as fake:
        store = await open_store(str(tmp_path / "teambot.db"))
        try:
            async with model_http_client(5.0) as http:
                llm = ChatClient(
                    http, Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr("sk-test-key-123456")))
                )
                core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", 4000))
                first = await core.handle(IncomingMessage(KEY, "m1", "U1", "Ada", "bad \udc80 input"))
                assert first.kind is ReplyKind.ANSWER and first.reply_id is not None
                await core.handle(IncomingMessage(KEY, "m2", "U1", "Ada", "again"))
            history = [m["content"] for m in fake.requests[-1]["messages"][1:-1]]
            assert history == ["Ada: bad ? input", "odd ? text"]
        finally:
            await store.close()


async def test_reset_forgets_and_counts(harness: Harness) -> None:
    await harness.say("one")
    await harness.say("two")
    await harness.say("in the other channel", key=OTHER)
    assert await harness.core.reset(KEY) == 4
    await harness.say("fresh start")
    assert user_contents(harness.fake.requests[-1]) == ["Ada: fresh start"]
    with sqlite3.connect(harness.db) as db:
        assert db.execute("SELECT count(*) FROM messages WHERE content LIKE '%two%'").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 4  # C2 turn + the fresh turn


async def test_history_survives_a_restart(tmp_path: Path, fake: FakeOpenAI, counter: TokenCounter) -> None:
    db = str(tmp_path / "restart.db")
    for text in ("remember 42", "what did I say?"):
        store = await open_store(db)
        async with model_http_client(30) as http:
            llm = ChatClient(http, Endpoint("primary", fake.base_url, "m"))
            core = ConversationCore(store, llm, counter, TurnSettings("sys", 4000))
            await core.handle(IncomingMessage(KEY, text, "U1", "Ada", text))
        await store.close()
    assert user_contents(fake.requests[-1]) == ["Ada: remember 42", "Ada: what did I say?"]


@pytest.mark.parametrize("knobs", [Knobs(max_retries=0)], indirect=True)
@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("[[401]]", texts.KEY_REJECTED),
        ("[[quota]]", texts.QUOTA_EXHAUSTED),
        ("[[500]]", texts.UNAVAILABLE),
        ("[[403]]", texts.FORBIDDEN),
        ("[[429]]", texts.RATE_LIMITED.format(seconds=1)),
    ],
)
async def test_model_failures_become_clear_messages(harness: Harness, token: str, expected: str) -> None:
    reply = await harness.say(f"please fail {token}")
    assert reply.kind is ReplyKind.ERROR
    assert reply.text == expected


async def test_429_then_success_is_one_answer_after_the_wait(harness: Harness) -> None:
    started = time.monotonic()
    reply = await harness.say("[[429:ra=0.5x1]] hello")
    waited = time.monotonic() - started
    assert reply.kind is ReplyKind.ANSWER
    assert harness.fake.calls == 2
    # The retry waited out the server's Retry-After, not only the client's own 0.01 s backoff.
    assert 0.5 <= waited < 5


async def test_a_burst_of_5xx_then_success_is_one_answer(harness: Harness) -> None:
    reply = await harness.say("[[503x2]] hello")
    assert reply.kind is ReplyKind.ANSWER and reply.text == "echo: Ada: [[503x2]] hello"
    assert harness.fake.calls == 3


async def test_malformed_sse_is_retried_into_one_answer(harness: Harness) -> None:
    async def ignore(piece: str) -> None:
        return None

    reply = await harness.core.handle(harness.message("[[malformedx1]] hi"), ignore)
    assert reply.kind is ReplyKind.ANSWER and harness.fake.calls == 2


@pytest.mark.parametrize("knobs", [Knobs(request_timeout=0.2, max_retries=0)], indirect=True)
async def test_a_slow_server_times_out_with_a_clear_message(harness: Harness) -> None:
    reply = await harness.say("[[slow:1]] anyone?")
    assert reply.kind is ReplyKind.ERROR and reply.text == texts.TIMED_OUT


@pytest.mark.parametrize("knobs", [Knobs(history_tokens=1000)], indirect=True)
async def test_context_too_long_trims_harder_and_retries_once(harness: Harness) -> None:
    for i in range(12):
        await harness.say(f"filler {i} " + "lorem " * 60)
    full = sum(len(m["content"]) for m in harness.fake.requests[-1]["messages"])
    harness.fake.context_limit_chars = int(full * 0.75)  # the whole history no longer fits; half of it does
    reply = await harness.say("final question")
    assert reply.kind is ReplyKind.ANSWER
    failed, succeeded = harness.fake.requests[-2:]
    assert len(succeeded["messages"]) < len(failed["messages"])
    assert user_contents(succeeded)[-1] == "Ada: final question"


async def test_context_still_too_long_after_trimming_is_explained(harness: Harness) -> None:
    reply = await harness.say("[[context]]")
    assert reply.kind is ReplyKind.ERROR and reply.text == texts.CONTEXT_TOO_LONG
    assert harness.fake.calls == 2


async def test_a_cut_stream_keeps_the_partial_answer_marked(harness: Harness) -> None:
    pieces: list[str] = []

    async def on_text(piece: str) -> None:
        pieces.append(piece)

    reply = await harness.core.handle(harness.message("[[cut]] tell me a long story about the sea"), on_text)
    assert reply.kind is ReplyKind.PARTIAL
    streamed = "".join(pieces)
    assert streamed and reply.text.startswith(streamed) and "cut off" in reply.text
    with sqlite3.connect(harness.db) as db:
        rows = db.execute("SELECT content, complete, usage_exact FROM messages WHERE role = 'assistant'").fetchall()
    assert rows == [(reply.text, 0, 0)]
    assert harness.fake.calls == 1  # text had reached the user: a retry would have said it twice


async def test_an_empty_completion_is_explained_and_not_stored(harness: Harness) -> None:
    reply = await harness.say("[[empty]]")
    assert reply.kind is ReplyKind.ERROR and reply.text == texts.EMPTY_COMPLETION
    with sqlite3.connect(harness.db) as db:
        assert db.execute("SELECT count(*) FROM messages WHERE role = 'assistant'").fetchone()[0] == 0


async def test_a_failed_turn_keeps_the_question(harness: Harness) -> None:
    await harness.say("[[500]] first question")
    await harness.say("second question")
    assert user_contents(harness.fake.requests[-1]) == ["Ada: [[500]] first question", "Ada: second question"]


async def test_a_flood_in_one_conversation_is_told_at_once_and_its_queue_is_counted(
    tmp_path: Path, fake: FakeOpenAI, counter: TokenCounter
) -> None:
    # Reported: 200 mentions in one channel queued 198 turns on its lock, the queue-depth metric said 0, nobody
    # was told "busy" and the "slow down" replies came minutes later, each after the turn before it.
    fake.hold = asyncio.Event()
    guards = Guards(
        channel_rate=RateLimiter(6),
        buckets=TokenBuckets(clock=lambda: 0.0),  # no refill while the test runs
        max_queued_per_conversation=2,
    )
    store = await open_store(str(tmp_path / "flood.db"))
    try:
        async with model_http_client(5.0) as http:
            llm = ChatClient(
                http, Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr("sk-test-key-123456")))
            )
            core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", 4000), guards)
            tasks = [
                asyncio.create_task(core.handle(IncomingMessage(KEY, f"m{i}", f"U{i}", f"P{i}", f"question {i}")))
                for i in range(12)
            ]
            await fake.wait_for_requests(1)
            # 6 pass the channel's limit: 1 is being answered, 2 wait, 3 are told at once; the other 6 slow down.
            async with asyncio.timeout(5):
                while sum(t.done() for t in tasks) < 9:
                    await asyncio.wait([t for t in tasks if not t.done()], return_when=asyncio.FIRST_COMPLETED)
            told = sorted(t.result().text for t in tasks if t.done())
            assert told == sorted([texts.CONVERSATION_BUSY] * 3 + [texts.SLOW_DOWN.format(seconds=10)] * 6)
            assert fake.calls == 1 and fake.in_flight == 1  # all of that while the first answer is still on its way
            assert core.metrics.registry.get_sample_value("teambot_queue_depth") == 2
            fake.hold.set()
            replies = await asyncio.gather(*tasks)
            assert sum(r.kind is ReplyKind.ANSWER for r in replies) == 3 and fake.calls == 3
            assert core.metrics.registry.get_sample_value("teambot_queue_depth") == 0
    finally:
        await store.close()


async def test_a_question_refused_by_the_rate_limit_leaves_no_trace(
    tmp_path: Path, fake: FakeOpenAI, counter: TokenCounter
) -> None:
    # A refused question leaves no trace in the history, and its id stays handled (a redelivery is silent, not
    # told to slow down twice).
    guards = Guards(user_rate=RateLimiter(1), buckets=TokenBuckets(clock=lambda: 0.0))
    store = await open_store(str(tmp_path / "refused.db"))
    try:
        async with model_http_client(5.0) as http:
            llm = ChatClient(
                http, Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr("sk-test-key-123456")))
            )
            core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", 4000), guards)
            first = await core.handle(IncomingMessage(KEY, "m1", "U1", "Ada", "first"))
            assert first.kind is ReplyKind.ANSWER
            slowed = await core.handle(IncomingMessage(KEY, "m2", "U1", "Ada", "second"))
            assert slowed.text == texts.SLOW_DOWN.format(seconds=60)
            assert await store.count_messages(KEY) == 2
            assert (await core.handle(IncomingMessage(KEY, "m2", "U1", "Ada", "second"))).kind is ReplyKind.DUPLICATE
            third = await core.handle(IncomingMessage(KEY, "m3", "U2", "Grace", "third"))
            assert third.kind is ReplyKind.ANSWER
            assert user_contents(fake.requests[-1]) == ["Ada: first", "Grace: third"]
    finally:
        await store.close()


def count_writes(core: ConversationCore) -> list[str]:
    """The write transactions the core's SQLite store makes from now on, by the name of the work done in each."""
    writer = core.store._writer  # type: ignore[attr-defined]
    transaction, begin = writer.transaction, writer.begin
    writes: list[str] = []

    async def counted(work: Callable[[sqlite3.Connection], object]) -> object:
        writes.append(getattr(work, "__qualname__", "?"))
        return await transaction(work)

    def counted_begin(work: Callable[[sqlite3.Connection], object]) -> object:
        # The transactions begun at once (the plain turn's claim and question: SQLiteWriter.begin).
        writes.append(getattr(work, "__qualname__", "?"))
        return begin(work)

    writer.transaction, writer.begin = counted, counted_begin
    return writes


async def test_a_plain_turn_claims_and_stores_its_question_in_one_write(harness: Harness) -> None:
    # The plain path's cost (BENCHMARKS.md): a mention in an idle conversation writes twice, the claim with the
    # question, then the reply; a third write (the claim alone, on arrival) cost 10-15 % of a turn's CPU.
    writes = count_writes(harness.core)
    assert (await harness.say("hello")).kind is ReplyKind.ANSWER
    assert len(writes) == 2, writes
    assert (await harness.say("again")).kind is ReplyKind.ANSWER
    assert len(writes) == 4, writes
    assert (await harness.say("hello", mid="m1")).kind is ReplyKind.DUPLICATE  # the claim was made all the same
    assert user_contents(harness.fake.requests[-1]) == ["Ada: hello", "Ada: again"]


async def test_mentions_at_once_take_their_rate_tokens_in_the_order_they_came(
    tmp_path: Path, fake: FakeOpenAI, counter: TokenCounter
) -> None:
    # The first takes the one-write path (its rate tokens after its write), the second claims on arrival: it must
    # still wait for the first's rate check, or it would take the person's last token from the one who came first.
    guards = Guards(user_rate=RateLimiter(1), buckets=TokenBuckets(clock=lambda: 0.0))
    store = await open_store(str(tmp_path / "order.db"))
    try:
        async with model_http_client(5.0) as http:
            llm = ChatClient(
                http, Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr("sk-test-key-123456")))
            )
            core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", 4000), guards)
            first, second = await asyncio.gather(
                core.handle(IncomingMessage(KEY, "m1", "U1", "Ada", "first")),
                core.handle(IncomingMessage(KEY, "m2", "U1", "Ada", "second")),
            )
            assert first.kind is ReplyKind.ANSWER
            assert second.text == texts.SLOW_DOWN.format(seconds=60)
            assert await store.count_messages(KEY) == 2 and await store.handled(["m1", "m2"]) == {"m1", "m2"}
    finally:
        await store.close()


async def test_a_redelivery_between_two_mentions_does_not_let_the_second_pass_the_first(
    tmp_path: Path, fake: FakeOpenAI, counter: TokenCounter
) -> None:
    # The first mention takes the one-write path, the other two claim on arrival, their claims written before its
    # write. The redelivery in the middle must not step aside before the first's rate check, or the third would
    # take the person's last token ahead of the first.
    guards = Guards(user_rate=RateLimiter(1), buckets=TokenBuckets(clock=lambda: 0.0))
    store = await open_store(str(tmp_path / "between.db"))
    try:
        assert await store.claim_message("old")  # delivered before, say before a restart
        async with model_http_client(5.0) as http:
            llm = ChatClient(
                http, Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr("sk-test-key-123456")))
            )
            core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", 4000), guards)
            first, again, second = await asyncio.gather(
                core.handle(IncomingMessage(KEY, "m1", "U1", "Ada", "first")),
                core.handle(IncomingMessage(KEY, "old", "U2", "Grace", "old")),
                core.handle(IncomingMessage(KEY, "m2", "U1", "Ada", "second")),
            )
            assert first.kind is ReplyKind.ANSWER and again.kind is ReplyKind.DUPLICATE
            assert second.text == texts.SLOW_DOWN.format(seconds=60)
            assert await store.count_messages(KEY) == 2
    finally:
        await store.close()


async def test_a_turn_cut_off_before_its_one_write_releases_no_claim(
    tmp_path: Path, fake: FakeOpenAI, counter: TokenCounter
) -> None:
    # On the one-write path a turn holds its conversation before it claims its id: cut off before its write, it
    # must not release a claim it never made (here the id's first delivery, answered already).
    store = await open_store(str(tmp_path / "uncut.db"))
    try:
        async with model_http_client(5.0) as http:
            llm = ChatClient(
                http, Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr("sk-test-key-123456")))
            )
            core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", 4000))
            assert (await core.handle(IncomingMessage(KEY, "m1", "U1", "Ada", "first"))).kind is ReplyKind.ANSWER
            # The writer's thread holds the connection: the write goes there, so the turn waits at it (inline it
            # would not wait at all, and could not be cut off in between).
            gate = threading.Event()
            held = store._writer._on_thread(gate.wait)  # type: ignore[attr-defined]
            again = asyncio.create_task(core.handle(IncomingMessage(KEY, "m1", "U1", "Ada", "first")))
            await asyncio.sleep(0)  # the redelivery runs up to its write: it holds the conversation
            assert len(core._locks) == 1 and not again.done()
            again.cancel()
            gate.set()
            with pytest.raises(asyncio.CancelledError):
                await again
            await held
            assert (await core.handle(IncomingMessage(KEY, "m1", "U1", "Ada", "first"))).kind is ReplyKind.DUPLICATE
            assert fake.calls == 1 and await store.count_messages(KEY) == 2
    finally:
        await store.close()


async def test_turns_cut_off_while_their_writes_wait_release_what_those_writes_did(
    tmp_path: Path, fake: FakeOpenAI, counter: TokenCounter
) -> None:
    # The store runs a write to its end even when the turn that asked for it is cut off meanwhile (the process
    # stops past its drain deadline while the writer is backed up): the one write of a plain turn (claim and
    # question) and the claim of the turn behind it must both be undone, so each message is answered when the
    # platform delivers it again, from a history without a question left hanging.
    store = await open_store(str(tmp_path / "backed-up.db"))
    gate = threading.Event()
    try:
        async with model_http_client(5.0) as http:
            llm = ChatClient(
                http, Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr("sk-test-key-123456")))
            )
            core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", 4000))
            queue = store._writer._queue  # type: ignore[attr-defined]
            blocker = asyncio.ensure_future(store._writer.transaction(lambda db: gate.wait(10), inline=False))  # type: ignore[attr-defined]
            first = asyncio.create_task(core.handle(IncomingMessage(KEY, "m1", "U1", "Ada", "first")))
            second = asyncio.create_task(core.handle(IncomingMessage(KEY, "m2", "U1", "Ada", "second")))
            async with asyncio.timeout(10):
                # The first turn's one write and the second's claim wait behind the blocker: on the writer's thread.
                while len(queue) < 2:  # noqa: ASYNC110 - a thread's queue: nothing to be notified by
                    await asyncio.sleep(0.01)
            first.cancel()
            second.cancel()
            await asyncio.sleep(0)  # one step: both take their cut-off and wait for their writes' outcome
            gate.set()
            await blocker
            for task in (first, second):
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert await store.handled(["m1", "m2"]) == set()
            assert await store.count_messages(KEY) == 0
            for message_id in ("m1", "m2"):
                reply = await core.handle(IncomingMessage(KEY, message_id, "U1", "Ada", "again"))
                assert reply.kind is ReplyKind.ANSWER
    finally:
        gate.set()
        await store.close()


async def test_lock_table_is_bounded_to_active_conversations() -> None:
    locks = KeyedLocks()
    async with locks.hold("a"), locks.hold("b"):
        assert len(locks) == 2
    assert len(locks) == 0
    # A waiter cut off while it waits, and a block that fails, leave nothing behind either.
    async with locks.hold("a"):
        waiter = asyncio.create_task(locks.hold("a").__aenter__())
        await asyncio.sleep(0)
        assert locks.waiting == 1 and not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert locks.waiting == 0
    assert len(locks) == 0
    with pytest.raises(KeyError):
        async with locks.hold("a"):
            raise KeyError("a")
    assert len(locks) == 0 and locks.idle("a")


async def _ignore(piece: str) -> None:
    return None


async def test_a_turn_cut_off_while_queued_releases_its_message(
    tmp_path: Path, fake: FakeOpenAI, counter: TokenCounter
) -> None:
    # A shutdown past the drain deadline cancels the turns still waiting for their conversation too: their message
    # ids were claimed on arrival, and must be freed so the message is answered if it comes again.
    fake.hold = asyncio.Event()
    store = await open_store(str(tmp_path / "queued.db"))
    try:
        async with model_http_client(5.0) as http:
            llm = ChatClient(
                http, Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr("sk-test-key-123456")))
            )
            core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", 4000))
            first = asyncio.create_task(core.handle(IncomingMessage(KEY, "m1", "U1", "Ada", "first")))
            await fake.wait_for_requests(1)
            queued = asyncio.create_task(core.handle(IncomingMessage(KEY, "m2", "U2", "Bob", "second")))
            await until(lambda: core.metrics.registry.get_sample_value("teambot_queue_depth") == 1)
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            fake.hold.set()
            assert (await first).kind is ReplyKind.ANSWER
            again = await core.handle(IncomingMessage(KEY, "m2", "U2", "Bob", "second"))
            assert again.kind is ReplyKind.ANSWER
            assert await store.count_messages(KEY) == 4
    finally:
        await store.close()


async def test_a_turn_cut_off_after_the_model_answered_is_not_released(
    tmp_path: Path, fake: FakeOpenAI, counter: TokenCounter
) -> None:
    # Once the model has answered, the person has seen the answer: a cut-off while the reply is being stored must
    # not free the message id, or a redelivery would be answered a second time.
    fake.hold = asyncio.Event()
    path = tmp_path / "settled.db"
    store = await open_store(str(path))
    try:
        async with model_http_client(5.0) as http:
            llm = ChatClient(
                http, Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr("sk-test-key-123456")))
            )
            core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", 4000))
            turn = asyncio.create_task(core.handle(IncomingMessage(KEY, "m1", "U1", "Ada", "first")))
            await fake.wait_for_requests(1)
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the reply's write waits
            try:
                fake.hold.set()
                # The model's answer is in: observed as the call returns, right before the reply is stored.
                await until(lambda: bool(core.metrics.registry.get_sample_value("teambot_model_latency_seconds_count")))
                turn.cancel()
                await asyncio.sleep(0)  # the cancellation lands in the waiting write
            finally:
                other.execute("ROLLBACK")
                other.close()
            with pytest.raises(asyncio.CancelledError):
                await turn
            await store.claim_message("after")  # queued behind whatever the writer still had to do
            assert await store.count_messages(KEY) == 2
            again = await core.handle(IncomingMessage(KEY, "m1", "U1", "Ada", "first"))
            assert again.kind is ReplyKind.DUPLICATE
    finally:
        await store.close()


# --- reasoning models ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["[[think]]", "[[thinking]]", "[[reasoning]]"])
@pytest.mark.parametrize("streaming", [True, False])
async def test_thinking_stays_out_of_the_reply_and_the_history(harness: Harness, token: str, streaming: bool) -> None:
    shown: list[str] = []
    thoughts: list[str] = []

    async def on_text(piece: str) -> None:
        shown.append(piece)

    async def on_reasoning(piece: str) -> None:
        thoughts.append(piece)

    reply = await harness.core.handle(
        harness.message(f"{token} first question"), on_text if streaming else None, on_reasoning
    )
    assert reply.kind is ReplyKind.ANSWER and reply.text == f"echo: Ada: {token} first question"
    assert "".join(thoughts).strip() == THOUGHT
    assert THOUGHT_MARK not in "".join(shown)
    await harness.say("second question")
    # The history sent back holds the answer alone: no thinking, no tags.
    sent = str(harness.fake.requests[-1]["messages"])
    assert THOUGHT_MARK not in sent and "think>" not in sent
    with sqlite3.connect(harness.db) as db:
        stored = " ".join(row[0] for row in db.execute("SELECT content FROM messages"))
    assert THOUGHT_MARK not in stored


@pytest.mark.parametrize("streaming", [True, False])
async def test_a_reasoning_model_answers_with_no_setting_and_a_channel_effort_reaches_it(
    harness: Harness, streaming: bool
) -> None:
    async def on_text(piece: str) -> None:
        pass

    commands = Commands(harness.core, CommandPolicy(models=frozenset({"gpt-5-mini"})))
    admin = CommandContext(KEY, "U-admin", platform_admin=True)
    assert await commands.run("model", admin, "gpt-5-mini loud") == texts.EFFORT_NOT_KNOWN.format(
        effort="loud", efforts=", ".join(REASONING_EFFORTS)
    )
    assert await commands.run("model", CommandContext(KEY, "U-someone"), "gpt-5-mini high") == texts.ADMIN_ONLY.format(
        admins=texts.ADMINS_SLACK
    )
    done = await commands.run("model", admin, "gpt-5-mini high")
    assert done == texts.MODEL_SET.format(model="gpt-5-mini with reasoning effort high")
    assert "gpt-5-mini with reasoning effort high" in await commands.run("model", admin, "")

    reply = await harness.core.handle(harness.message("think hard"), on_text if streaming else None)
    assert reply.kind is ReplyKind.ANSWER and reply.text == "echo: Ada: think hard"
    request = harness.fake.requests[-1]
    assert request["model"] == "gpt-5-mini" and request["reasoning_effort"] == "high"
    assert "max_tokens" not in request and request["max_completion_tokens"] > 0
    # Another model drops the effort chosen for the first.
    await commands.run("model", admin, "fake-model")
    await harness.say("plain now")
    assert "reasoning_effort" not in harness.fake.requests[-1]


async def _prefix_changes(tmp_path: Path, counter: TokenCounter, trim_block: float) -> tuple[int, float]:
    """Turns (of 40, after the window filled) whose prompt did not begin with the whole previous prompt; and the
    share of prompt tokens the fake's prompt cache served over them."""
    store = await open_store(str(tmp_path / f"prefix-{trim_block}.db"))
    system = "You are a test bot. " + " ".join(f"rule {n}." for n in range(400))
    try:
        async with FakeOpenAI(usage_details=True) as fake, model_http_client(5) as http:
            llm = ChatClient(http, Endpoint("primary", fake.base_url, "fake-model"))
            settings = TurnSettings(system, 3000, stream=False, trim_block=trim_block)
            core = ConversationCore(store, llm, counter, settings)
            for n in range(50):
                # Questions of different lengths: the block line must not move with the question's size.
                question = f"question {n} " + "word " * (20 + n * 37 % 80)
                reply = await core.handle(IncomingMessage(KEY, f"m{n}", "U1", "Ada", question))
                assert reply.kind is ReplyKind.ANSWER
    finally:
        await store.close()
    prompts = [r["messages"] for r in fake.requests]
    # Nothing that varies per turn goes before the history: the system message is the same bytes every turn.
    assert len({json.dumps(p[0]) for p in prompts}) == 1
    changed = sum(1 for before, now in itertools.pairwise(prompts[10:]) if now[: len(before)] != before)
    steady = fake.usages[10:]
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in steady) / sum(u["prompt_tokens"] for u in steady)
    return changed, cached


async def test_the_prompt_prefix_stays_byte_identical_for_several_turns(tmp_path: Path, counter: TokenCounter) -> None:
    blocks, blocks_cached = await _prefix_changes(tmp_path, counter, 0.5)
    single, single_cached = await _prefix_changes(tmp_path, counter, 0.0)
    # About 330 tokens a turn against a 2,000-token history: one by one, the oldest turn goes every turn; in blocks
    # of half the budget, about every fourth turn (9 of 39 when written). The fake's cache sees the difference.
    assert single >= 35
    assert blocks <= 10
    assert blocks_cached >= 0.7 and single_cached < 0.1
