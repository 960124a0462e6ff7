"""The thread-context part of the storage contract, on both engines: messages stored before a question, each once,
and the cursor that says how far a conversation's thread was read."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from bot.store import CONTEXT_CLAIM, ContextEntry, Store, open_store
from bot.store.postgres import MIGRATIONS as POSTGRES_MIGRATIONS
from bot.store.sqlite import MIGRATIONS
from tests.store import test_store as base
from tests.store.test_store import A, B, blob, incoming, rows

# The contract tests' fixtures: a database on each engine in turn, and the store open on it.
url, store = base.url, base.store


def entry(n: int, *, role: str = "user", name: str | None = "Grace") -> ContextEntry:
    return ContextEntry(f"slack:T1:C1:{n}.0", role, "U2" if role == "user" else None, name, f"said {n}", 7)  # type: ignore[arg-type]


async def history(store: Store, key=A) -> list[tuple[str, str | None, str]]:
    return [(m.role, m.author_name, m.content) for m in await store.load_history(key, 100_000, before=10**9)]


async def test_context_is_stored_in_order_with_its_cursor(store: Store) -> None:
    assert await store.context_cursor(A) is None
    stored = await store.add_context(A, [entry(1), entry(2, role="assistant", name=None), entry(3)], "3.0")
    assert stored == 3
    assert await store.context_cursor(A) == "3.0"
    assert await history(store) == [
        ("user", "Grace", "said 1"),
        ("assistant", None, "said 2"),
        ("user", "Grace", "said 3"),
    ]
    # The question comes after what was stored before it, on the same token line.
    row = await store.begin_turn(incoming(A, 9, "the question"), 10)
    assert row is not None
    assert [m.content for m in await store.load_history(A, 100_000, before=row + 1)] == [
        "said 1",
        "said 2",
        "said 3",
        "the question",
    ]
    # Placed on the token line: a budget of the question and the newest context message holds just those two.
    assert [m.content for m in await store.load_history(A, 17, before=row + 1)] == ["said 3", "the question"]


async def test_a_context_message_is_never_stored_twice(store: Store) -> None:
    assert await store.add_context(A, [entry(1), entry(2)], "2.0") == 2
    assert await store.add_context(A, [entry(2), entry(3)], "3.0") == 1
    # Concurrent writers (two replicas without the lock, or a bug): still once each.
    results = await asyncio.gather(*(store.add_context(A, [entry(4), entry(5)], None) for _ in range(5)))
    assert sum(results) == 2
    assert [c for _, _, c in await history(store)] == ["said 1", "said 2", "said 3", "said 4", "said 5"]
    assert await store.context_cursor(A) == "3.0"  # None leaves the cursor where it was


async def test_a_message_handled_as_a_question_is_not_stored_as_context(store: Store) -> None:
    assert await store.claim_message("slack:T1:C1:1.0")  # its own turn claimed it: that turn stores it
    assert await store.add_context(A, [entry(1), entry(2)], "2.0") == 1
    assert [c for _, _, c in await history(store)] == ["said 2"]


async def test_a_message_stored_as_context_can_still_be_claimed_as_a_question(store: Store) -> None:
    """Stored as the thread's context before its own mention arrived: the mention is still answered."""
    await store.add_context(A, [entry(1)], "1.0")
    assert await store.claim_message("slack:T1:C1:1.0")
    assert not await store.claim_message("slack:T1:C1:1.0")
    claimed = await rows(store, f"SELECT message_id FROM handled_messages WHERE message_id LIKE '{CONTEXT_CLAIM}%'")
    assert claimed == [(CONTEXT_CLAIM + "slack:T1:C1:1.0",)]


async def test_cursors_are_kept_per_conversation(store: Store) -> None:
    await store.add_context(A, [entry(1)], "1.0")
    await store.add_context(B, [], "5.0")
    await store.add_context(A, [], "2.0")
    assert (await store.context_cursor(A), await store.context_cursor(B)) == ("2.0", "5.0")
    assert await store.count_messages(B) == 0


async def test_reset_deletes_the_context_and_keeps_the_cursor(store: Store) -> None:
    """/reset means forget: the thread's messages go, and the cursor stays so that they are not read back."""
    await store.add_context(B, [entry(1), entry(2)], "2.0")
    assert await store.reset(B) == 2
    assert await history(store, B) == []
    assert await store.context_cursor(B) == "2.0"
    assert await store.add_context(B, [entry(2)], None) == 0  # nor stored again if offered


async def test_the_cursor_survives_reopening(url: str) -> None:
    s = await open_store(url)
    await s.add_context(A, [entry(1)], "1.0")
    await s.close()
    s = await open_store(url)
    try:
        assert await s.context_cursor(A) == "1.0"
        assert await s.add_context(A, [entry(1)], None) == 0
    finally:
        await s.close()


async def test_both_engines_migrate_to_the_cursor_table(tmp_path: Path) -> None:
    s = await open_store(str(tmp_path / "t.db"))
    await s.close()
    with sqlite3.connect(tmp_path / "t.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        columns = [r[1] for r in db.execute("PRAGMA table_info(context_cursors)")]
    assert columns == ["conversation_id", "cursor", "updated_at"]
    assert any("context_cursors" in " ".join(m) for m in MIGRATIONS)
    assert any("context_cursors" in " ".join(m) for m in POSTGRES_MIGRATIONS)


async def test_a_long_batch_keeps_its_order_and_its_place_on_the_token_line(store: Store) -> None:
    assert await store.begin_turn(incoming(A, 1), 7) is not None
    batch = [ContextEntry(f"slack:T1:C1:{n}.5", "user", "U2", "Grace", f"line {n}", 10 + n) for n in range(60)]
    batch.insert(30, batch[10])  # offered twice in one batch: stored once
    assert await store.add_context(A, batch, "60.0") == 60
    stored = await rows(store, "SELECT content, tokens, tokens_before FROM messages ORDER BY id")
    assert [r[0] for r in stored] == ["message 1"] + [f"line {n}" for n in range(60)]
    expected_line = [0]
    for _, tokens, _ in stored[:-1]:
        expected_line.append(expected_line[-1] + tokens)
    assert [r[2] for r in stored] == expected_line


# --- files on context messages: what is stored already is known before any download; images kept with the row ----


async def test_handled_names_the_messages_claimed_as_context_or_as_a_question(store: Store) -> None:
    assert await store.handled([]) == set()
    await store.add_context(A, [entry(1)], None)
    assert await store.claim_message("slack:T1:C1:2.0")
    wanted = ["slack:T1:C1:1.0", "slack:T1:C1:2.0", "slack:T1:C1:3.0"]
    assert await store.handled(wanted) == {"slack:T1:C1:1.0", "slack:T1:C1:2.0"}


async def test_a_context_messages_images_are_kept_with_its_row(store: Store) -> None:
    one, two = blob(1), blob(2)
    with_images = ContextEntry("slack:T1:C1:1.0", "user", "U2", "Grace", "look", 7, (one, two))
    assert await store.add_context(A, [with_images, entry(2)], "2.0", cap_bytes=10**9) == 2
    [(row,)] = await rows(store, "SELECT id FROM messages WHERE platform_message_id = 'slack:T1:C1:1.0'")
    links = await rows(store, "SELECT message_id, hash FROM message_images ORDER BY hash")
    assert links == sorted([(row, one.sha256), (row, two.sha256)], key=lambda r: r[1])
    assert set(await store.load_images([one.sha256, two.sha256])) == {one.sha256, two.sha256}
    # Offered again (stored already): nothing more kept; the cap applies as it does to a question's images.
    again = ContextEntry("slack:T1:C1:1.0", "user", "U2", "Grace", "look", 7, (blob(3),))
    assert await store.add_context(A, [again], None, cap_bytes=10**9) == 0
    assert await rows(store, "SELECT count(*) FROM images") == [(2,)]
    three = ContextEntry("slack:T1:C1:3.0", "user", "U2", "Grace", "more", 7, (blob(3),))
    assert await store.add_context(A, [three], None, cap_bytes=1500) == 1
    assert await rows(store, "SELECT count(*) FROM images") == [(1,)]
    # /reset takes them along.
    await store.reset(A)
    assert await rows(store, "SELECT count(*) FROM images") == [(0,)]
    assert await rows(store, "SELECT count(*) FROM message_images") == [(0,)]
