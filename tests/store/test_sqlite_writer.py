"""The SQLite writer's promises that the contract tests cannot see: work handed to it always runs; the inline path
never shares the connection with the writer's thread, never waits for another process's lock, never checkpoints;
and the WAL stays bounded."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

import pytest

from bot.messages import ConversationKey, IncomingMessage
from bot.store import ChannelSettings, ContextEntry, open_store, sqlite_writer
from bot.store import sqlite as sqlite_engine
from bot.store.sqlite import SQLiteStore

A = ConversationKey("slack", "T1", "C1")


def wal_bytes(path: Path) -> int:
    return Path(f"{path}-wal").stat().st_size


def incoming(n: int, text: str = "") -> IncomingMessage:
    return IncomingMessage(A, f"m{n}", "U1", "Ada", text or f"message {n}")


async def sqlite_store(path: Path) -> SQLiteStore:
    store = await open_store(str(path))
    assert isinstance(store, SQLiteStore)
    return store


async def test_a_write_cancelled_while_it_waits_for_the_writer_still_runs(tmp_path: Path) -> None:
    # A turn cut off after the model answered must still store the reply the person saw: its write may be queued
    # behind another transaction when the cancellation comes.
    path = tmp_path / "t.db"
    store = await open_store(str(path))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the writer's thread waits on it
        first = asyncio.create_task(store.claim_message("first"))
        await asyncio.sleep(0)  # handed to the writer's thread, which now waits for the lock
        queued = asyncio.create_task(store.claim_message("queued"))
        await asyncio.sleep(0)  # queued behind it
        queued.cancel()
        other.execute("ROLLBACK")
        assert await first
        with pytest.raises(asyncio.CancelledError):
            await queued
        # It ran all the same: the id is claimed.
        assert await store.claim_message("queued") is False
    finally:
        other.close()
        await store.close()


async def test_while_the_writers_thread_has_the_connection_nothing_else_uses_it(tmp_path: Path) -> None:
    # Long work holds the connection on the writer's thread, mid-transaction: a read must neither see its
    # uncommitted rows nor wait for it (the reader's connection serves it), and a short write waits its turn
    # behind it on the thread instead of running inline inside that open transaction.
    store = await sqlite_store(tmp_path / "t.db")
    inside, gate = threading.Event(), threading.Event()
    statement = "INSERT INTO channel_settings (platform, workspace, channel, model) VALUES (?, ?, ?, ?)"

    def long_work(db: sqlite3.Connection) -> None:
        db.execute(statement, (A.platform, A.workspace, A.channel, "uncommitted-model"))
        inside.set()
        gate.wait(10)
        raise RuntimeError("rolled back")

    try:
        blocker = asyncio.ensure_future(store._writer.transaction(long_work, inline=False))
        await _until_set(inside)
        async with asyncio.timeout(5):
            assert await store.channel_settings(A) == ChannelSettings()
            claim = asyncio.ensure_future(store.claim_message("m1"))
            await asyncio.sleep(0.05)
            assert not claim.done()  # behind the long work, not inside its transaction
        gate.set()
        with pytest.raises(RuntimeError):
            await blocker
        assert await claim is True
        store._channel_settings.clear()
        assert await store.channel_settings(A) == ChannelSettings()  # the long work's row went with its rollback
    finally:
        gate.set()
        await store.close()


async def test_the_inline_connection_never_waits_nor_checkpoints_and_the_wal_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection that runs on the event loop's thread must never sleep in SQLite's busy handler (another
    # process's lock sends the work to the thread: test_another_writer_holding_the_write_lock_is_waited_out) nor
    # start a checkpoint by itself (it fsyncs). The checkpoints run beside it on their own connection, and writes
    # that never pause (here not even for the loop: no inline call awaits anything) leave them always something
    # new to copy, so they never start the WAL over by themselves: past WAL_FRAMES_CAP frames the writes go to
    # the thread, behind a checkpoint that then catches up, and the WAL stays within the cap.
    every = 40
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_EVERY", every)
    path = tmp_path / "t.db"
    store = await sqlite_store(path)
    try:
        assert store._writer.rows("PRAGMA busy_timeout") == [(0,)]
        assert store._writer.rows("PRAGMA wal_autocheckpoint") == [(0,)]
        [(page,)] = store._writer.rows("PRAGMA page_size") or [(0,)]
        frame = page + 24
        for n in range(every // 2):
            await store.begin_turn(incoming(n, "a question of a few words " * 4), 30)
        # What a commit adds to the WAL, before any checkpoint came.
        per_commit = (wal_bytes(path) - 32) / (every // 2)
        # Half of what `every` commits add: the cap comes before the count of commits calls a checkpoint.
        cap = int(every * per_commit / frame / 2)
        monkeypatch.setattr(sqlite_writer, "WAL_FRAMES_CAP", cap)
        for n in range(every // 2, 10 * every):
            await store.begin_turn(incoming(n, "a question of a few words " * 4), 30)
        # Without checkpoints the WAL would hold all 10 * every commits; with them, at most the cap, the inline
        # commit that crossed it and the one that went to the thread next (a commit's pages vary a little).
        assert wal_bytes(path) <= 32 + cap * frame + 4 * per_commit
        assert await store.count_messages(A) == 10 * every
    finally:
        await store.close()


async def _until_set(event: threading.Event) -> None:
    """Until another thread sets ``event``: a thread's event, nothing to be notified by."""
    async with asyncio.timeout(5):
        while not event.is_set():  # noqa: ASYNC110 - see above
            await asyncio.sleep(0.01)


async def _thread_held(writer: sqlite_writer.SQLiteWriter, gate: threading.Event) -> asyncio.Future[None]:
    """A table ``t``, then a job on the writer's thread that holds the connection until ``gate`` is set: what
    comes meanwhile queues. The job, running."""
    inside = threading.Event()

    def hold(db: sqlite3.Connection) -> None:
        inside.set()
        gate.wait(10)

    await writer.transaction(lambda db: db.execute("CREATE TABLE t (x INTEGER)"), inline=False)
    job = asyncio.ensure_future(writer.transaction(hold, inline=False))
    await _until_set(inside)
    return job


def wal_index(writer: sqlite_writer.SQLiteWriter) -> sqlite_writer._WalIndex:
    assert writer._wal is not None
    return writer._wal


async def test_a_write_on_the_loop_goes_on_while_a_checkpoint_runs_on_its_own_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checkpoint (its fsyncs take milliseconds) runs on the writer's thread with a connection of its own: a
    # turn's write on the loop's thread neither waits for it nor goes to the thread behind it. The checkpoint is
    # held before its first step (SQLite's progress handler, called on the thread that runs it) while the turn
    # writes; let go, it copies the WAL and starts it over.
    every = 5
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_EVERY", every)
    store = await sqlite_store(tmp_path / "t.db")
    writer = store._writer
    assert writer._checkpointer is not None
    inside, gate = threading.Event(), threading.Event()
    copied_when_held: list[int] = []

    def hold() -> int:
        if not inside.is_set():
            copied_when_held.append(wal_index(writer).copied())
            inside.set()
            gate.wait(10)
        return 0

    writer._checkpointer.set_progress_handler(hold, 1)
    try:
        for n in range(every):
            await store.begin_turn(incoming(n), 10)
        checkpoint = writer._checkpoint
        assert checkpoint is not None
        await _until_set(inside)
        handed = writer._submitted
        frames = wal_index(writer).frames()
        async with asyncio.timeout(5):
            row = await store.begin_turn(incoming(every), 10)
            history = await store.load_history(A, 1000, before=10_000)
        assert row is not None and [m.content for m in history][-1] == f"message {every}"
        assert writer._submitted == handed  # inline: nothing went to the thread
        assert not checkpoint.done() and copied_when_held == [0]  # the checkpoint was held all along
        assert (wal_index(writer).frames() or 0) > (frames or 0)
        gate.set()
        await checkpoint
        # It copied everything, the turn's write too, and started the WAL over: nothing copied of the new WAL.
        assert wal_index(writer).copied() == 0 and wal_index(writer).frames() == 1
    finally:
        gate.set()
        await store.close()


async def test_an_inline_write_never_starts_the_wal_over(tmp_path: Path) -> None:
    # Once a checkpoint has copied the whole WAL, the next commit starts it over and fsyncs its header: that commit
    # must not be a turn's on the loop's thread. Here another connection copies it all (as the checkpoints'
    # connection does, before its own write restarts the WAL); the next write goes to the thread, which restarts
    # the WAL, and the writes after it run inline again.
    path = tmp_path / "t.db"
    store = await sqlite_store(path)
    writer = store._writer
    other = sqlite3.connect(path, isolation_level=None)
    try:
        for n in range(3):
            await store.begin_turn(incoming(n), 10)
        [(busy, frames, copied)] = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        assert (busy, copied) == (0, frames) and frames > 0 and wal_index(writer).leave_to_thread()
        handed = writer._submitted
        assert await store.begin_turn(incoming(3), 10) is not None
        assert writer._submitted == handed + 1  # to the thread
        assert wal_index(writer).copied() == 0 and not wal_index(writer).leave_to_thread()  # and the WAL started over
        assert await store.begin_turn(incoming(4), 10) is not None
        assert writer._submitted == handed + 1  # inline again
        assert await store.count_messages(A) == 5
    finally:
        other.close()
        await store.close()


async def test_a_failing_checkpoint_is_logged_and_fails_no_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A checkpoint that fails (here SQLite's authorizer refuses it on the checkpoints' connection: the one way to
    # make it fail on cue) is a warning; the turns around it are stored, and the next checkpoint is tried later.
    every = 5
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_EVERY", every)
    store = await sqlite_store(tmp_path / "t.db")
    writer = store._writer
    assert writer._checkpointer is not None

    def refuse_checkpoints(action: int, arg1: str | None, *_: object) -> int:
        refused = action == sqlite3.SQLITE_PRAGMA and arg1 == "wal_checkpoint"
        return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK

    writer._checkpointer.set_authorizer(refuse_checkpoints)
    try:
        with caplog.at_level("WARNING", logger=sqlite_writer.__name__):
            for n in range(every):
                assert await store.begin_turn(incoming(n), 10) is not None
            checkpoint = writer._checkpoint
            assert checkpoint is not None
            await asyncio.wait([checkpoint])
            assert writer._checkpoint is None
            assert any("checkpoint failed" in r.getMessage() for r in caplog.records)
            for n in range(every, 2 * every):
                assert await store.begin_turn(incoming(n), 10) is not None
        assert await store.count_messages(A) == 2 * every
        assert wal_index(writer).copied() == 0 < (wal_index(writer).frames() or 0)  # never copied
    finally:
        await store.close()


async def test_close_closes_both_connections_and_the_wal_index(tmp_path: Path) -> None:
    writer = await sqlite_writer.SQLiteWriter.open(str(tmp_path / "t.db"))
    checkpointer, wal = writer._checkpointer, writer._wal
    assert checkpointer is not None and wal is not None
    await writer.close()
    for conn in (writer._conn, checkpointer):
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
    with pytest.raises(ValueError):
        wal.frames()


async def test_a_long_history_is_read_on_the_readers_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Read inline, a long history would hold the event loop for all of SQLite's walk through it: past a few
    # hundred rows it goes to the reader's thread, and a conversation whose history is short again comes back.
    monkeypatch.setattr(sqlite_engine, "_INLINE_HISTORY_ROWS", 10)
    store = await sqlite_store(tmp_path / "t.db")
    inline: list[str] = []
    rows = store._writer.rows

    def counted(statement: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]] | None:
        if statement == sqlite_engine.HISTORY_SQL:
            inline.append(statement)
        return rows(statement, args)

    monkeypatch.setattr(store._writer, "rows", counted)
    try:
        for n in range(12):
            await store.begin_turn(incoming(n), 10)
        history = await store.load_history(A, 1000, before=100)
        assert len(history) == 12 and len(inline) == 1  # not known to be long yet: inline
        again = await store.load_history(A, 1000, before=100)
        assert again == history and len(inline) == 1  # the same rows, from the reader
        assert len(await store.load_history(A, 1000, before=5)) == 4 and len(inline) == 1
        assert len(await store.load_history(A, 1000, before=5)) == 4 and len(inline) == 2  # short again
    finally:
        await store.close()


async def test_a_long_job_that_committed_is_not_failed_by_the_checkpoint_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # After a long job the thread checkpoints and restarts the WAL with a write. That write can fail (another
    # process holds the lock past the busy timeout, a full disk); here SQLite's authorizer refuses it, the one way
    # to make it fail on cue. The job has committed by then: its caller must get its result, not that error
    # (a /reset that deleted everything must not say it failed), and the failure is a warning.
    writer = await sqlite_writer.SQLiteWriter.open(str(tmp_path / "t.db"))
    try:
        await writer.transaction(lambda db: db.execute("CREATE TABLE t (x INTEGER)"), inline=False)

        def refuse_the_restart_write(action: int, arg1: str | None, arg2: str | None, *_: object) -> int:
            refused = action == sqlite3.SQLITE_PRAGMA and arg1 == "application_id" and arg2 is not None
            return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK

        def work(db: sqlite3.Connection) -> str:
            db.execute("INSERT INTO t VALUES (1)")
            db.set_authorizer(refuse_the_restart_write)
            return "done"

        with caplog.at_level("WARNING", logger=sqlite_writer.__name__):
            assert await writer.transaction(work, inline=False) == "done"

        def count(db: sqlite3.Connection) -> int:
            db.set_authorizer(None)
            return int(db.execute("SELECT count(*) FROM t").fetchone()[0])

        assert await writer.transaction(count, inline=False) == 1
        assert any("checkpoint" in r.getMessage() for r in caplog.records)
    finally:
        await writer.close()


async def test_a_new_conversation_whose_first_write_rolled_back_can_be_written_later(tmp_path: Path) -> None:
    # The first write of a new conversation creates its row; when that transaction rolls back (here a full disk:
    # SQLite's page cap), the row is gone, and the next write must create it again rather than use its id.
    store = await sqlite_store(tmp_path / "t.db")
    conn = store._writer._conn
    try:
        [(pages,)] = conn.execute("PRAGMA page_count").fetchall()
        conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(sqlite3.Error):
            await store.add_question(incoming(1, "x" * 100_000), 10)
        conn.execute("PRAGMA max_page_count = 1073741823")
        row = await store.add_question(incoming(2), 10)
        assert [m.content for m in await store.load_history(A, 1000, before=row + 1)] == ["message 2"]
    finally:
        await store.close()


async def test_a_checkpoint_never_undoes_another_processs_schema_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checkpoint's own write (the one that starts the WAL over) must leave PRAGMA user_version (the schema's
    # version) alone: another process that migrates the file meanwhile (a newer bot started beside this one) keeps
    # its version. Here the other process writes while the checkpoint is held before its first step; a restart
    # write that rewrote the version it read before would undo it.
    every = 5
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_EVERY", every)
    path = tmp_path / "t.db"
    store = await sqlite_store(path)
    writer = store._writer
    assert writer._checkpointer is not None
    inside, gate = threading.Event(), threading.Event()

    def hold(statement: str) -> None:
        # Called on the thread that runs the statement, as it starts: the checkpoint waits here.
        if "wal_checkpoint" in statement and not inside.is_set():
            inside.set()
            gate.wait(10)

    writer._checkpointer.set_trace_callback(hold)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        [(version,)] = other.execute("PRAGMA user_version").fetchall()
        for n in range(every):
            await store.begin_turn(incoming(n), 10)
        checkpoint = writer._checkpoint
        assert checkpoint is not None
        await _until_set(inside)
        other.execute(f"PRAGMA user_version = {version + 1}")  # the other process's migration
        gate.set()
        await checkpoint
        assert other.execute("PRAGMA user_version").fetchall() == [(version + 1,)]
    finally:
        gate.set()
        other.close()
        await store.close()


async def test_a_write_on_the_thread_that_ends_as_the_writer_closes_is_not_reported_failed(tmp_path: Path) -> None:
    # A turn's write handed to the thread commits; before its caller resumes, the store closes (a shutdown).
    # The caller must get the write's result, not an error from the WAL index the close has let go.
    store = await sqlite_store(tmp_path / "t.db")
    writer = store._writer
    handed = writer._submitted
    write = asyncio.create_task(
        writer.transaction(lambda db: db.execute("PRAGMA user_version").fetchall(), inline=False)
    )
    close = asyncio.create_task(writer.close())
    await asyncio.sleep(0)  # both handed to the thread, the write first
    assert writer._submitted == handed + 2
    # The loop's thread waits here, without running either caller, until the thread has run both jobs.
    async with asyncio.timeout(5):
        while writer._finished != writer._submitted:  # noqa: ASYNC110 - the thread's count: nothing to notify
            await asyncio.sleep(0.01)
    assert len(await write) == 1
    await close
    await store._reader.close()


async def test_a_turns_first_write_is_done_when_begun_inline_and_runs_whole_on_the_thread(tmp_path: Path) -> None:
    # The plain turn's claim and question (begin_turn): inline, the write is done by the time the call returns, so
    # the turn awaits a finished future (no task, no turn of the loop); its failure comes out of that await. With
    # the write lock taken elsewhere, a task for the thread's write, which commits whatever happens to its caller.
    path = tmp_path / "t.db"
    store = await sqlite_store(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        begun = store.begin_turn(incoming(1), 10)
        assert isinstance(begun, asyncio.Future) and begun.done() and not isinstance(begun, asyncio.Task)
        row = await begun
        assert row is not None and [m.id for m in await store.load_history(A, 1000, before=row + 1)] == [row]
        again = store.begin_turn(incoming(1), 10)
        assert again.done() and await again is None  # a redelivery: nothing written

        def broken(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO no_such_table VALUES (1)")

        failed = store._writer.begin(broken)
        assert failed.done()
        with pytest.raises(sqlite3.OperationalError):
            await failed

        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the write goes to the thread
        waiting = store.begin_turn(incoming(2), 10)
        assert isinstance(waiting, asyncio.Task) and not waiting.done()
        cut = asyncio.ensure_future(asyncio.shield(waiting))
        await asyncio.sleep(0)
        cut.cancel()  # the turn is cut off: the write still runs, and its outcome stays readable
        other.execute("ROLLBACK")
        assert await waiting is not None
        assert await store.claim_message("m2") is False
    finally:
        other.close()
        await store.close()


async def test_short_writes_queued_behind_the_thread_run_on_the_loops_thread_in_order_once_it_is_done(
    tmp_path: Path,
) -> None:
    # A short write that finds the writer's thread using the connection queues behind it. Once the thread's job
    # ends, the queued short writes run on the loop's thread, in the order they came, rather than one by one on
    # the thread (which, while the loop is busy, waits for the GIL between every two statements).
    writer = await sqlite_writer.SQLiteWriter.open(str(tmp_path / "t.db"))
    gate = threading.Event()
    ran_on: list[int] = []

    def short(n: int) -> sqlite_writer.Work[int]:
        def work(db: sqlite3.Connection) -> int:
            ran_on.append(threading.get_ident())
            db.execute("INSERT INTO t VALUES (?)", (n,))
            return n

        return work

    try:
        blocker = await _thread_held(writer, gate)
        writes = [asyncio.ensure_future(writer.transaction(short(n))) for n in range(5)]
        await asyncio.sleep(0)  # each tried inline, found the connection taken and queued
        assert len(writer._queue) == 5 and not any(w.done() for w in writes)
        gate.set()
        await blocker
        assert [await w for w in writes] == list(range(5))
        assert ran_on == [threading.get_ident()] * 5
        rows = writer.rows("SELECT x FROM t ORDER BY rowid")
        assert rows == [(n,) for n in range(5)]
    finally:
        gate.set()
        await writer.close()


async def test_long_work_queued_for_the_thread_runs_there_and_nothing_overtakes_it(tmp_path: Path) -> None:
    # Long work waits for the writer's thread even when the loop's thread could take the connection: a short
    # write queued behind it runs after it, never before.
    writer = await sqlite_writer.SQLiteWriter.open(str(tmp_path / "t.db"))
    gate = threading.Event()
    order: list[tuple[str, int]] = []

    def long_work(db: sqlite3.Connection) -> None:
        order.append(("long", threading.get_ident()))
        db.execute("INSERT INTO t VALUES (1)")

    def short(db: sqlite3.Connection) -> None:
        order.append(("short", threading.get_ident()))
        db.execute("INSERT INTO t VALUES (2)")

    try:
        blocker = await _thread_held(writer, gate)
        long = asyncio.ensure_future(writer.transaction(long_work, inline=False))
        await asyncio.sleep(0)
        write = asyncio.ensure_future(writer.transaction(short))
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(blocker, long, write)
        loop_thread = threading.get_ident()
        assert [what for what, _ in order] == ["long", "short"]
        assert order[0][1] != loop_thread
        assert writer.rows("SELECT x FROM t ORDER BY rowid") == [(1,), (2,)]
    finally:
        gate.set()
        await writer.close()


async def test_a_new_conversations_first_history_is_not_read_and_every_later_one_is(tmp_path: Path) -> None:
    # A conversation created in the transaction that stores its first question has no history before it (ids only
    # grow): the store answers that without a query. Its next turn reads the history as always, and so does the
    # first turn of a conversation that already had messages (context stored before the question, or another
    # store on the same file before a restart).
    path = tmp_path / "t.db"
    store = await sqlite_store(path)
    statements: list[str] = []
    store._writer._conn.set_trace_callback(statements.append)
    key = ConversationKey("slack", "T1", "C1", "1700.1")
    try:
        first = await store.begin_turn(IncomingMessage(key, "m1", "U1", "Ada", "first"), 10)
        assert first is not None
        statements.clear()
        assert await store.load_history(key, 1000, before=first) == []
        assert not any("FROM messages" in s for s in statements)
        await store.add_reply(key, "answer", 5, reply_to=first, usage=None, model=None, complete=True)
        second = await store.begin_turn(IncomingMessage(key, "m2", "U1", "Ada", "second"), 10)
        assert second is not None
        statements.clear()
        history = await store.load_history(key, 1000, before=second)
        assert [m.content for m in history] == ["first", "answer"]
        assert any("FROM messages" in s for s in statements)

        # Context stored first (its own transaction creates the conversation): the question is not the first.
        threaded = ConversationKey("slack", "T1", "C1", "1700.2")
        entry = ContextEntry("c1", "user", "U2", "Bob", "earlier in the thread", 5)
        assert await store.add_context(threaded, [entry], None) == 1
        row = await store.add_question(IncomingMessage(threaded, "m3", "U1", "Ada", "question"), 10)
        assert [m.content for m in await store.load_history(threaded, 1000, before=row)] == ["earlier in the thread"]
    finally:
        await store.close()

    # Another store on the file (a restart): the conversation exists, and its first turn here reads its history.
    again = await sqlite_store(path)
    try:
        third = await again.begin_turn(IncomingMessage(key, "m4", "U1", "Ada", "third"), 10)
        assert third is not None
        history = await again.load_history(key, 1000, before=third)
        assert [m.content for m in history] == ["first", "answer", "second"]
    finally:
        await again.close()


async def test_a_rolled_back_conversation_is_forgotten_under_every_key_of_its_text(tmp_path: Path) -> None:
    # The ids are cached by key; two keys of one text (a thread of None and of "") name one row. A transaction that
    # created the row under one and found it under the other, then rolled back, must leave neither cached: the row
    # is gone, and a write under either key creates it again.
    store = await sqlite_store(tmp_path / "t.db")
    plain, empty_thread = ConversationKey("slack", "T1", "C9"), ConversationKey("slack", "T1", "C9", "")
    assert str(plain) == str(empty_thread) and plain != empty_thread

    def work(db: sqlite3.Connection) -> None:
        store._conversation_id(db, plain)
        store._conversation_id(db, empty_thread)
        raise RuntimeError("rolled back")

    try:
        with pytest.raises(RuntimeError):
            await store._writer.transaction(work)
        row = await store.add_question(IncomingMessage(empty_thread, "m1", "U1", "Ada", "again"), 10)
        assert [m.content for m in await store.load_history(plain, 1000, before=row + 1)] == ["again"]
    finally:
        await store.close()


async def test_a_write_queued_behind_close_gets_an_error_not_a_hang(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # close() queues behind the thread's job; a write that comes meanwhile queues behind close(). Once the close
    # has run, that write must be told (an error, as before the queue: the executor ran it on the closed connection),
    # not left waiting forever with a traceback from the loop's callback in the log.
    writer = await sqlite_writer.SQLiteWriter.open(str(tmp_path / "t.db"))
    gate = threading.Event()
    blocker = await _thread_held(writer, gate)
    closing = asyncio.ensure_future(writer.close())
    await asyncio.sleep(0)  # close() queued behind the blocker
    write = asyncio.ensure_future(writer.transaction(lambda db: db.execute("INSERT INTO t VALUES (1)")))
    await asyncio.sleep(0)  # the write found the thread busy: queued behind close()
    gate.set()
    await blocker
    await asyncio.wait_for(closing, 10)
    try:
        with pytest.raises(sqlite3.ProgrammingError):
            await asyncio.wait_for(write, 5)
    finally:
        callbacks = [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
        assert callbacks == [], [r.getMessage() for r in callbacks]
