"""Costs, budgets, rate limits, the call queue, access lists and per-channel settings, through the real core."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot import texts
from bot.commands import CommandContext, CommandPolicy, Commands
from bot.conversation import ConversationCore, TurnSettings
from bot.guards import (
    AccessPolicy,
    Accounting,
    Budget,
    ConcurrencyGate,
    Guards,
    KeySource,
    Period,
    PriceTable,
    RateLimiter,
    ScopeKind,
    Unit,
)
from bot.llm import ChatClient, Endpoint, RetryPolicy, TokenCounter, model_http_client
from bot.messages import ConversationKey, IncomingMessage, ReplyKind, Usage
from bot.store import Store, TokenBuckets, open_store
from bot.store.sqlite import SQLiteStore
from tests.fakes.openai import FakeOpenAI

KEY = ConversationKey("slack", "T1", "C1")
NOV_24_NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = NOV_24_NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Bot:
    core: ConversationCore
    fake: FakeOpenAI
    store: Store
    db: Path
    clock: Clock
    n: int = 0

    async def ask(self, text: str = "hi", *, user: str = "U1", key: ConversationKey = KEY):
        self.n += 1
        return await self.core.handle(IncomingMessage(key, f"m{self.n}", user, f"name-{user}", text))

    def ledger(self) -> list[tuple]:
        with sqlite3.connect(self.db) as db:
            return db.execute(
                "SELECT user_id, model, prompt_tokens, completion_tokens, exact, cost, priced FROM usage ORDER BY id"
            ).fetchall()


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter.load()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
def guards_for(request: pytest.FixtureRequest):
    return getattr(request, "param", {})


@contextlib.asynccontextmanager
async def make_bot(tmp_path: Path, fake: FakeOpenAI, counter: TokenCounter, **kw: object) -> AsyncIterator[Bot]:
    db = tmp_path / "teambot.db"
    store = await open_store(str(db))
    clock = Clock()
    accounting = Accounting(
        store,
        PriceTable({"fake-model": (1_000.0, 2_000.0)}),  # dollars per million: big enough to see
        kw.pop("budgets", []),  # type: ignore[arg-type]
        unit=kw.pop("unit", Unit.TOKENS),  # type: ignore[arg-type]
        soft_percent=80,
        clock=clock,
    )
    guards = Guards(accounting=accounting, **kw)  # type: ignore[arg-type]
    try:
        async with model_http_client(5.0) as http:
            llm = ChatClient(http, Endpoint("primary", fake.base_url, "fake-model"), retry=RetryPolicy(max_retries=0))
            core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", 4000), guards)
            yield Bot(core, fake, store, db, clock)
    finally:
        await store.close()


@pytest.fixture
async def bot(tmp_path: Path, fake: FakeOpenAI, counter: TokenCounter) -> AsyncIterator[Bot]:
    async with make_bot(tmp_path, fake, counter) as b:
        yield b


def test_prices_by_exact_name_prefix_and_provider_path() -> None:
    table = PriceTable({"local": (0.0, 0.0)})
    assert table.cost("gpt-4o-mini", 1_000_000, 1_000_000).cost == pytest.approx(0.75)
    assert table.cost("gpt-4o-mini-2024-07-18", 1_000_000, 0).cost == pytest.approx(0.15)
    assert table.cost("openai/gpt-4o", 0, 1_000_000).cost == pytest.approx(10.0)
    assert table.cost("local", 5, 5).known
    unknown = table.cost("llama3.2", 1000, 1000)
    assert unknown.cost == 0 and not unknown.known


async def test_every_call_is_in_the_ledger_priced_from_the_servers_usage(bot: Bot) -> None:
    reply = await bot.ask("price me")
    assert reply.usage is not None and reply.usage.exact
    [(user, model, prompt, completion, exact, cost, priced)] = bot.ledger()
    assert (user, model, exact, priced) == ("U1", "fake-model", 1, 1)
    assert (prompt, completion) == (reply.usage.prompt_tokens, reply.usage.completion_tokens)
    assert cost == pytest.approx((prompt * 1_000 + completion * 2_000) / 1_000_000)


async def test_an_interrupted_stream_is_charged_with_an_estimate_marked_as_such(bot: Bot) -> None:
    async def ignore(piece: str) -> None:
        return None

    reply = await bot.core.handle(IncomingMessage(KEY, "cut", "U1", "Ada", "[[cut]] a long story please"), ignore)
    assert reply.kind is ReplyKind.PARTIAL
    [(_, _, prompt, completion, exact, _, _)] = bot.ledger()
    assert exact == 0 and prompt > 0 and completion > 0


async def test_an_empty_completion_is_still_charged(bot: Bot) -> None:
    reply = await bot.ask("[[empty]] say nothing")
    assert reply.kind is ReplyKind.ERROR and reply.text == texts.EMPTY_COMPLETION
    [(user, model, prompt, completion, exact, cost, priced)] = bot.ledger()  # the provider bills it: so do we
    assert (user, model, exact, priced) == ("U1", "fake-model", 1, 1)
    assert prompt > 0 and completion == 0 and cost == pytest.approx(prompt * 1_000 / 1_000_000)
    with sqlite3.connect(bot.db) as db:
        assert db.execute("SELECT count(*) FROM messages WHERE role = 'assistant'").fetchone() == (0,)


async def test_a_reply_the_full_disk_refuses_is_still_answered_and_charged(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    long_answer = "".join(f"word{n:06d} " for n in range(20_000))  # 220,000 characters
    bot.fake.reply = lambda messages: long_answer
    assert isinstance(bot.store, SQLiteStore)

    def fill_the_disk(db: sqlite3.Connection) -> None:
        # SQLite's own "database or disk is full" (SQLITE_FULL), as on a full disk: the short rows of a turn still
        # fit in the pages there are; a long reply, which needs dozens more, does not.
        [(pages,)] = db.execute("PRAGMA page_count").fetchall()
        db.execute(f"PRAGMA max_page_count = {pages + 1}").fetchall()

    await bot.store._writer.transaction(fill_the_disk)
    streamed: list[str] = []

    async def show(piece: str) -> None:
        streamed.append(piece)

    reply = await bot.core.handle(IncomingMessage(KEY, "m-full", "U1", "Ada", "tell me everything"), show)
    assert "".join(streamed) == long_answer  # the person saw all of it
    assert reply.kind is ReplyKind.ANSWER and reply.text == long_answer and reply.notice == texts.REPLY_NOT_SAVED
    [(user, model, prompt, completion, exact, _, priced)] = bot.ledger()  # and the call is on the bill
    assert (user, model, exact, priced) == ("U1", "fake-model", 1, 1)
    assert reply.usage is not None and (prompt, completion) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )
    with sqlite3.connect(bot.db) as db:
        assert db.execute("SELECT role FROM messages").fetchall() == [("user",)]
    assert "could not be stored: storing the reply failed: database or disk is full" in caplog.text


async def test_unknown_models_cost_nothing_and_are_flagged(tmp_path: Path, fake: FakeOpenAI, counter) -> None:
    async with make_bot(tmp_path, fake, counter) as b:
        b.core._llm.primary = Endpoint("primary", fake.base_url, "mystery-model")  # type: ignore[attr-defined]
        fake.reply = lambda messages: "hello"
        await b.ask()
        # The fake reports the model it was asked for, so the ledger knows it by that name.
        assert [(row[1], row[5], row[6]) for row in b.ledger()] == [("mystery-model", 0.0, 0)]
        report = await b.core.guards.accounting.report(KEY, "U1")  # type: ignore[union-attr]
        assert texts.USAGE_UNPRICED in report


async def test_hard_cap_refuses_says_when_it_resets_and_charges_nothing(tmp_path, fake, counter) -> None:
    budget = Budget(ScopeKind.USER, Period.DAY, 100)
    async with make_bot(tmp_path, fake, counter, budgets=[budget]) as b:
        first = await b.ask("x " * 200)  # well over 100 tokens in one call: allowed, it started under the cap
        assert first.kind is ReplyKind.ANSWER
        refused = await b.ask("one more")
        assert refused.kind is ReplyKind.REFUSED
        assert refused.text == texts.BUDGET_REACHED.format(budget="your daily budget", resets="2026-11-25 00:00 UTC")
        assert fake.calls == 1 and len(b.ledger()) == 1
        assert await b.store.count_messages(KEY) == 2  # the refused question left no trace
        other_user = await b.ask("me too", user="U2")
        assert other_user.kind is ReplyKind.ANSWER


async def test_calls_queued_for_a_slot_are_refused_once_the_budget_is_spent(tmp_path, fake, counter) -> None:
    # Reported: a budget of 1 token, 8 questions at once, all 8 answered: each was checked before it queued.
    budget = Budget(ScopeKind.USER, Period.DAY, 1)
    gate = ConcurrencyGate(limit=1, max_waiting=10)
    async with make_bot(tmp_path, fake, counter, budgets=[budget], gate=gate) as b:
        keys = [ConversationKey("slack", "T1", f"C{c}") for c in range(4)]
        replies = await asyncio.gather(*(b.ask(key=k) for k in keys))
        assert sorted(r.kind.value for r in replies) == ["answer", "refused", "refused", "refused"]
        reached = texts.BUDGET_REACHED.format(budget="your daily budget", resets="2026-11-25 00:00 UTC")
        assert all(r.text == reached for r in replies if r.kind is ReplyKind.REFUSED)
        assert fake.calls == 1 and len(b.ledger()) == 1  # only the call running when it ran out
        # The refused questions left no trace, and their ids stay handled.
        assert [await b.store.count_messages(k) for k in keys] == [
            2 if r.kind is ReplyKind.ANSWER else 0 for r in replies
        ]
        assert await b.store.handled([f"m{n}" for n in range(1, 5)]) == {f"m{n}" for n in range(1, 5)}


async def test_a_budget_used_exactly_up_to_its_limit_is_used_up(tmp_path: Path) -> None:
    store = await open_store(str(tmp_path / "t.db"))
    try:

        def accounting(limit: float) -> Accounting:
            return Accounting(store, PriceTable(), [Budget(ScopeKind.USER, Period.DAY, limit)], clock=Clock())

        await store.add_usage(accounting(150).charge(KEY, "U1", "fake-model", Usage(100, 50)))
        reached = texts.BUDGET_REACHED.format(budget="your daily budget", resets="2026-11-25 00:00 UTC")
        assert await accounting(150).refusal(KEY, "U1") == reached
        assert await accounting(151).refusal(KEY, "U1") is None
    finally:
        await store.close()


async def test_two_calls_crossing_the_soft_cap_together_warn_once(tmp_path: Path) -> None:
    store = await open_store(str(tmp_path / "t.db"))
    try:
        accounting = Accounting(store, PriceTable(), [Budget(ScopeKind.CHANNEL, Period.DAY, 200)], clock=Clock())
        await store.add_usage(accounting.charge(KEY, "U1", "fake-model", Usage(100, 50)))  # 150, under 160
        first, second = (accounting.charge(KEY, user, "fake-model", Usage(10, 5)) for user in ("U1", "U2"))
        # Both are stored before either looks: each sees 180 spent, 15 of it its own, so neither "crossed" 160.
        await store.add_usage(first)
        await store.add_usage(second)
        notices = [await accounting.notice(first), await accounting.notice(second)]
        assert notices[0] is not None and "this channel's daily budget" in notices[0] and notices[1] is None
        later = accounting.charge(KEY, "U1", "fake-model", Usage(1, 1))
        await store.add_usage(later)
        assert await accounting.notice(later) is None
        # Another replica (its own Accounting, on the same database) does not warn again either.
        other = Accounting(store, PriceTable(), [Budget(ScopeKind.CHANNEL, Period.DAY, 200)], clock=Clock())
        assert await other.notice(later) is None
    finally:
        await store.close()


async def test_budgets_reset_at_the_period_boundary(tmp_path, fake, counter) -> None:
    budget = Budget(ScopeKind.WORKSPACE, Period.MONTH, 50)
    async with make_bot(tmp_path, fake, counter, budgets=[budget]) as b:
        await b.ask("x " * 100)
        assert (await b.ask()).kind is ReplyKind.REFUSED
        b.clock.now = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC).timestamp()
        assert (await b.ask()).kind is ReplyKind.REFUSED
        b.clock.now = datetime(2026, 12, 1, 0, 0, 0, tzinfo=UTC).timestamp()
        assert (await b.ask()).kind is ReplyKind.ANSWER


async def test_soft_cap_warns_once_per_period(tmp_path, fake, counter) -> None:
    fake.reply = lambda messages: "ok"
    budget = Budget(ScopeKind.CHANNEL, Period.DAY, 600)
    async with make_bot(tmp_path, fake, counter, budgets=[budget]) as b:
        notices = [(await b.ask()).notice for _ in range(20)]
        spent, crossing = 0, None
        for index, row in enumerate(b.ledger()):
            spent += row[2] + row[3]
            if crossing is None and spent >= 480:
                crossing = index
        assert crossing is not None and crossing < 19
        assert [i for i, notice in enumerate(notices) if notice] == [crossing]
        warning = notices[crossing]
        assert warning is not None
        assert "this channel's daily budget" in warning and "2026-11-25 00:00 UTC" in warning
        b.clock.now += 86_400  # the next day: a fresh period, a fresh warning
        await b.core.reset(KEY)
        later = [(await b.ask()).notice for _ in range(20)]
        assert sum(1 for n in later if n) == 1


async def test_budgets_in_dollars(tmp_path, fake, counter) -> None:
    budget = Budget(ScopeKind.USER, Period.DAY, 0.01)  # $0.01 at $1,000/M input is 10 tokens
    async with make_bot(tmp_path, fake, counter, budgets=[budget], unit=Unit.USD) as b:
        await b.ask()
        refused = await b.ask()
        assert refused.kind is ReplyKind.REFUSED
        report = await b.core.guards.accounting.report(KEY, "U1")  # type: ignore[union-attr]
        assert "Your daily budget: $" in report


async def test_usage_report_for_channel_person_and_workspace(tmp_path, fake, counter) -> None:
    budget = Budget(ScopeKind.WORKSPACE, Period.MONTH, 1_000_000)
    async with make_bot(tmp_path, fake, counter, budgets=[budget]) as b:
        await b.ask(user="U1")
        await b.ask(user="U2", key=ConversationKey("slack", "T1", "C2"))
        lines = (await Commands(b.core).run("usage", CommandContext(KEY, "U1"))).split("\n")
        rows = b.ledger()
        mine = rows[0][2] + rows[0][3]
        everyone = mine + rows[1][2] + rows[1][3]
        assert lines[1].startswith(f"• This channel: today {mine:,} tokens")
        assert lines[2].startswith(f"• You: today {mine:,} tokens")
        assert lines[3].startswith(f"• This workspace: today {everyone:,} tokens")
        assert lines[4].startswith(f"• This workspace's monthly budget: {everyone:,} tokens of 1,000,000 tokens used")


async def test_rate_limit_per_user_with_an_injected_clock(tmp_path, fake, counter) -> None:
    clock = Clock(0)
    async with make_bot(tmp_path, fake, counter, user_rate=RateLimiter(2), buckets=TokenBuckets(clock=clock)) as b:
        assert [(await b.ask()).kind for _ in range(2)] == [ReplyKind.ANSWER] * 2
        slowed = await b.ask()
        assert slowed.kind is ReplyKind.REFUSED and slowed.text == texts.SLOW_DOWN.format(seconds=30)
        assert (await b.ask(user="U2")).kind is ReplyKind.ANSWER  # someone else is not slowed down
        clock.now = 30
        assert (await b.ask()).kind is ReplyKind.ANSWER
        assert fake.calls == 4


async def test_a_question_the_channel_refuses_leaves_the_persons_allowance_alone(tmp_path, fake, counter) -> None:
    limits = {"user_rate": RateLimiter(2), "channel_rate": RateLimiter(1), "buckets": TokenBuckets(clock=Clock(0))}
    async with make_bot(tmp_path, fake, counter, **limits) as b:
        assert (await b.ask()).kind is ReplyKind.ANSWER  # U1 has 1 left, C1 none
        assert (await b.ask()).text == texts.SLOW_DOWN.format(seconds=60)  # the channel's limit
        assert (await b.ask(key=ConversationKey("slack", "T1", "C2"))).kind is ReplyKind.ANSWER  # U1's second
        assert (await b.ask(key=ConversationKey("slack", "T1", "C3"))).text == texts.SLOW_DOWN.format(seconds=30)
        # ... and the question U1's limit refused left C3's allowance for someone else.
        assert (await b.ask(user="U2", key=ConversationKey("slack", "T1", "C3"))).kind is ReplyKind.ANSWER
        assert fake.calls == 3


async def test_a_redelivery_spends_no_rate_token_and_is_never_told_to_slow_down(tmp_path, fake, counter) -> None:
    async with make_bot(tmp_path, fake, counter, user_rate=RateLimiter(2), buckets=TokenBuckets(clock=Clock(0))) as b:

        async def deliver(message_id: str):
            return await b.core.handle(IncomingMessage(KEY, message_id, "U1", "Ada", "hi"))

        assert (await deliver("a")).kind is ReplyKind.ANSWER
        assert (await deliver("a")).kind is ReplyKind.DUPLICATE
        assert (await deliver("b")).kind is ReplyKind.ANSWER  # the redelivery did not spend U1's second token
        again = await deliver("b")  # U1 has no token left: still a silent duplicate, not "slow down"
        assert again.kind is ReplyKind.DUPLICATE and not again.should_post
        assert (await deliver("c")).text == texts.SLOW_DOWN.format(seconds=30)


async def test_rate_limit_per_channel(tmp_path, fake, counter) -> None:
    clock = Clock(0)
    async with make_bot(tmp_path, fake, counter, channel_rate=RateLimiter(1), buckets=TokenBuckets(clock=clock)) as b:
        await b.ask(user="U1")
        assert (await b.ask(user="U2")).kind is ReplyKind.REFUSED
        assert (await b.ask(user="U2", key=ConversationKey("slack", "T1", "C2"))).kind is ReplyKind.ANSWER


async def test_a_full_queue_answers_busy_and_calls_wait_their_turn(tmp_path, fake, counter) -> None:
    fake.first_byte_delay = 0.3
    gate = ConcurrencyGate(limit=1, max_waiting=1)
    async with make_bot(tmp_path, fake, counter, gate=gate) as b:
        keys = [ConversationKey("discord", "G", str(c)) for c in range(3)]
        replies = await asyncio.gather(*(b.ask(key=k, user=f"U{i}") for i, k in enumerate(keys)))
        kinds = sorted(r.kind.value for r in replies)
        assert kinds == ["answer", "answer", "refused"]
        assert next(r for r in replies if r.kind is ReplyKind.REFUSED).text == texts.BUSY
        assert fake.max_in_flight == 1 and fake.calls == 2
        # The refused question left no trace, and its id stays handled.
        assert [await b.store.count_messages(k) for k in keys] == [
            2 if r.kind is ReplyKind.ANSWER else 0 for r in replies
        ]
        assert await b.store.handled([f"m{n}" for n in range(1, 4)]) == {f"m{n}" for n in range(1, 4)}


@pytest.mark.parametrize(
    ("policy", "user", "silent"),
    [
        (AccessPolicy(deny_users=frozenset({"U1"})), "U1", False),
        (AccessPolicy(allow_channels=frozenset({"C9"})), "U1", False),
        (AccessPolicy(allow_workspaces=frozenset({"T9"}), refuse_silently=True), "U1", True),
    ],
)
async def test_access_lists_refuse_at_no_cost(tmp_path, fake, counter, policy, user, silent) -> None:
    async with make_bot(tmp_path, fake, counter, access=policy) as b:
        reply = await b.ask(user=user)
        assert reply.kind is (ReplyKind.IGNORED if silent else ReplyKind.REFUSED)
        assert reply.should_post is not silent
        assert fake.calls == 0 and b.ledger() == [] and await b.store.count_messages(KEY) == 0


async def test_system_and_model_commands_are_for_admins(tmp_path, fake, counter) -> None:
    async with make_bot(tmp_path, fake, counter) as b:
        commands = Commands(b.core, CommandPolicy(admin_users=frozenset({"U-listed"}), models=frozenset({"big"})))
        someone = CommandContext(KEY, "U1")
        assert await commands.run("system", someone, "Talk like a pirate.") == texts.ADMIN_ONLY.format(
            admins=texts.ADMINS_SLACK
        )
        assert await commands.run("model", someone, "big") == texts.ADMIN_ONLY.format(admins=texts.ADMINS_SLACK)
        assert "You are a test bot." in await commands.run("system", someone)  # looking is for everyone
        listed = CommandContext(KEY, "U-listed")
        assert await commands.run("system", listed, "Talk like a pirate.") == texts.SYSTEM_SET
        platform_admin = CommandContext(KEY, "U2", platform_admin=True)
        assert await commands.run("model", platform_admin, "huge") == texts.MODEL_NOT_ALLOWED.format(
            model="huge", allowed="big, fake-model"
        )
        assert await commands.run("model", platform_admin, "big") == texts.MODEL_SET.format(model="big")

        await b.ask(key=ConversationKey("slack", "T1", "C1", "1.1"))  # a thread follows its channel
        request = fake.requests[-1]
        assert request["model"] == "big" and request["messages"][0]["content"].startswith("Talk like a pirate.")
        await commands.run("system", listed, "reset")
        await commands.run("model", listed, "reset")
        await b.ask()
        assert fake.requests[-1]["model"] == "fake-model"
        assert fake.requests[-1]["messages"][0]["content"].startswith("You are a test bot.")


async def test_a_rotated_key_file_takes_effect_on_the_next_call(tmp_path: Path, counter: TokenCounter) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-first-key-000000")
    store = await open_store(str(tmp_path / "k.db"))
    async with FakeOpenAI(api_key="sk-first-key-000000") as fake, model_http_client(5.0) as http:
        endpoint = Endpoint("primary", fake.base_url, "m", KeySource(file=key_file))
        core = ConversationCore(store, ChatClient(http, endpoint), counter, TurnSettings("s", 4000))
        assert (await core.handle(IncomingMessage(KEY, "a", "U1", "Ada", "hi"))).kind is ReplyKind.ANSWER
        fake.api_key = "sk-second-key-111111"
        key_file.write_text("sk-second-key-111111")
        assert (await core.handle(IncomingMessage(KEY, "b", "U1", "Ada", "hi"))).kind is ReplyKind.ANSWER
        # The key came from the file alone (the KeySource was given no value), before and after the rotation,
        # and the new key was used at once: no request was first refused with the old one.
        sent = [h["Authorization"] for h in fake.headers]
        assert sent == ["Bearer sk-first-key-000000", "Bearer sk-second-key-111111"]
    await store.close()


async def test_a_budget_warning_the_database_cannot_record_does_not_cost_the_answer(tmp_path, fake, counter) -> None:
    # Past the soft cap, the warning is claimed with a write once the answer is whole (an adapter may be holding the
    # whole answer to post it at once): a database failing there drops the warning, never the answer.
    fake.reply = lambda messages: "ok"
    budget = Budget(ScopeKind.CHANNEL, Period.DAY, 600)
    async with make_bot(tmp_path, fake, counter, budgets=[budget]) as b:
        with sqlite3.connect(b.db) as db:
            db.execute("DROP TABLE budget_warnings")
        replies = [await b.ask() for _ in range(12)]
        assert sum(row[2] + row[3] for row in b.ledger()) >= 480  # past the soft cap: a warning was due
        assert [(r.kind, r.text, r.notice) for r in replies] == [(ReplyKind.ANSWER, "ok", None)] * 12
