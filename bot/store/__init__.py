"""Where conversations, the usage ledger and the record of answered messages are kept.

The :class:`Store` protocol is what the core needs; SQLite (embedded, the default) and PostgreSQL (several
replicas on one database) implement it. The engines are imported only when a database of theirs is opened, so
a bot on SQLite never loads the PostgreSQL driver.
"""

from __future__ import annotations

import asyncio

from bot.errors import ConfigError
from bot.store.base import (
    CONTEXT_CLAIM,
    FEEDBACK_VALUES,
    HISTORY_QUERY,
    IN_MEMORY_REFUSED,
    LAST_THREAD_QUERY,
    MIN_MESSAGE_TOKENS,
    TOKENS_BEFORE_QUERY,
    USAGE_COLUMNS,
    USAGE_TOTALS,
    ChannelSettings,
    ContextEntry,
    FeedbackTotal,
    RateBucket,
    Role,
    Store,
    StoredMessage,
    Summary,
    UsageRecord,
    UsageScope,
    UsageTotal,
    describe_db,
    is_postgres,
    sqlite_in_memory,
    sqlite_path,
    usage_total,
)
from bot.store.memory_buckets import TokenBuckets

__all__ = [
    "CONTEXT_CLAIM",
    "FEEDBACK_VALUES",
    "HISTORY_QUERY",
    "IN_MEMORY_REFUSED",
    "LAST_THREAD_QUERY",
    "MIN_MESSAGE_TOKENS",
    "TOKENS_BEFORE_QUERY",
    "USAGE_COLUMNS",
    "USAGE_TOTALS",
    "ChannelSettings",
    "ContextEntry",
    "FeedbackTotal",
    "RateBucket",
    "Role",
    "Store",
    "StoredMessage",
    "Summary",
    "TokenBuckets",
    "UsageRecord",
    "UsageScope",
    "UsageTotal",
    "copy_sqlite_to_postgres",
    "describe_db",
    "is_postgres",
    "open_store",
    "sqlite_in_memory",
    "sqlite_path",
    "sqlite_schema",
    "usage_total",
]


async def open_store(url: str, *, pool_size: int = 10, migrate: bool = True, purge: bool = True) -> Store:
    """Open the database ``TEAMBOT_DB`` names: a SQLite path (or ``sqlite:///path``), or a PostgreSQL URL.

    ``migrate`` brings the schema up to date first; without it, an out-of-date PostgreSQL schema is refused
    (SQLite, embedded and single-process, always migrates). ``purge`` deletes what is kept only for a while (old
    message ids) on opening; ``teambot check``, which writes nothing, opens PostgreSQL without either.
    """
    if is_postgres(url):
        from bot.store.postgres import PostgresStore

        return await PostgresStore.open(url, pool_size=pool_size, migrate=migrate, purge=purge)
    from bot.store.sqlite import SQLiteStore

    return await SQLiteStore.open(sqlite_path(url))


async def sqlite_schema(path: str) -> tuple[int | None, int]:
    """``teambot check``: the schema version of the SQLite file at ``path`` (None: no file yet) and the version
    this teambot brings it to; the start-up checks run first, and nothing is written."""
    from bot.store.sqlite import MIGRATIONS, read_schema_version

    return await asyncio.to_thread(read_schema_version, path), len(MIGRATIONS)


async def copy_sqlite_to_postgres(source: str, target_url: str) -> dict[str, int]:
    """``teambot db copy``: everything the SQLite file ``source`` holds, into the PostgreSQL at ``target_url``.

    Returns the number of rows copied per table.
    """
    if not is_postgres(target_url):
        raise ConfigError("db copy: the target (--to or TEAMBOT_DB) must be a postgresql:// URL")
    from bot.store.copy import copy_into
    from bot.store.postgres import PostgresStore

    store = await PostgresStore.open(target_url, pool_size=2, migrate=True)
    try:
        return await copy_into(source, store)
    finally:
        await store.close()
