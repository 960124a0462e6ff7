"""Benchmarks of the core itself: overhead per mention, throughput, history loading, memory, bytes per message."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.model import ModelProcess
from bot import heap
from bot.conversation import ConversationCore, TurnSettings
from bot.guards import Accounting, ConcurrencyGate, Guards, PriceTable
from bot.llm import ChatClient, Endpoint, TokenCounter, model_http_client
from bot.messages import ConversationKey, IncomingMessage
from bot.store import open_store

COUNTER = TokenCounter.load()


def add_row(rows: list[tuple[str, str]], row: tuple[str, str]) -> None:
    """Keep the row and show it at once, so a long run reports as it goes."""
    rows.append(row)
    print(f"| {row[0]} | {row[1]} |", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@asynccontextmanager
async def bench_core(db: str, model: ModelProcess) -> AsyncIterator[ConversationCore]:
    """The production core: real store, real client, ledger on; no rate limits, a gate wide enough not to queue."""
    store = await open_store(db)
    try:
        async with model_http_client(60, max_connections=1000) as http:
            llm = ChatClient(http, Endpoint("bench", model.base_url, "bench"))
            guards = Guards(gate=ConcurrencyGate(10_000, 10_000), accounting=Accounting(store, PriceTable(), []))
            core = ConversationCore(store, llm, COUNTER, TurnSettings("You are a benchmark.", 4000), guards)
            heap.settle()  # as `teambot run` does once it is up
            yield core
    finally:
        await store.close()


async def _noop(piece: str) -> None:
    return None


class SQLiteEngine:
    """Databases as files in a scratch folder."""

    name = "SQLite"

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir

    async def new_db(self, label: str) -> str:
        return str(self._workdir / f"{label}.db")

    async def fill(self, db: str, messages: int) -> None:
        _fill(Path(db), messages)

    async def bytes_per_message(self, db: str, messages: int) -> float:
        return _bytes_per_message(Path(db), messages)


class PostgresEngine:
    """A new database per measure on one PostgreSQL server."""

    name = "PostgreSQL"

    def __init__(self, admin_url: str) -> None:
        self._admin_url = admin_url

    async def new_db(self, label: str) -> str:
        name = f"bench_{label.replace('-', '_')}"
        admin = await asyncpg.connect(self._admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return self._admin_url.rsplit("/", 1)[0] + f"/{name}"

    async def fill(self, db: str, messages: int) -> None:
        conn = await asyncpg.connect(db)
        try:
            await conn.execute(
                "INSERT INTO conversations (id, key, platform, workspace, channel, created_at) "
                "VALUES (1, 'bench:W:C', 'bench', 'W', 'C', 0)"
            )
            for start in range(0, messages, 100_000):
                await conn.copy_records_to_table(
                    "messages",
                    records=_rows(start, min(messages, start + 100_000)),
                    columns=[
                        "conversation_id",
                        "role",
                        "author_id",
                        "author_name",
                        "content",
                        "tokens",
                        "platform_message_id",
                        "created_at",
                        "tokens_before",
                    ],
                )
            await conn.execute("SELECT setval(pg_get_serial_sequence('messages', 'id'), $1)", messages)
            await conn.execute("VACUUM ANALYZE messages")
        finally:
            await conn.close()

    async def bytes_per_message(self, db: str, messages: int) -> float:
        conn = await asyncpg.connect(db)
        try:
            size = await conn.fetchval("SELECT pg_total_relation_size('messages')")
        finally:
            await conn.close()
        return float(size) / messages


Engine = SQLiteEngine | PostgresEngine


@dataclass(frozen=True, slots=True)
class ModelPace:
    """How the benchmark's model answers: seconds to the first token, then tokens at a steady rate."""

    first_byte: float = 0.2
    tokens_per_second: float = 50.0
    reply_tokens: int = 20

    @property
    def turn_seconds(self) -> float:
        return self.first_byte + self.reply_tokens / self.tokens_per_second

    def describe(self) -> str:
        return (
            f"{self.first_byte * 1000:.0f} ms to the first token, then {self.reply_tokens} tokens "
            f"at {self.tokens_per_second:g}/s"
        )


async def overhead(
    concurrency: int, turns: int, engine: Engine, pace: ModelPace, pause: float = 0.0
) -> dict[str, float]:
    """Per turn: time from handle() to the request reaching the model, plus from the model's last byte to the
    reply being returned. ``concurrency`` conversations each ask ``turns`` questions, the next one ``pause``
    seconds after the last answer, as a person who reads it first would; they start spread over one such cycle,
    not all in the same millisecond.
    """
    samples: list[float] = []
    async with ModelProcess(
        first_byte=pace.first_byte, tokens_per_second=pace.tokens_per_second, reply_tokens=pace.reply_tokens
    ) as model:
        spans: dict[str, tuple[float, float]] = {}
        async with bench_core(
            await engine.new_db(f"overhead-{concurrency}-{pause:g}".replace(".", "_")), model
        ) as core:

            async def conversation(c: int) -> None:
                await asyncio.sleep((pace.turn_seconds + pause) * c / concurrency)
                key = ConversationKey("bench", "W", f"C{c}")
                for t in range(turns):
                    if t:
                        await asyncio.sleep(pause)
                    tag = f"c{c}-t{t}"
                    started = time.monotonic()
                    await core.handle(IncomingMessage(key, tag, "U", "u", tag), _noop)
                    spans[f"u: {tag}"] = (started, time.monotonic())

            await asyncio.gather(*(conversation(c) for c in range(concurrency)))
        async with httpx.AsyncClient() as http:
            timings = await model.timings(http)
    for tag, (started, finished) in spans.items():
        arrived, last_byte = timings[tag]
        samples.append((arrived - started) + (finished - last_byte))
    ms = [s * 1000 for s in samples]
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "n": len(ms)}


async def throughput(conversations: int, turns: int, engine: Engine) -> float:
    """Mentions per second through the core with an instant model."""
    db = await engine.new_db("throughput")
    async with ModelProcess(reply_tokens=5) as model, bench_core(db, model) as core:
        # A warm-up turn, so the first connection and the tokenizer are not counted.
        key = ConversationKey("bench", "W", "warm")
        await core.handle(IncomingMessage(key, "warm", "U", "u", "warm"), _noop)

        async def conversation(c: int) -> None:
            key = ConversationKey("bench", "W", f"C{c}")
            for t in range(turns):
                await core.handle(IncomingMessage(key, f"{c}-{t}", "U", "u", "hello"), _noop)

        started = time.perf_counter()
        await asyncio.gather(*(conversation(c) for c in range(conversations)))
        elapsed = time.perf_counter() - started
    return conversations * turns / elapsed


def _fill(db: Path, messages: int) -> None:
    """``messages`` messages in one conversation, written directly: the store's own path is measured elsewhere."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO conversations (id, key, platform, workspace, channel, created_at) "
            "VALUES (1, 'bench:W:C', 'bench', 'W', 'C', 0)"
        )
        batch = 100_000
        for start in range(0, messages, batch):
            conn.executemany(
                "INSERT INTO messages (conversation_id, role, author_id, author_name, content, tokens, "
                "platform_message_id, created_at, tokens_before) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _rows(start, min(messages, start + batch)),
            )


def _rows(start: int, stop: int) -> list[tuple[object, ...]]:
    return [
        (
            1,
            "user" if i % 2 == 0 else "assistant",
            "U",
            "u",
            f"message number {i} with some words",
            12,
            f"m{i}",
            float(i),
            12 * i,
        )
        for i in range(start, stop)
    ]


async def history_load(messages: int, engine: Engine, repeats: int = 300) -> tuple[float, float]:
    """Mean milliseconds to load an 8,000-token context (trimmed in blocks of 4,000, as the core does); and the
    database's bytes per stored message."""
    db = await engine.new_db(f"history-{messages}")
    store = await open_store(db)
    await store.close()
    await engine.fill(db, messages)
    store = await open_store(db)
    key = ConversationKey("bench", "W", "C")
    try:
        await store.load_history(key, 8000, before=messages + 1, step=4000)
        started = time.perf_counter()
        for _ in range(repeats):
            history = await store.load_history(key, 8000, before=messages + 1, step=4000)
        elapsed = time.perf_counter() - started
        assert 4000 // 12 <= len(history) <= 8000 // 12
    finally:
        await store.close()
    return elapsed / repeats * 1000, await engine.bytes_per_message(db, messages)


#: The prompt-caching rows: a model billed like OpenAI's, with cached input at a tenth of the input price.
CACHE_MODEL = "gpt-5-mini"
CACHE_TURNS = 60
#: Turns the history holds before the oldest must go: the window fills after this many.
CACHE_FILL_TURNS = 10
_WORDS = [
    "release",
    "schedule",
    "database",
    "migration",
    "review",
    "budget",
    "latency",
    "deploy",
    "rollback",
    "incident",
    "customer",
    "ticket",
    "dashboard",
    "alert",
    "capacity",
    "quarter",
    "roadmap",
    "onboarding",
    "sprint",
    "backlog",
    "owner",
    "estimate",
    "risk",
    "metric",
    "query",
    "cache",
    "thread",
    "channel",
    "summary",
    "decision",
    "follow-up",
    "draft",
    "proposal",
]


def _prose(seed: int, words: int) -> str:
    """Deterministic text that tokenizes like prose (not one repeated token)."""
    return " ".join(_WORDS[(seed * 7 + i * i * 3 + i) % len(_WORDS)] for i in range(words)) + "."


#: Model classes whose prices the caching rows show, each with its cached-input discount: 50 % off (gpt-4o
#: class), 75 % (gpt-4.1), 90 % (gpt-5). The list prices come from the ledger's table (bot.guards.PriceTable).
CACHE_PRICE_CLASSES = ("gpt-4o-mini", "gpt-4.1-mini", "gpt-5-mini")
#: The summaries row's summary: about as long as a running summary of a team chat gets (well under its cap here).
SUMMARY_WORDS = 300


@dataclass(frozen=True, slots=True)
class CachingRun:
    """Steady state (turns 11-60) of the 60-turn conversation: the turns' usage and the summary calls' usage."""

    turns: list[dict[str, Any]]
    summaries: list[dict[str, Any]]

    @property
    def cached_share(self) -> float:
        return sum(u["prompt_tokens_details"]["cached_tokens"] for u in self.turns) / sum(
            u["prompt_tokens"] for u in self.turns
        )

    @property
    def mean_prompt(self) -> float:
        return sum(u["prompt_tokens"] for u in self.turns) / len(self.turns)

    def cost_per_turn(self, model: str, *, prompt_only: bool = False) -> float:
        """Mean estimated dollars per turn at ``model``'s list prices, summary calls included."""
        prices = PriceTable()
        total = 0.0
        for usage in self.turns + self.summaries:
            completion = 0 if prompt_only else usage["completion_tokens"]
            cached = usage["prompt_tokens_details"]["cached_tokens"]
            total += prices.cost(model, usage["prompt_tokens"], completion, cached_tokens=cached).cost
        return total / len(self.turns)

    def tokens_per_turn(self) -> float:
        """Mean tokens (prompt and completion) per turn, summary calls included."""
        every = self.turns + self.summaries
        return sum(u["prompt_tokens"] + u["completion_tokens"] for u in every) / len(self.turns)


async def prompt_caching(trim_block: float, workdir: Path, *, summaries: bool = False) -> CachingRun:
    """A 60-turn conversation whose history budget fills after 10 turns, against the fake model's prompt cache.

    Returns the usage the fake reported for the turns after the window filled (steady state), and for the summary
    calls made meanwhile (``summaries``: TEAMBOT_SUMMARIES on; each refresh is awaited before the next question,
    as a person's pause would allow).
    """
    from tests.fakes.openai import FakeOpenAI

    system = "You are the team's assistant. " + _prose(0, 220)  # a system prompt of a few hundred tokens

    def answer(messages: list[dict[str, object]]) -> str:
        last = str(messages[-1]["content"])
        if last.startswith("Summary so far:"):
            return "Summary: " + _prose(last.count("question "), SUMMARY_WORDS)
        # Each answer its own (seeded by the question's number), about 400 tokens, a chat answer with some substance.
        number = int(last.split("question ", 1)[1].split(":", 1)[0])
        return f"About question {number}: " + _prose(number * 13 + 5, 300)

    # The question as the bot counts it, the answer as stored: the server's completion_tokens (the fake's four
    # characters a token) plus the chat format's overhead.
    sample_answer = "About question 10: " + _prose(135, 300)
    per_turn = COUNTER.count_message("Ada: question 10: " + _prose(12, 40)) + math.ceil(len(sample_answer) / 4) + 4
    budget = COUNTER.count_message(f"{system}\n\nEach message") + 20 + CACHE_FILL_TURNS * per_turn
    label = f"caching-{trim_block:g}{'-summaries' if summaries else ''}".replace(".", "_")
    store = await open_store(str(workdir / f"{label}.db"))
    try:
        async with FakeOpenAI(reply=answer, usage_details=True) as fake, model_http_client(60) as http:
            llm = ChatClient(http, Endpoint("bench", fake.base_url, CACHE_MODEL))
            settings = TurnSettings(system, budget, stream=False, trim_block=trim_block, summaries=summaries)
            core = ConversationCore(
                store, llm, COUNTER, settings, Guards(accounting=Accounting(store, PriceTable(), []))
            )
            key = ConversationKey("bench", "W", f"cache-{label}")
            turns: list[dict[str, Any]] = []
            summary_calls: list[dict[str, Any]] = []
            for turn in range(CACHE_TURNS):
                question = f"question {turn}: " + _prose(turn + 2, 40)
                before = len(fake.usages)
                reply = await core.handle(IncomingMessage(key, f"q{turn}", "U", "Ada", question))
                assert reply.usage is not None
                answered = len(fake.usages)
                async with asyncio.timeout(30):
                    while core.memory.refreshing:  # noqa: ASYNC110 - the core signals no event for it
                        await asyncio.sleep(0.01)
                if turn >= CACHE_FILL_TURNS:
                    turns += fake.usages[before:answered]
                    summary_calls += fake.usages[answered:]
            await core.aclose(5)
    finally:
        await store.close()
    assert len(turns) == CACHE_TURNS - CACHE_FILL_TURNS
    return CachingRun(turns, summary_calls)


async def run_caching(workdir: Path) -> list[tuple[str, str]]:
    """Block trimming against one-by-one trimming: the same conversation, the same fake prompt cache; then the
    default again with the running summary on."""
    rows: list[tuple[str, str]] = []
    shares = (0.5, 0.25, 0.75, 0.0)
    results = {share: await prompt_caching(share, workdir) for share in shares}
    labels = {
        0.5: "blocks of 1/2 of the budget (default)",
        0.25: "blocks of 1/4 of the budget",
        0.75: "blocks of 3/4 of the budget",
        0.0: "one by one",
    }
    steady = f"turns {CACHE_FILL_TURNS + 1}-{CACHE_TURNS}"
    for share, result in results.items():
        add_row(
            rows,
            (
                f"prompt caching, {CACHE_TURNS}-turn conversation filling its window after {CACHE_FILL_TURNS} turns, "
                f"trimming {labels[share]}: prompt tokens served from the cache ({steady})",
                f"{result.cached_share:.0%} (mean prompt {result.mean_prompt:,.0f} tokens)",
            ),
        )
    single = results[0.0]
    for share in (0.5, 0.25, 0.75):
        result = results[share]
        cells = []
        for model in CACHE_PRICE_CLASSES:
            ratio = single.cost_per_turn(model) / result.cost_per_turn(model)
            prompt_ratio = single.cost_per_turn(model, prompt_only=True) / result.cost_per_turn(model, prompt_only=True)
            cells.append(
                f"{model} ${result.cost_per_turn(model):.6f} vs ${single.cost_per_turn(model):.6f}: {ratio:.2f}x "
                f"(prompt alone {prompt_ratio:.2f}x)"
            )
        add_row(
            rows,
            (
                f"estimated cost per turn, {labels[share]} vs one by one ({steady}), at list prices of three model "
                "classes (cached input 50 %, 75 %, 90 % off)",
                "; ".join(cells),
            ),
        )
    plain = results[0.5]
    remembered = await prompt_caching(0.5, workdir, summaries=True)
    extra_tokens = remembered.tokens_per_turn() - plain.tokens_per_turn()
    cells = [
        f"{model} +${remembered.cost_per_turn(model) - plain.cost_per_turn(model):.6f} "
        f"(+{remembered.cost_per_turn(model) / plain.cost_per_turn(model) - 1:.0%})"
        for model in CACHE_PRICE_CLASSES
    ]
    add_row(
        rows,
        (
            f"summaries (TEAMBOT_SUMMARIES) on the same conversation, blocks of 1/2: extra per turn ({steady}): "
            "tokens, then estimated cost",
            f"+{extra_tokens:,.0f} tokens ({len(remembered.summaries)} summary calls, "
            f"{sum(u['prompt_tokens'] for u in remembered.summaries) / max(1, len(remembered.summaries)):,.0f} + "
            f"{sum(u['completion_tokens'] for u in remembered.summaries) / max(1, len(remembered.summaries)):,.0f} "
            f"tokens each; {remembered.cached_share:.0%} of the turns' prompt cached); " + "; ".join(cells),
        ),
    )
    return rows


def _bytes_per_message(db: Path, messages: int) -> float:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return os.path.getsize(db) / messages


async def memory(conversations: int, engine: Engine) -> tuple[float, float]:
    """RSS growth (MB) after one turn in each of ``conversations`` conversations, and per conversation (KB)."""
    db = await engine.new_db("memory")
    async with ModelProcess(reply_tokens=5) as model, bench_core(db, model) as core:
        await core.handle(IncomingMessage(ConversationKey("bench", "W", "warm"), "w", "U", "u", "hi"), _noop)
        gc.collect()
        before = rss_mb()
        for start in range(0, conversations, 500):
            await asyncio.gather(
                *(
                    core.handle(IncomingMessage(ConversationKey("bench", "W", f"C{c}"), f"m{c}", "U", "u", "hi"), _noop)
                    for c in range(start, min(conversations, start + 500))
                )
            )
        gc.collect()
        grown = rss_mb() - before
    return grown, grown * 1024 / conversations


#: (conversations, turns each, seconds a person pauses after an answer) for the overhead rows; the last row is
#: the stress case: 500 people who all ask again the moment an answer arrives.
OVERHEAD_LOADS = ((1, 100, 0.0), (50, 8, 3.0), (500, 4, 3.0), (500, 3, 0.0))


async def run_core(quick: bool, engine: Engine, pace: ModelPace) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for concurrency, turns, pause in OVERHEAD_LOADS:
        result = await overhead(concurrency, 2 if quick else turns, engine, pace, pause)
        people = f"{pause:g} s pause after each answer" if pause else "no pause"
        add_row(
            rows,
            (
                f"bot overhead per mention, {concurrency} concurrent conversation(s), {people}",
                f"p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms (n={result['n']:.0f})",
            ),
        )
    rate = await throughput(20 if quick else 200, 5 if quick else 25, engine)
    add_row(rows, ("throughput through the core, instant model", f"{rate:,.0f} mentions/s"))
    small = await history_load(1_000, engine)
    big = await history_load(10_000 if quick else 1_000_000, engine)
    label = "10k" if quick else "1M"
    add_row(
        rows,
        (
            f"context load (8,000 tokens), 1k vs {label} stored messages",
            f"{small[0]:.3f} ms vs {big[0]:.3f} ms ({big[0] / small[0]:.2f}x)",
        ),
    )
    add_row(rows, ("database bytes per stored message", f"{big[1]:.0f} B"))
    conversations = 1_000 if quick else 10_000
    grown, per = await memory(conversations, engine)
    add_row(rows, (f"RSS growth, {conversations:,} active conversations", f"{grown:.1f} MB ({per:.2f} KB each)"))
    return rows
