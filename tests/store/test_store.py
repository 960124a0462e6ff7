"""The storage contract, run against both engines: a real SQLite file and a real PostgreSQL database.

Tests that take ``store`` run on both; the few about one engine's own files and schema bookkeeping say so.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.errors import ConfigError, StoreError
from bot.messages import ConversationKey, IncomingMessage, Usage
from bot.store import ChannelSettings, ImageBlob, RateBucket, Store, UsageRecord, UsageScope, UsageTotal, open_store
from bot.store.postgres import PostgresStore
from bot.store.sqlite import HISTORY_SQL as SQLITE_HISTORY
from bot.store.sqlite import MIGRATIONS, SQLiteStore

ROOT = Path(__file__).resolve().parents[2]

A = ConversationKey("slack", "T1", "C1")
B = ConversationKey("slack", "T1", "C1", "1700000000.000100")


def incoming(key: ConversationKey, n: int, text: str = "") -> IncomingMessage:
    return IncomingMessage(key, f"{key}:{n}", "U1", "Ada", text or f"message {n}")


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


async def rows(store: Store, query: str) -> list[tuple[Any, ...]]:
    """Read the engine's tables directly, past the store, to see what really is on disk."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            return [tuple(r) for r in db.execute(query)]
    assert isinstance(store, PostgresStore)
    async with store.connection() as conn:
        return [tuple(r) for r in await conn.fetch(query)]


async def test_migrates_an_empty_file_to_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    s = await open_store(str(path))
    await s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"conversations", "messages", "handled_messages"} <= tables


async def test_reopening_does_not_migrate_again_and_keeps_data(url: str) -> None:
    s = await open_store(url)
    row = await s.begin_turn(incoming(A, 1), 10)
    assert row is not None
    await s.add_reply(A, "hi Ada", 5, reply_to=row, usage=Usage(10, 3), model="m", complete=True)
    await s.close()

    s = await open_store(url)
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


async def test_a_message_id_is_claimed_once_and_its_message_stored_later(store: Store) -> None:
    msg = incoming(A, 1)
    claims = await asyncio.gather(*(store.claim_message(msg.message_id) for _ in range(10)))
    assert sorted(claims) == [False] * 9 + [True]
    assert await store.count_messages(A) == 0  # a claim stores nothing: the message waits for its turn
    row = await store.add_question(msg, 10)
    [stored] = await store.load_history(A, 10_000, before=row + 1)
    assert (stored.id, stored.role, stored.author_name, stored.content) == (row, "user", "Ada", "message 1")
    assert await store.begin_turn(msg, 10) is None  # the same id, delivered again, is handled


async def test_a_forgotten_question_leaves_the_history_and_its_id_stays_handled(store: Store) -> None:
    # The core stores a question with its claim in one write when the conversation is idle; a refusal after that
    # (rate, budget, a full call queue) deletes the question again, and its redelivery is still a duplicate.
    first = await store.begin_turn(incoming(A, 1), 10)
    refused = await store.begin_turn(incoming(A, 2, "refused"), 10)
    assert first is not None and refused is not None
    await store.forget_message(refused)
    assert [m.id for m in await store.load_history(A, 10_000, before=refused + 10)] == [first]
    assert await store.count_messages(A) == 1
    assert await store.begin_turn(incoming(A, 2), 10) is None
    assert await store.claim_message(incoming(A, 2).message_id) is False


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


async def test_the_newest_message_comes_alone_when_even_it_does_not_fit(store: Store) -> None:
    # The caller cuts it to fit: an empty window would forget the whole conversation behind one long answer.
    await store.begin_turn(incoming(A, 1), 10)
    await store.begin_turn(incoming(A, 2), 500)
    assert [(m.content, m.tokens) for m in await store.load_history(A, 100, before=10**9)] == [("message 2", 500)]
    assert await store.load_history(A, 100, before=1) == []  # nothing before the first message
    assert await store.load_history(A, 0, before=10**9) == []


async def test_history_is_found_from_the_index_alone_however_long_the_conversation(tmp_path: Path) -> None:
    path = tmp_path / "plan.db"
    s = await open_store(str(path))
    await s.close()
    with sqlite3.connect(path) as db:
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {SQLITE_HISTORY}", (1, 10**9, 1601, 8000, 2000))]
    # The walk that decides where the context starts reads the index only; no step scans the table.
    assert any("COVERING INDEX messages_by_conversation_line (conversation_id=? AND id<?)" in p for p in plan)
    assert not any(p.startswith("SCAN messages") for p in plan)


async def test_loading_history_costs_the_same_however_long_the_conversation(tmp_path: Path) -> None:
    path = tmp_path / "steps.db"
    s = await open_store(str(path))
    await s.close()
    steps = {}
    with sqlite3.connect(path) as db:
        for conversation, length in ((1, 100), (2, 20_000)):
            db.execute(
                "INSERT INTO conversations (id, key, platform, workspace, channel, created_at) "
                "VALUES (?, ?, 'slack', 'T1', ?, 0)",
                (conversation, f"slack:T1:C{conversation}", f"C{conversation}"),
            )
            db.executemany(
                "INSERT INTO messages (conversation_id, role, content, tokens, created_at) "
                "VALUES (?, 'user', ?, 12, 0)",
                [(conversation, f"message {n}") for n in range(length)],
            )
        for conversation in (1, 2):
            count = [0]

            def tick(count: list[int] = count) -> int:
                count[0] += 1
                return 0

            db.set_progress_handler(tick, 1)  # called every VM instruction: a count of the work done
            db.execute(SQLITE_HISTORY, (conversation, 10**9, 300 // 5 + 1, 300, 75)).fetchall()
            db.set_progress_handler(None, 1)
            steps[conversation] = count[0]
    # 25 messages fit either way; the 20,000-message conversation must not cost more to read than the 100-message one.
    assert steps[2] <= steps[1] * 1.1, steps


async def test_finding_a_newest_message_too_long_to_fit_costs_the_same_however_long_the_conversation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "long-newest.db"
    s = await open_store(str(path))
    await s.close()
    steps = {}
    with sqlite3.connect(path) as db:
        for conversation, length in ((1, 100), (2, 20_000)):
            db.execute(
                "INSERT INTO conversations (id, key, platform, workspace, channel, created_at) "
                "VALUES (?, ?, 'slack', 'T1', ?, 0)",
                (conversation, f"slack:T1:C{conversation}", f"C{conversation}"),
            )
            db.executemany(
                "INSERT INTO messages (conversation_id, role, content, tokens, created_at) VALUES (?, 'user', ?, ?, 0)",
                [(conversation, f"message {n}", 10_000 if n == length - 1 else 12) for n in range(length)],
            )
        for conversation in (1, 2):
            count = [0]

            def tick(count: list[int] = count) -> int:
                count[0] += 1
                return 0

            db.set_progress_handler(tick, 1)
            rows = db.execute(SQLITE_HISTORY, (conversation, 10**9, 300 // 5 + 1, 300, 1)).fetchall()
            db.set_progress_handler(None, 1)
            assert [r[4] for r in rows] == [10_000]  # the long newest message alone, for the caller to cut
            steps[conversation] = count[0]
    assert steps[2] <= steps[1] * 1.1, steps


async def test_history_excludes_the_current_message_and_pages_past_one_query(store: Store) -> None:
    rows = [await store.begin_turn(incoming(A, n), 1) for n in range(200)]
    last = rows[-1]
    assert last is not None
    history = await store.load_history(A, 10_000, before=last)
    assert len(history) == 199
    assert history[0].content == "message 0" and history[-1].content == "message 198"


async def test_the_thread_a_person_last_wrote_in(store: Store) -> None:
    channel = ConversationKey("slack", "T1", "D1")
    assert await store.last_thread(channel, "U1") is None
    for n, thread in enumerate(["1.1", "2.2", "1.1", "3.3"]):
        author = "U2" if thread == "3.3" else "U1"
        msg = IncomingMessage(ConversationKey("slack", "T1", "D1", thread), f"m{n}", author, "Ada", "hi")
        await store.begin_turn(msg, 10)
    assert await store.last_thread(channel, "U1") == "1.1"  # U2 wrote later, elsewhere: not U1's thread
    assert await store.last_thread(ConversationKey("slack", "T1", "D9"), "U1") is None
    await store.begin_turn(IncomingMessage(channel, "m9", "U1", "Ada", "at the top"), 10)
    assert await store.last_thread(channel, "U1") is None  # the channel itself, outside any thread


async def test_reset_deletes_from_disk_and_counts(store: Store) -> None:
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
    assert await rows(store, "SELECT count(*) FROM messages WHERE content LIKE 'reply %'") == [(0,)]


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


async def test_reply_records_usage_and_completeness(store: Store) -> None:
    row = await store.begin_turn(incoming(A, 1), 10)
    assert row is not None
    await store.add_reply(A, "partial", 3, reply_to=row, usage=Usage(12, 2, exact=False), model=None, complete=False)
    [got] = await rows(
        store,
        "SELECT role, reply_to, complete, prompt_tokens, completion_tokens, usage_exact FROM messages "
        "WHERE role = 'assistant'",
    )
    role, reply_to, complete, prompt, completion, exact = got
    assert (role, reply_to, bool(complete), prompt, completion, bool(exact)) == ("assistant", row, False, 12, 2, False)


async def test_concurrent_writers_from_many_coroutines_all_land(store: Store) -> None:
    keys = [ConversationKey("discord", "G1", str(c)) for c in range(20)]
    await asyncio.gather(*(store.begin_turn(incoming(k, n), 1) for k in keys for n in range(10)))
    counts = await asyncio.gather(*(store.count_messages(k) for k in keys))
    assert counts == [10] * 20


async def test_another_writer_holding_the_write_lock_is_waited_out(tmp_path: Path) -> None:
    # Another connection, as another process would hold it: SQLite's lock is on the file, not the connection.
    store = await open_store(str(tmp_path / "teambot.db"))
    other = sqlite3.connect(tmp_path / "teambot.db", isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        pending = asyncio.ensure_future(store.begin_turn(incoming(A, 1), 10))
        # Nothing to await here: the write is blocked inside SQLite, so give it time to get there and stay blocked.
        await asyncio.sleep(0.2)
        assert not pending.done()
        other.execute("COMMIT")
        assert await asyncio.wait_for(pending, 5) is not None
    finally:
        other.close()
        await store.close()


@pytest.mark.parametrize("what", ["a folder", "not a database"])
async def test_an_unusable_database_file_is_one_clear_error(tmp_path: Path, what: str) -> None:
    path = tmp_path / "teambot.db"
    if what == "a folder":
        path.mkdir()
    else:
        path.write_bytes(b"these are notes, not a database\n" * 200)
    expected = (
        r"^TEAMBOT_DB: '.*' is a folder; name a file in it" if what == "a folder" else r"^TEAMBOT_DB: cannot use "
    )
    with pytest.raises(ConfigError, match=expected + r".* as a SQLite database" * (what != "a folder")):
        await open_store(str(path))


@pytest.mark.parametrize("db", [":memory:", "sqlite:///:memory:", "sqlite:///"])
async def test_an_in_memory_database_is_refused_in_one_line(db: str) -> None:
    # The writer and the reader would each open their own empty database ("no such table" on the first read).
    with pytest.raises(ConfigError, match=r"^TEAMBOT_DB: an in-memory SQLite database is not supported"):
        await open_store(db)


@pytest.mark.parametrize("command", [["console"], ["db", "migrate"], ["check"]])
async def test_the_cli_refuses_an_in_memory_database_at_start_up(tmp_path: Path, command: list[str]) -> None:
    env = {"PATH": "/usr/bin:/bin", "TEAMBOT_DB": ":memory:", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *command,
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    line = (
        "invalid setting TEAMBOT_DB: Value error, an in-memory SQLite database is not supported: teambot "
        "writes and reads through two connections, which would each get their own empty database; use a file path "
        "(a temporary one for a throwaway run)"
    )
    if command == ["check"]:  # check prints its findings once, on stdout
        assert stdout.decode().splitlines() == [f"FAIL  configuration: {line}"] and stderr == b""
    else:
        assert stderr.decode().splitlines() == [f"teambot: {line}"]


async def test_reset_leaves_no_trace_of_the_text_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "teambot.db"
    store = await open_store(str(path))
    try:
        await store.begin_turn(incoming(A, 1, "the launch code is swordfish-4471"), 10)
        await store.reset(A)
    finally:
        await store.close()
    assert b"swordfish-4471" not in _database_bytes(tmp_path)


def _database_bytes(folder: Path) -> bytes:
    """The database file with its WAL and shared-memory files, as bytes."""
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.name.startswith("teambot.db"))


async def test_usage_is_summed_per_scope_since_a_time(store: Store) -> None:
    def record(at: float, channel: str, user: str, tokens: int, *, priced: bool = True) -> UsageRecord:
        return UsageRecord(
            at, ConversationKey("slack", "T1", channel), user, "m", tokens, 1, True, tokens / 100, priced
        )

    ledger = [record(10, "C1", "U1", 9), record(20, "C1", "U2", 19), record(30, "C2", "U1", 29, priced=False)]
    for n, entry in enumerate(ledger):
        row = await store.begin_turn(incoming(entry.key, n), 1)
        assert row is not None
        await store.add_reply(entry.key, "ok", 1, reply_to=row, usage=None, model="m", complete=True, ledger=entry)
    workspace = UsageScope("slack", "T1")
    assert await store.usage_since(workspace, 0) == UsageTotal(3, 60, pytest.approx(0.57), all_priced=False)
    assert await store.usage_since(workspace, 15) == UsageTotal(2, 50, pytest.approx(0.48), all_priced=False)
    assert await store.usage_since(UsageScope("slack", "T1", channel="C1"), 0) == UsageTotal(2, 30, pytest.approx(0.28))
    assert await store.usage_since(UsageScope("slack", "T1", user_id="U1"), 0) == UsageTotal(
        2, 40, pytest.approx(0.38), all_priced=False
    )
    assert await store.usage_since(UsageScope("slack", "T2"), 0) == UsageTotal()


async def test_the_soft_cap_warning_is_claimed_once_per_scope_and_period(store: Store) -> None:
    claims = await asyncio.gather(*(store.claim_warning("slack:T1", 1000.0) for _ in range(5)))
    assert sorted(claims) == [False] * 4 + [True]
    assert await store.claim_warning("slack:T1", 2000.0) is True
    assert await store.claim_warning("slack:T2", 1000.0) is True


async def test_channel_settings_are_kept_per_channel_and_cover_threads(store: Store) -> None:
    assert await store.channel_settings(A) == ChannelSettings()
    await store.set_channel_settings(A, ChannelSettings("Be brief.", "gpt-x"))
    assert await store.channel_settings(B) == ChannelSettings("Be brief.", "gpt-x")
    await store.set_channel_settings(A, ChannelSettings(None, "gpt-y"))
    assert await store.channel_settings(A) == ChannelSettings(None, "gpt-y")
    assert await store.channel_settings(ConversationKey("slack", "T1", "C2")) == ChannelSettings()


async def test_rate_buckets_allow_a_burst_then_say_how_long_to_wait(store: Store) -> None:
    per_second = 2 / 60
    u1, u2 = RateBucket("user:U1", 2, per_second), RateBucket("user:U2", 2, per_second)
    assert [await store.take_tokens([u1]) for _ in range(2)] == [0, 0]
    wait = await store.take_tokens([u1])
    assert 29 < wait <= 30
    assert await store.take_tokens([u2]) == 0


async def test_rate_buckets_are_taken_from_together_or_not_at_all(store: Store) -> None:
    person = RateBucket("user:U1", 2, 2 / 60)
    c1, c2 = RateBucket("channel:C1", 1, 1 / 60), RateBucket("channel:C2", 1, 1 / 60)
    assert await store.take_tokens([person, c1]) == 0
    assert 59 < await store.take_tokens([person, c1]) <= 60  # C1 is empty ...
    assert await store.take_tokens([person]) == 0  # ... and the refused take left the person's token alone
    assert 29 < await store.take_tokens([person, c2]) <= 30  # now the person is empty ...
    assert await store.take_tokens([c2]) == 0  # ... and C2 kept its token


async def test_the_conversation_lock_can_be_taken_again_once_released(store: Store) -> None:
    for _ in range(3):
        async with store.conversation_lock(A), store.conversation_lock(B):
            pass


async def test_a_request_is_claimed_once_until_it_expires(store: Store) -> None:
    now = time.time()
    assert await store.claim_request("slack:v0=aaa", now + 360)
    assert not await store.claim_request("slack:v0=aaa", now + 360)  # the same bytes again: a replay
    assert await store.claim_request("slack:v0=bbb", now + 360)  # another request
    # A claim past its time is forgotten when the next one comes (the platform refuses such a request anyway).
    assert await store.claim_request("slack:v0=old", now - 1)
    assert await store.claim_request("slack:v0=ccc", now + 360)
    assert sorted(r[0] for r in await rows(store, "SELECT request_id FROM seen_requests")) == [
        "slack:v0=aaa",
        "slack:v0=bbb",
        "slack:v0=ccc",
    ]


async def test_concurrent_claims_of_one_request_only_one_wins(store: Store) -> None:
    results = await asyncio.gather(*(store.claim_request("slack:v0=same", time.time() + 360) for _ in range(20)))
    assert results.count(True) == 1


async def execute(store: Store, statement: str, *args: object) -> None:
    """Write past the store (``?`` placeholders), as another process or an old row would have."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            db.execute(statement, args)
        return
    assert isinstance(store, PostgresStore)
    numbered = statement
    for n in range(1, len(args) + 1):
        numbered = numbered.replace("?", f"${n}", 1)
    async with store.connection() as conn:
        await conn.execute(numbered, *args)


async def test_handled_ids_are_kept_for_seven_days_then_purged(store: Store) -> None:
    day = 86_400
    now = time.time()
    for name, age in (("six-days", 6 * day), ("eight-days", 8 * day), ("just-now", 0)):
        await execute(store, "INSERT INTO handled_messages (message_id, handled_at) VALUES (?, ?)", name, now - age)
    assert await store.purge_expired() == 1
    # Still inside the retention: a late redelivery is refused; past it, the id is free again.
    assert await store.begin_turn(IncomingMessage(A, "six-days", "U1", "Ada", "late"), 10) is None
    assert await store.begin_turn(IncomingMessage(A, "just-now", "U1", "Ada", "again"), 10) is None
    assert await store.begin_turn(IncomingMessage(A, "eight-days", "U1", "Ada", "new"), 10) is not None
    assert await store.purge_expired() == 0


async def test_an_abandoned_turn_leaves_its_id_free_and_its_cost_in_the_ledger(store: Store) -> None:
    row = await store.begin_turn(incoming(A, 1), 10)
    assert row is not None
    cost = UsageRecord(time.time(), A, "U1", "m", 100, 7, False, 0.5, True)
    await store.abandon_turn(row, incoming(A, 1).message_id, cost)
    assert await store.count_messages(A) == 0
    assert await store.usage_since(UsageScope("slack", "T1"), 0) == UsageTotal(1, 107, 0.5)
    assert await store.begin_turn(incoming(A, 1), 10) is not None  # asked again (or redelivered): answered


async def test_a_refused_reply_is_a_store_error_and_the_ledger_entry_still_fits(store: Store) -> None:
    row = await store.begin_turn(incoming(A, 1), 10)
    assert row is not None
    if isinstance(store, SQLiteStore):
        await execute(
            store,
            "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.role = 'assistant' "
            "BEGIN SELECT RAISE(FAIL, 'disk full'); END",
        )
    else:
        await execute(
            store,
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full' USING ERRCODE = 'disk_full'; END $$",
        )
        await execute(
            store,
            "CREATE TRIGGER refuse BEFORE INSERT ON messages FOR EACH ROW WHEN (NEW.role = 'assistant') "
            "EXECUTE FUNCTION refuse()",
        )
    cost = UsageRecord(time.time(), A, "U1", "m", 100, 7, True, 0.5, True)
    with pytest.raises(StoreError, match="disk full"):
        await store.add_reply(A, "a long answer", 5, reply_to=row, usage=None, model="m", complete=True, ledger=cost)
    assert await store.usage_since(UsageScope("slack", "T1"), 0) == UsageTotal()  # one transaction: nothing kept
    await store.add_usage(cost)
    assert await store.usage_since(UsageScope("slack", "T1"), 0) == UsageTotal(1, 107, 0.5)


async def test_readiness_writes_and_keeps_nothing(store: Store) -> None:
    assert await store.ping() is True
    assert await rows(store, "SELECT count(*) FROM handled_messages") == [(0,)]


async def test_readiness_fails_while_the_database_refuses_writes(store: Store) -> None:
    # A trigger made by another connection binds every writer, root included, unlike a file's permissions.
    if isinstance(store, SQLiteStore):
        refuse = "CREATE TRIGGER refuse BEFORE INSERT ON handled_messages BEGIN SELECT RAISE(FAIL, 'disk full'); END"
    else:
        await execute(
            store,
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full' USING ERRCODE = 'disk_full'; END $$",
        )
        refuse = "CREATE TRIGGER refuse BEFORE INSERT ON handled_messages FOR EACH ROW EXECUTE FUNCTION refuse()"
    await execute(store, refuse)
    assert await store.ping() is False
    await execute(store, "DROP TRIGGER refuse" + ("" if isinstance(store, SQLiteStore) else " ON handled_messages"))
    assert await store.ping() is True


async def test_the_ledger_keeps_cached_and_reasoning_tokens_and_unknown_stays_unknown(store: Store) -> None:
    def record(cached: int | None, reasoning: int | None) -> UsageRecord:
        return UsageRecord(time.time(), A, "U1", "m", 100, 40, True, 0.01, True, cached, reasoning)

    scope = UsageScope("slack", "T1")
    await store.add_usage(record(None, None))
    unknown = await store.usage_since(scope, 0)
    assert (unknown.cached_tokens, unknown.reasoning_tokens, unknown.cache_share) == (None, None, None)
    await store.add_usage(record(80, 0))
    await store.add_usage(record(20, 15))
    total = await store.usage_since(scope, 0)
    assert (total.calls, total.tokens, total.cached_tokens, total.reasoning_tokens) == (3, 420, 100, 15)
    # The share counts only the calls whose server said: 100 of their 200 prompt tokens, not 100 of 300.
    assert total.cache_known_prompt_tokens == 200 and total.cache_share == 0.5
    on_disk = await rows(store, "SELECT cached_tokens, reasoning_tokens FROM usage ORDER BY id")
    assert on_disk == [(None, None), (80, 0), (20, 15)]


async def test_history_is_trimmed_in_blocks_so_its_start_holds_for_several_turns(store: Store) -> None:
    starts = []
    for n in range(40):
        row = await store.begin_turn(incoming(A, n), 10)
        assert row is not None
        history = await store.load_history(A, 100, before=row, step=50)
        assert sum(m.tokens for m in history) <= 100
        starts.append(history[0].content if history else None)
    # Once the 100-token window is full, its start moves only every 5 messages (50 tokens), and jumps by 5.
    # (Turn 11 is the first to overflow: 110 tokens before it, 10 too many, rounded up to a block of 50.)
    moves = [n for n in range(1, 40) if starts[n] != starts[n - 1]]
    assert moves == [1, 11, 16, 21, 26, 31, 36], starts
    assert starts[10] == "message 0" and starts[11] == "message 5" and starts[16] == "message 10"
    # One by one, it moves with every message.
    row = await store.begin_turn(incoming(A, 40), 10)
    assert row is not None
    assert (await store.load_history(A, 100, before=row, step=1))[0].content == "message 30"


async def test_block_trimming_never_passes_the_budget_or_leaves_a_hole(store: Store) -> None:
    sizes = [7, 31, 5, 64, 12, 9, 40, 18, 5, 77, 23, 6, 50, 11, 29, 8, 66, 14, 5, 35]
    ids = []
    for n, size in enumerate(sizes * 3):
        row = await store.begin_turn(incoming(A, n), size)
        assert row is not None
        ids.append(row)
        for budget, step in ((150, 37), (200, 100), (90, 1)):
            history = await store.load_history(A, budget, before=row, step=step)
            assert sum(m.tokens for m in history) <= budget
            assert [m.id for m in history] == ids[len(ids) - 1 - len(history) : -1]  # the newest, without a hole
    # A line that lags behind the messages (written by hand, or by two writers racing) still never passes the budget.
    await rows(store, "UPDATE messages SET tokens_before = 0")
    for budget, step in ((150, 37), (200, 100)):
        history = await store.load_history(A, budget, before=10**9, step=step)
        assert 0 < sum(m.tokens for m in history) <= budget


async def test_migrating_places_existing_messages_on_their_conversations_token_line(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    # The schema as it was before the migration that placed messages on their token line.
    line = next(n for n, step in enumerate(MIGRATIONS) if any("tokens_before" in s for s in step))
    with sqlite3.connect(path) as db:
        for statement in (s for step in MIGRATIONS[:line] for s in step):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {line}")
        for conversation in (1, 2):
            db.execute(
                "INSERT INTO conversations (id, key, platform, workspace, channel, created_at) "
                "VALUES (?, ?, 'slack', 'T1', ?, 0)",
                (conversation, f"slack:T1:C{conversation}", f"C{conversation}"),
            )
        for conversation, tokens in ((1, 10), (2, 7), (1, 20), (2, 3), (1, 30)):
            db.execute(
                "INSERT INTO messages (conversation_id, role, content, tokens, created_at) "
                "VALUES (?, 'user', 'x', ?, 0)",
                (conversation, tokens),
            )
        db.execute(
            "INSERT INTO usage (at, platform, workspace, channel, user_id, model, prompt_tokens, completion_tokens, "
            "exact, cost, priced) VALUES (0, 'slack', 'T1', 'C1', 'U1', 'm', 1, 1, 1, 0, 1)"
        )
    store = await open_store(str(path))
    await store.close()
    with sqlite3.connect(path) as db:
        placed = db.execute("SELECT conversation_id, tokens_before FROM messages ORDER BY id").fetchall()
        ledger = db.execute("SELECT cached_tokens, reasoning_tokens FROM usage").fetchall()
    assert placed == [(1, 0), (2, 0), (1, 10), (2, 7), (1, 30)]
    assert ledger == [(None, None)]  # what an older bot recorded is unknown, not zero


# --- images: content-addressed, linked to messages, least recently used dropped first under one cap -------------

IMG_A = ConversationKey("slack", "T1", "C1")
IMG_B = ConversationKey("slack", "T1", "C2")


def blob(fill: int, size: int = 1000) -> ImageBlob:
    data = bytes([fill]) * size
    return ImageBlob(hashlib.sha256(data).hexdigest(), "image/png", data)


async def question(store: Store, key: ConversationKey, n: int) -> int:
    return await store.add_question(incoming(key, n), 10)


async def test_images_are_kept_once_and_come_back_by_hash(store: Store) -> None:
    one, two = blob(1), blob(2)
    await store.add_images(IMG_A, await question(store, IMG_A, 1), [one, two], cap_bytes=10**9)
    await store.add_images(IMG_B, await question(store, IMG_B, 1), [one], cap_bytes=10**9)
    assert await rows(store, "SELECT count(*) FROM images") == [(2,)]
    loaded = await store.load_images([one.sha256, two.sha256, "0" * 64])
    assert loaded == {one.sha256: one, two.sha256: two}


async def test_reset_deletes_the_conversations_images_that_no_other_shows(store: Store) -> None:
    shared, own = blob(1), blob(2)
    await store.add_images(IMG_A, await question(store, IMG_A, 1), [shared, own], cap_bytes=10**9)
    await store.add_images(IMG_B, await question(store, IMG_B, 1), [shared], cap_bytes=10**9)
    await store.reset(IMG_A)
    assert set(await store.load_images([shared.sha256, own.sha256])) == {shared.sha256}
    assert await rows(store, "SELECT count(*) FROM message_images") == [(1,)]
    await store.reset(IMG_B)
    assert await rows(store, "SELECT count(*) FROM images") == [(0,)]


async def test_the_least_recently_used_go_first_past_the_cap(store: Store) -> None:
    old, used, new = blob(1), blob(2), blob(3)
    await store.add_images(IMG_A, await question(store, IMG_A, 1), [old], cap_bytes=2500)
    time.sleep(0.01)  # noqa: ASYNC251 - the images' use times must differ; nothing to await
    await store.add_images(IMG_A, await question(store, IMG_A, 2), [used], cap_bytes=2500)
    time.sleep(0.01)  # noqa: ASYNC251
    assert set(await store.load_images([old.sha256])) == {old.sha256}  # shown again: now the most recent
    time.sleep(0.01)  # noqa: ASYNC251
    await store.add_images(IMG_A, await question(store, IMG_A, 3), [new], cap_bytes=2500)
    kept = await store.load_images([old.sha256, used.sha256, new.sha256])
    assert set(kept) == {old.sha256, new.sha256}
    assert await rows(store, "SELECT count(*) FROM message_images") == [(2,)]
    assert await rows(store, "SELECT sum(size) FROM images") == [(2000,)]


async def test_an_abandoned_turn_takes_its_image_links_along(store: Store) -> None:
    row = await question(store, IMG_A, 1)
    await store.add_images(IMG_A, row, [blob(1)], cap_bytes=10**9)
    await store.abandon_turn(row, "slack:T1:C1:1")
    assert await rows(store, "SELECT count(*) FROM images") == [(0,)]


async def test_speak_mode_and_scope_are_kept_per_channel_and_listed_for_the_speaking_table(store: Store) -> None:
    assert await store.speaking_channels() == {}
    await store.set_channel_settings(A, ChannelSettings("be brief", None))
    # A channel with only a prompt or a model is no business of bot.speak: not listed.
    assert await store.speaking_channels() == {}
    await store.set_channel_settings(A, ChannelSettings("be brief", "m", speak="all", scope="person"))
    other = ConversationKey("discord", "G1", "C9")
    await store.set_channel_settings(other, ChannelSettings(speak="mention"))
    # A thread's key reads its channel's settings.
    assert await store.channel_settings(B) == ChannelSettings("be brief", "m", "all", "person")
    assert await store.speaking_channels() == {
        ("slack", "T1", "C1"): ChannelSettings("be brief", "m", "all", "person"),
        ("discord", "G1", "C9"): ChannelSettings(None, None, "mention", None),
    }
