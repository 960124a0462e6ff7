"""The SQLite writer's promises that the contract tests cannot see: work handed to it always runs; the inline path
never shares the connection with the writer's thread, never waits for another process's lock, never checkpoints;
and the WAL stays bounded."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from bot.messages import ConversationKey, IncomingMessage
from bot.store import ChannelSettings, open_store, sqlite_writer
from bot.store import sqlite as sqlite_engine
from bot.store.sqlite import SQLiteStore

A = ConversationKey("slack", "T1", "C1")


def wal_bytes(path: Path) -> int:
    return Path(f"{path}-wal").stat().st_size


def incoming(n: int, text: str = "") -> IncomingMessage:
    return IncomingMessage(A, f"m{n}", "U1", "Ada", text or f"message {n}")


async def test_a_write_cancelled_while_it_waits_for_the_writer_still_runs(tmp_path: Path) -> None:
    # A turn cut off after the model answered must still store the reply the person saw: its write may be queued
    # behind another transaction when the cancellation comes.
    path = tmp_path / "t.db"
    store = await open_store(str(path))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the writer's thread waits on it
        first = asyncio.create_task(store.claim_message("first"))
        await asyncio.sleep(0)  # handed to the writer's thread, which now waits for the lock
        queued = asyncio.create_task(store.claim_message("queued"))
        await asyncio.sleep(0)  # queued behind it
        queued.cancel()
        other.execute("ROLLBACK")
        assert await first
        with pytest.raises(asyncio.CancelledError):
            await queued
        # It ran all the same: the id is claimed.
        assert await store.claim_message("queued") is False
    finally:
        other.close()
        await store.close()


async def test_while_the_writers_thread_has_the_connection_nothing_else_uses_it(tmp_path: Path) -> None:
    # Long work holds the connection on the writer's thread, mid-transaction: a read must neither see its
    # uncommitted rows nor wait for it (the reader's connection serves it), and a short write waits its turn
    # behind it on the thread instead of running inline inside that open transaction.
    store = await open_store(str(tmp_path / "t.db"))
    assert isinstance(store, SQLiteStore)
    inside, gate = threading.Event(), threading.Event()
    statement = "INSERT INTO channel_settings (platform, workspace, channel, model) VALUES (?, ?, ?, ?)"

    def long_work(db: sqlite3.Connection) -> None:
        db.execute(statement, (A.platform, A.workspace, A.channel, "uncommitted-model"))
        inside.set()
        gate.wait(10)
        raise RuntimeError("rolled back")

    try:
        blocker = asyncio.ensure_future(store._writer.transaction(long_work, inline=False))
        async with asyncio.timeout(5):
            while not inside.is_set():  # noqa: ASYNC110 - a thread's event: nothing to be notified by
                await asyncio.sleep(0.01)
            assert await store.channel_settings(A) == ChannelSettings()
            claim = asyncio.ensure_future(store.claim_message("m1"))
            await asyncio.sleep(0.05)
            assert not claim.done()  # behind the long work, not inside its transaction
        gate.set()
        with pytest.raises(RuntimeError):
            await blocker
        assert await claim is True
        store._channel_settings.clear()
        assert await store.channel_settings(A) == ChannelSettings()  # the long work's row went with its rollback
    finally:
        gate.set()
        await store.close()


async def test_the_inline_connection_never_waits_nor_checkpoints_and_the_wal_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection that runs on the event loop's thread must never sleep in SQLite's busy handler (another
    # process's lock sends the work to the thread: test_another_writer_holding_the_write_lock_is_waited_out) nor
    # start a checkpoint by itself (it fsyncs); the checkpoints run for it on the writer's thread must keep the WAL
    # from growing with every commit.
    every = 40
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_EVERY", every)
    path = tmp_path / "t.db"
    store = await open_store(str(path))
    assert isinstance(store, SQLiteStore)
    try:
        assert store._writer.rows("PRAGMA busy_timeout") == [(0,)]
        assert store._writer.rows("PRAGMA wal_autocheckpoint") == [(0,)]
        for n in range(every // 2):
            await store.begin_turn(incoming(n, "a question of a few words " * 4), 30)
        # What a commit adds to the WAL, before any checkpoint came.
        per_commit = (wal_bytes(path) - 32) / (every // 2)
        for n in range(every // 2, 10 * every):
            await store.begin_turn(incoming(n, "a question of a few words " * 4), 30)
        # Without checkpoints the WAL would hold all 10 * every commits; with them, about the last `every`.
        assert wal_bytes(path) < 3 * every * per_commit
        assert await store.count_messages(A) == 10 * every
    finally:
        await store.close()


async def test_a_long_history_is_read_on_the_readers_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Read inline, a long history would hold the event loop for all of SQLite's walk through it: past a few
    # hundred rows it goes to the reader's thread, and a conversation whose history is short again comes back.
    monkeypatch.setattr(sqlite_engine, "_INLINE_HISTORY_ROWS", 10)
    store = await open_store(str(tmp_path / "t.db"))
    assert isinstance(store, SQLiteStore)
    inline: list[str] = []
    rows = store._writer.rows

    def counted(statement: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]] | None:
        if statement == sqlite_engine.HISTORY_SQL:
            inline.append(statement)
        return rows(statement, args)

    monkeypatch.setattr(store._writer, "rows", counted)
    try:
        for n in range(12):
            await store.begin_turn(incoming(n), 10)
        history = await store.load_history(A, 1000, before=100)
        assert len(history) == 12 and len(inline) == 1  # not known to be long yet: inline
        again = await store.load_history(A, 1000, before=100)
        assert again == history and len(inline) == 1  # the same rows, from the reader
        assert len(await store.load_history(A, 1000, before=5)) == 4 and len(inline) == 1
        assert len(await store.load_history(A, 1000, before=5)) == 4 and len(inline) == 2  # short again
    finally:
        await store.close()
