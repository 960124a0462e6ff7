"""Full-text search over a conversation's history (the search_history tool's storage), on both engines."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from bot.messages import ConversationKey, IncomingMessage
from bot.store import Store, open_store
from bot.store import sqlite as sqlite_store
from bot.store.postgres import MIGRATIONS as PG_MIGRATIONS
from bot.store.sqlite import MIGRATIONS, SQLiteStore, fts5_query

A = ConversationKey("slack", "T1", "C1")
THREAD = ConversationKey("slack", "T1", "C1", "1700000000.000100")
OTHER = ConversationKey("slack", "T1", "C2")
END = 10**12


def incoming(key: ConversationKey, n: int, text: str) -> IncomingMessage:
    return IncomingMessage(key, f"{key}:{n}", "U1", "Ada", text)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a database lives, on each engine in turn."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "teambot.db")


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = await open_store(url)
    yield s
    await s.close()


_ids = itertools.count()


async def said(store: Store, key: ConversationKey, *texts: str) -> list[int]:
    """Store each text as a person's message in ``key``; their row ids."""
    return [await store.add_question(incoming(key, next(_ids), text), 10) for text in texts]


async def test_search_finds_every_word_newest_first_and_only_before_the_question(store: Store) -> None:
    rows = await said(
        store,
        A,
        "the deploy of the billing service failed",
        "lunch at noon?",
        "Billing DEPLOY worked after the rollback",
        "deploy billing again",  # the question being answered: not a result
    )
    reply = await store.add_reply(
        A, "the billing deploy is done", 5, reply_to=rows[0], usage=None, model=None, complete=True
    )
    found = await store.search_messages(A, "billing deploy", before=rows[3], limit=10)
    assert [m.id for m in found] == [rows[2], rows[0]]  # newest first, case aside, every word, nothing after
    assert found[0].author_name == "Ada" and found[0].role == "user" and found[0].created_at > 0
    everything = await store.search_messages(A, "billing deploy", before=END, limit=10)
    assert [m.id for m in everything] == [reply, rows[3], rows[2], rows[0]]
    assert [m.id for m in await store.search_messages(A, "billing deploy", before=END, limit=2)] == [reply, rows[3]]
    assert await store.search_messages(A, "billing pizza", before=END, limit=10) == []


async def test_search_never_reaches_another_conversation(store: Store) -> None:
    # The access rule: the same conversation only. Another channel, and a thread of the same channel, are apart.
    await said(store, OTHER, "the secret rollout plan is falcon")
    await said(store, THREAD, "falcon in the thread")
    [mine] = await said(store, A, "falcon here too")
    assert [m.id for m in await store.search_messages(A, "falcon", before=END, limit=10)] == [mine]
    assert await store.search_messages(ConversationKey("slack", "T1", "C9"), "falcon", before=END, limit=10) == []
    assert [m.content for m in await store.search_messages(THREAD, "falcon", before=END, limit=10)] == [
        "falcon in the thread"
    ]


@pytest.mark.parametrize(
    "query",
    [
        'foo" OR bar',
        "NEAR(",
        "NEAR(foo bar",
        "*",
        '"',
        "foo AND",
        "OR",
        "-foo",
        "foo:bar",
        "(",
        ")",
        "^foo",
        "a'b",
        "NOT",
        "foo & | !bar",
        "\\",
        "{col}: foo",
        "",
        "   ",
        "🙂",
    ],
)
async def test_any_query_text_is_words_and_never_fails(store: Store, query: str) -> None:
    # The message holds every word of every query: each query with a word finds it, and none fails.
    await said(store, A, "foo\" OR bar NEAR( and (foo) AND OR NOT col a'b")
    found = await store.search_messages(A, query, before=END, limit=10)
    assert len(found) == (1 if any(ch.isalnum() for ch in query) else 0)


async def test_operators_in_a_query_are_plain_words(store: Store) -> None:
    [plain, both] = await said(store, A, "foo alone", "foo OR bar together")
    # As FTS5 syntax `foo OR bar` would also match "foo alone"; as words, all three must be there.
    assert [m.id for m in await store.search_messages(A, "foo OR bar", before=END, limit=10)] == [both]
    assert [m.id for m in await store.search_messages(A, 'foo" OR "bar', before=END, limit=10)] == [both]
    assert [m.id for m in await store.search_messages(A, "foo", before=END, limit=10)] == [both, plain]


def test_the_fts5_query_quotes_every_part() -> None:
    assert fts5_query('foo" OR bar') == '"foo" "OR" "bar"'
    assert fts5_query("NEAR( * ( snake_case café") == '"NEAR" "snake" "case" "café"'
    assert fts5_query("  ") == ""


async def test_reset_empties_the_search_too(store: Store) -> None:
    await said(store, A, "the launch code is swordfish")
    await said(store, THREAD, "swordfish in a thread")
    assert await store.reset(A) == 2  # the channel's reset covers its threads
    assert await store.search_messages(A, "swordfish", before=END, limit=10) == []
    assert await store.search_messages(THREAD, "swordfish", before=END, limit=10) == []
    [again] = await said(store, A, "swordfish once more")
    assert [m.id for m in await store.search_messages(A, "swordfish", before=END, limit=10)] == [again]


async def test_reset_empties_the_search_of_messages_indexed_or_not_yet(store: Store) -> None:
    await said(store, A, "indexed swordfish")
    assert len(await store.search_messages(A, "swordfish", before=END, limit=10)) == 1  # indexed now
    await said(store, A, "not yet indexed swordfish")
    assert await store.reset(A) == 2
    assert await store.search_messages(A, "swordfish", before=END, limit=10) == []
    await _index_is_sound(store)


@pytest.mark.parametrize("searched_first", [False, True])
async def test_an_abandoned_turn_leaves_the_search(store: Store, searched_first: bool) -> None:
    msg = incoming(A, 1, "a question about kiwis")
    row = await store.begin_turn(msg, 10)
    if searched_first:
        assert len(await store.search_messages(A, "kiwis", before=END, limit=10)) == 1
    await store.abandon_turn(row, msg.message_id)
    assert await store.search_messages(A, "kiwis", before=END, limit=10) == []
    await _index_is_sound(store)


@pytest.mark.parametrize("searched_first", [False, True])
async def test_a_forgotten_question_leaves_the_search(store: Store, searched_first: bool) -> None:
    # A question refused after the one write that stored it with its claim (bot.conversation) is deleted again.
    row = await store.begin_turn(incoming(A, 1, "a question about kiwis"), 10)
    assert row is not None
    if searched_first:
        assert len(await store.search_messages(A, "kiwis", before=END, limit=10)) == 1
    await store.forget_message(row)
    assert await store.search_messages(A, "kiwis", before=END, limit=10) == []
    await _index_is_sound(store)


async def _index_is_sound(store: Store) -> None:
    """FTS5's own check that its index matches the messages (a wrong 'delete' corrupts it silently)."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            db.execute("INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)")


async def test_storing_a_message_does_no_indexing_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The plain path (a turn, no tool) must cost what it did: no trigger, the index untouched until a search.
    store = await open_store(str(tmp_path / "teambot.db"))
    try:
        assert isinstance(store, SQLiteStore)
        rows = await said(store, A, *(f"note {n} about otters" for n in range(7)))
        with sqlite3.connect(store.path) as db:
            assert db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall() == []
            assert db.execute("SELECT indexed_to FROM messages_fts_state").fetchall() == [(0,)]
        monkeypatch.setattr(sqlite_store, "_INDEX_BATCH", 3)  # several batches, each its own transaction
        found = await store.search_messages(A, "otters", before=END, limit=10)
        assert [m.id for m in found] == rows[::-1]
        with sqlite3.connect(store.path) as db:
            assert db.execute("SELECT indexed_to FROM messages_fts_state").fetchall() == [(rows[-1],)]
        await _index_is_sound(store)
    finally:
        await store.close()


async def test_reset_leaves_no_searchable_word_in_the_file(tmp_path: Path) -> None:
    # FTS5 deletes by tombstone; the words would stay in older index segments if reset did not merge them away.
    store = await open_store(str(tmp_path / "teambot.db"))
    try:
        for n in range(30):  # several index segments
            await said(store, A, f"note {n} zanzibarquux")
            await store.search_messages(A, "zanzibarquux", before=END, limit=1)
        await said(store, OTHER, "keep this")
        await store.reset(A)
    finally:
        await store.close()
    assert b"zanzibarquux" not in _database_bytes(tmp_path)


def _database_bytes(folder: Path) -> bytes:
    """The database file with its WAL and shared-memory files, as bytes."""
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.name.startswith("teambot.db"))


async def test_migrating_indexes_the_messages_already_there(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        for statement in (s for step in MIGRATIONS[:-1] for s in step):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
        db.execute(
            "INSERT INTO conversations (id, key, platform, workspace, channel, created_at) "
            "VALUES (1, 'slack:T1:C1', 'slack', 'T1', 'C1', 0)"
        )
        db.execute(
            "INSERT INTO messages (conversation_id, role, content, tokens, created_at) "
            "VALUES (1, 'user', 'an old word: quetzal', 10, 0)"
        )
    store = await open_store(str(path))
    try:
        assert isinstance(store, SQLiteStore)
        assert [m.content for m in await store.search_messages(A, "quetzal", before=END, limit=5)] == [
            "an old word: quetzal"
        ]
    finally:
        await store.close()


async def test_postgres_migrating_indexes_the_messages_already_there(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for statement in (s for step in PG_MIGRATIONS[:-1] for s in step):
            await conn.execute(statement)
        await conn.execute("INSERT INTO schema_version VALUES ($1)", len(PG_MIGRATIONS) - 1)
        await conn.execute(
            "INSERT INTO conversations (id, key, platform, workspace, channel, created_at) "
            "VALUES (1, 'slack:T1:C1', 'slack', 'T1', 'C1', 0)"
        )
        await conn.execute(
            "INSERT INTO messages (conversation_id, role, content, tokens, created_at) "
            "VALUES (1, 'user', 'an old word: quetzal', 10, 0)"
        )
    finally:
        await conn.close()
    store = await open_store(postgres_url)
    try:
        assert [m.content for m in await store.search_messages(A, "quetzal", before=END, limit=5)] == [
            "an old word: quetzal"
        ]
    finally:
        await store.close()
