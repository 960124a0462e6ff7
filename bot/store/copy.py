"""``teambot db copy``: move everything a SQLite file holds into PostgreSQL, so a team outgrows one machine
without losing its conversations, its usage ledger or the record of what was already answered."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiosqlite

from bot.errors import ConfigError
from bot.store.base import USAGE_COLUMNS
from bot.store.postgres import PostgresStore
from bot.store.sqlite import SQLiteStore

log = logging.getLogger(__name__)

_BATCH = 5_000


def _flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


@dataclass(frozen=True, slots=True)
class _Table:
    name: str
    columns: tuple[str, ...]
    #: Columns SQLite keeps as 0/1 and PostgreSQL as BOOLEAN.
    flags: tuple[str, ...] = ()
    #: The BIGSERIAL column whose sequence must continue after the copied ids.
    serial: str | None = None

    def converter(self) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
        flagged = [self.columns.index(c) for c in self.flags]

        def convert(row: tuple[Any, ...]) -> tuple[Any, ...]:
            values = list(row)
            for i in flagged:
                values[i] = _flag(values[i])
            return tuple(values)

        return convert


#: Parents before children, so the foreign keys hold at every step. ``seen_requests`` is not copied: its rows
#: expire within minutes of the request (a signature is good for five), and a copy is made with the bot stopped.
TABLES = (
    _Table("conversations", ("id", "key", "platform", "workspace", "channel", "thread", "created_at"), serial="id"),
    _Table(
        "messages",
        (
            "id",
            "conversation_id",
            "role",
            "author_id",
            "author_name",
            "content",
            "tokens",
            "platform_message_id",
            "reply_to",
            "complete",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "usage_exact",
            "created_at",
            "tokens_before",
            "tool_trace",
        ),
        flags=("complete", "usage_exact"),
        serial="id",
    ),
    _Table("handled_messages", ("message_id", "handled_at")),
    _Table("usage", ("id", *USAGE_COLUMNS), flags=("exact", "priced"), serial="id"),
    _Table("channel_settings", ("platform", "workspace", "channel", "system_prompt", "model", "speak", "scope")),
    _Table("budget_warnings", ("scope", "period_start")),
    _Table("summaries", ("conversation_id", "content", "tokens", "covered_to", "updated_at")),
    _Table("feedback", ("message_id", "user_id", "value", "platform", "workspace", "channel", "at")),
    _Table("context_cursors", ("conversation_id", "cursor", "updated_at")),
    _Table("images", ("hash", "mimetype", "data", "size", "used_at")),
    _Table("message_images", ("message_id", "conversation_id", "hash")),
)


async def copy_into(source: str, target: PostgresStore) -> dict[str, int]:
    """Copy every row of ``source`` into the empty database of ``target``, in one transaction; returns the
    number of rows per table. A target that already holds history is refused, so nothing is ever merged twice."""
    # Opening it brings an older file up to the current schema, so the columns below are all there.
    migrated = await SQLiteStore.open(source)
    await migrated.close()
    counts: dict[str, int] = {}
    async with aiosqlite.connect(source) as db, target.connection() as conn, conn.transaction():
        # Any row in a table we copy into could collide with a copied one (a handled id, a channel's settings):
        # refuse up front with one line rather than fail halfway with a unique violation.
        held = [t.name for t in TABLES if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {t.name})")]
        if held:
            raise ConfigError(
                f"db copy: the PostgreSQL database already holds {', '.join(held)}; copy into an empty one"
            )
        for table in TABLES:
            convert = table.converter()
            counts[table.name] = 0
            async with db.execute(f"SELECT {', '.join(table.columns)} FROM {table.name}") as cursor:
                while batch := await cursor.fetchmany(_BATCH):
                    records = [convert(tuple(row)) for row in batch]
                    await conn.copy_records_to_table(table.name, records=records, columns=list(table.columns))
                    counts[table.name] += len(records)
            if table.serial:
                # New rows must get ids after the copied ones, or the next insert collides with a copied id.
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{table.serial}'), "
                    f"coalesce((SELECT max({table.serial}) FROM {table.name}), 0) + 1, false)"
                )
            log.info("copied %d rows of %s", counts[table.name], table.name)
    return counts
