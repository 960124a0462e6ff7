"""The storage contract, on real SQLite files. A second engine must pass the same tests."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.messages import ConversationKey, IncomingMessage, Usage
from bot.store import Store, open_store
from bot.store_sqlite import MIGRATIONS

A = ConversationKey("slack", "T1", "C1")
B = ConversationKey("slack", "T1", "C1", "1700000000.000100")


def incoming(key: ConversationKey, n: int, text: str = "") -> IncomingMessage:
    return IncomingMessage(key, f"{key}:{n}", "U1", "Ada", text or f"message {n}")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(str(tmp_path / "teambot.db"))
    yield s
    await s.close()


async def test_migrates_an_empty_file_to_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    s = await open_store(str(path))
    await s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"conversations", "messages", "handled_messages"} <= tables


async def test_reopening_does_not_migrate_again_and_keeps_data(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    s = await open_store(path)
    row = await s.begin_turn(incoming(A, 1), 10)
    assert row is not None
    await s.add_reply(A, "hi Ada", 5, reply_to=row, usage=Usage(10, 3), model="m", complete=True)
    await s.close()

    s = await open_store(path)
    try:
        history = await s.load_history(A, 10_000, before=10**9)
        assert [(m.role, m.author_name, m.content) for m in history] == [
            ("user", "Ada", "message 1"),
            ("assistant", None, "hi Ada"),
        ]
    finally:
        await s.close()


async def test_a_newer_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(ConfigError, match="newer than this teambot"):
        await open_store(str(path))


async def test_a_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TEAMBOT_DB"):
        await open_store(str(tmp_path / "nope" / "t.db"))


async def test_duplicate_message_ids_are_refused_and_write_nothing(store: Store) -> None:
    assert await store.begin_turn(incoming(A, 1), 10) is not None
    assert await store.begin_turn(incoming(A, 1, "redelivered"), 10) is None
    assert await store.count_messages(A) == 1


async def test_concurrent_duplicates_only_one_wins(store: Store) -> None:
    results = await asyncio.gather(*(store.begin_turn(incoming(A, 7), 10) for _ in range(20)))
    assert sum(r is not None for r in results) == 1
    assert await store.count_messages(A) == 1


async def test_conversations_are_isolated(store: Store) -> None:
    await store.begin_turn(incoming(A, 1, "in the channel"), 10)
    await store.begin_turn(incoming(B, 1, "in the thread"), 10)
    a = await store.load_history(A, 10_000, before=10**9)
    b = await store.load_history(B, 10_000, before=10**9)
    assert [m.content for m in a] == ["in the channel"]
    assert [m.content for m in b] == ["in the thread"]


async def test_history_keeps_the_newest_that_fit_the_budget_oldest_first(store: Store) -> None:
    for n in range(10):
        await store.begin_turn(incoming(A, n), 100)
    history = await store.load_history(A, 350, before=10**9)
    assert [m.content for m in history] == ["message 7", "message 8", "message 9"]


async def test_history_stops_at_the_first_message_that_does_not_fit(store: Store) -> None:
    await store.begin_turn(incoming(A, 1), 10)
    await store.begin_turn(incoming(A, 2), 500)
    await store.begin_turn(incoming(A, 3), 10)
    history = await store.load_history(A, 100, before=10**9)
    # The small message 1 would fit, but skipping message 2 would show the model a conversation with a hole.
    assert [m.content for m in history] == ["message 3"]


async def test_history_excludes_the_current_message_and_pages_past_one_query(store: Store) -> None:
    rows = [await store.begin_turn(incoming(A, n), 1) for n in range(200)]
    last = rows[-1]
    assert last is not None
    history = await store.load_history(A, 10_000, before=last)
    assert len(history) == 199
    assert history[0].content == "message 0" and history[-1].content == "message 198"


async def test_reset_deletes_from_disk_and_counts(store: Store, tmp_path: Path) -> None:
    for n in range(3):
        row = await store.begin_turn(incoming(A, n), 10)
        assert row is not None
        await store.add_reply(A, f"reply {n}", 5, reply_to=row, usage=None, model=None, complete=True)
    other = ConversationKey("slack", "T1", "C9")
    await store.begin_turn(incoming(other, 1), 10)
    assert await store.reset(A) == 6
    assert await store.load_history(A, 10_000, before=10**9) == []
    assert await store.count_messages(other) == 1
    assert await store.reset(A) == 0
    with sqlite3.connect(tmp_path / "teambot.db") as db:
        assert db.execute("SELECT count(*) FROM messages WHERE content LIKE 'reply %'").fetchone()[0] == 0


async def test_resetting_a_thread_keeps_its_channel_and_resetting_the_channel_covers_threads(store: Store) -> None:
    await store.begin_turn(incoming(A, 1), 10)
    await store.begin_turn(incoming(B, 1), 10)
    await store.begin_turn(incoming(B, 2), 10)
    assert await store.reset(B) == 2
    assert await store.count_messages(A) == 1
    await store.begin_turn(incoming(B, 3), 10)
    assert await store.reset(A) == 2
    assert await store.count_messages(B) == 0


async def test_a_reset_conversation_still_refuses_redelivered_messages(store: Store) -> None:
    await store.begin_turn(incoming(A, 1), 10)
    await store.reset(A)
    assert await store.begin_turn(incoming(A, 1), 10) is None


async def test_reply_records_usage_and_completeness(store: Store, tmp_path: Path) -> None:
    row = await store.begin_turn(incoming(A, 1), 10)
    assert row is not None
    await store.add_reply(A, "partial", 3, reply_to=row, usage=Usage(12, 2, exact=False), model=None, complete=False)
    with sqlite3.connect(tmp_path / "teambot.db") as db:
        got = db.execute(
            "SELECT role, reply_to, complete, prompt_tokens, completion_tokens, usage_exact FROM messages "
            "WHERE role = 'assistant'"
        ).fetchone()
    assert got == ("assistant", row, 0, 12, 2, 0)


async def test_concurrent_writers_from_many_coroutines_all_land(store: Store) -> None:
    keys = [ConversationKey("discord", "G1", str(c)) for c in range(20)]
    await asyncio.gather(*(store.begin_turn(incoming(k, n), 1) for k in keys for n in range(10)))
    counts = await asyncio.gather(*(store.count_messages(k) for k in keys))
    assert counts == [10] * 20


async def test_a_second_process_holding_the_write_lock_is_waited_out(store: Store, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "teambot.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    pending = asyncio.ensure_future(store.begin_turn(incoming(A, 1), 10))
    await asyncio.sleep(0.2)  # let the write reach SQLite and block on the lock the other connection holds
    assert not pending.done()
    other.execute("COMMIT")
    other.close()
    assert await asyncio.wait_for(pending, 5) is not None
