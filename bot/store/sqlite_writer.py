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
the thread, which waits up to :data:`BUSY_TIMEOUT_MS`), and every piece of work that comes while the thread uses
the connection or has work queued (never two users at once, and nothing overtakes queued work). The thread takes
one job at a time; between two, the loop's thread runs the short transactions queued meanwhile itself, in order,
where they can run inline (each would cost the thread a wait for the GIL per statement while the loop is busy).
WAL checkpoints fsync, so the connection never runs one by itself (``wal_autocheckpoint = 0``): every
:data:`CHECKPOINT_EVERY` commits one runs on the thread, on a connection of its own, while the loop's thread goes on
reading and writing on this one (WAL lets a checkpoint copy frames while another connection appends); after each
long job one runs on the thread with this connection.

The commit that starts the WAL over, the first after a checkpoint copied all of it, fsyncs the WAL's header: so an
inline transaction that would be that commit goes to the thread (:class:`_WalIndex` tells, from the WAL index that
every connection to the file shares), and the checkpoint's own connection makes that write itself right after the
checkpoint. Under writes that never pause, a checkpoint beside them seldom finds nothing new when it ends, and the
WAL would only grow: past :data:`WAL_FRAMES_CAP` frames the inline path leaves its writes to the thread, behind a
checkpoint that then has the WAL to itself and starts it over.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import mmap
import os
import sqlite3
import struct
import threading
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
#: Frames in the WAL (about 16 MB of 4 KB pages, four times what CHECKPOINT_EVERY commits add) from which writes go
#: to the thread, where the checkpoint runs with nothing added beside it, until it has started the WAL over.
WAL_FRAMES_CAP = 4000
#: Checkpoints one job runs beside the loop's writes before it leaves the rest for the next job: each one after the
#: first copies only what came meanwhile (one fsync of a few pages), so one of them soon ends with nothing new.
CHECKPOINT_ROUNDS = 4


Work = Callable[[sqlite3.Connection], T]


class _Busy(Exception):
    """Another connection holds the lock the inline path needs: the work goes to the thread."""


def _is_busy(exc: sqlite3.Error) -> bool:
    # SQLITE_BUSY and its extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT, ...); a locked table is SQLITE_LOCKED.
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _WalIndex:
    """Two numbers of the WAL index (the ``-shm`` file that SQLite maps into every connection to the file, laid out
    in https://www.sqlite.org/walformat.html, which every SQLite since 3.7.0 reads alike): the frames in the WAL,
    and how many of them checkpoints have copied into the database file. Read-only, mapped like SQLite maps it."""

    #: The layout's version, at the head of each of the index header's two copies.
    VERSION = 3007000
    #: The index header's two copies (48 bytes each: the version, then mxFrame, the frames in the WAL, at byte 16),
    #: then nBackfill, the frames copied; in the machine's byte order.
    _FIELDS = struct.Struct("@I12xI28xI12xI28xI")

    def __init__(self, path: str) -> None:
        fd = os.open(f"{path}-shm", os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, self._FIELDS.size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)

    def frames(self) -> int | None:
        """Frames in the WAL, or None when the index does not read as SQLite writes it."""
        version, frames, version_again, frames_again, _ = self._FIELDS.unpack_from(self._map)
        if version != self.VERSION or version_again != self.VERSION or frames != frames_again:
            return None
        return int(frames)

    def copied(self) -> int:
        """Frames of the WAL that checkpoints have copied into the database file."""
        return int(self._FIELDS.unpack_from(self._map)[4])

    def leave_to_thread(self) -> bool:
        """For a connection holding the write lock on the loop's thread: whether its transaction must go to the
        thread instead. True when unsure, and when its commit would start the WAL over, fsyncing its header: every
        frame copied into the database (SQLite then reads the file alone, and the next writer restarts the WAL:
        a checkpoint on the other connection just copied it all, or its write that restarts the WAL failed), or an
        empty WAL (its first commit writes the header). True too when the WAL holds WAL_FRAMES_CAP frames: the
        thread's checkpoint must catch up with nothing added beside it.

        Exact for a connection that holds the write lock: no one else can add frames, and a checkpoint can copy
        no further than the last one, so both numbers stay as they were when the transaction began."""
        version, frames, version_again, frames_again, copied = self._FIELDS.unpack_from(self._map)
        return (
            copied >= frames
            or frames >= WAL_FRAMES_CAP
            or frames != frames_again
            or version != self.VERSION
            or version_again != self.VERSION
        )

    def close(self) -> None:
        self._map.close()


class _Job:
    """Work waiting for the connection, in the order it was handed over: ``call`` runs it on the writer's thread;
    ``work``, where it is a short transaction, lets the loop's thread run it instead (see SQLiteWriter._take)."""

    __slots__ = ("call", "future", "work")

    def __init__(self, call: Callable[[], Any], work: Work[Any] | None, future: asyncio.Future[Any]) -> None:
        self.call = call
        self.work = work
        self.future = future


def _settle(future: asyncio.Future[T], result: T, error: BaseException | None) -> None:
    # A future its awaiter gave up on (the loop closing) takes nothing.
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class SQLiteWriter:
    """One ``sqlite3`` connection, used by one caller at a time: inline on the event loop's thread when the
    writer's thread is not using it and nothing queued must run there first, else on that thread;
    :meth:`transaction` runs a function in it."""

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        conn: sqlite3.Connection,
        checkpointer: sqlite3.Connection | None = None,
        wal: _WalIndex | None = None,
    ) -> None:
        self._executor = executor
        self._conn = conn
        #: The checkpoints' own connection, used only on the writer's thread, and the WAL index that tells the
        #: inline path when its commit would restart the WAL. Without either (the index could not be mapped), every
        #: checkpoint takes this connection on the thread.
        self._checkpointer = checkpointer
        self._wal = wal
        #: Held by whichever thread uses the connection, for as long as it does: by the loop's thread only within
        #: one synchronous call (it never waits for it: taken, or the work goes to the queue), by the writer's
        #: thread for one job at a time.
        self._lock = threading.Lock()
        #: Work handed over and not yet begun, in order: the writer's thread takes one job per call of _drain; the
        #: loop's thread, finding the connection free, runs the short transactions at the front itself (_take).
        self._queue: collections.deque[_Job] = collections.deque()
        #: Calls of _drain handed to the executor (counted on the loop's thread) and begun (on the writer's thread).
        self._drains = 0
        self._drains_begun = 0
        #: Jobs handed over (counted on the loop's thread) and done (counted by whichever thread ran them, under
        #: the lock). Counts only, since the queue decides: the tests and the measurements of writes sent to the
        #: thread read them.
        self._submitted = 0
        self._finished = 0
        #: The connection's busy timeout is the thread's (BUSY_TIMEOUT_MS), not the inline path's (0). Switched
        #: only when the other side takes the connection: a queue of thread jobs pays for one switch, not two each.
        self._waits = False
        self._commits = 0
        self._checkpoint: asyncio.Future[None] | None = None
        #: Set when close() begins: a write that ends after it schedules no checkpoint (its executor and connections
        #: are going) and reads no WAL index (unmapped by the close).
        self._closing = False
        #: Set by the close itself, on the thread that runs it: from then on nothing may touch the connection, and
        #: work handed over is told so instead of waiting for a thread that will never run it.
        self._closed = False
        #: Transactions begun so far (one at a time, on whichever thread has the connection): tells a caller's
        #: bookkeeping which transaction it is in.
        self.transactions = 0
        #: Called (on the thread that ran it) after a transaction rolled back, to forget what the caller noted of it.
        self.on_rollback: Callable[[], None] | None = None

    @classmethod
    async def open(cls, path: str) -> SQLiteWriter:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teambot-sqlite-writer")
        try:
            conn, checkpointer, wal = await asyncio.get_running_loop().run_in_executor(executor, _connect_all, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn, checkpointer, wal)

    async def transaction(self, work: Work[T], *, inline: bool = True) -> T:
        """Run ``work(connection)`` inside ``BEGIN IMMEDIATE`` ... ``COMMIT``; an exception rolls it back.

        ``inline``: the work is short (a few rows), so it runs on the event loop's thread when it can; pass False
        for work that may take long. A caller cancelled while its work waits for, or runs on, the thread does not
        stop it: the transaction still runs, and commits or rolls back whole. (Cancelling the executor's future
        would drop work still queued behind another transaction: a reply the person has seen would then never be
        stored.) Inline work cannot be cancelled at all: it is one synchronous call.
        """
        if inline:
            with contextlib.suppress(_Busy):
                return self._inline(work)
        return await self._thread_transaction(self._hand_over(work, long=not inline))

    def begin(self, work: Work[T]) -> asyncio.Future[T]:
        """:meth:`transaction` of short work, begun at once: where it runs inline, a future already done (with its
        result or its error), which its caller awaits without giving up the event loop and needs no task to
        shield; else a task for the thread's transaction, which commits or rolls back whole whatever happens to
        the caller. A caller that must know the outcome even when cut off (a turn's claim and question) takes it
        from the future; through :meth:`transaction` that took a task, a shield and three turns of the loop."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        try:
            done.set_result(self._inline(work))
        except _Busy:
            # Handed over now, not at the task's first step: nothing begun after it goes first.
            return loop.create_task(self._thread_transaction(self._hand_over(work, long=False)))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def _inline(self, work: Work[T]) -> T:
        """``work`` in a transaction on the loop's thread; _Busy when it cannot run there now (the thread has the
        connection, another connection holds the lock, or its commit would start the WAL over)."""
        if not self._take():
            raise _Busy
        try:
            result = self._run(work, inline=True)
        finally:
            self._lock.release()
        self._committed(1)
        return result

    def _hand_over(self, work: Work[T], *, long: bool) -> asyncio.Future[T]:
        """``work`` queued for the writer's thread; short work may yet run on the loop's thread (_take)."""
        return self._on_thread(functools.partial(self._run, work, inline=False, long=long), None if long else work)

    async def _thread_transaction(self, handed: asyncio.Future[T]) -> T:
        try:
            return await asyncio.shield(handed)
        finally:
            self._committed(1, on_thread=True)

    def rows(self, statement: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]] | None:
        """The rows of a short read, inline on this connection (which sees every commit at once); None when it
        cannot run now (the thread has the connection, or another connection holds a lock it needs): the caller
        then reads on its own connection instead."""
        # Not through _take: a read need not wait for queued writes (the reader's connection would not see them
        # either), only for the connection.
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self._no_wait()
            return self._conn.execute(statement, args).fetchall()
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return None
            raise
        finally:
            self._lock.release()

    async def probe(self, statement: str, args: tuple[object, ...]) -> None:
        """Run one write ``statement`` in a transaction and roll it back: it proves the database takes writes
        (the write lock, the file, the table) and leaves no trace."""
        if self._take():
            try:
                self._probe(statement, args, inline=True)
                return
            except _Busy:
                pass
            finally:
                self._lock.release()
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
        if self._wal is not None and self._wal.leave_to_thread():
            self._conn.execute("ROLLBACK")
            raise _Busy

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

    def _committed(self, commits: int, *, on_thread: bool = False) -> None:
        self._commits += commits
        if self._checkpoint is not None or self._closing:
            return
        wal = self._wal
        # Past the cap every write goes to the thread: only then is it worth reading the WAL's size.
        over_cap = on_thread and wal is not None and (wal.frames() or 0) >= WAL_FRAMES_CAP
        if self._commits >= CHECKPOINT_EVERY or over_cap:
            self._commits = 0
            if wal is not None:
                # Not through the thread's count: the inline path keeps this connection meanwhile.
                done = asyncio.get_running_loop().run_in_executor(self._executor, self._checkpoint_beside)
            else:
                done = self._on_thread(self._run_checkpoint)
            self._checkpoint = asyncio.ensure_future(done)
            self._checkpoint.add_done_callback(self._checkpointed)

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self._checkpoint = None
        if not done.cancelled() and (exc := done.exception()) is not None:
            # Not a turn's failure: the WAL only grows until the next one succeeds.
            log.warning("a WAL checkpoint failed: %s", exc)

    def _checkpoint_beside(self) -> None:
        """On the thread, on the checkpoints' own connection, while the loop's thread may go on with this one."""
        assert self._checkpointer is not None
        self._checkpoint_with(self._checkpointer)

    def _run_checkpoint(self) -> None:
        """On the thread, with this connection (the inline path waits)."""
        # Counted again from here (an add on the loop's thread meanwhile may be lost: one checkpoint comes later).
        self._commits = 0
        self._checkpoint_with(self._conn)

    def _checkpoint_with(self, conn: sqlite3.Connection) -> None:
        """The WAL into the database file, then at once a write that starts the WAL over (with everything copied,
        the next commit does, and SQLite fsyncs the WAL's header then: not in a turn's commit on the event loop's
        thread, but here). PASSIVE: it never waits for other connections, it does what they leave it to do. Again
        while the WAL did not start over (up to CHECKPOINT_ROUNDS times): frames came during the checkpoint, or a
        read of the WAL's frames under way kept it from restarting; the write then went at the WAL's end."""
        # The write sets the header's application id to what it holds: it writes the database's first page (a
        # header field is written whatever its value; an UPDATE of a row to the values it holds writes no page),
        # in a transaction of its own, so it holds the write lock only while SQLite runs it. Not the schema
        # version: read before the write, another process's migration meanwhile would be undone, and read under
        # a lock taken for it, the lock is held while the thread waits for the GIL between statements, and the
        # loop's writes meanwhile find it taken and go to the thread (two thirds of them, at an instant model).
        # Nothing in teambot sets the application id. One script: between the two statements the thread takes the
        # GIL back once, and meanwhile the loop's writes, which would start the WAL over, go to the thread.
        [(application_id,)] = conn.execute("PRAGMA application_id").fetchall()
        script = f"PRAGMA wal_checkpoint(PASSIVE); PRAGMA application_id = {int(application_id)};"  # no parameters
        for _ in range(CHECKPOINT_ROUNDS):
            conn.executescript(script)
            # A restart counts the copied frames from 0 again, and the next checkpoint is this thread's.
            if self._wal is None or self._wal.copied() == 0:
                return

    def _on_thread(self, call: Callable[[], T], work: Work[T] | None = None) -> asyncio.Future[T]:
        """``call()`` on the writer's thread, after what is queued there. The thread waits for other connections'
        locks up to :data:`BUSY_TIMEOUT_MS`. ``work``: ``call`` is that short transaction, which the loop's thread
        may run instead (_take)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._closed:
            future.set_exception(_closed_error())
            return future
        self._queue.append(_Job(call, work, future))
        self._submitted += 1
        self._kick(loop)
        return future

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure the queue moves: unless the writer's thread is running a job (its end runs _settled, which
        takes the queue here or kicks again) or has a call of _drain coming, hand it one.

        Not one call per job: the thread takes the GIL back at once after a job, and would run the next and the
        next while the loop's thread, waiting for the GIL, finds the connection taken each time it tries."""
        if self._queue and not self._lock.locked() and self._drains == self._drains_begun:
            self._drains += 1
            self._executor.submit(self._drain, loop)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer's thread: the job at the front of the queue, if the loop's thread has not run it."""
        self._drains_begun += 1
        with self._lock:
            if not self._queue:
                return
            job = self._queue.popleft()
            result, error = None, None
            try:
                if not self._waits:
                    self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                    self._waits = True
                result = job.call()
            except BaseException as exc:  # the caller's, like the executor would hand it over
                error = exc
            finally:
                self._finished += 1
        loop.call_soon_threadsafe(self._settled, job.future, result, error)

    def _settled(self, future: asyncio.Future[T], result: T, error: BaseException | None) -> None:
        """On the loop's thread, after the writer's thread ran a job: its outcome to its caller, and the short
        work queued meanwhile run here, if the connection is free, instead of one thread hop each."""
        _settle(future, result, error)
        if self._closed:
            # Handed over behind the close: the connection is gone, and no thread will come for them.
            while self._queue:
                _settle(self._queue.popleft().future, None, _closed_error())
            return
        if self._queue:
            if self._take():
                self._lock.release()
            else:
                self._kick(asyncio.get_running_loop())

    def _take(self) -> bool:
        """Take the connection for the loop's thread, set up for the inline path (no busy timeout); False when
        the writer's thread has it, or queued work must run first and cannot run here. The caller releases
        ``self._lock``.

        Work queued for the thread that has not begun is run here first, in order, as long as it is a short
        transaction that can run inline (not waiting for another connection's lock, not starting the WAL over):
        the writer's thread, waiting for the GIL between every two statements while the loop is busy, would
        otherwise take milliseconds per job, and every write meanwhile would queue behind it (at an instant model,
        200 to 740 of 1,000 writes a run, measured)."""
        if not self._lock.acquire(blocking=False):
            return False
        if self._closed:
            self._lock.release()
            return False
        try:
            self._no_wait()
            queue = self._queue
            while queue:
                job = queue[0]
                if job.work is None:
                    break
                result, error = None, None
                try:
                    result = self._run(job.work, inline=True)
                except _Busy:
                    break
                except Exception as exc:  # the job's caller's error, as on the thread
                    error = exc
                queue.popleft()
                self._finished += 1
                _settle(job.future, result, error)
            else:
                return True
        except BaseException:
            self._lock.release()
            raise
        self._lock.release()
        return False

    def _no_wait(self) -> None:
        """The inline path's busy timeout (0), where the writer's thread left its own; with the lock held."""
        if self._waits:
            self._conn.execute("PRAGMA busy_timeout = 0")
            self._waits = False

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        self._closing = True
        try:
            # Through the count like any thread job: while the close waits behind queued work or runs, the loop's
            # thread must not take the connection for an inline turn.
            await self._on_thread(self._close_all)
        finally:
            await loop.run_in_executor(None, functools.partial(self._executor.shutdown, wait=True))

    def _close_all(self) -> None:
        self._closed = True
        try:
            if self._wal is not None:
                self._wal.close()  # before the last connection goes: SQLite may then delete the file
        finally:
            try:
                if self._checkpointer is not None:
                    self._checkpointer.close()
            finally:
                self._conn.close()


def _closed_error() -> sqlite3.ProgrammingError:
    return sqlite3.ProgrammingError("Cannot operate on a closed database.")


def _connect_all(path: str) -> tuple[sqlite3.Connection, sqlite3.Connection | None, _WalIndex | None]:
    """The writer's connection, the checkpoints' connection and the WAL index; on the writer's thread."""
    conn = _connect(path, (*PRAGMAS, *_WRITER_PRAGMAS))
    try:
        wal = _open_wal_index(conn)
        if wal is None:
            return conn, None, None
        try:
            checkpointer = _connect(path, (*PRAGMAS, "PRAGMA wal_autocheckpoint = 0"))
        except BaseException:
            wal.close()
            raise
    except BaseException:
        conn.close()
        raise
    return conn, checkpointer, wal


def _open_wal_index(conn: sqlite3.Connection) -> _WalIndex | None:
    # The file SQLite opened (its full path, links resolved): the index is beside it, made by the first read.
    [file] = [str(row[2]) for row in conn.execute("PRAGMA database_list").fetchall() if row[1] == "main"]
    try:
        wal = _WalIndex(file)
    except (OSError, ValueError) as exc:
        problem = str(exc)
    else:
        if wal.frames() is not None:
            return wal
        wal.close()
        problem = "it does not read as SQLite's"
    # Correct without it, only slower: every checkpoint then stops the inline path while it runs.
    log.warning("the SQLite WAL index cannot be read (%s): checkpoints will pause the inline writes", problem)
    return None


def _connect(path: str, pragmas: tuple[str, ...]) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves instead of sqlite3's implicit transactions.
    # check_same_thread=False: the event loop's thread and the writer's thread take turns (never both at once).
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for pragma in pragmas:
            conn.execute(pragma)
        conn.execute("PRAGMA user_version").fetchall()  # the first read: the WAL and its index exist from here
    except BaseException:
        conn.close()
        raise
    return conn
