"""The SQLite writer's one promise that the contract tests cannot see: work handed to it always runs."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bot.store import open_store


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
