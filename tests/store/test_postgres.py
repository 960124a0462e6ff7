"""What only PostgreSQL has to get right: its schema bookkeeping, and several processes sharing one database.

Each "replica" here is a store of its own with its own pool and lock connection, as a second process would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bot.errors import ConfigError, StoreError
from bot.messages import ConversationKey, IncomingMessage
from bot.store import ChannelSettings, RateBucket, Store, UsageRecord, open_store
from bot.store import postgres as postgres_engine
from bot.store.postgres import _SETTINGS_FRESH_S, MIGRATIONS, RATE_BUCKET_IDLE_S, PostgresStore
from tests.postgres_server import PostgresServer

A = ConversationKey("slack", "T1", "C1")


def incoming(n: int) -> IncomingMessage:
    return IncomingMessage(A, f"m{n}", "U1", "Ada", f"message {n}")


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[Store, Store]]:
    first, second = await asyncio.gather(open_store(postgres_url), open_store(postgres_url))
    yield first, second
    await first.close()
    await second.close()


async def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    stores = await asyncio.gather(*(open_store(postgres_url) for _ in range(4)))
    for s in stores:
        await s.close()
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await conn.fetch("SELECT version FROM schema_version") == [(len(MIGRATIONS),)]
    finally:
        await conn.close()


async def test_a_newer_schema_is_refused_with_a_clear_message(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO schema_version VALUES ($1)", len(MIGRATIONS) + 1)
    finally:
        await conn.close()
    with pytest.raises(ConfigError, match="newer than this teambot"):
        await open_store(postgres_url)


async def test_without_migrating_an_old_schema_is_refused_and_names_the_command(postgres_url: str) -> None:
    with pytest.raises(ConfigError, match="teambot db migrate"):
        await open_store(postgres_url, migrate=False)
    store = await open_store(postgres_url)
    await store.close()
    store = await open_store(postgres_url, migrate=False)
    await store.close()


async def test_an_unreachable_server_is_one_clear_line_without_the_password(postgres_server: PostgresServer) -> None:
    closed_port = postgres_server.port + 1 if postgres_server.port < 65535 else 1
    url = f"postgresql://teambot:hunter2secret@127.0.0.1:{closed_port}/teambot"
    with pytest.raises(ConfigError) as caught:
        await open_store(url)
    message = str(caught.value)
    assert message.startswith("TEAMBOT_DB: cannot connect to PostgreSQL at 127.0.0.1:")
    assert "hunter2secret" not in message and "\n" not in message


async def test_a_message_reaching_two_replicas_at_once_is_claimed_by_one(replicas: tuple[Store, Store]) -> None:
    first, second = replicas
    for n in range(50):
        results = await asyncio.gather(first.begin_turn(incoming(n), 10), second.begin_turn(incoming(n), 10))
        assert sum(r is not None for r in results) == 1, f"message {n} was claimed {results}"
    assert await first.count_messages(A) == 50


async def test_a_message_id_claimed_by_two_replicas_at_once_is_theirs_once(replicas: tuple[Store, Store]) -> None:
    first, second = replicas
    for n in range(50):
        claims = await asyncio.gather(first.claim_message(f"m{n}"), second.claim_message(f"m{n}"))
        assert sorted(claims) == [False, True], f"message {n} was claimed {claims}"


async def test_a_conversation_locked_by_one_replica_waits_in_the_other(replicas: tuple[Store, Store]) -> None:
    first, second = replicas
    order: list[str] = []
    held, released = asyncio.Event(), asyncio.Event()

    async def hold_in_first() -> None:
        async with first.conversation_lock(A):
            order.append("first in")
            held.set()
            await released.wait()
            order.append("first out")

    holder = asyncio.create_task(hold_in_first())
    await asyncio.wait_for(held.wait(), 5)

    async def enter_second() -> None:
        async with second.conversation_lock(A):
            order.append("second in")

    waiter = asyncio.create_task(enter_second())
    # Another conversation is not held up by it.
    async with asyncio.timeout(2), second.conversation_lock(ConversationKey("slack", "T1", "C2")):
        pass
    await asyncio.sleep(0.3)
    assert order == ["first in"], "the second replica entered a conversation the first one held"
    released.set()
    await asyncio.wait_for(asyncio.gather(holder, waiter), 5)
    assert order == ["first in", "first out", "second in"]


async def test_a_replica_whose_session_dies_holding_a_lock_releases_it_and_recovers(
    replicas: tuple[Store, Store], postgres_url: str
) -> None:
    doomed, survivor = replicas
    holding = asyncio.Event()

    async def turn_in_doomed() -> None:
        async with doomed.conversation_lock(A):
            holding.set()
            await asyncio.Event().wait()

    turn = asyncio.create_task(turn_in_doomed())
    await asyncio.wait_for(holding.wait(), 5)
    waiter = asyncio.create_task(_enter(survivor))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    # As when a replica is SIGKILLed or its network drops: the server ends the session and its locks with it.
    admin = await asyncpg.connect(postgres_url)
    try:
        ended = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
    finally:
        await admin.close()
    assert [tuple(r) for r in ended] == [(True,)]
    await asyncio.wait_for(waiter, 5)
    turn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await turn
    # The replica whose session died takes locks again on a new one.
    await asyncio.wait_for(_enter(doomed), 5)


async def _enter(store: Store) -> None:
    async with store.conversation_lock(A):
        pass


async def test_rate_buckets_are_shared_by_replicas(replicas: tuple[Store, Store]) -> None:
    first, second = replicas
    bucket = RateBucket("user:slack:T1:U1", 3, 3 / 60)
    waits = [await store.take_tokens([bucket]) for store in (first, second, first, second)]
    assert waits[:3] == [0, 0, 0]
    assert 19 < waits[3] <= 20


async def test_a_request_claimed_by_one_replica_is_a_replay_for_the_other(replicas: tuple[Store, Store]) -> None:
    first, second = replicas
    expires = time.time() + 360
    assert await first.claim_request("slack:v0=abc", expires)
    assert not await second.claim_request("slack:v0=abc", expires)
    # Both at once, on a request neither has seen: exactly one wins.
    results = await asyncio.gather(*(s.claim_request("slack:v0=def", expires) for s in (first, second) * 5))
    assert results.count(True) == 1


async def test_a_released_conversation_lock_is_free_for_another_replica(replicas: tuple[Store, Store]) -> None:
    # Only PostgreSQL has a lock another process could wait on (SQLite's is a no-op), and its advisory locks are
    # re-entrant within one session: taking it again in the same replica would prove nothing.
    first, second = replicas
    for holder, other in ((first, second), (second, first), (first, second)):
        async with holder.conversation_lock(A):
            pass
        async with asyncio.timeout(2), other.conversation_lock(A):
            pass
    # Released too when the turn holding it fails or is cancelled (a shutdown past the drain deadline).
    with pytest.raises(RuntimeError):
        async with first.conversation_lock(A):
            raise RuntimeError("the turn failed")
    await asyncio.wait_for(_enter(second), 2)
    holding = asyncio.Event()

    async def cancelled_turn() -> None:
        async with first.conversation_lock(A):
            holding.set()
            await asyncio.Event().wait()

    turn = asyncio.create_task(cancelled_turn())
    await asyncio.wait_for(holding.wait(), 5)
    turn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await turn
    await asyncio.wait_for(_enter(second), 2)


async def test_idle_rate_buckets_are_purged_by_the_servers_clock(replicas: tuple[Store, Store]) -> None:
    first, _ = replicas
    assert await first.take_tokens([RateBucket("user:fresh", 3, 1.0)]) == 0
    assert isinstance(first, PostgresStore)
    async with first.connection() as conn:
        await conn.execute(
            "INSERT INTO rate_buckets (key, tokens, updated_at) "
            "VALUES ('user:idle', 0, extract(epoch FROM clock_timestamp()) - $1)",
            RATE_BUCKET_IDLE_S + 60.0,
        )
    await first.purge_expired()
    async with first.connection() as conn:
        assert [r[0] for r in await conn.fetch("SELECT key FROM rate_buckets ORDER BY key")] == ["user:fresh"]


async def test_replicas_taking_from_two_buckets_at_once_give_out_no_more_than_they_hold(
    replicas: tuple[Store, Store],
) -> None:
    first, second = replicas
    # Every connection of both pools opened first, so that the takes below really run at once.
    await asyncio.gather(*(s.take_tokens([RateBucket(f"warm:{n}", 1, 1)]) for n, s in enumerate((first, second) * 10)))
    # No refill worth speaking of while the test runs; both buckets are new, so their rows are created on the way.
    person, channel = RateBucket("user:slack:T1:U1", 5, 1 / 3600), RateBucket("channel:slack:T1:C1", 8, 1 / 3600)
    waits = await asyncio.gather(*(store.take_tokens([channel, person]) for store in (first, second) * 20))
    assert sum(wait == 0 for wait in waits) == 5
    # The channel gave exactly the 5 tokens the person could use, and has 3 left.
    assert [await second.take_tokens([channel]) == 0 for _ in range(4)] == [True, True, True, False]


async def test_a_reply_whose_ledger_entry_is_refused_is_not_kept_either(postgres_url: str) -> None:
    # The other way round from the contract test (a refused reply keeps no ledger entry): one statement, so the
    # reply is kept only with its charge.
    store = await open_store(postgres_url)
    try:
        assert isinstance(store, PostgresStore)
        row = await store.begin_turn(incoming(1), 10)
        assert row is not None
        async with store.connection() as conn:
            await conn.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk full' USING ERRCODE = 'disk_full'; END $$"
            )
            await conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON usage FOR EACH ROW EXECUTE FUNCTION refuse()")
        cost = UsageRecord(time.time(), A, "U1", "m", 100, 7, True, 0.5, True)
        with pytest.raises(StoreError, match="disk full"):
            await store.add_reply(A, "an answer", 5, reply_to=row, usage=None, model="m", complete=True, ledger=cost)
        assert await store.count_messages(A) == 1
        # Without a charge the reply goes in alone.
        await store.add_reply(A, "an answer", 5, reply_to=row, usage=None, model="m", complete=True)
        assert await store.count_messages(A) == 2
    finally:
        await store.close()


async def test_many_turns_of_one_replica_share_lock_round_trips_and_still_hold_a_conversation_one_at_a_time(
    replicas: tuple[Store, Store],
) -> None:
    first, second = replicas
    assert isinstance(first, PostgresStore)
    await _enter(first)  # the lock connection opened
    statements: list[str] = []
    assert first._lock_conn is not None
    first._lock_conn.add_query_logger(lambda record: statements.append(record.query))
    inside: Counter[str] = Counter()
    overlaps: list[str] = []

    async def turn(store: Store, channel: str) -> None:
        async with store.conversation_lock(ConversationKey("slack", "T1", channel)):
            inside[channel] += 1
            if inside[channel] > 1:
                overlaps.append(channel)
            for _ in range(3):
                await asyncio.sleep(0)
            inside[channel] -= 1

    # Turns of other conversations on this replica, and of the same ones on the other, at once. (Within one
    # replica the core's own lock keeps a conversation's turns apart: a session's advisory locks are re-entrant.)
    channels = [f"C{n}" for n in range(80)]
    await asyncio.wait_for(asyncio.gather(*(turn(s, c) for c in channels for s in (first, second))), 30)
    assert not overlaps, f"conversations held by two turns at once: {sorted(set(overlaps))}"
    # 80 takes and 80 releases on this replica (more takes where the other replica held the conversation).
    assert 0 < len(statements) < 80, f"{len(statements)} round trips"


async def test_a_turn_cut_off_while_its_lock_is_taken_leaves_the_conversation_free(
    replicas: tuple[Store, Store],
) -> None:
    first, second = replicas
    await _enter(first)
    rng = random.Random(3)
    keys = [ConversationKey("slack", "T1", f"C{n}") for n in range(200)]

    async def held_forever(key: ConversationKey) -> None:
        async with first.conversation_lock(key):
            await asyncio.Event().wait()

    # Cut off at every point of the way, one now and then: before the take goes out, while it is out (a round
    # trip is many turns of the event loop), once it is held.
    turns = [asyncio.create_task(held_forever(key)) for key in keys]
    while not all(turn.done() for turn in turns):
        for turn in turns:
            if not turn.done() and rng.random() < 0.01:
                turn.cancel()
        await asyncio.sleep(0)
    await asyncio.gather(*turns, return_exceptions=True)

    async def free(key: ConversationKey) -> None:
        async with second.conversation_lock(key):
            pass

    await asyncio.wait_for(asyncio.gather(*(free(key) for key in keys)), 10)


async def test_a_question_in_a_conversation_another_replica_started_joins_it_on_its_token_line(
    replicas: tuple[Store, Store],
) -> None:
    first, second = replicas
    assert isinstance(first, PostgresStore)
    await first.add_question(incoming(1), 10)
    await first.add_question(incoming(2), 20)
    # The second replica has not seen the conversation: found, not made again, in the question's own statement.
    await second.add_question(incoming(3), 30)
    await second.add_question(incoming(4), 40)
    await first.add_question(IncomingMessage(ConversationKey("slack", "T1", "C2"), "m5", "U1", "Ada", "elsewhere"), 5)
    async with first.connection() as conn:
        placed = await conn.fetch(
            "SELECT c.key, m.content, m.tokens_before FROM messages m JOIN conversations c "
            "ON c.id = m.conversation_id ORDER BY m.id"
        )
        assert await conn.fetchval("SELECT count(*) FROM conversations") == 2
    assert [tuple(r) for r in placed] == [
        (str(A), "message 1", 0),
        (str(A), "message 2", 10),
        (str(A), "message 3", 30),
        (str(A), "message 4", 60),
        ("slack:T1:C2", "elsewhere", 0),
    ]


async def test_a_turn_cut_off_as_its_lock_comes_back_taken_gives_it_back(replicas: tuple[Store, Store]) -> None:
    # The take came back True and the turn was cancelled before it resumed (a shutdown, a timeout landing in the
    # same turn of the event loop): the turn never enters its body, so nothing but the take itself can release.
    first, second = replicas
    assert isinstance(first, PostgresStore)
    await _enter(first)
    key = ConversationKey("slack", "T1", "C9")
    entered = asyncio.Event()

    async def turn() -> None:
        async with first.conversation_lock(key):
            entered.set()
            await asyncio.Event().wait()

    loop = asyncio.get_running_loop()
    task = loop.create_task(turn())
    seen: list[asyncio.Future[bool]] = []

    def cancel_once_answered() -> None:
        # Runs every turn of the event loop, so it runs after the answer lands and before the turn resumes.
        if not seen and first._lock_calls and first._lock_calls[0].done is not None:
            seen.append(first._lock_calls[0].done)
        if seen and seen[0].done():
            task.cancel()
            return
        loop.call_soon(cancel_once_answered)

    loop.call_soon(cancel_once_answered)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen and seen[0].result() is True and not entered.is_set()

    async def free() -> None:
        async with second.conversation_lock(key):
            pass

    await asyncio.wait_for(free(), 10)


async def test_a_take_the_server_refuses_does_not_take_down_a_release_sent_with_it(
    replicas: tuple[Store, Store],
) -> None:
    # A release and a take go out in one statement; the server refuses the take (a name it cannot store as
    # text). The release must still land, or the conversation stays held for good on a live connection.
    first, second = replicas
    await _enter(first)
    held = first.conversation_lock(A)
    await held.__aenter__()
    refused = asyncio.create_task(_enter_key(first, ConversationKey("slack", "T1", "C\x00")))
    await held.__aexit__(None, None, None)  # the release waits for the lock connection beside the take
    with pytest.raises(Exception, match="0x00"):
        await refused

    async def free() -> None:
        async with second.conversation_lock(A):
            pass

    await asyncio.wait_for(free(), 10)


async def _enter_key(store: Store, key: ConversationKey) -> None:
    async with store.conversation_lock(key):
        pass


async def test_a_turn_that_ends_after_the_store_closed_leaves_nothing_running(postgres_url: str) -> None:
    store = await open_store(postgres_url)
    held = store.conversation_lock(A)
    await held.__aenter__()
    await store.close()
    await held.__aexit__(None, None, None)  # its release: nothing to send, the locks went with the connection
    runners = [t for t in asyncio.all_tasks() if "_run_lock_calls" in repr(t.get_coro())]
    assert not runners, "a lock task outlived the store, with a connection nobody closes"
    with pytest.raises(asyncpg.InterfaceError):
        await _enter(store)


async def test_the_pools_connections_are_open_before_the_first_turn(postgres_url: str) -> None:
    # A pool growing on demand opened them on the first turns under load, each such turn waiting for a server
    # process to start.
    store = await open_store(postgres_url, pool_size=4)
    try:
        assert isinstance(store, PostgresStore)
        async with store.connection() as conn:
            sessions = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend'"
            )
        assert sessions == 4
    finally:
        await store.close()


async def test_a_turn_reads_its_channels_settings_as_its_take_brought_them(replicas: tuple[Store, Store]) -> None:
    # The take brings the settings along (one round trip less per turn): as another replica last set them, read
    # once from what the take brought and from the database after.
    first, second = replicas
    assert isinstance(first, PostgresStore)
    await second.set_channel_settings(A, ChannelSettings("Be brief.", "gpt-x"))
    async with first.conversation_lock(A):
        assert str(A) in first._taken_settings
        assert await first.channel_settings(A) == ChannelSettings("Be brief.", "gpt-x")
        assert str(A) not in first._taken_settings
        await second.set_channel_settings(A, ChannelSettings("Be long.", None))
        assert await first.channel_settings(A) == ChannelSettings("Be long.", None)
    # A hold that never reads them (a /reset) leaves nothing behind either.
    async with first.conversation_lock(A):
        assert str(A) in first._taken_settings
    assert not first._taken_settings


async def test_takes_sent_together_each_bring_their_own_channels_settings(replicas: tuple[Store, Store]) -> None:
    first, second = replicas
    assert isinstance(first, PostgresStore)
    keys = [ConversationKey("slack", "T1", f"C{n}") for n in range(6)]
    for n, key in enumerate(keys[:4]):
        await second.set_channel_settings(key, ChannelSettings(f"prompt {n}", None, speak="all" if n % 2 else None))
    seen: dict[ConversationKey, ChannelSettings] = {}
    entered = asyncio.Event()

    async def turn(key: ConversationKey) -> None:
        async with first.conversation_lock(key):
            seen[key] = await first.channel_settings(key)
            if len(seen) == len(keys):
                entered.set()
            await asyncio.wait_for(entered.wait(), 10)

    await asyncio.gather(*(turn(k) for k in keys))
    assert seen == {
        **{k: ChannelSettings(f"prompt {n}", None, speak="all" if n % 2 else None) for n, k in enumerate(keys[:4])},
        keys[4]: ChannelSettings(),
        keys[5]: ChannelSettings(),
    }


async def test_a_settings_change_in_a_held_conversation_is_read_back_at_once(replicas: tuple[Store, Store]) -> None:
    first, _ = replicas
    async with first.conversation_lock(A):
        await first.set_channel_settings(A, ChannelSettings(None, "gpt-y"))
        assert await first.channel_settings(A) == ChannelSettings(None, "gpt-y")


async def test_settings_a_take_brought_long_before_are_read_again(replicas: tuple[Store, Store]) -> None:
    # A turn that waited (for a call slot, say) after taking its conversation reads the settings as they are now.
    first, second = replicas
    assert isinstance(first, PostgresStore)
    async with first.conversation_lock(A):
        await second.set_channel_settings(A, ChannelSettings("changed meanwhile", None))
        settings, taken_at, holder = first._taken_settings[str(A)]
        assert settings == ChannelSettings()
        first._taken_settings[str(A)] = (settings, taken_at - 2 * _SETTINGS_FRESH_S, holder)
        assert await first.channel_settings(A) == ChannelSettings("changed meanwhile", None)


async def test_a_change_this_replica_made_while_a_take_was_out_stands_for_the_turn(
    replicas: tuple[Store, Store], postgres_url: str
) -> None:
    # A take that reads the settings while this replica's own change (an admin's /model) is being written brings
    # them as they were. The turn reading them once that change is done (the admin has been told so) must see it,
    # as its own read of them did before takes brought them.
    first, _ = replicas
    await first.set_channel_settings(A, ChannelSettings("before", None))
    blocker = await asyncpg.connect(postgres_url)
    try:
        writes_wait = blocker.transaction()
        await writes_wait.start()
        # Writes to the table wait for this transaction; reads (the take's) go on.
        await blocker.execute("LOCK TABLE channel_settings IN SHARE MODE")
        change = asyncio.create_task(first.set_channel_settings(A, ChannelSettings("after", None)))
        waiting = "SELECT count(*) FROM pg_locks WHERE relation = 'channel_settings'::regclass AND NOT granted"
        async with asyncio.timeout(5):
            while not await blocker.fetchval(waiting):  # noqa: ASYNC110 - the server tells nobody it waits
                await asyncio.sleep(0.01)
        async with first.conversation_lock(A):
            await writes_wait.commit()
            await asyncio.wait_for(change, 5)
            assert await first.channel_settings(A) == ChannelSettings("after", None)
    finally:
        await blocker.close()


async def test_the_settings_a_take_brought_are_the_holding_turns_alone(replicas: tuple[Store, Store]) -> None:
    # A command in the held conversation (/model, /system: they read the settings, then write them back with their
    # change) reads them as they are, not as the turn's take brought them: it would write back, undone, what
    # another replica changed meanwhile. Nor does it take the copy from the turn.
    first, second = replicas
    assert isinstance(first, PostgresStore)
    async with first.conversation_lock(A):
        await second.set_channel_settings(A, ChannelSettings("set on the other replica", None))
        command = asyncio.create_task(first.channel_settings(A))
        assert await command == ChannelSettings("set on the other replica", None)
        assert str(A) in first._taken_settings


async def _history_reads(store: PostgresStore) -> list[int]:
    """The ``before`` of each history read of its own (not with a question) ``store``'s pool sends from now on (the
    query loggers run at the loop's next turn, after the statement)."""
    reads: list[int] = []

    def logged(record: asyncpg.connection.LoggedQuery) -> None:
        if record.query.startswith(_READ):
            reads.append(record.args[1])

    async with contextlib.AsyncExitStack() as stack:
        # Every pooled connection at once, so each one gets the logger.
        for _ in range(store._pool.get_size()):
            conn = await stack.enter_async_context(store.connection())
            conn.add_query_logger(logged)
    return reads


_READ = "SELECT id, role, author_name, content, tokens, created_at, tool_trace FROM messages"


async def test_a_turns_history_comes_with_its_question_as_a_read_of_its_own_finds_it(
    replicas: tuple[Store, Store],
) -> None:
    # The question's statement reads the history with the budget and step the conversation's last read would make
    # of it: the turn's read then needs no round trip, and finds what the other replica reads the usual way.
    first, second = replicas
    assert isinstance(first, PostgresStore)
    reads = await _history_reads(first)
    rng = random.Random(7)
    asked: dict[int, int] = {}
    for n in range(40):
        tokens = rng.randint(5, 60)
        row = asked[n] = await first.add_question(incoming(n), tokens)
        # At 20 the system prompt grew (a summary, a channel's new prompt): the budget left is not the one guessed.
        room, step = (300, 1) if n < 20 else (240, 50)
        budget = room - tokens
        # At 30 a second read with half the budget, as after a "context too long".
        for attempt in (budget, budget // 2) if n == 30 else (budget,):
            history = await first.load_history(A, attempt, before=row, step=step)
            assert history == await second.load_history(A, attempt, before=row, step=step), n
        if n == 35:
            # A read of another question's history (an earlier row) is not this question's read-ahead.
            earlier = asked[100] = await first.add_question(incoming(100), tokens)
            row = await first.add_question(incoming(101), tokens)
            assert await first.load_history(A, budget, before=earlier, step=step) == await second.load_history(
                A, budget, before=earlier, step=step
            )
        await first.add_reply(A, f"reply {n}", rng.randint(5, 60), reply_to=row, usage=None, model=None, complete=True)
    assert len(await first.load_history(A, 300, before=10**9)) < 30  # trimmed: the budget held a part of it
    # The first question had no history (none at any budget); the read at 20, the second at 30 and the earlier
    # row's at 35 went on their own.
    by_row = {row: n for n, row in asked.items()}
    assert [by_row.get(before) for before in reads if before != 10**9] == [20, 30, 100], reads


async def test_connections_come_back_to_the_pool_after_statements_that_fail_or_are_cut_off(postgres_url: str) -> None:
    # A statement that failed or was cut off gives its connection back (the pool rolls back or closes it as needed):
    # none is kept, and two connections serve every call here.
    store = await open_store(postgres_url, pool_size=2)
    try:
        assert isinstance(store, PostgresStore)
        for n in range(6):
            with pytest.raises(asyncpg.PostgresError):
                await asyncio.wait_for(store.claim_message(f"bad\x00{n}"), 10)  # the server refuses a NUL in text
        rng = random.Random(11)
        for n in range(60):
            claim = asyncio.create_task(store.claim_message(f"cut-{n}"))
            for _ in range(rng.randrange(6)):
                await asyncio.sleep(0)
            claim.cancel()
            await asyncio.gather(claim, return_exceptions=True)
        row = await asyncio.wait_for(store.add_question(incoming(1), 10), 10)
        assert await asyncio.wait_for(store.claim_message("after"), 10)
        await store.add_reply(A, "fine", 3, reply_to=row, usage=None, model=None, complete=True)
        assert [m.content for m in await store.load_history(A, 100, before=10**9)] == ["message 1", "fine"]
    finally:
        await asyncio.wait_for(store.close(), 10)


async def test_turns_taking_a_conversation_in_turn_on_two_replicas_read_each_others_messages_with_their_question(
    replicas: tuple[Store, Store],
) -> None:
    # Each replica's read-ahead is read in its question's statement, under the conversation's lock: it holds what
    # the other replica stored in its turns before, as a read of its own would.
    first, second = replicas
    assert isinstance(first, PostgresStore) and isinstance(second, PostgresStore)
    reads = {first: await _history_reads(first), second: await _history_reads(second)}
    checked: dict[Store, set[int]] = {first: set(), second: set()}
    rng = random.Random(5)
    for n in range(24):
        # The first question on the first replica, the second on the second, then either.
        ours = n == 0 or (n > 1 and rng.random() < 0.5)
        store, other = (first, second) if ours else (second, first)
        async with store.conversation_lock(A):
            tokens = rng.randint(5, 40)
            row = await store.add_question(incoming(n), tokens)
            history = await store.load_history(A, 400 - tokens, before=row, step=20)
            checked[other].add(row)
            assert history == await other.load_history(A, 400 - tokens, before=row, step=20), n
            await store.add_reply(
                A, f"reply {n}", rng.randint(5, 40), reply_to=row, usage=None, model=None, complete=True
            )
        assert [m.content for m in history][-2:] == ([f"message {n - 1}", f"reply {n - 1}"] if n else [])
    # The first replica's first question had no history; the second's (at 1) read it alone: it knew no budget yet.
    # After that, every turn's read came with its question.
    assert [b for b in reads[first] if b not in checked[first]] == []
    assert len([b for b in reads[second] if b not in checked[second]]) == 1


async def test_the_budgets_kept_for_the_next_questions_read_are_bounded(
    replicas: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    # One entry per conversation read would grow with every conversation the process ever answered: the least
    # recently read go first, and a conversation dropped reads its history as on its first turn, the same history.
    first, second = replicas
    assert isinstance(first, PostgresStore)
    monkeypatch.setattr(postgres_engine, "_HISTORY_ROOM_KEPT", 3)
    keys = [ConversationKey("slack", "T1", f"C{n}") for n in range(6)]
    for turn in range(3):
        for n, key in enumerate(keys):
            row = await first.add_question(IncomingMessage(key, f"m{n}-{turn}", "U1", "Ada", f"q {turn}"), 10)
            history = await first.load_history(key, 300, before=row)
            assert history == await second.load_history(key, 300, before=row)
            assert len(history) == 2 * turn
            await first.add_reply(key, f"a {turn}", 10, reply_to=row, usage=None, model=None, complete=True)
    assert list(first._history_room) == [str(key) for key in keys[-3:]]
