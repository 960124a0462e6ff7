"""``teambot db migrate`` and ``teambot db copy``, run as a person would: the real command in a subprocess."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from bot.messages import ConversationKey, IncomingMessage, Usage
from bot.store import ChannelSettings, UsageRecord, UsageScope, open_store
from bot.store.postgres import MIGRATIONS as POSTGRES_MIGRATIONS
from bot.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS

ROOT = Path(__file__).resolve().parents[2]
CHANNEL = ConversationKey("slack", "T1", "C1")
THREAD = ConversationKey("slack", "T1", "C1", "1700000000.000100")


async def teambot(*args: str, db: str, cwd: Path) -> tuple[int, str, str]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "TEAMBOT_DB": db}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def fill_sqlite(path: Path) -> list[tuple[str, str | None, str]]:
    """A SQLite file with two conversations, a cut-off reply, usage, a channel setting and a warning claimed."""
    store = await open_store(str(path))
    try:
        for n, key in enumerate([CHANNEL, THREAD, CHANNEL]):
            row = await store.begin_turn(IncomingMessage(key, f"m{n}", "U1", "Ada", f"question {n}"), 10)
            assert row is not None
            ledger = UsageRecord(1000.0 + n, key, "U1", "gpt-x", 10, 4, True, 0.001, True, n or None, 2)
            await store.add_reply(
                key, f"answer {n}", 4, reply_to=row, usage=Usage(10, 4), model="gpt-x", complete=n != 1, ledger=ledger
            )
        await store.set_channel_settings(CHANNEL, ChannelSettings("Be brief.", None))
        assert await store.claim_warning("slack:T1", 0.0)
        return [(m.role, m.author_name, m.content) for m in await store.load_history(CHANNEL, 10_000, before=10**9)]
    finally:
        await store.close()


async def test_db_migrate_brings_either_engine_to_the_latest_schema(postgres_url: str, tmp_path: Path) -> None:
    code, out, err = await teambot("db", "migrate", db=postgres_url, cwd=tmp_path)
    assert (code, err) == (0, "")
    assert f"is at schema version {len(POSTGRES_MIGRATIONS)}" in out
    assert "@" not in out  # the URL's user part stays out of it
    code, out, _ = await teambot("db", "migrate", db=str(tmp_path / "t.db"), cwd=tmp_path)
    assert code == 0 and f"is at schema version {len(SQLITE_MIGRATIONS)}" in out


async def test_db_copy_moves_the_history_into_postgresql_and_the_bot_carries_on(
    postgres_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "teambot.db"
    history = await fill_sqlite(source)

    code, out, err = await teambot("db", "copy", "--from", str(source), db=postgres_url, cwd=tmp_path)
    assert (code, err) == (0, "")
    assert "copied 2 conversations, 6 messages, 3 handled_messages, 3 usage" in out

    store = await open_store(postgres_url)
    try:
        copied = await store.load_history(CHANNEL, 10_000, before=10**9)
        assert [(m.role, m.author_name, m.content) for m in copied] == history
        assert await store.count_messages(THREAD) == 2
        assert await store.channel_settings(THREAD) == ChannelSettings("Be brief.", None)
        total = await store.usage_since(UsageScope("slack", "T1"), 0)
        assert (total.calls, total.tokens) == (3, 42)
        # The cached and reasoning parts come along, unknown (NULL) staying unknown.
        assert (total.cached_tokens, total.cache_known_prompt_tokens, total.reasoning_tokens) == (3, 20, 6)
        assert await store.claim_warning("slack:T1", 0.0) is False
        # A redelivery of an answered message is still refused, and new rows get ids after the copied ones.
        assert await store.begin_turn(IncomingMessage(CHANNEL, "m0", "U1", "Ada", "again"), 10) is None
        row = await store.begin_turn(IncomingMessage(CHANNEL, "m9", "U1", "Ada", "new"), 10)
        assert row is not None and row > max(m.id for m in copied)
    finally:
        await store.close()

    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages WHERE NOT complete") == 1
        # Each message keeps its place on its conversation's token line, so block trimming carries on unchanged.
        line = await conn.fetch(
            "SELECT tokens_before FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.key = $1 ORDER BY m.id",
            str(CHANNEL),
        )
        assert [r[0] for r in line] == [0, 10, 14, 24, 28]
    finally:
        await conn.close()

    # Twice would merge two copies of one history: the second run is refused and changes nothing.
    code, _, err = await teambot("db", "copy", "--from", str(source), db=postgres_url, cwd=tmp_path)
    assert code == 2 and "already holds conversations" in err and "Traceback" not in err


async def test_db_copy_refuses_a_missing_file_and_a_sqlite_target(tmp_path: Path) -> None:
    code, _, err = await teambot("db", "copy", "--from", str(tmp_path / "none.db"), db="x.db", cwd=tmp_path)
    assert code == 2 and err.strip() == f"teambot: db copy: {str(tmp_path / 'none.db')!r} is not a SQLite file"
    await fill_sqlite(tmp_path / "a.db")
    code, _, err = await teambot("db", "copy", "--from", str(tmp_path / "a.db"), db="b.db", cwd=tmp_path)
    assert code == 2 and "must be a postgresql:// URL" in err


@pytest.mark.parametrize("held", ["channel_settings", "handled_messages", "budget_warnings"])
async def test_db_copy_refuses_a_target_holding_any_copied_table(postgres_url: str, tmp_path: Path, held: str) -> None:
    source = tmp_path / "teambot.db"
    await fill_sqlite(source)
    target = await open_store(postgres_url)
    try:
        if held == "channel_settings":
            await target.set_channel_settings(CHANNEL, ChannelSettings("Be brief.", None))
        elif held == "budget_warnings":
            assert await target.claim_warning("slack:T1", 0.0)
    finally:
        await target.close()
    if held == "handled_messages":  # an id answered here before, as a replica that ran briefly would leave
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute("INSERT INTO handled_messages (message_id, handled_at) VALUES ('m0', $1)", time.time())
        finally:
            await conn.close()

    code, out, err = await teambot("db", "copy", "--from", str(source), db=postgres_url, cwd=tmp_path)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip() == f"teambot: db copy: the PostgreSQL database already holds {held}; copy into an empty one"
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM conversations") == 0  # nothing was copied
    finally:
        await conn.close()
