"""PostgreSQL storage (asyncpg), for several replicas sharing one database.

The same tables and behaviour as SQLite. What a single process could decide in memory, the database decides here:
which platform message ids were handled (a primary key), whose turn it is in a conversation (an advisory lock),
and how many requests a person or channel has left (a token bucket row updated in one statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from bot.errors import ConfigError, StoreError
from bot.messages import ConversationKey, IncomingMessage, Usage
from bot.store.base import (
    CONTEXT_CLAIM,
    HISTORY_QUERY,
    IMAGE_LRU_QUERY,
    LAST_THREAD_QUERY,
    MIN_MESSAGE_TOKENS,
    TOKENS_BEFORE_QUERY,
    USAGE_COLUMNS,
    USAGE_TOTALS,
    ChannelSettings,
    ContextEntry,
    FeedbackTotal,
    ImageBlob,
    RateBucket,
    StoredMessage,
    Summary,
    UsageRecord,
    UsageScope,
    UsageTotal,
    describe_db,
    usage_total,
)

log = logging.getLogger(__name__)

#: Each entry moves the schema one version up; the ``schema_version`` table records how far a database is.
#: Versions 1 and 2 hold the same tables as SQLite's; version 3 adds what only replicas need; versions 4 to 7 are
#: SQLite's 3 to 6 (the history index, seen requests, usage as billed with the token line, summaries and feedback),
#: and so on one up: full-text search, tool traces, the context cursors and the images, as SQLite's.
MIGRATIONS: Sequence[Sequence[str]] = (
    (
        """CREATE TABLE conversations (
            id BIGSERIAL PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            platform TEXT NOT NULL,
            workspace TEXT NOT NULL,
            channel TEXT NOT NULL,
            thread TEXT,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE messages (
            id BIGSERIAL PRIMARY KEY,
            conversation_id BIGINT NOT NULL REFERENCES conversations(id),
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            author_id TEXT,
            author_name TEXT,
            content TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            platform_message_id TEXT,
            reply_to BIGINT,
            complete BOOLEAN NOT NULL DEFAULT TRUE,
            model TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            usage_exact BOOLEAN,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX messages_by_conversation ON messages (conversation_id, id)",
        "CREATE INDEX conversations_by_channel ON conversations (platform, workspace, channel)",
        """CREATE TABLE handled_messages (
            message_id TEXT PRIMARY KEY,
            handled_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX handled_messages_by_age ON handled_messages (handled_at)",
    ),
    (
        """CREATE TABLE usage (
            id BIGSERIAL PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            platform TEXT NOT NULL,
            workspace TEXT NOT NULL,
            channel TEXT NOT NULL,
            user_id TEXT NOT NULL,
            model TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            exact BOOLEAN NOT NULL,
            cost DOUBLE PRECISION NOT NULL,
            priced BOOLEAN NOT NULL
        )""",
        "CREATE INDEX usage_by_workspace ON usage (platform, workspace, at)",
        "CREATE INDEX usage_by_channel ON usage (platform, workspace, channel, at)",
        "CREATE INDEX usage_by_user ON usage (platform, workspace, user_id, at)",
        """CREATE TABLE channel_settings (
            platform TEXT NOT NULL,
            workspace TEXT NOT NULL,
            channel TEXT NOT NULL,
            system_prompt TEXT,
            model TEXT,
            PRIMARY KEY (platform, workspace, channel)
        )""",
        """CREATE TABLE budget_warnings (
            scope TEXT NOT NULL,
            period_start DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (scope, period_start)
        )""",
    ),
    (
        """CREATE TABLE rate_buckets (
            key TEXT PRIMARY KEY,
            tokens DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        # One statement per request: the row lock of the upsert makes the read-refill-spend atomic across replicas,
        # and the server's clock is the only clock, so replicas whose clocks differ still count alike. (No longer
        # called: _TAKE_TOKENS takes from several buckets at once. Migrations are history, so it stays.)
        """CREATE FUNCTION teambot_take_token(bucket TEXT, capacity DOUBLE PRECISION, per_second DOUBLE PRECISION)
        RETURNS DOUBLE PRECISION LANGUAGE plpgsql AS $$
        DECLARE
            now_s DOUBLE PRECISION := extract(epoch FROM clock_timestamp());
            have DOUBLE PRECISION;
        BEGIN
            INSERT INTO rate_buckets AS b (key, tokens, updated_at) VALUES (bucket, capacity, now_s)
            ON CONFLICT (key) DO UPDATE
                SET tokens = least(capacity, b.tokens + greatest(0, now_s - b.updated_at) * per_second),
                    updated_at = now_s
            RETURNING tokens INTO have;
            IF have >= 1 THEN
                UPDATE rate_buckets SET tokens = have - 1 WHERE key = bucket;
                RETURN 0;
            END IF;
            RETURN (1 - have) / per_second;
        END
        $$""",
        "CREATE INDEX rate_buckets_by_age ON rate_buckets (updated_at)",
    ),
    (
        # With the token counts in the index, loading a turn's context finds where it starts from the index alone.
        "CREATE INDEX messages_by_conversation_tokens ON messages (conversation_id, id, tokens)",
        "DROP INDEX messages_by_conversation",
    ),
    (
        # Signed requests already acted on, for as long as their signature stays valid: a replay is refused, by
        # whichever replica it reaches.
        """CREATE TABLE seen_requests (
            request_id TEXT PRIMARY KEY,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX seen_requests_by_expiry ON seen_requests (expires_at)",
    ),
    (
        # Usage as billed: the parts of a call's tokens served from the prompt cache and spent thinking, where the
        # server reports them; NULL where it did not (unknown, not zero).
        "ALTER TABLE usage ADD COLUMN cached_tokens INTEGER",
        "ALTER TABLE usage ADD COLUMN reasoning_tokens INTEGER",
        # Block trimming (HISTORY_QUERY): each message's place on its conversation's token line, filled in for the
        # messages already there with one pass of a window function.
        "ALTER TABLE messages ADD COLUMN tokens_before BIGINT NOT NULL DEFAULT 0",
        """UPDATE messages SET tokens_before = placed.tokens_before FROM (
            SELECT id, sum(tokens) OVER (PARTITION BY conversation_id ORDER BY id) - tokens AS tokens_before
            FROM messages
        ) placed WHERE messages.id = placed.id""",
        # The history walk and the next message's place, still from the index alone.
        "CREATE INDEX messages_by_conversation_line ON messages (conversation_id, id, tokens, tokens_before)",
        "DROP INDEX messages_by_conversation_tokens",
    ),
    (
        # Memory past the window: one running summary per conversation, covering its messages up to covered_to.
        """CREATE TABLE summaries (
            conversation_id BIGINT PRIMARY KEY REFERENCES conversations(id),
            content TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            covered_to BIGINT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        # Answer feedback: one verdict per person and reply (a second click replaces the first). Kept by /reset,
        # like the usage ledger: it holds no words of the conversation.
        """CREATE TABLE feedback (
            message_id BIGINT NOT NULL,
            user_id TEXT NOT NULL,
            value TEXT NOT NULL CHECK (value IN ('up', 'down')),
            platform TEXT NOT NULL,
            workspace TEXT NOT NULL,
            channel TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (message_id, user_id)
        )""",
        "CREATE INDEX feedback_by_channel ON feedback (platform, workspace, channel, at)",
    ),
    (
        # Full-text search over the history (the search_history tool), beyond what the window holds. A generated
        # column is computed for the rows already there when it is added, and by the server for every row after;
        # 'simple' does not stem, like SQLite's unicode61: whole words in any language, whatever their case.
        "ALTER TABLE messages ADD COLUMN search tsvector "
        "GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, content)) STORED",
        "CREATE INDEX messages_search ON messages USING GIN (search)",
    ),
    (
        # Tools: a reply that used tools keeps the calls and their results (JSON, in the API's form) beside it,
        # so later turns know what was looked up. NULL on every other message: nothing to fill in.
        "ALTER TABLE messages ADD COLUMN tool_trace TEXT",
    ),
    (
        # Thread context: see SQLite's.
        """CREATE TABLE context_cursors (
            conversation_id BIGINT PRIMARY KEY REFERENCES conversations(id),
            cursor TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
    ),
    (
        # The questions' images, content-addressed and downscaled, under one cap
        # (least recently used first), and which messages show which (see bot.store.sqlite).
        """CREATE TABLE images (
            hash TEXT PRIMARY KEY,
            mimetype TEXT NOT NULL,
            data BYTEA NOT NULL,
            size INTEGER NOT NULL,
            used_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE message_images (
            message_id BIGINT NOT NULL,
            conversation_id BIGINT NOT NULL,
            hash TEXT NOT NULL,
            PRIMARY KEY (message_id, hash)
        )""",
        "CREATE INDEX message_images_by_conversation ON message_images (conversation_id)",
        "CREATE INDEX message_images_by_hash ON message_images (hash)",
    ),
    (
        # Where the bot speaks in a channel and whose conversation a message joins there (see bot.speak).
        "ALTER TABLE channel_settings ADD COLUMN speak TEXT",
        "ALTER TABLE channel_settings ADD COLUMN scope TEXT",
    ),
)

#: The readiness probe's write, rolled back: the claim of a message id, as every turn's first write.
_PROBE = "INSERT INTO handled_messages (message_id, handled_at) VALUES ($1, $2) ON CONFLICT (message_id) DO NOTHING"
_PROBE_ID = "teambot:readiness-probe"
#: What asyncpg raises when the server or the connection refuses a statement.
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
_INSERT_USAGE = (
    f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) "
    f"VALUES ({', '.join(f'${n}' for n in range(1, len(USAGE_COLUMNS) + 1))})"
)
#: How long a handled message id is remembered; platforms redeliver within minutes, not days.
HANDLED_RETENTION_S = 7 * 24 * 3600
#: A rate bucket idle this long is full again at any rate worth setting, so its row can go.
RATE_BUCKET_IDLE_S = 24 * 3600
_TOKENS_BEFORE = TOKENS_BEFORE_QUERY.format(conversation="$1")
#: A question, and its conversation's history before it (HISTORY_QUERY for the budget and step given), in one
#: statement: the history read rides with the question's write instead of a round trip of its own (see
#: PostgresStore._read_ahead). One row per history message, oldest first, each beside the question's id and its
#: conversation; one row with a NULL message where there is no history. The history sees the statement's snapshot,
#: taken before the question is written: the same messages a read after it finds, as the conversation is held.
#: ``{n}`` is the number of its first parameter (the rows, then the budget and the step, as _HISTORY's 3 to 5).
_WITH_HISTORY = (
    "SELECT q.id, q.conversation_id, h.* FROM question q LEFT JOIN LATERAL ("
    + HISTORY_QUERY.format(conversation="q.conversation_id", before="q.id", rows="${0}", budget="${1}", step="${2}")
    + ") h ON true ORDER BY h.id"
)
_ADD_QUESTION = (
    "WITH question AS ("
    "  INSERT INTO messages (conversation_id, role, author_id, author_name, content, tokens, platform_message_id, "
    "  created_at, tokens_before) "
    f"  VALUES ($1, 'user', $2, $3, $4, $5, $6, $7, {_TOKENS_BEFORE}) RETURNING id, conversation_id"
    f") {_WITH_HISTORY.format(8, 9, 10)}"
)
#: The same, for a conversation this process has not seen yet (every one's first turn): found or created in the same
#: statement as its question, one round trip instead of two.
_ADD_FIRST_QUESTION = (
    "WITH conversation AS ("
    "  INSERT INTO conversations (key, platform, workspace, channel, thread, created_at) "
    "  VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key) DO UPDATE SET key = excluded.key RETURNING id"
    "), question AS ("
    "  INSERT INTO messages (conversation_id, role, author_id, author_name, content, tokens, platform_message_id, "
    "  created_at, tokens_before) "
    f"  SELECT c.id, 'user', $7, $8, $9, $10, $11, $6, {TOKENS_BEFORE_QUERY.format(conversation='c.id')} "
    "  FROM conversation c RETURNING id, conversation_id"
    f") {_WITH_HISTORY.format(12, 13, 14)}"
)
_ADD_REPLY = (
    "INSERT INTO messages (conversation_id, role, content, tokens, reply_to, complete, model, "
    "prompt_tokens, completion_tokens, usage_exact, created_at, tool_trace, tokens_before) "
    f"VALUES ($1, 'assistant', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, {_TOKENS_BEFORE}) RETURNING id"
)
#: The reply with its ledger entry (parameters 12 on, in the order of USAGE_COLUMNS) in the same statement.
_ADD_REPLY_CHARGED = (
    f"WITH reply AS ({_ADD_REPLY}), charged AS ("
    f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) "
    f"VALUES ({', '.join(f'${n}' for n in range(12, 12 + len(USAGE_COLUMNS)))})"
    ") SELECT id FROM reply"
)
_LAST_THREAD = LAST_THREAD_QUERY.format(platform="$1", workspace="$2", channel="$3", author="$4")
_HISTORY = HISTORY_QUERY.format(conversation="$1", before="$2", rows="$3", budget="$4", step="$5")
#: One request against several token buckets, in one statement: the rows are locked (in key order, so two takes
#: never wait for each other in a circle), refilled by the server's clock, and each gives one token only if every
#: one has a token. NULL, with nothing changed, when a bucket has no row yet (see _CREATE_BUCKETS).
_TAKE_TOKENS = """
WITH wanted AS (
    SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[]) AS w(key, capacity, per_second)
), held AS MATERIALIZED (
    SELECT key, tokens, updated_at FROM rate_buckets WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE
), level AS MATERIALIZED (
    SELECT w.key, w.per_second, greatest(h.updated_at, c.now_s) AS now_s,
           least(w.capacity, h.tokens + greatest(0, c.now_s - h.updated_at) * w.per_second) AS have
    FROM wanted w JOIN held h USING (key)
    CROSS JOIN (SELECT extract(epoch FROM clock_timestamp())::float8 AS now_s) c
), verdict AS MATERIALIZED (
    SELECT count(*) = cardinality($1::text[]) AS known,
           coalesce(bool_and(have >= 1), false) AS allowed,
           coalesce(max((1 - least(have, 1)) / per_second), 0) AS wait
    FROM level
), spent AS (
    UPDATE rate_buckets b SET tokens = l.have - 1, updated_at = l.now_s
    FROM level l, verdict v WHERE b.key = l.key AND v.known AND v.allowed
    RETURNING b.key
)
SELECT CASE WHEN NOT known THEN NULL WHEN allowed THEN 0 ELSE wait END FROM verdict
"""
_CREATE_BUCKETS = (
    "INSERT INTO rate_buckets (key, tokens, updated_at) "
    "SELECT key, capacity, extract(epoch FROM clock_timestamp()) FROM unnest($1::text[], $2::float8[]) AS "
    "w(key, capacity) ON CONFLICT (key) DO NOTHING"
)
#: The search_history query. plainto_tsquery reads any text as words that must all appear (no syntax to get wrong),
#: with the parser that made the column; the conversation and the row bound keep it to what came before the
#: question in this conversation.
_SEARCH = (
    "SELECT id, role, author_name, content, tokens, created_at FROM messages "
    "WHERE conversation_id = $1 AND id < $2 AND search @@ plainto_tsquery('simple'::regconfig, $3) "
    "ORDER BY id DESC LIMIT $4"
)
#: A search takes at most this much of its query: a model pasting a page gets an answer, not a scan.
_SEARCH_CHARS = 500
#: See bot.store.sqlite._ADD_FEEDBACK.
_ADD_FEEDBACK = (
    "INSERT INTO feedback (message_id, user_id, value, platform, workspace, channel, at) "
    "SELECT m.id, $2::text, $3::text, c.platform, c.workspace, c.channel, $4::float8 FROM messages m "
    "JOIN conversations c ON c.id = m.conversation_id "
    "WHERE m.id = $1 AND m.role = 'assistant' AND c.platform = $5 AND (c.channel = $6 OR c.thread = $6) "
    "ON CONFLICT (message_id, user_id) DO UPDATE SET value = excluded.value, at = excluded.at"
)
#: A batch of context messages in one statement (one round trip however long the thread): each stored, in order,
#: unless its id was claimed before, as a question or as context (see bot.store.sqlite.SQLiteStore.add_context),
#: and claimed as context with it; placed on the conversation's token line after its newest message. The claim's
#: primary key decides between concurrent writers: a claim that conflicts leaves its message out.
_ADD_CONTEXT = (
    "WITH input AS ("
    "  SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::integer[])"
    "  WITH ORDINALITY AS i(message_id, role, author_id, author_name, content, tokens, n)"
    "), fresh AS ("
    "  SELECT DISTINCT ON (message_id) * FROM input i"
    "  WHERE NOT EXISTS (SELECT 1 FROM handled_messages h WHERE h.message_id = i.message_id)"
    "  ORDER BY message_id, n"
    "), claimed AS ("
    "  INSERT INTO handled_messages (message_id, handled_at) SELECT $8::text || message_id, $9::float8 FROM fresh"
    "  ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
    "), placed AS ("
    "  SELECT f.*, base.line + sum(f.tokens) OVER (ORDER BY f.n) - f.tokens AS tokens_before"
    "  FROM fresh f JOIN claimed c ON c.message_id = $8::text || f.message_id"
    f"  CROSS JOIN (SELECT {TOKENS_BEFORE_QUERY.format(conversation='$1::bigint')} AS line) base"
    ") INSERT INTO messages (conversation_id, role, author_id, author_name, content, tokens, platform_message_id, "
    "created_at, tokens_before) "
    "SELECT $1::bigint, role, author_id, author_name, content, tokens, message_id, $9::float8, tokens_before "
    "FROM placed ORDER BY n RETURNING id, platform_message_id"
)
_SET_CURSOR = (
    "INSERT INTO context_cursors (conversation_id, cursor, updated_at) VALUES ($1, $2, $3) "
    "ON CONFLICT (conversation_id) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at"
)
_IMAGE_LRU = IMAGE_LRU_QUERY.format(cap="$1")
#: See bot.store.sqlite._UNLINKED_IMAGES.
_UNLINKED_IMAGES = "DELETE FROM images WHERE NOT EXISTS (SELECT 1 FROM message_images l WHERE l.hash = images.hash)"
#: advisory lock namespaces (the first key of pg_advisory_lock(int, int)), so ours never meet another app's.
_MIGRATION_LOCK = 0x7EB0
_CONVERSATION_LOCK = 0x7EB1
#: How long a turn waits between tries for a conversation another replica is answering: short first, then longer.
_LOCK_POLL_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
_CONNECT_TIMEOUT_S = 10.0
#: A take brings its channel's settings along (NULLs where the channel has none; see _SETTINGS_FRESH_S): the turn
#: reads them next, and this way it needs no round trip of its own for them.
_TAKE_LOCK = (
    "SELECT pg_try_advisory_lock($1, hashtext($2)), s.system_prompt, s.model, s.speak, s.scope "
    "FROM (SELECT) one LEFT JOIN channel_settings s ON s.platform = $3 AND s.workspace = $4 AND s.channel = $5"
)
_RELEASE_LOCK = "SELECT pg_advisory_unlock($1, hashtext($2))"
#: Several lock calls in one round trip, in the order they were made (an output expression is computed in the
#: ORDER BY's order; a volatile one after the sort): a release and a take of the same conversation in one batch
#: release it first. Each take brings its channel's settings, as _TAKE_LOCK.
_LOCK_CALLS = (
    "SELECT CASE WHEN c.take THEN pg_try_advisory_lock($1, hashtext(c.name)) "
    "ELSE pg_advisory_unlock($1, hashtext(c.name)) END, s.system_prompt, s.model, s.speak, s.scope "
    "FROM unnest($2::bool[], $3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY "
    "AS c(take, name, platform, workspace, channel, n) LEFT JOIN channel_settings s "
    "ON c.take AND s.platform = c.platform AND s.workspace = c.workspace AND s.channel = c.channel ORDER BY c.n"
)
#: The history read with a question when the conversation has no read to go by (its first turn in this process): one
#: row at most, which says whether there is any history; none is the answer at every budget.
_GUESS_NONE = (1, 1)
#: Read-aheads kept for turns that have not read them yet (one per conversation; a turn that failed between its
#: question and its read leaves one behind until the conversation's next question).
_READ_AHEAD_KEPT = 4096
#: Conversations whose last read's budget is kept (PostgresStore._history_room), the least recently read dropped
#: first: one a conversation would grow with every conversation this process ever answered. A dropped one's next
#: question reads its history with the turn's own read, as on its first turn here.
_HISTORY_ROOM_KEPT = 10_000
#: How long the settings a take brought stand for the channel's own read (channel_settings) in the turn that holds
#: the lock. The turn asks right after taking it; one that waited longer (for a call slot, say) reads them again,
#: as they are then. Within that second a change made on another replica races the turn as it did before.
_SETTINGS_FRESH_S = 1.0


class _LockCall:
    """A take (try-lock) or release of a conversation's lock, waiting for the lock connection's next round trip."""

    __slots__ = ("channel", "done", "name", "settings", "take")

    def __init__(
        self,
        take: bool,
        name: str,
        done: asyncio.Future[bool] | None,
        channel: tuple[str, str, str] | None = None,
    ) -> None:
        self.take = take
        self.name = name
        #: None for a release nobody waits for.
        self.done = done
        #: A take's (platform, workspace, channel), whose settings it brings back into ``settings``.
        self.channel = channel
        self.settings: ChannelSettings | None = None


class _ReadAhead:
    """The history before the question ``row`` (of ``tokens``), read in the statement that stored it with ``budget``
    and ``step``: what ``load_history(budget, before=row, step)`` returns while the conversation is held, as no one
    else writes to it meanwhile. Used once, by that read, which saves a round trip of the turn's five."""

    __slots__ = ("budget", "history", "row", "step", "tokens")

    def __init__(self, row: int, tokens: int, budget: int, step: int, history: list[StoredMessage]) -> None:
        self.row = row
        self.tokens = tokens
        self.budget = budget
        self.step = step
        self.history = history


class PostgresStore:
    """The :class:`bot.store.Store` on a PostgreSQL database shared by any number of teambot processes."""

    #: Other replicas may hold a conversation this process sees idle: a message is claimed before it queues.
    single_process = False

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self._dsn = dsn
        # The loop the pool's connections belong to (the store is opened in it), kept: on Python 3.11 every
        # asyncio.get_running_loop() is a getpid() system call, and a turn's lock calls ask for it.
        self._loop = asyncio.get_running_loop()
        self._conversation_ids: dict[str, int] = {}
        # Per conversation: the history read with its newest question, for the turn's own read of it next.
        self._read_ahead: dict[str, _ReadAhead] = {}
        # Per conversation: its last history read's budget plus its question's tokens, and its step. The budget a
        # turn gives its history is what the system prompt leaves less the question, so with the same system prompt
        # the next question's read is this less that question's tokens.
        self._history_room: dict[str, tuple[int, int]] = {}
        # Conversation locks live on one connection of their own: a turn holds its lock while it waits for the
        # model, and a pooled connection held that long would starve the queries of the turns it waits for.
        self._lock_conn: asyncpg.Connection | None = None
        # Every turn takes and releases its lock on that one connection, one query at a time: under load the turns
        # queued for it, each a round trip behind the one before (a p50 of a second at 500 conversations on a busy
        # machine). One task sends whatever calls are waiting as one statement instead.
        self._lock_calls: list[_LockCall] = []
        self._lock_wake = asyncio.Event()
        self._lock_runner: asyncio.Task[None] | None = None
        self._closed = False
        # The channel settings each held conversation's take brought, when (monotonic) and for which task (the
        # turn's), for that turn's own read (see _SETTINGS_FRESH_S). An entry lives as long as its lock is held by
        # this process.
        self._taken_settings: dict[str, tuple[ChannelSettings, float, asyncio.Task[Any] | None]] = {}
        #: Counts this process's settings changes, begun and ended: a take that went out while one was under way
        #: may have read the settings before the change committed, so what it brought is not kept.
        self._settings_changes = 0

    @classmethod
    async def open(cls, dsn: str, *, pool_size: int = 10, migrate: bool = True, purge: bool = True) -> PostgresStore:
        try:
            # Every connection opened here, before the first turn, and kept: a pool growing on demand opened its
            # connections on the first turns under load, each such turn waiting for a server process to start and
            # a session to be set up (tens of ms on a busy machine). asyncpg's idle limit (300 s) stays: a
            # connection idle for longer is closed and opened again when next needed, so one that a firewall or
            # NAT dropped silently while the team was quiet is not what the next turn waits 60 s on.
            pool = await asyncpg.create_pool(
                dsn,
                min_size=pool_size,
                max_size=pool_size,
                timeout=_CONNECT_TIMEOUT_S,
                command_timeout=60,
                reset=_keep_session,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise ConfigError(
                f"TEAMBOT_DB: cannot connect to PostgreSQL at {describe_db(dsn)}: {_reason(exc)}"
            ) from None
        store = cls(pool, dsn)
        try:
            if migrate:
                await store.migrate()
            else:
                await store._require_current_schema()
            if purge:
                await store.purge_expired()
        except BaseException:
            await pool.close()
            raise
        return store

    async def schema_version(self) -> int:
        async with self._pool.acquire() as conn:
            return await _version(conn)

    async def migrate(self) -> int:
        """Bring the schema up to date; returns the version. Replicas starting together migrate once."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", _MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = await _version(conn)
            _refuse_newer(version, len(MIGRATIONS))
            for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute("DELETE FROM schema_version")
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
                log.info("database migrated to schema version %d", number)
            return len(MIGRATIONS)

    async def _require_current_schema(self) -> None:
        version = await self.schema_version()
        _refuse_newer(version, len(MIGRATIONS))
        if version < len(MIGRATIONS):
            raise ConfigError(
                f"TEAMBOT_DB: the database is at schema version {version}, this teambot needs {len(MIGRATIONS)}; "
                "run 'teambot db migrate'"
            )

    async def ping(self) -> bool:
        try:
            async with self._pool.acquire(timeout=5) as conn:
                # Reading proves little: a server that stopped taking writes (a standby after a failover, a read-only
                # database, a full disk refusing a table) still answers SELECT. The probe writes the row every turn
                # writes first, and rolls it back: nothing is kept, and no other replica ever sees it.
                tx = conn.transaction()
                await tx.start()
                try:
                    await conn.execute(_PROBE, _PROBE_ID, 0.0)
                finally:
                    await tx.rollback()
                return True
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError):
            return False

    async def close(self) -> None:
        # From here a lock call starts no new runner: it would open a lock connection nobody closes.
        self._closed = True
        if self._lock_runner is not None:
            self._lock_runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lock_runner
        if self._lock_conn is not None and not self._lock_conn.is_closed():
            await self._lock_conn.close()
        await self._pool.close()

    async def _conversation_id(self, conn: asyncpg.Connection, key: ConversationKey) -> int:
        text = str(key)
        cached = self._conversation_ids.get(text)
        if cached is not None:
            return cached
        # DO UPDATE (a no-op change) rather than DO NOTHING so RETURNING yields the row that already exists.
        found = await conn.fetchval(
            "INSERT INTO conversations (key, platform, workspace, channel, thread, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key) DO UPDATE SET key = excluded.key RETURNING id",
            text,
            key.platform,
            key.workspace,
            key.channel,
            key.thread,
            time.time(),
        )
        self._conversation_ids[text] = int(found)
        return int(found)

    async def _existing_conversation_id(self, conn: asyncpg.Connection, key: ConversationKey) -> int | None:
        text = str(key)
        if text in self._conversation_ids:
            return self._conversation_ids[text]
        found = await conn.fetchval("SELECT id FROM conversations WHERE key = $1", text)
        if found is None:
            return None
        self._conversation_ids[text] = int(found)
        return int(found)

    async def begin_turn(self, msg: IncomingMessage, tokens: int) -> int | None:
        now = time.time()
        async with self._pool.acquire() as conn:
            conversation = await self._conversation_id(conn, msg.key)
            # One statement, so one transaction: the message is stored only if this process claimed its id. A
            # second replica inserting the same id waits for this one to commit, then claims nothing.
            row = await conn.fetchval(
                "WITH claimed AS ("
                "  INSERT INTO handled_messages (message_id, handled_at) VALUES ($1, $2)"
                "  ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
                ") INSERT INTO messages (conversation_id, role, author_id, author_name, content, tokens, "
                "platform_message_id, created_at, tokens_before) "
                f"SELECT $3, 'user', $4, $5, $6, $7, message_id, $2, {TOKENS_BEFORE_QUERY.format(conversation='$3')} "
                "FROM claimed RETURNING id",
                msg.message_id,
                now,
                conversation,
                msg.author_id,
                msg.author_name,
                msg.text,
                tokens,
            )
        return None if row is None else int(row)

    async def claim_message(self, message_id: str) -> bool:
        async with self._pool.acquire() as conn:
            # The primary key decides: a second replica inserting the same id waits for the first to commit.
            status = await conn.execute(
                "INSERT INTO handled_messages (message_id, handled_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                message_id,
                time.time(),
            )
        return _count(status) == 1

    async def add_question(self, msg: IncomingMessage, tokens: int) -> int:
        text = str(msg.key)
        # The turn reads the history before this question next: read in the same statement, with the budget and
        # step the conversation's last read would make of this question (see _ReadAhead).
        budget, step = _GUESS_NONE
        room = self._history_room.get(text)
        if room is not None and room[0] - tokens > 0:
            budget, step = room[0] - tokens, room[1]
        rows_wanted = budget // MIN_MESSAGE_TOKENS + 1
        async with self._pool.acquire() as conn:
            conversation = self._conversation_ids.get(text)
            if conversation is None:
                key = msg.key
                rows = await conn.fetch(
                    _ADD_FIRST_QUESTION,
                    text,
                    key.platform,
                    key.workspace,
                    key.channel,
                    key.thread,
                    time.time(),
                    msg.author_id,
                    msg.author_name,
                    msg.text,
                    tokens,
                    msg.message_id,
                    rows_wanted,
                    budget,
                    step,
                )
            else:
                rows = await conn.fetch(
                    _ADD_QUESTION,
                    conversation,
                    msg.author_id,
                    msg.author_name,
                    msg.text,
                    tokens,
                    msg.message_id,
                    time.time(),
                    rows_wanted,
                    budget,
                    step,
                )
        row = int(rows[0][0])
        self._conversation_ids[text] = int(rows[0][1])
        history = [StoredMessage(r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows if r[2] is not None]
        self._read_ahead.pop(text, None)
        if len(self._read_ahead) >= _READ_AHEAD_KEPT:
            # Never read (the turn failed between): the oldest goes.
            del self._read_ahead[next(iter(self._read_ahead))]
        self._read_ahead[text] = _ReadAhead(row, tokens, budget, step, history)
        return row

    async def context_cursor(self, key: ConversationKey) -> str | None:
        async with self._pool.acquire() as conn:
            conversation = await self._existing_conversation_id(conn, key)
            if conversation is None:
                return None
            cursor = await conn.fetchval("SELECT cursor FROM context_cursors WHERE conversation_id = $1", conversation)
        return None if cursor is None else str(cursor)

    async def handled(self, message_ids: Sequence[str]) -> set[str]:
        wanted = list(dict.fromkeys(message_ids))
        if not wanted:
            return set()
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT message_id FROM handled_messages WHERE message_id = ANY($1::text[])",
                [*wanted, *(CONTEXT_CLAIM + m for m in wanted)],
            )
        return {str(r[0]).removeprefix(CONTEXT_CLAIM) for r in rows}

    async def add_context(
        self, key: ConversationKey, entries: Sequence[ContextEntry], cursor: str | None, *, cap_bytes: int | None = None
    ) -> int:
        now = time.time()
        async with self._pool.acquire() as conn, conn.transaction():
            conversation = await self._conversation_id(conn, key)
            stored = 0
            if entries:
                rows = await conn.fetch(
                    _ADD_CONTEXT,
                    conversation,
                    [e.message_id for e in entries],
                    [e.role for e in entries],
                    [e.author_id for e in entries],
                    [e.author_name for e in entries],
                    [e.content for e in entries],
                    [e.tokens for e in entries],
                    CONTEXT_CLAIM,
                    now,
                )
                stored = len(rows)
                images = {e.message_id: e.images for e in entries if e.images}
                for row in rows:
                    if str(row[1]) in images:
                        await _put_images(conn, conversation, int(row[0]), images[str(row[1])], now)
                if cap_bytes is not None and images:
                    await _drop_over_cap(conn, cap_bytes)
            if cursor is not None:
                await conn.execute(_SET_CURSOR, conversation, cursor, now)
        return stored

    async def add_reply(
        self,
        key: ConversationKey,
        text: str,
        tokens: int,
        *,
        reply_to: int,
        usage: Usage | None,
        model: str | None,
        complete: bool,
        ledger: UsageRecord | None = None,
        tool_trace: str | None = None,
    ) -> int:
        try:
            return await self._add_reply(key, text, tokens, reply_to, usage, model, complete, ledger, tool_trace)
        except _DB_ERRORS as exc:
            raise StoreError(f"storing the reply failed: {_reason(exc)}") from exc

    async def _add_reply(
        self,
        key: ConversationKey,
        text: str,
        tokens: int,
        reply_to: int,
        usage: Usage | None,
        model: str | None,
        complete: bool,
        ledger: UsageRecord | None,
        tool_trace: str | None,
    ) -> int:
        async with self._pool.acquire() as conn:
            conversation = await self._conversation_id(conn, key)
            # One statement, so one transaction and one round trip: the reply and its ledger entry are stored
            # together or not at all, without a BEGIN and a COMMIT of their own.
            row = await conn.fetchval(
                _ADD_REPLY if ledger is None else _ADD_REPLY_CHARGED,
                conversation,
                text,
                tokens,
                reply_to,
                complete,
                model,
                usage.prompt_tokens if usage else None,
                usage.completion_tokens if usage else None,
                usage.exact if usage else None,
                time.time(),
                tool_trace,
                *(() if ledger is None else ledger.values()),
            )
            return int(row)

    async def load_history(
        self, key: ConversationKey, token_budget: int, *, before: int, step: int = 1
    ) -> list[StoredMessage]:
        if token_budget <= 0:
            return []
        step = max(1, step)
        text = str(key)
        ahead = self._read_ahead.pop(text, None)
        if ahead is not None and ahead.row == before:
            # What this conversation's next question will leave for its history, with the same system prompt.
            room = self._history_room
            room.pop(text, None)
            if len(room) >= _HISTORY_ROOM_KEPT:
                del room[next(iter(room))]
            room[text] = (token_budget + ahead.tokens, step)
            # No history is no history at any budget (HISTORY_QUERY is empty only when nothing came before).
            if not ahead.history or (ahead.budget, ahead.step) == (token_budget, step):
                return ahead.history
        async with self._pool.acquire() as conn:
            conversation = await self._existing_conversation_id(conn, key)
            if conversation is None:
                return []
            rows = await conn.fetch(
                _HISTORY, conversation, before, token_budget // MIN_MESSAGE_TOKENS + 1, token_budget, step
            )
        return [StoredMessage(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

    async def reset(self, key: ConversationKey) -> int:
        args: tuple[str, ...]
        if key.thread:
            where, args = "key = $1", (str(key),)
        else:
            # A channel's reset covers the threads under it.
            where, args = (
                "platform = $1 AND workspace = $2 AND channel = $3",
                (key.platform, key.workspace, key.channel),
            )
        conversations = f"SELECT id FROM conversations WHERE {where}"
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(f"DELETE FROM summaries WHERE conversation_id IN ({conversations})", *args)
            links = await conn.execute(f"DELETE FROM message_images WHERE conversation_id IN ({conversations})", *args)
            if _count(links):
                await conn.execute(_UNLINKED_IMAGES)
            status = await conn.execute(f"DELETE FROM messages WHERE conversation_id IN ({conversations})", *args)
        return _count(status)

    async def add_images(
        self, key: ConversationKey, message: int, images: Sequence[ImageBlob], *, cap_bytes: int
    ) -> None:
        now = time.time()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await _put_images(conn, await self._conversation_id(conn, key), message, images, now)
                await _drop_over_cap(conn, cap_bytes)
        except _DB_ERRORS as exc:
            raise StoreError(f"storing the images failed: {_reason(exc)}") from exc

    async def load_images(self, hashes: Sequence[str]) -> dict[str, ImageBlob]:
        wanted = list(dict.fromkeys(hashes))
        if not wanted:
            return {}
        async with self._pool.acquire() as conn:
            # Shown again, so used again: the cap drops the images nobody looked at for longest.
            rows = await conn.fetch(
                "UPDATE images SET used_at = $1 WHERE hash = ANY($2::text[]) RETURNING hash, mimetype, data",
                time.time(),
                wanted,
            )
        return {str(r[0]): ImageBlob(str(r[0]), str(r[1]), bytes(r[2])) for r in rows}

    async def summary(self, key: ConversationKey) -> Summary | None:
        async with self._pool.acquire() as conn:
            conversation = await self._existing_conversation_id(conn, key)
            if conversation is None:
                return None
            row = await conn.fetchrow(
                "SELECT content, tokens, covered_to FROM summaries WHERE conversation_id = $1", conversation
            )
        return Summary(str(row[0]), int(row[1]), int(row[2])) if row else None

    async def messages_after(self, key: ConversationKey, after: int, before: int, limit: int) -> list[StoredMessage]:
        async with self._pool.acquire() as conn:
            conversation = await self._existing_conversation_id(conn, key)
            if conversation is None:
                return []
            rows = await conn.fetch(
                "SELECT id, role, author_name, content, tokens, created_at FROM messages "
                "WHERE conversation_id = $1 AND id > $2 AND id < $3 ORDER BY id LIMIT $4",
                conversation,
                after,
                before,
                limit,
            )
        return [StoredMessage(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def search_messages(
        self, key: ConversationKey, query: str, *, before: int, limit: int
    ) -> list[StoredMessage]:
        # Without a letter or digit the query has no lexeme: the server would only say so in a NOTICE.
        if limit <= 0 or not any(ch.isalnum() for ch in query):
            return []
        async with self._pool.acquire() as conn:
            conversation = await self._existing_conversation_id(conn, key)
            if conversation is None:
                return []
            rows = await conn.fetch(_SEARCH, conversation, before, query[:_SEARCH_CHARS], limit)
        return [StoredMessage(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def set_summary(self, key: ConversationKey, summary: Summary) -> bool:
        async with self._pool.acquire() as conn:
            conversation = await self._conversation_id(conn, key)
            # One statement: the check that the covered message still exists and the write cannot be split by a
            # /reset on another replica.
            status = await conn.execute(
                "INSERT INTO summaries (conversation_id, content, tokens, covered_to, updated_at) "
                "SELECT $1::bigint, $2::text, $3::integer, $4::bigint, $5::float8 WHERE EXISTS "
                "(SELECT 1 FROM messages WHERE id = $4 AND conversation_id = $1) "
                "ON CONFLICT (conversation_id) DO UPDATE SET content = excluded.content, tokens = excluded.tokens, "
                "covered_to = excluded.covered_to, updated_at = excluded.updated_at "
                "WHERE summaries.covered_to < excluded.covered_to",
                conversation,
                summary.text,
                summary.tokens,
                summary.covered_to,
                time.time(),
            )
        return _count(status) == 1

    async def add_feedback(
        self, platform: str, channel: str, reply: int, user_id: str, value: str, *, at: float
    ) -> bool:
        async with self._pool.acquire() as conn:
            status = await conn.execute(_ADD_FEEDBACK, reply, user_id, value, at, platform, channel)
        return _count(status) == 1

    async def feedback_since(self, scope: UsageScope, since: float) -> FeedbackTotal:
        conditions = [(c, v) for c, v in scope.conditions(since) if not c.startswith("user_id")]
        where = " AND ".join(f"{c} ${n}" for n, (c, _) in enumerate(conditions, start=1))
        query = (
            "SELECT count(*) FILTER (WHERE value = 'up'), count(*) FILTER (WHERE value = 'down') FROM feedback "
            f"WHERE {where}"
        )
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(query, *(value for _, value in conditions))
        assert row is not None
        return FeedbackTotal(int(row[0]), int(row[1]))

    async def count_messages(self, key: ConversationKey) -> int:
        async with self._pool.acquire() as conn:
            conversation = await self._existing_conversation_id(conn, key)
            if conversation is None:
                return 0
            return int(await conn.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", conversation))

    async def last_thread(self, key: ConversationKey, author_id: str) -> str | None:
        async with self._pool.acquire() as conn:
            thread = await conn.fetchval(_LAST_THREAD, key.platform, key.workspace, key.channel, author_id)
        return None if thread is None else str(thread)

    async def add_usage(self, ledger: UsageRecord) -> None:
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(_INSERT_USAGE, *ledger.values())
        except _DB_ERRORS as exc:
            raise StoreError(f"storing the ledger entry failed: {_reason(exc)}") from exc

    async def forget_message(self, row: int) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if _count(await conn.execute("DELETE FROM message_images WHERE message_id = $1", row)):
                    await conn.execute(_UNLINKED_IMAGES)
                await conn.execute("DELETE FROM messages WHERE id = $1", row)
        except _DB_ERRORS as exc:
            raise StoreError(f"deleting the refused question failed: {_reason(exc)}") from exc

    async def abandon_turn(self, row: int | None, message_id: str, ledger: UsageRecord | None = None) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if _count(await conn.execute("DELETE FROM message_images WHERE message_id = $1", row)):
                    await conn.execute(_UNLINKED_IMAGES)
                await conn.execute("DELETE FROM messages WHERE id = $1", row)
                await conn.execute("DELETE FROM handled_messages WHERE message_id = $1", message_id)
                if ledger is not None:
                    await conn.execute(_INSERT_USAGE, *ledger.values())
        except _DB_ERRORS as exc:
            raise StoreError(f"undoing the turn failed: {_reason(exc)}") from exc

    async def usage_since(self, scope: UsageScope, since: float) -> UsageTotal:
        conditions = scope.conditions(since)
        where = " AND ".join(f"{c} ${n}" for n, (c, _) in enumerate(conditions, start=1))
        query = f"SELECT {USAGE_TOTALS.format(all_priced='coalesce(bool_and(priced), true)')} FROM usage WHERE {where}"
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(query, *(value for _, value in conditions))
        assert row is not None
        return usage_total(row)

    async def claim_warning(self, scope: str, period_start: float) -> bool:
        async with self._pool.acquire() as conn:
            status = await conn.execute(
                "INSERT INTO budget_warnings (scope, period_start) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                scope,
                period_start,
            )
        return _count(status) == 1

    async def claim_request(self, request_id: str, expires_at: float) -> bool:
        # One round trip: the expired rows go in the same statement. The primary key decides between replicas
        # claiming the same request at once: one insert wins, the other finds the conflict.
        async with self._pool.acquire() as conn:
            claimed = await conn.fetchval(
                "WITH expired AS (DELETE FROM seen_requests WHERE expires_at < $3) "
                "INSERT INTO seen_requests (request_id, expires_at) VALUES ($1, $2) "
                "ON CONFLICT (request_id) DO NOTHING RETURNING true",
                request_id,
                expires_at,
                time.time(),
            )
        return bool(claimed)

    async def channel_settings(self, key: ConversationKey) -> ChannelSettings:
        # Not cached, unlike SQLite: another replica may have changed them. The turn holding the conversation reads
        # them once, as its take brought them a moment ago (one round trip less per turn). Anyone else (a command
        # that writes them back changed) reads them as they are, and leaves the copy to the turn.
        name = str(key)
        taken = self._taken_settings.get(name)
        if taken is not None and taken[2] is asyncio.current_task():
            del self._taken_settings[name]
            if time.monotonic() - taken[1] <= _SETTINGS_FRESH_S:
                return taken[0]
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT system_prompt, model, speak, scope FROM channel_settings WHERE platform = $1 "
                "AND workspace = $2 "
                "AND channel = $3",
                key.platform,
                key.workspace,
                key.channel,
            )
        return ChannelSettings(row[0], row[1], row[2], row[3]) if row else ChannelSettings()

    async def set_channel_settings(self, key: ConversationKey, settings: ChannelSettings) -> None:
        # What a take brought before this change no longer stands (rare: an admin's command), nor what one brings
        # while it is written: it may read them before the change commits, and come back after (counted again and
        # cleared at the end).
        self._settings_changed()
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO channel_settings (platform, workspace, channel, system_prompt, model, speak, scope) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (platform, workspace, channel) "
                    "DO UPDATE SET system_prompt = excluded.system_prompt, model = excluded.model, "
                    "speak = excluded.speak, scope = excluded.scope",
                    key.platform,
                    key.workspace,
                    key.channel,
                    settings.system_prompt,
                    settings.model,
                    settings.speak,
                    settings.scope,
                )
        finally:
            self._settings_changed()

    def _settings_changed(self) -> None:
        self._settings_changes += 1
        self._taken_settings.clear()

    async def speaking_channels(self) -> dict[tuple[str, str, str], ChannelSettings]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT platform, workspace, channel, system_prompt, model, speak, scope FROM channel_settings "
                "WHERE speak IS NOT NULL OR scope IS NOT NULL"
            )
        return {(r[0], r[1], r[2]): ChannelSettings(r[3], r[4], r[5], r[6]) for r in rows}

    async def take_tokens(self, buckets: Sequence[RateBucket]) -> float:
        keys = [b.key for b in buckets]
        capacities = [b.capacity for b in buckets]
        rates = [b.per_second for b in buckets]
        async with self._pool.acquire() as conn:
            for _ in range(3):
                wait = await conn.fetchval(_TAKE_TOKENS, keys, capacities, rates)
                if wait is not None:
                    return float(wait)
                # A bucket never used (or idle a day and dropped): created full, then the take runs again. Created
                # apart from the take so that two replicas creating it at once cannot each spend from a full one.
                await conn.execute(_CREATE_BUCKETS, keys, capacities)
        raise RuntimeError(f"rate buckets {keys} vanished while being taken from")

    @contextlib.asynccontextmanager
    async def conversation_lock(self, key: ConversationKey) -> AsyncIterator[None]:
        name = str(key)
        channel = (key.platform, key.workspace, key.channel)
        # Polling with try-lock, not a blocking pg_advisory_lock: every turn of this process shares one lock
        # connection, and a blocking call would hold it for all of them.
        for delay in itertools.chain(_LOCK_POLL_S, itertools.repeat(_LOCK_POLL_S[-1])):
            changes = self._settings_changes
            call = _LockCall(True, name, self._loop.create_future(), channel)
            if await self._lock_call(call):
                break
            await asyncio.sleep(delay)
        # Kept only if no settings change of this process began or ended while the take was out.
        if call.settings is not None and changes == self._settings_changes:
            self._taken_settings[name] = (call.settings, time.monotonic(), asyncio.current_task())
        try:
            yield
        finally:
            self._taken_settings.pop(name, None)
            # Not waited for: the release goes out with the lock connection's next round trip, before any later
            # take of this process (one connection, in order), and a failure is logged there. Another replica
            # sees the conversation free as soon as it lands, as it would had the turn waited.
            self._queue_lock_call(_LockCall(False, name, None))

    async def _lock_call(self, call: _LockCall) -> bool:
        self._queue_lock_call(call)
        assert call.done is not None
        try:
            return await call.done
        except asyncio.CancelledError:
            # Cut off after the answer came back but before this turn resumed: the take is held and the turn
            # never reaches the release in conversation_lock's finally, so give it back here.
            done = call.done
            if call.take and done.done() and not done.cancelled() and done.exception() is None and done.result():
                self._queue_lock_call(_LockCall(False, call.name, None))
            raise

    def _queue_lock_call(self, call: _LockCall) -> None:
        if self._closed:
            # A release needs nothing: the locks went with the closed lock connection.
            if call.done is not None:
                call.done.set_exception(asyncpg.InterfaceError("the lock connection to PostgreSQL is closed"))
            return
        self._lock_calls.append(call)
        self._lock_wake.set()
        if self._lock_runner is None or self._lock_runner.done():
            self._lock_runner = self._loop.create_task(self._run_lock_calls())

    async def _run_lock_calls(self) -> None:
        """Sends the waiting lock calls, all of them in one round trip, for as long as the store is open."""
        batch: list[_LockCall] = []
        try:
            while True:
                await self._lock_wake.wait()
                self._lock_wake.clear()
                # A take whose turn was cut off before it went out is not sent: nobody would release it.
                batch = [c for c in self._lock_calls if not (c.take and c.done is not None and c.done.cancelled())]
                self._lock_calls = []
                if not batch:
                    continue
                try:
                    results: list[bool | BaseException] = list(await self._send_lock_calls(batch))
                except asyncpg.PostgresError as exc:
                    if len(batch) == 1 or self._lock_conn is None or self._lock_conn.is_closed():
                        results = [exc] * len(batch)
                    else:
                        # The server refused the statement on a live connection (one call's bad name, say): one
                        # call at a time, so the refusal stays that call's and the other releases still land.
                        results = [await self._send_lock_call_alone(call) for call in batch]
                except Exception as exc:  # whatever went wrong, it is each waiting caller's to see
                    results = [exc] * len(batch)
                for call, result in zip(batch, results, strict=True):
                    if isinstance(result, BaseException):
                        if call.done is None:
                            # The lock went with its connection (the server releases a closed session's locks).
                            log.warning("could not release the lock of %s: %s", call.name, _reason(result))
                        elif not call.done.done():
                            call.done.set_exception(result)
                        continue
                    if call.done is None:
                        continue
                    if not call.done.done():
                        call.done.set_result(result)
                    elif call.take and result:
                        # Taken for a turn cut off while it went out: given back, or it would be held for good.
                        self._lock_calls.append(_LockCall(False, call.name, None))
                        self._lock_wake.set()
                batch = []
        finally:
            # The store is closing (or this task failed): no call waits for an answer that cannot come.
            closed = asyncpg.InterfaceError("the lock connection to PostgreSQL is closed")
            for call in [*batch, *self._lock_calls]:
                if call.done is not None and not call.done.done():
                    call.done.set_exception(closed)
            self._lock_calls = []

    async def _send_lock_call_alone(self, call: _LockCall) -> bool | BaseException:
        try:
            return (await self._send_lock_calls([call]))[0]
        except Exception as exc:
            return exc

    async def _send_lock_calls(self, batch: Sequence[_LockCall]) -> list[bool]:
        for attempt in (1, 2):
            if self._lock_conn is None or self._lock_conn.is_closed():
                self._lock_conn = await asyncpg.connect(self._dsn, timeout=_CONNECT_TIMEOUT_S)
            try:
                if len(batch) == 1:
                    call = batch[0]
                    if not call.take:
                        return [bool(await self._lock_conn.fetchval(_RELEASE_LOCK, _CONVERSATION_LOCK, call.name))]
                    assert call.channel is not None  # every take names its channel (conversation_lock)
                    row = await self._lock_conn.fetchrow(_TAKE_LOCK, _CONVERSATION_LOCK, call.name, *call.channel)
                    assert row is not None
                    rows = [row]
                else:
                    channels = [c.channel or ("", "", "") for c in batch]
                    rows = await self._lock_conn.fetch(
                        _LOCK_CALLS,
                        _CONVERSATION_LOCK,
                        [c.take for c in batch],
                        [c.name for c in batch],
                        [c[0] for c in channels],
                        [c[1] for c in channels],
                        [c[2] for c in channels],
                    )
                for call, row in zip(batch, rows, strict=True):
                    if call.channel is not None:
                        call.settings = ChannelSettings(row[1], row[2], row[3], row[4])
                return [bool(r[0]) for r in rows]
            except (OSError, asyncpg.InterfaceError, asyncpg.AdminShutdownError) as exc:
                # The session ended (server restart, a terminated backend): its locks are gone with it, and
                # a new session is as good as the old one. Once; a second failure is the callers' to see.
                log.warning("the lock connection to PostgreSQL was lost (%s); reconnecting", _reason(exc))
                self._lock_conn.terminate()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def purge_expired(self) -> int:
        async with self._pool.acquire() as conn:
            cutoff = time.time() - HANDLED_RETENTION_S
            handled = _count(await conn.execute("DELETE FROM handled_messages WHERE handled_at < $1", cutoff))
            # A bucket idle for a day is full again; its row says nothing a missing row would not. The server's
            # clock, as teambot_take_token keeps updated_at by it.
            await conn.execute(
                "DELETE FROM rate_buckets WHERE updated_at < extract(epoch FROM clock_timestamp()) - $1",
                float(RATE_BUCKET_IDLE_S),
            )
        return handled

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, for ``teambot db`` commands that move data in bulk."""
        async with self._pool.acquire() as conn:
            yield conn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset of a released connection: nothing to send.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every release, a
    round trip per store call (a third of a plain turn's). No pooled connection ever holds what it resets: the
    conversation locks live on a connection of their own, the migration lock is a transaction's, and nothing
    here sets, listens or leaves a cursor open. An open transaction is still rolled back (asyncpg does that before
    calling this), and a connection whose query was cut off is still closed by the pool.
    """


async def _version(conn: asyncpg.Connection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


def _refuse_newer(version: int, known: int) -> None:
    if version > known:
        raise ConfigError(
            f"TEAMBOT_DB: the database is at schema version {version}, newer than this teambot ({known}); "
            "upgrade teambot"
        )


def _count(status: str) -> int:
    """The row count of a command tag such as ``DELETE 3`` or ``INSERT 0 1``."""
    return int(status.rsplit(" ", 1)[-1])


def _reason(exc: BaseException) -> str:
    # asyncpg's messages name the user and database, never the password; OSError's name the address.
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


async def _put_images(
    conn: asyncpg.Connection, conversation: int, message: int, images: Sequence[ImageBlob], now: float
) -> None:
    """Keep ``images`` (each once) linked to the row ``message``."""
    await conn.executemany(
        "INSERT INTO images (hash, mimetype, data, size, used_at) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (hash) DO UPDATE SET used_at = excluded.used_at",
        [(i.sha256, i.mimetype, i.data, len(i.data), now) for i in images],
    )
    await conn.executemany(
        "INSERT INTO message_images (message_id, conversation_id, hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [(message, conversation, i.sha256) for i in images],
    )


async def _drop_over_cap(conn: asyncpg.Connection, cap_bytes: int) -> None:
    """The least recently used images dropped until all of them take at most ``cap_bytes``."""
    total = await conn.fetchval("SELECT coalesce(sum(size), 0) FROM images")
    if total > cap_bytes and _count(await conn.execute(_IMAGE_LRU, cap_bytes)):
        await conn.execute("DELETE FROM message_images WHERE hash NOT IN (SELECT hash FROM images)")
