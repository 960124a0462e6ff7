"""Where conversations, the usage ledger and the record of answered messages are kept.

The :class:`Store` protocol is what the core needs; SQLite (embedded, the default) and PostgreSQL (several
replicas on one database) implement it. The engines are imported only when a database of theirs is opened, so
a bot on SQLite never loads the PostgreSQL driver.
"""

from __future__ import annotations

from bot.errors import ConfigError
from bot.store.base import (
    FEEDBACK_VALUES,
    HISTORY_QUERY,
    IN_MEMORY_REFUSED,
    LAST_THREAD_QUERY,
    MIN_MESSAGE_TOKENS,
    USAGE_COLUMNS,
    ChannelSettings,
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
)
from bot.store.memory_buckets import TokenBuckets

__all__ = [
    "FEEDBACK_VALUES",
    "HISTORY_QUERY",
    "IN_MEMORY_REFUSED",
    "LAST_THREAD_QUERY",
    "MIN_MESSAGE_TOKENS",
    "USAGE_COLUMNS",
    "ChannelSettings",
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
]


async def open_store(url: str, *, pool_size: int = 10, migrate: bool = True) -> Store:
    """Open the database ``TEAMBOT_DB`` names: a SQLite path (or ``sqlite:///path``), or a PostgreSQL URL.

    ``migrate`` brings the schema up to date first; without it, an out-of-date PostgreSQL schema is refused
    (SQLite, embedded and single-process, always migrates).
    """
    if is_postgres(url):
        from bot.store.postgres import PostgresStore

        return await PostgresStore.open(url, pool_size=pool_size, migrate=migrate)
    from bot.store.sqlite import SQLiteStore

    return await SQLiteStore.open(sqlite_path(url))


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
