"""The SQLite connection that writes: short work right on the event loop's thread, long work on a thread of its own.

A turn's writes are a few short statements (the claim and the question, then the reply): with WAL and
``synchronous = NORMAL`` a commit only appends to the WAL, tens of microseconds. Handing each one to a thread cost
more than running it (a future, a thread wake-up, ``call_soon_threadsafe``, and under load a wait for the GIL
while the loop runs other conversations' tokens; BENCHMARKS.md), so such a transaction runs inline, as one
synchronous call: nothing else on the loop can come between its ``BEGIN IMMEDIATE`` and its ``COMMIT``, and a
caller cancelled meanwhile cannot cut it in half.

What may take long stays on the writer's thread, one call at a time in the order given: work its caller marks as
long (a thread's backfill, images, a /reset, the purge, migrations, the search index), anything that would have
to wait for another process's write lock (the inline connection has no busy timeout: SQLITE_BUSY sends the work to
the thread, which waits up to :data:`BUSY_TIMEOUT_MS`), and every piece of work that comes while the thread has
some (it keeps the connection until its queue is empty: never two users at once, and nothing overtakes queued
work). WAL checkpoints fsync, so the connection never runs one by itself (``wal_autocheckpoint = 0``): every
:data:`CHECKPOINT_EVERY` commits (and after each long job) one runs on the thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

#: How long work on the thread waits for another process's write lock before it fails ("database is locked").
BUSY_TIMEOUT_MS = 5000

#: WAL lets the reader run beside the writer; NORMAL keeps every commit through a crash of the process (only a
#: power loss may roll back the last ones); busy_timeout waits out another process's write lock; secure_delete
#: overwrites what /reset deletes instead of leaving it in free pages, whatever the SQLite build's default.
PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA secure_delete = ON",
    "PRAGMA synchronous = NORMAL",
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys = ON",
)
#: The writer's own settings on top: the inline path never sleeps in SQLite's busy handler (it hands the work to
#: the thread instead), and never checkpoints by itself (an fsync on the event loop's thread).
_WRITER_PRAGMAS = ("PRAGMA busy_timeout = 0", "PRAGMA wal_autocheckpoint = 0")

#: Commits between two checkpoints. A plain turn's commit adds about 3-5 pages to the WAL (measured), so this
#: keeps it near SQLite's own default of 1,000 pages.
CHECKPOINT_EVERY = 250


Work = Callable[[sqlite3.Connection], T]


class _Busy(Exception):
    """Another connection holds the lock the inline path needs: the work goes to the thread."""


def _is_busy(exc: sqlite3.Error) -> bool:
    # SQLITE_BUSY and its extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT, ...); a locked table is SQLITE_LOCKED.
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SQLiteWriter:
    """One ``sqlite3`` connection, used by one caller at a time: inline on the event loop's thread when the
    writer's thread has nothing to do, else on that thread; :meth:`transaction` runs a function in it."""

    def __init__(self, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self._executor = executor
        self._conn = conn
        #: Calls handed to the thread (counted on the loop's thread) and finished (counted on the writer's thread,
        #: its last step, after which it no longer touches the connection): while they differ, the connection is the
        #: thread's. Not counted down by the futures' callbacks: in a burst the loop runs those late, and every
        #: write meanwhile would follow to the thread, and the next ones behind it (measured: a third of a burst's
        #: writes went to the thread that way).
        self._submitted = 0
        self._finished = 0
        #: The connection's busy timeout is the thread's (BUSY_TIMEOUT_MS), not the inline path's (0). Switched
        #: only when the other side takes the connection: a queue of thread jobs pays for one switch, not two each.
        self._waits = False
        self._commits = 0
        self._checkpoint: asyncio.Future[None] | None = None
        #: Transactions begun so far (one at a time, on whichever thread has the connection): tells a caller's
        #: bookkeeping which transaction it is in.
        self.transactions = 0
        #: Called (on the thread that ran it) after a transaction rolled back, to forget what the caller noted of it.
        self.on_rollback: Callable[[], None] | None = None

    @classmethod
    async def open(cls, path: str) -> SQLiteWriter:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teambot-sqlite-writer")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn)

    async def transaction(self, work: Work[T], *, inline: bool = True) -> T:
        """Run ``work(connection)`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT``; an exception rolls it back.

        ``inline``: the work is short (a few rows), so it runs on the event loop's thread when it can; pass False
        for work that may take long. A caller cancelled while its work waits for, or runs on, the thread does not
        stop it: the transaction still runs, and commits or rolls back whole. (Cancelling the executor's future
        would drop work still queued behind another transaction: a reply the person has seen would then never be
        stored.) Inline work cannot be cancelled at all: it is one synchronous call.
        """
        if inline and self._inline_ready():
            try:
                result = self._run(work, inline=True)
            except _Busy:
                pass
            else:
                self._committed(1)
                return result
        try:
            return await asyncio.shield(
                self._on_thread(functools.partial(self._run, work, inline=False, long=not inline))
            )
        finally:
            self._committed(1)

    def rows(self, statement: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]] | None:
        """The rows of a short read, inline on this connection (which sees every commit at once); None when it
        cannot run now (the thread has the connection, or another connection holds a lock it needs): the caller
        then reads on its own connection instead."""
        if not self._inline_ready():
            return None
        try:
            return self._conn.execute(statement, args).fetchall()
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return None
            raise

    async def probe(self, statement: str, args: tuple[object, ...]) -> None:
        """Run one write ``statement`` in a transaction and roll it back: it proves the database takes writes
        (the write lock, the file, the table) and leaves no trace."""
        if self._inline_ready():
            try:
                self._probe(statement, args, inline=True)
                return
            except _Busy:
                pass
        await self._on_thread(functools.partial(self._probe, statement, args, inline=False))

    def _probe(self, statement: str, args: tuple[object, ...], *, inline: bool) -> None:
        self._begin(inline)
        try:
            self._conn.execute(statement, args)
        finally:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    def _begin(self, inline: bool) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that reads then writes can fail with
        # SQLITE_BUSY at once instead of waiting out busy_timeout.
        if not inline:
            self._conn.execute("BEGIN IMMEDIATE")
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise _Busy from exc
            raise

    def _run(self, work: Work[T], *, inline: bool, long: bool = False) -> T:
        self._begin(inline)
        self.transactions += 1
        try:
            result = work(self._conn)
            self._conn.execute("COMMIT")
        except BaseException:
            # Some errors (a full disk, SQLITE_FULL) roll the transaction back themselves: a second ROLLBACK would
            # raise "no transaction is active" in place of the error that says what went wrong.
            try:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            finally:
                if self.on_rollback is not None:
                    self.on_rollback()
            raise
        if long:
            # Off the loop already, and likely many pages: checkpoint now rather than on the next count. The work
            # has committed: a checkpoint that fails must not make its caller think it failed (a /reset that
            # deleted everything reported as failed); the WAL only grows until the next one succeeds.
            try:
                self._run_checkpoint()
            except sqlite3.Error as exc:
                log.warning("a WAL checkpoint failed: %s", exc)
        return result

    def _committed(self, commits: int) -> None:
        self._commits += commits
        if self._commits >= CHECKPOINT_EVERY and self._checkpoint is None:
            self._checkpoint = asyncio.ensure_future(self._on_thread(self._run_checkpoint))
            self._checkpoint.add_done_callback(self._checkpointed)

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self._checkpoint = None
        if not done.cancelled() and (exc := done.exception()) is not None:
            # Not a turn's failure: the WAL only grows until the next one succeeds.
            log.warning("a WAL checkpoint failed: %s", exc)

    def _run_checkpoint(self) -> None:
        """On the thread: the WAL into the database file, then a write that starts the WAL over. PASSIVE: it never
        waits for other connections, it does what they leave it to do."""
        # Counted again from here (an add on the loop's thread meanwhile may be lost: one checkpoint comes later).
        self._commits = 0
        [(busy, _, _)] = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        if not busy:
            # With everything checkpointed, the next commit starts the WAL over from its beginning, and SQLite
            # fsyncs the WAL's header when it does: not in a turn's commit on the event loop's thread, but here, by
            # a write of the database's first page that leaves it as it was (an UPDATE of a row to the values it
            # holds writes no page at all: SQLite compares the bytes first).
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                [(version,)] = self._conn.execute("PRAGMA user_version").fetchall()
                self._conn.execute(f"PRAGMA user_version = {int(version)}")  # PRAGMA takes no parameters
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _on_thread(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """``call()`` on the writer's thread, after what is queued there; the connection is the thread's until
        the queue is empty. The thread waits for other connections' locks up to :data:`BUSY_TIMEOUT_MS`."""
        self._submitted += 1
        return asyncio.get_running_loop().run_in_executor(self._executor, self._with_timeout, call)

    def _inline_ready(self) -> bool:
        """Whether the loop's thread may use the connection now (the writer's thread has nothing of it), set up
        for the inline path: no busy timeout."""
        if self._submitted != self._finished:
            return False
        if self._waits:
            self._conn.execute("PRAGMA busy_timeout = 0")
            self._waits = False
        return True

    def _with_timeout(self, call: Callable[[], T]) -> T:
        try:
            if not self._waits:
                self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                self._waits = True
            return call()
        finally:
            # Only this thread writes it, and the loop's thread reads it whole (the GIL): once it matches, the
            # connection is free.
            self._finished += 1

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # Through the count like any thread job: while the close waits behind queued work or runs, the loop's
            # thread must not take the connection for an inline turn.
            await self._on_thread(self._conn.close)
        finally:
            await loop.run_in_executor(None, functools.partial(self._executor.shutdown, wait=True))


def _connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves instead of sqlite3's implicit transactions.
    # check_same_thread=False: the event loop's thread and the writer's thread take turns (never both at once).
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for pragma in (*PRAGMAS, *_WRITER_PRAGMAS):
            conn.execute(pragma)
    except BaseException:
        conn.close()
        raise
    return conn
