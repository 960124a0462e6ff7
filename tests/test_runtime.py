"""The wiring's own duties: what runs beside the turns for as long as the core is open."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import asyncpg
import pytest

from bot.config import Settings
from bot.runtime import open_core
from bot.store import is_postgres


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "teambot.db")


async def _handled(url: str) -> set[str]:
    if is_postgres(url):
        conn = await asyncpg.connect(url)
        try:
            return {r[0] for r in await conn.fetch("SELECT message_id FROM handled_messages")}
        finally:
            await conn.close()
    with sqlite3.connect(url) as db:
        return {r[0] for r in db.execute("SELECT message_id FROM handled_messages")}


async def _insert_handled(url: str, message_id: str, at: float) -> None:
    statement = "INSERT INTO handled_messages (message_id, handled_at) VALUES "
    if is_postgres(url):
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(statement + "($1, $2)", message_id, at)
        finally:
            await conn.close()
        return
    with sqlite3.connect(url) as db:
        db.execute(statement + "(?, ?)", (message_id, at))


async def test_expired_message_ids_are_purged_while_the_bot_runs(url: str) -> None:
    settings = Settings(openai_base_url="http://127.0.0.1:9/v1", db=url)
    async with open_core(settings, purge_interval=0.05):
        # Written after the purge at start: only a purge that runs again, without a restart, removes it.
        await _insert_handled(url, "nine-days-old", time.time() - 9 * 86_400)
        await _insert_handled(url, "a-minute-old", time.time() - 60)
        async with asyncio.timeout(5):
            while "nine-days-old" in await _handled(url):  # noqa: ASYNC110 - the purge runs in its own task
                await asyncio.sleep(0.02)
        assert await _handled(url) == {"a-minute-old"}
