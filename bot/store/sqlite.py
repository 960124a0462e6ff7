"""SQLite storage: schema, migrations and queries.

One connection writes (:mod:`bot.store.sqlite_writer`): a turn's short transactions and short reads run on it inline,
on the event loop's thread, each one synchronous call; long work goes to its thread. A second connection
(aiosqlite) serves the reads that may be long, and any read while the writer's thread has the connection: WAL
lets it run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from bot.errors import ConfigError, StoreError
from bot.messages import ConversationKey, IncomingMessage, Usage
from bot.store.base import (
    CONTEXT_CLAIM,
    HISTORY_QUERY,
    IMAGE_LRU_QUERY,
    IN_MEMORY_REFUSED,
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
    sqlite_in_memory,
    usage_total,
)
from bot.store.memory_buckets import TokenBuckets
from bot.store.sqlite_writer import PRAGMAS, SQLiteWriter

log = logging.getLogger(__name__)

#: Each entry moves the schema one version up; ``PRAGMA user_version`` records how far a file is.
MIGRATIONS: Sequence[Sequence[str]] = (
    (
        """CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            platform TEXT NOT NULL,
            workspace TEXT NOT NULL,
            channel TEXT NOT NULL,
            thread TEXT,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id),
            role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            author_id TEXT,
            author_name TEXT,
            content TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            platform_message_id TEXT,
            reply_to INTEGER,
            complete INTEGER NOT NULL DEFAULT 1,
            model TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            usage_exact INTEGER,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX messages_by_conversation ON messages (conversation_id, id)",
        "CREATE INDEX conversations_by_channel ON conversations (platform, workspace, channel)",
        """CREATE TABLE handled_messages (
            message_id TEXT PRIMARY KEY,
            handled_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX handled_messages_by_age ON handled_messages (handled_at)",
    ),
    (
        """CREATE TABLE usage (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            platform TEXT NOT NULL,
            workspace TEXT NOT NULL,
            channel TEXT NOT NULL,
            user_id TEXT NOT NULL,
            model TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            exact INTEGER NOT NULL,
            cost REAL NOT NULL,
            priced INTEGER NOT NULL
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
        ) WITHOUT ROWID""",
        """CREATE TABLE budget_warnings (
            scope TEXT NOT NULL,
            period_start REAL NOT NULL,
            PRIMARY KEY (scope, period_start)
        ) WITHOUT ROWID""",
    ),
    (
        # With the token counts in the index, loading a turn's context finds where it starts from the index alone.
        "CREATE INDEX messages_by_conversation_tokens ON messages (conversation_id, id, tokens)",
        "DROP INDEX messages_by_conversation",
    ),
    (
        # Signed requests already acted on, for as long as their signature stays valid: a replay is refused.
        """CREATE TABLE seen_requests (
            request_id TEXT PRIMARY KEY,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX seen_requests_by_expiry ON seen_requests (expires_at)",
    ),
    (
        # Usage as billed: the parts of a call's tokens served from the prompt cache and spent thinking, where the
        # server reports them; NULL where it did not (unknown, not zero).
        "ALTER TABLE usage ADD COLUMN cached_tokens INTEGER",
        "ALTER TABLE usage ADD COLUMN reasoning_tokens INTEGER",
        # Block trimming (HISTORY_QUERY): each message's place on its conversation's token line, filled in for the
        # messages already there with one pass of a window function.
        "ALTER TABLE messages ADD COLUMN tokens_before INTEGER NOT NULL DEFAULT 0",
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
            conversation_id INTEGER PRIMARY KEY REFERENCES conversations(id),
            content TEXT NOT NULL,
            tokens INTEGER NOT NULL,
            covered_to INTEGER NOT NULL,
            updated_at REAL NOT NULL
        )""",
        # Answer feedback: one verdict per person and reply (a second click replaces the first). Kept by /reset,
        # like the usage ledger: it holds no words of the conversation.
        """CREATE TABLE feedback (
            message_id INTEGER NOT NULL,
            user_id TEXT NOT NULL,
            value TEXT NOT NULL CHECK (value IN ('up', 'down')),
            platform TEXT NOT NULL,
            workspace TEXT NOT NULL,
            channel TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (message_id, user_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX feedback_by_channel ON feedback (platform, workspace, channel, at)",
    ),
    (
        # Full-text search over the history (the search_history tool), beyond what the window holds: an FTS5 index
        # over messages.content that keeps no copy of the text (external content). unicode61 without stemming
        # matches whole words in any language, case and accents aside.
        "CREATE VIRTUAL TABLE messages_fts USING fts5(content, content = 'messages', content_rowid = 'id', "
        "tokenize = 'unicode61 remove_diacritics 2')",
        # Indexed up to this message id. Not by a trigger on every insert: an FTS5 insert writes an index segment
        # per transaction, which tripled the cost of storing a message (measured), on every turn of every bot,
        # searching or not. A search first indexes what came since (SQLiteStore._index_new).
        "CREATE TABLE messages_fts_state (id INTEGER PRIMARY KEY CHECK (id = 1), indexed_to INTEGER NOT NULL)",
        # The messages already there.
        "INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')",
        "INSERT INTO messages_fts_state (id, indexed_to) SELECT 1, coalesce(max(id), 0) FROM messages",
    ),
    (
        # Tools: a reply that used tools keeps the calls and their results (JSON, in the API's form) beside it,
        # so later turns know what was looked up. NULL on every other message: nothing to fill in.
        "ALTER TABLE messages ADD COLUMN tool_trace TEXT",
    ),
    (
        # Thread context: how far each
        # conversation's context source (a Slack thread) was read, so that no later turn, restart or replica reads
        # the same messages again. /reset keeps it, like the handled ids: what was forgotten is not read back.
        """CREATE TABLE context_cursors (
            conversation_id INTEGER PRIMARY KEY REFERENCES conversations(id),
            cursor TEXT NOT NULL,
            updated_at REAL NOT NULL
        )""",
    ),
    (
        # Images of the questions, content-addressed and already downscaled, under one cap for all of them (the
        # least recently used go first); a rowid table, as SQLite advises for rows this large. The links say which
        # messages show which images, so /reset can drop a conversation's images that no other conversation shows.
        """CREATE TABLE images (
            id INTEGER PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            mimetype TEXT NOT NULL,
            data BLOB NOT NULL,
            size INTEGER NOT NULL,
            used_at REAL NOT NULL
        )""",
        """CREATE TABLE message_images (
            message_id INTEGER NOT NULL,
            conversation_id INTEGER NOT NULL,
            hash TEXT NOT NULL,
            PRIMARY KEY (message_id, hash)
        ) WITHOUT ROWID""",
        "CREATE INDEX message_images_by_conversation ON message_images (conversation_id)",
        "CREATE INDEX message_images_by_hash ON message_images (hash)",
    ),
    (
        # Where the bot speaks in a channel (thread, mention, all) and whose conversation a message joins there
        # (channel, person); NULL: the configured default (see bot.speak).
        "ALTER TABLE channel_settings ADD COLUMN speak TEXT",
        "ALTER TABLE channel_settings ADD COLUMN scope TEXT",
    ),
)

#: The readiness probe's write, rolled back: the claim of a message id, as every turn's first write.
_PROBE = "INSERT INTO handled_messages (message_id, handled_at) VALUES (?, ?) ON CONFLICT (message_id) DO NOTHING"
_PROBE_ID = "teambot:readiness-probe"
_INSERT_USAGE = f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES ({', '.join('?' for _ in USAGE_COLUMNS)})"
#: How long a handled message id is remembered; platforms redeliver within minutes, not days.
HANDLED_RETENTION_S = 7 * 24 * 3600
_LAST_THREAD = LAST_THREAD_QUERY.format(platform="?1", workspace="?2", channel="?3", author="?4")
HISTORY_SQL = HISTORY_QUERY.format(conversation="?1", before="?2", rows="?3", budget="?4", step="?5")
_TOKENS_BEFORE = TOKENS_BEFORE_QUERY.format(conversation="?1")
_SETTINGS_CACHE_SIZE = 10_000
#: A history of up to this many rows is read inline (see load_history): at about 2.5 us a row, 0.3 ms at most.
_INLINE_HISTORY_ROWS = 128
#: The search_history query: the index finds the words, the conversation and the row bound keep it to what came
#: before the question in this conversation.
#: Takes out of the index the messages about to be deleted (``{where}``) that it holds, with the text it was given
#: (an external-content index cannot look it up once the row is gone).
_UNINDEX = (
    "INSERT INTO messages_fts (messages_fts, rowid, content) SELECT 'delete', id, content FROM messages "
    "WHERE {where} AND id <= (SELECT indexed_to FROM messages_fts_state)"
)
#: How many new messages one writer transaction adds to the index before letting other writes in.
_INDEX_BATCH = 2000
_SEARCH = (
    "SELECT m.id, m.role, m.author_name, m.content, m.tokens, m.created_at FROM messages_fts "
    "JOIN messages m ON m.id = messages_fts.rowid "
    "WHERE messages_fts MATCH ?1 AND m.conversation_id = ?2 AND m.id < ?3 ORDER BY m.id DESC LIMIT ?4"
)
_ADD_CONTEXT = (
    "INSERT INTO messages (conversation_id, role, author_id, author_name, content, tokens, platform_message_id, "
    f"created_at, tokens_before) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, {_TOKENS_BEFORE})"
)
_SET_CURSOR = (
    "INSERT INTO context_cursors (conversation_id, cursor, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (conversation_id) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at"
)
_IMAGE_LRU = IMAGE_LRU_QUERY.format(cap="?")
#: Images no message links any more (after a /reset or an abandoned turn): nobody can be shown them again.
_UNLINKED_IMAGES = "DELETE FROM images WHERE NOT EXISTS (SELECT 1 FROM message_images l WHERE l.hash = images.hash)"
#: A verdict on a reply, kept only where the row is a reply in a conversation on that platform whose channel (or,
#: on Discord, thread) is where the button was clicked. The conversation's own workspace and channel are stored, so
#: /usage counts the verdicts where the answers were given.
_ADD_FEEDBACK = (
    "INSERT INTO feedback (message_id, user_id, value, platform, workspace, channel, at) "
    "SELECT m.id, ?2, ?3, c.platform, c.workspace, c.channel, ?4 FROM messages m "
    "JOIN conversations c ON c.id = m.conversation_id "
    "WHERE m.id = ?1 AND m.role = 'assistant' AND c.platform = ?5 AND (c.channel = ?6 OR c.thread = ?6) "
    "ON CONFLICT (message_id, user_id) DO UPDATE SET value = excluded.value, at = excluded.at"
)


class SQLiteStore:
    """The :class:`bot.store.Store` on a SQLite file."""

    #: One process per file, as the rate buckets kept in memory already assume.
    single_process = True

    def __init__(self, writer: SQLiteWriter, reader: aiosqlite.Connection, path: str) -> None:
        self._writer = writer
        self._reader = reader
        #: By the key itself, not its text: a hit costs no str(key) (two to four a turn). Two keys of one text (a
        #: thread of None and of "") are two entries with the same id.
        self._conversation_ids: dict[ConversationKey, int] = {}
        #: The keys whose conversation row the writer's current transaction created (its number first): cached
        #: already, and forgotten if it rolls back, since the row is gone then.
        self._created: tuple[int, list[ConversationKey]] = (0, [])
        writer.on_rollback = self._forget_created
        #: For conversations created here in the transaction that stored their first message: that message's id.
        #: Ids only grow (AUTOINCREMENT), so the history before it is empty: a new conversation's first turn (every
        #: mention in a burst, with replies in threads) reads no history it knows is not there.
        self._first_rows: dict[int, int] = {}
        #: Conversations whose last history was longer than _INLINE_HISTORY_ROWS: read on the reader's thread.
        self._long_histories: set[int] = set()
        self._channel_settings: dict[tuple[str, str, str], ChannelSettings] = {}
        # A SQLite file has one process (its writer lock is per machine): rate buckets need not be written down.
        self._buckets = TokenBuckets()
        self.path = path

    @classmethod
    async def open(cls, path: str) -> SQLiteStore:
        if sqlite_in_memory(path):
            raise ConfigError(f"TEAMBOT_DB: {IN_MEMORY_REFUSED}")
        check_sqlite_path(path)
        try:
            writer = await SQLiteWriter.open(path)
        except sqlite3.Error as exc:
            raise _unusable(path, exc) from None
        reader: aiosqlite.Connection | None = None
        try:
            await _migrate(writer)
            # The rolled-back write proves the file takes writes before anything else is started on it, whatever
            # refuses them (a read-only mount, an immutable file, a file of another user that root-less SQLite
            # opened read-only): one line naming the setting, instead of the first turn's failure.
            try:
                await writer.probe(_PROBE, (_PROBE_ID, 0.0))
            except sqlite3.Error as exc:
                raise _read_only(path, exc) from None
            reader = await _connect_reader(path)
            store = cls(writer, reader, path)
            await store.purge_expired()
        except BaseException as exc:
            # Every way out closes both connections: the writer's thread left running would keep the process
            # from exiting (the interpreter waits for it), whatever the error or a Ctrl-C.
            if reader is not None:
                await reader.close()
            await writer.close()
            if isinstance(exc, sqlite3.Error):
                raise _unusable(path, exc) from None
            raise
        return store

    async def schema_version(self) -> int:
        async with self._reader.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def ping(self) -> bool:
        try:
            if list(await self._reader.execute_fetchall("SELECT 1")) != [(1,)]:
                return False
            # Reading proves little: a file that stopped taking writes (read-only, locked by another process past
            # busy_timeout, a table that refuses rows) still answers SELECT. The probe writes the row every turn
            # writes first, on the writer's thread, and rolls it back: nothing reaches the file.
            await self._writer.probe(_PROBE, (_PROBE_ID, 0.0))
            return True
        except (sqlite3.Error, ValueError):
            return False

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    async def _rows(self, statement: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of a short read: inline on the writer's connection, or from the reader's thread when the
        writer's connection is busy (its thread has it, or another process holds a lock)."""
        rows = self._writer.rows(statement, tuple(args))
        if rows is None:
            return [tuple(row) for row in await self._reader.execute_fetchall(statement, args)]
        return rows

    def _conversation_id(self, db: sqlite3.Connection, key: ConversationKey) -> int:
        """The conversation's row id, created if new; runs inside a writer transaction."""
        cached = self._conversation_ids.get(key)
        if cached is not None:
            return cached
        text = str(key)
        cur = db.execute(
            "INSERT INTO conversations (key, platform, workspace, channel, thread, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
            (text, key.platform, key.workspace, key.channel, key.thread, time.time()),
        )
        if cur.rowcount > 0:
            # The row just inserted: its id is the rowid the insert reports, no query needed.
            conversation = _row_id(cur)
            transaction, keys = self._created
            if transaction != self._writer.transactions:
                keys = []
                self._created = (self._writer.transactions, keys)
            keys.append(key)
        else:
            [(conversation,)] = db.execute("SELECT id FROM conversations WHERE key = ?", (text,)).fetchall()
        # A plain dict store is atomic, and the id of a key never changes: the event loop may read it at any time.
        self._conversation_ids[key] = int(conversation)
        return int(conversation)

    def _forget_created(self) -> None:
        """The writer's transaction rolled back: the conversation rows it created are gone, so are their ids."""
        transaction, keys = self._created
        if transaction == self._writer.transactions:
            gone = {self._conversation_ids.pop(created, None) for created in keys}
            # Another key of the same text (a thread of "" for one of None) may have found the row meanwhile.
            # A copy first (one C call, which the loop's thread cannot come into): this may run on the writer's
            # thread while the loop's thread caches other conversations' ids.
            for other in [k for k, conversation in list(self._conversation_ids.items()) if conversation in gone]:
                del self._conversation_ids[other]
            for conversation in gone:
                if conversation is not None:
                    self._first_rows.pop(conversation, None)
        self._created = (0, [])

    def _created_now(self, key: ConversationKey) -> bool:
        """Whether the writer's current transaction created the conversation ``key``."""
        transaction, keys = self._created
        return transaction == self._writer.transactions and key in keys

    async def _existing_conversation_id(self, key: ConversationKey) -> int | None:
        cached = self._conversation_ids.get(key)
        if cached is not None:
            return cached
        rows = await self._rows("SELECT id FROM conversations WHERE key = ?", (str(key),))
        if not rows:
            return None
        self._conversation_ids[key] = int(rows[0][0])
        return int(rows[0][0])

    def begin_turn(self, msg: IncomingMessage, tokens: int) -> asyncio.Future[int | None]:
        def work(db: sqlite3.Connection) -> int | None:
            now = time.time()
            if not self._claim(db, msg.message_id, now):
                return None
            return self._add_question(db, msg, tokens, now)

        # Begun at once: inline, the turn gets a future already done and goes on without a turn of the loop.
        return self._writer.begin(work)

    async def claim_message(self, message_id: str) -> bool:
        return await self._writer.transaction(lambda db: self._claim(db, message_id, time.time()))

    async def add_question(self, msg: IncomingMessage, tokens: int) -> int:
        return await self._writer.transaction(lambda db: self._add_question(db, msg, tokens, time.time()))

    def _claim(self, db: sqlite3.Connection, message_id: str, now: float) -> bool:
        cur = db.execute(
            "INSERT INTO handled_messages (message_id, handled_at) VALUES (?, ?) ON CONFLICT (message_id) DO NOTHING",
            (message_id, now),
        )
        return cur.rowcount == 1

    def _add_question(self, db: sqlite3.Connection, msg: IncomingMessage, tokens: int, now: float) -> int:
        conversation = self._conversation_id(db, msg.key)
        cur = db.execute(
            "INSERT INTO messages (conversation_id, role, author_id, author_name, content, tokens, "
            "platform_message_id, created_at, tokens_before) "
            f"VALUES (?1, 'user', ?2, ?3, ?4, ?5, ?6, ?7, {_TOKENS_BEFORE})",
            (conversation, msg.author_id, msg.author_name, msg.text, tokens, msg.message_id, now),
        )
        row = _row_id(cur)
        if self._created_now(msg.key):
            # Created in this transaction, right before its first message: nothing of it comes before this row.
            if len(self._first_rows) >= _SETTINGS_CACHE_SIZE:
                self._first_rows.clear()
            self._first_rows[conversation] = row
        return row

    async def context_cursor(self, key: ConversationKey) -> str | None:
        conversation = await self._existing_conversation_id(key)
        if conversation is None:
            return None
        rows = await self._rows("SELECT cursor FROM context_cursors WHERE conversation_id = ?", (conversation,))
        return str(rows[0][0]) if rows else None

    async def handled(self, message_ids: Sequence[str]) -> set[str]:
        wanted = list(dict.fromkeys(message_ids))
        if not wanted:
            return set()
        marks = ", ".join("?" for _ in wanted)
        args = [*wanted, *(CONTEXT_CLAIM + m for m in wanted)]
        rows = await self._rows(f"SELECT message_id FROM handled_messages WHERE message_id IN ({marks}, {marks})", args)
        return {str(r[0]).removeprefix(CONTEXT_CLAIM) for r in rows}

    async def add_context(
        self, key: ConversationKey, entries: Sequence[ContextEntry], cursor: str | None, *, cap_bytes: int | None = None
    ) -> int:
        def work(db: sqlite3.Connection) -> int:
            now = time.time()
            conversation = self._conversation_id(db, key)
            stored = 0
            for entry in entries:
                # Handled as a question already (or being handled: its turn claims it before queueing): its turn
                # stores it. Claimed as context: stored before, by this or another turn.
                if db.execute("SELECT 1 FROM handled_messages WHERE message_id = ?", (entry.message_id,)).fetchone():
                    continue
                if not self._claim(db, CONTEXT_CLAIM + entry.message_id, now):
                    continue
                values = (entry.role, entry.author_id, entry.author_name, entry.content, entry.tokens)
                cur = db.execute(_ADD_CONTEXT, (conversation, *values, entry.message_id, now))
                if entry.images:
                    _put_images(db, conversation, _row_id(cur), entry.images, now)
                stored += 1
            if cap_bytes is not None and any(e.images for e in entries):
                _drop_over_cap(db, cap_bytes)
            if cursor is not None:
                db.execute(_SET_CURSOR, (conversation, cursor, now))
            return stored

        # Up to a whole thread's messages, with their images: on the writer's thread.
        return await self._writer.transaction(work, inline=False)

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
        def work(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO messages (conversation_id, role, content, tokens, reply_to, complete, model, "
                "prompt_tokens, completion_tokens, usage_exact, created_at, tool_trace, tokens_before) "
                f"VALUES (?1, 'assistant', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, {_TOKENS_BEFORE})",
                (
                    self._conversation_id(db, key),
                    text,
                    tokens,
                    reply_to,
                    int(complete),
                    model,
                    usage.prompt_tokens if usage else None,
                    usage.completion_tokens if usage else None,
                    int(usage.exact) if usage else None,
                    time.time(),
                    tool_trace,
                ),
            )
            if ledger is not None:
                db.execute(_INSERT_USAGE, ledger.values())
            return _row_id(cur)

        try:
            return await self._writer.transaction(work)
        except sqlite3.Error as exc:
            raise StoreError(f"storing the reply failed: {exc}") from exc

    async def load_history(
        self, key: ConversationKey, token_budget: int, *, before: int, step: int = 1
    ) -> list[StoredMessage]:
        conversation = await self._existing_conversation_id(key)
        if conversation is None or token_budget <= 0:
            return []
        first = self._first_rows.get(conversation)
        if first is not None:
            if before <= first:
                return []
            # Past its first turn: the history is in the database from now on.
            self._first_rows.pop(conversation, None)  # the writer's thread may clear them meanwhile
        args = (conversation, before, token_budget // MIN_MESSAGE_TOKENS + 1, token_budget, max(1, step))
        if conversation in self._long_histories:
            rows = [tuple(row) for row in await self._reader.execute_fetchall(HISTORY_SQL, args)]
        else:
            rows = await self._rows(HISTORY_SQL, args)
        # Read inline, a history blocks the event loop for all of its time; on the reader's thread, only for the
        # part spent making Python rows of it (about a third: the rest is SQLite's walk, without the GIL). Past
        # _INLINE_HISTORY_ROWS rows the thread's hop costs less than that; the next turn's history is about as long.
        if len(rows) > _INLINE_HISTORY_ROWS:
            self._long_histories.add(conversation)
        else:
            self._long_histories.discard(conversation)
        # The row's columns are StoredMessage's fields, in order: no indexing per column.
        return list(itertools.starmap(StoredMessage, rows))

    async def reset(self, key: ConversationKey) -> int:
        args: tuple[str, ...]
        if key.thread:
            where, args = "key = ?", (str(key),)
        else:
            # A channel's reset covers the threads under it: with reply-in-thread on, that is all there is.
            where, args = "platform = ? AND workspace = ? AND channel = ?", (key.platform, key.workspace, key.channel)
        conversations = f"SELECT id FROM conversations WHERE {where}"

        def work(db: sqlite3.Connection) -> int:
            db.execute(f"DELETE FROM summaries WHERE conversation_id IN ({conversations})", args)
            if db.execute(f"DELETE FROM message_images WHERE conversation_id IN ({conversations})", args).rowcount:
                db.execute(_UNLINKED_IMAGES)
            unindexed = db.execute(_UNINDEX.format(where=f"conversation_id IN ({conversations})"), args).rowcount
            deleted = max(
                db.execute(f"DELETE FROM messages WHERE conversation_id IN ({conversations})", args).rowcount, 0
            )
            if unindexed > 0:
                # FTS5 deletes by adding tombstones: the words stay in older index segments until those are merged.
                # Merging all of them now (about 2 s per 200,000 messages, measured) makes the reset forget them.
                db.execute("INSERT INTO messages_fts (messages_fts) VALUES ('optimize')")
            return deleted

        # A long conversation's reset deletes thousands of rows and may merge the search index: on the thread.
        return await self._writer.transaction(work, inline=False)

    async def add_images(
        self, key: ConversationKey, message: int, images: Sequence[ImageBlob], *, cap_bytes: int
    ) -> None:
        def work(db: sqlite3.Connection) -> None:
            _put_images(db, self._conversation_id(db, key), message, images, time.time())
            _drop_over_cap(db, cap_bytes)

        try:
            await self._writer.transaction(work, inline=False)
        except sqlite3.Error as exc:
            raise StoreError(f"storing the images failed: {exc}") from exc

    async def load_images(self, hashes: Sequence[str]) -> dict[str, ImageBlob]:
        wanted = list(dict.fromkeys(hashes))
        if not wanted:
            return {}
        marks = ", ".join("?" for _ in wanted)

        def work(db: sqlite3.Connection) -> list[tuple[str, str, bytes]]:
            # Shown again, so used again: the cap drops the images nobody looked at for longest.
            return db.execute(
                f"UPDATE images SET used_at = ? WHERE hash IN ({marks}) RETURNING hash, mimetype, data",
                (time.time(), *wanted),
            ).fetchall()

        images = await self._writer.transaction(work, inline=False)  # megabytes, maybe
        return {str(h): ImageBlob(str(h), str(m), bytes(d)) for h, m, d in images}

    async def summary(self, key: ConversationKey) -> Summary | None:
        conversation = await self._existing_conversation_id(key)
        if conversation is None:
            return None
        rows = await self._rows(
            "SELECT content, tokens, covered_to FROM summaries WHERE conversation_id = ?", (conversation,)
        )
        return Summary(str(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else None

    async def messages_after(self, key: ConversationKey, after: int, before: int, limit: int) -> list[StoredMessage]:
        conversation = await self._existing_conversation_id(key)
        if conversation is None:
            return []
        rows = await self._reader.execute_fetchall(
            "SELECT id, role, author_name, content, tokens, created_at FROM messages "
            "WHERE conversation_id = ? AND id > ? AND id < ? ORDER BY id LIMIT ?",
            (conversation, after, before, limit),
        )
        return [StoredMessage(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def search_messages(
        self, key: ConversationKey, query: str, *, before: int, limit: int
    ) -> list[StoredMessage]:
        match = fts5_query(query)
        conversation = await self._existing_conversation_id(key)
        if conversation is None or not match or limit <= 0:
            return []
        while await self._writer.transaction(self._index_new, inline=False) == _INDEX_BATCH:
            pass
        rows = await self._reader.execute_fetchall(_SEARCH, (match, conversation, before, limit))
        return [StoredMessage(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    @staticmethod
    def _index_new(db: sqlite3.Connection) -> int:
        """Add up to _INDEX_BATCH messages stored since the last search to the index; how many it added.

        Every write runs on the writer's connection one transaction at a time, so the ids below the newest committed
        one are all committed: nothing is skipped past.
        """
        [(indexed_to,)] = db.execute("SELECT indexed_to FROM messages_fts_state").fetchall()
        rows = db.execute(
            "SELECT id, content FROM messages WHERE id > ? ORDER BY id LIMIT ?", (indexed_to, _INDEX_BATCH)
        ).fetchall()
        if rows:
            db.executemany("INSERT INTO messages_fts (rowid, content) VALUES (?, ?)", rows)
            db.execute("UPDATE messages_fts_state SET indexed_to = ?", (rows[-1][0],))
        return len(rows)

    async def set_summary(self, key: ConversationKey, summary: Summary) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            conversation = self._conversation_id(db, key)
            cur = db.execute(
                "INSERT INTO summaries (conversation_id, content, tokens, covered_to, updated_at) "
                "SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM messages WHERE id = ? AND conversation_id = ?) "
                "ON CONFLICT (conversation_id) DO UPDATE SET content = excluded.content, tokens = excluded.tokens, "
                "covered_to = excluded.covered_to, updated_at = excluded.updated_at "
                "WHERE summaries.covered_to < excluded.covered_to",
                (
                    conversation,
                    summary.text,
                    summary.tokens,
                    summary.covered_to,
                    time.time(),
                    summary.covered_to,
                    conversation,
                ),
            )
            return cur.rowcount == 1

        return await self._writer.transaction(work)

    async def add_feedback(
        self, platform: str, channel: str, reply: int, user_id: str, value: str, *, at: float
    ) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            cur = db.execute(_ADD_FEEDBACK, (reply, user_id, value, at, platform, channel))
            return cur.rowcount == 1

        return await self._writer.transaction(work)

    async def feedback_since(self, scope: UsageScope, since: float) -> FeedbackTotal:
        conditions = scope.conditions(since)
        where = " AND ".join(f"{c} ?" for c, _ in conditions if not c.startswith("user_id"))
        values = [value for c, value in conditions if not c.startswith("user_id")]
        query = f"SELECT coalesce(sum(value = 'up'), 0), coalesce(sum(value = 'down'), 0) FROM feedback WHERE {where}"
        [row] = list(await self._reader.execute_fetchall(query, values))
        return FeedbackTotal(int(row[0]), int(row[1]))

    async def count_messages(self, key: ConversationKey) -> int:
        conversation = await self._existing_conversation_id(key)
        if conversation is None:
            return 0
        rows = list(
            await self._reader.execute_fetchall(
                "SELECT count(*) FROM messages WHERE conversation_id = ?", (conversation,)
            )
        )
        return int(rows[0][0])

    async def last_thread(self, key: ConversationKey, author_id: str) -> str | None:
        rows = list(
            await self._reader.execute_fetchall(_LAST_THREAD, (key.platform, key.workspace, key.channel, author_id))
        )
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    async def add_usage(self, ledger: UsageRecord) -> None:
        try:
            await self._writer.transaction(lambda db: db.execute(_INSERT_USAGE, ledger.values()))
        except sqlite3.Error as exc:
            raise StoreError(f"storing the ledger entry failed: {exc}") from exc

    async def forget_message(self, row: int) -> None:
        try:
            await self._writer.transaction(lambda db: _delete_message(db, row))
        except sqlite3.Error as exc:
            raise StoreError(f"deleting the refused question failed: {exc}") from exc

    async def abandon_turn(self, row: int | None, message_id: str, ledger: UsageRecord | None = None) -> None:
        def work(db: sqlite3.Connection) -> None:
            _delete_message(db, row)
            db.execute("DELETE FROM handled_messages WHERE message_id = ?", (message_id,))
            if ledger is not None:
                db.execute(_INSERT_USAGE, ledger.values())

        try:
            await self._writer.transaction(work)
        except sqlite3.Error as exc:
            raise StoreError(f"undoing the turn failed: {exc}") from exc

    async def usage_since(self, scope: UsageScope, since: float) -> UsageTotal:
        conditions = scope.conditions(since)
        query = (
            f"SELECT {USAGE_TOTALS.format(all_priced='coalesce(min(priced), 1)')} "
            f"FROM usage WHERE {' AND '.join(f'{c} ?' for c, _ in conditions)}"
        )
        [row] = list(await self._reader.execute_fetchall(query, [value for _, value in conditions]))
        return usage_total(row)

    async def claim_warning(self, scope: str, period_start: float) -> bool:
        statement = "INSERT INTO budget_warnings (scope, period_start) VALUES (?, ?) ON CONFLICT DO NOTHING"
        return await self._writer.transaction(lambda db: db.execute(statement, (scope, period_start)).rowcount == 1)

    async def claim_request(self, request_id: str, expires_at: float) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            # The expired rows go in the same transaction: the index on expires_at makes it a short range delete.
            db.execute("DELETE FROM seen_requests WHERE expires_at < ?", (time.time(),))
            cur = db.execute(
                "INSERT INTO seen_requests (request_id, expires_at) VALUES (?, ?) ON CONFLICT (request_id) DO NOTHING",
                (request_id, expires_at),
            )
            return cur.rowcount == 1

        return await self._writer.transaction(work)

    async def channel_settings(self, key: ConversationKey) -> ChannelSettings:
        # Read on every turn and changed by hand: a cache that this process's own writes keep fresh.
        channel = (key.platform, key.workspace, key.channel)
        cached = self._channel_settings.get(channel)
        if cached is not None:
            return cached
        rows = await self._rows(
            "SELECT system_prompt, model, speak, scope FROM channel_settings "
            "WHERE platform = ? AND workspace = ? AND channel = ?",
            channel,
        )
        found = ChannelSettings(*rows[0]) if rows else ChannelSettings()
        if len(self._channel_settings) >= _SETTINGS_CACHE_SIZE:
            self._channel_settings.clear()
        self._channel_settings[channel] = found
        return found

    async def set_channel_settings(self, key: ConversationKey, settings: ChannelSettings) -> None:
        statement = (
            "INSERT INTO channel_settings (platform, workspace, channel, system_prompt, model, speak, scope) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (platform, workspace, channel) "
            "DO UPDATE SET system_prompt = excluded.system_prompt, model = excluded.model, "
            "speak = excluded.speak, scope = excluded.scope"
        )
        values = (
            key.platform,
            key.workspace,
            key.channel,
            settings.system_prompt,
            settings.model,
            settings.speak,
            settings.scope,
        )
        await self._writer.transaction(lambda db: db.execute(statement, values))
        self._channel_settings[(key.platform, key.workspace, key.channel)] = settings

    async def speaking_channels(self) -> dict[tuple[str, str, str], ChannelSettings]:
        rows = await self._reader.execute_fetchall(
            "SELECT platform, workspace, channel, system_prompt, model, speak, scope FROM channel_settings "
            "WHERE speak IS NOT NULL OR scope IS NOT NULL"
        )
        return {(r[0], r[1], r[2]): ChannelSettings(r[3], r[4], r[5], r[6]) for r in rows}

    async def take_tokens(self, buckets: Sequence[RateBucket]) -> float:
        return await self._buckets.take_tokens(buckets)

    def conversation_lock(self, key: ConversationKey) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    async def purge_expired(self) -> int:
        cutoff = time.time() - HANDLED_RETENTION_S
        return await self._writer.transaction(
            lambda db: max(db.execute("DELETE FROM handled_messages WHERE handled_at < ?", (cutoff,)).rowcount, 0),
            inline=False,  # a week's worth of ids at once, maybe
        )


def fts5_query(query: str) -> str:
    """``query``'s words as an FTS5 query that every match must hold all of, or "" when it has none.

    The words are the runs of letters and digits, as the unicode61 tokenizer splits the messages, each an FTS5
    string of its own (in double quotes): ``foo" OR bar``, ``NEAR(`` or ``*`` are then words to look for, never
    syntax, so no input can make MATCH fail; and ``foo:bar`` needs both words anywhere, as PostgreSQL's
    plainto_tsquery does, not the two side by side.
    """
    return " ".join(f'"{word}"' for word in _WORD.findall(query)[:_SEARCH_WORDS])


#: A word of a search: letters and digits (``\w`` without the underscore, which unicode61 splits on too).
_WORD = re.compile(r"[^\W_]+")
#: A search takes the first this many words of its query: a model pasting a paragraph gets an answer, not a scan.
_SEARCH_WORDS = 32


def check_sqlite_path(path: str) -> None:
    """What start-up and ``teambot check`` both demand of a SQLite path, without opening or creating anything:
    a file (or none yet) in an existing folder, and both writable (SQLite writes its journal beside the file).

    ``os.access`` asks the kernel, so it sees what permissions alone do not: an immutable file (``chattr +i``)
    and a read-only mount refuse even root.
    """
    file = Path(path).expanduser().resolve()
    parent = file.parent
    if not parent.is_dir():
        raise ConfigError(f"TEAMBOT_DB: the folder {str(parent)!r} does not exist; create it or name another")
    if file.is_dir():
        raise ConfigError(
            f"TEAMBOT_DB: {path!r} is a folder; name a file in it, such as {str(Path(path) / 'teambot.db')!r}"
        )
    if file.exists() and not os.access(file, os.R_OK | os.W_OK):
        raise ConfigError(_READ_ONLY.format(path=path, what="the file", cause=_access_cause(file)))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(_READ_ONLY.format(path=path, what="its folder", cause=_access_cause(parent)))


_READ_ONLY = (
    "TEAMBOT_DB: cannot write to {path!r} ({what} is {cause}); make it writable for this user, or name another file"
)


def read_schema_version(path: str) -> int | None:
    """The schema version of the SQLite file at ``path``, read without writing anything; None if there is no file.

    Runs the same checks as start-up first (:func:`check_sqlite_path`). A plain read-only connection to a WAL
    file would still create its ``-wal`` and ``-shm`` files: where they do not exist, no process has the file
    open, it holds every commit, and it is opened as immutable (SQLite then creates and locks nothing).
    """
    check_sqlite_path(path)
    file = Path(path).expanduser().resolve()
    if not file.exists():
        return None
    wal_open = Path(f"{file}-wal").exists()
    uri = f"file:{urllib.parse.quote(str(file))}?mode=ro" + ("" if wal_open else "&immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            [(version,)] = conn.execute("PRAGMA user_version").fetchall()
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()  # "file is not a database" shows here
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from None
    if version > len(MIGRATIONS):
        raise _too_new(int(version))
    return int(version)


def _too_new(version: int) -> ConfigError:
    return ConfigError(
        f"TEAMBOT_DB: the database is at schema version {version}, newer than this teambot "
        f"({len(MIGRATIONS)}); upgrade teambot"
    )


def _access_cause(path: Path) -> str:
    """Why ``path`` refuses writes, in words: a read-only mount, or the file's own permissions or flags."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "on a read-only file system"
    except OSError:
        pass
    return "read-only: check its permissions, owner and flags such as chattr +i"


def _read_only(path: str, exc: sqlite3.Error) -> ConfigError:
    return ConfigError(_READ_ONLY.format(path=path, what="the database", cause=f"refusing writes: {exc}"))


def _unusable(path: str, exc: sqlite3.Error) -> ConfigError:
    # A folder, a file that is not a database, a disk that refuses: one line naming the setting, no traceback.
    return ConfigError(f"TEAMBOT_DB: cannot use {path!r} as a SQLite database ({exc})")


def _row_id(cur: sqlite3.Cursor) -> int:
    assert cur.lastrowid is not None
    return cur.lastrowid


async def _connect_reader(path: str) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        for pragma in PRAGMAS:
            await db.execute(pragma)
    except BaseException:
        await db.close()
        raise
    return db


async def _migrate(writer: SQLiteWriter) -> None:
    def work(db: sqlite3.Connection) -> None:
        [(version,)] = db.execute("PRAGMA user_version").fetchall()
        if version > len(MIGRATIONS):
            raise _too_new(int(version))
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                db.execute(statement)
            # PRAGMA takes no parameters; the number is ours, not input.
            db.execute(f"PRAGMA user_version = {number}")
            log.info("database migrated to schema version %d", number)

    # One transaction for all the steps: a file is at one version or the next, never in between.
    await writer.transaction(work, inline=False)


def _put_images(
    db: sqlite3.Connection, conversation: int, message: int, images: Sequence[ImageBlob], now: float
) -> None:
    """Keep ``images`` (each once) linked to the row ``message``."""
    for image in images:
        db.execute(
            "INSERT INTO images (hash, mimetype, data, size, used_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (hash) DO UPDATE SET used_at = excluded.used_at",
            (image.sha256, image.mimetype, image.data, len(image.data), now),
        )
        db.execute(
            "INSERT INTO message_images (message_id, conversation_id, hash) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (message, conversation, image.sha256),
        )


def _drop_over_cap(db: sqlite3.Connection, cap_bytes: int) -> None:
    """The least recently used images dropped until all of them take at most ``cap_bytes``."""
    [(total,)] = db.execute("SELECT coalesce(sum(size), 0) FROM images").fetchall()
    if total > cap_bytes and db.execute(_IMAGE_LRU, (cap_bytes,)).rowcount:
        db.execute("DELETE FROM message_images WHERE hash NOT IN (SELECT hash FROM images)")


def _delete_message(db: sqlite3.Connection, row: int | None) -> None:
    """Delete the message ``row`` (None: nothing), with its search-index entry and its images' links."""
    db.execute(_UNINDEX.format(where="id = ?"), (row,))
    if db.execute("DELETE FROM message_images WHERE message_id = ?", (row,)).rowcount:
        db.execute(_UNLINKED_IMAGES)
    db.execute("DELETE FROM messages WHERE id = ?", (row,))
