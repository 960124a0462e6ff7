"""The SQLite connection that writes, confined to a thread of its own, where a whole transaction is one call.

aiosqlite hands over one statement at a time, so a transaction of four statements is four trips to its thread,
and under load each trip also waits its turn on a busy event loop; meanwhile no other turn may write. Measured
through the core (``python -m bench``), the write lock was then held about 90% of the time. Here a transaction
is a plain function run on the writer's thread from ``BEGIN IMMEDIATE`` to ``COMMIT``: one trip, no lock held
across the event loop, and SQLite's one-writer rule is kept by the thread itself, which runs one call at a time.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

#: WAL lets the reader run beside the writer; NORMAL keeps every commit through a crash of the process (only a
#: power loss may roll back the last ones); busy_timeout waits out another process's write lock; secure_delete
#: overwrites what /reset deletes instead of leaving it in free pages, whatever the SQLite build's default.
PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA secure_delete = ON",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
)

Work = Callable[[sqlite3.Connection], T]


class SQLiteWriter:
    """One ``sqlite3`` connection used only from its own thread; :meth:`transaction` runs a function in it."""

    def __init__(self, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self._executor = executor
        self._conn = conn

    @classmethod
    async def open(cls, path: str) -> SQLiteWriter:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teambot-sqlite-writer")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn)

    async def transaction(self, work: Work[T]) -> T:
        """Run ``work(connection)`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT``; an exception rolls it back.

        A caller cancelled while the work runs, or while it waits for the writer's thread, does not stop it: the
        transaction still runs, and commits or rolls back whole. (Cancelling the executor's future would drop work
        still queued behind another transaction: a reply the person has seen would then never be stored.)
        """
        return await asyncio.shield(asyncio.get_running_loop().run_in_executor(self._executor, self._run, work))

    async def probe(self, statement: str, args: tuple[object, ...]) -> None:
        """Run one write ``statement`` in a transaction and roll it back: it proves the database takes writes
        (the write lock, the file, the table) and leaves no trace."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._probe, statement, args)

    def _probe(self, statement: str, args: tuple[object, ...]) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(statement, args)
        finally:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    def _run(self, work: Work[T]) -> T:
        # IMMEDIATE takes the write lock up front: a deferred transaction that reads then writes can fail with
        # SQLITE_BUSY at once instead of waiting out busy_timeout.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(self._conn)
        except BaseException:
            # Some errors (a full disk, SQLITE_FULL) roll the transaction back themselves: a second ROLLBACK would
            # raise "no transaction is active" in place of the error that says what went wrong.
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        return result

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._conn.close)
        finally:
            await loop.run_in_executor(None, functools.partial(self._executor.shutdown, wait=True))


def _connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves instead of sqlite3's implicit transactions.
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in PRAGMAS:
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn
