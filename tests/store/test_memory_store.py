"""The summaries and feedback parts of the storage contract, on both engines."""

from __future__ import annotations

import time

from bot.messages import ConversationKey, Usage
from bot.store import Store, Summary, UsageScope
from tests.store import test_store as base
from tests.store.test_store import A, B, incoming, rows

# The contract tests' fixtures: a database on each engine in turn, and the store open on it.
url, store = base.url, base.store

OTHER = ConversationKey("slack", "T1", "C2")


async def _turn(store: Store, key: ConversationKey, n: int) -> tuple[int, int]:
    question = await store.begin_turn(incoming(key, n), 10)
    assert question is not None
    reply = await store.add_reply(key, f"answer {n}", 5, reply_to=question, usage=Usage(1, 1), model="m", complete=True)
    return question, reply


async def test_a_summary_is_kept_per_conversation_and_only_moves_forward(store: Store) -> None:
    assert await store.summary(A) is None
    _, r1 = await _turn(store, A, 1)
    q2, r2 = await _turn(store, A, 2)
    assert await store.set_summary(A, Summary("up to the first", 4, r1))
    assert await store.summary(A) == Summary("up to the first", 4, r1)
    assert await store.summary(B) is None
    # An older one (a replica that lagged behind) does not replace a newer one.
    assert await store.set_summary(A, Summary("up to the second", 5, r2))
    assert not await store.set_summary(A, Summary("stale", 1, q2))
    assert await store.summary(A) == Summary("up to the second", 5, r2)


async def test_messages_after_reads_the_fallen_out_range_oldest_first(store: Store) -> None:
    q1, r1 = await _turn(store, A, 1)
    await _turn(store, OTHER, 1)
    q2, r2 = await _turn(store, A, 2)
    found = await store.messages_after(A, q1, r2, 10)
    assert [m.id for m in found] == [r1, q2]
    assert [m.id for m in await store.messages_after(A, 0, 10**9, 3)] == [q1, r1, q2]
    assert await store.messages_after(ConversationKey("slack", "T9", "C9"), 0, 10**9, 3) == []


async def test_reset_deletes_the_summary_and_a_late_summary_cannot_bring_it_back(store: Store) -> None:
    _, r1 = await _turn(store, B, 1)
    assert await store.set_summary(B, Summary("thread summary", 3, r1))
    # A channel's reset covers its threads.
    await store.reset(A)
    assert await store.summary(B) is None
    # A summary written after the reset, of messages the reset deleted, is refused.
    assert not await store.set_summary(B, Summary("from before the reset", 3, r1))
    assert await store.summary(B) is None


async def test_feedback_is_kept_once_per_person_and_reply_where_the_reply_was_given(store: Store) -> None:
    question, reply = await _turn(store, A, 1)
    _, thread_reply = await _turn(store, ConversationKey("discord", "G1", "10", "20"), 1)
    now = time.time()
    assert await store.add_feedback("slack", "C1", reply, "U1", "up", at=now)
    assert await store.add_feedback("slack", "C1", reply, "U2", "up", at=now)
    # A second click replaces the first.
    assert await store.add_feedback("slack", "C1", reply, "U1", "down", at=now)
    # Not a reply, another channel, another platform, no such row: nothing kept.
    assert not await store.add_feedback("slack", "C1", question, "U1", "up", at=now)
    assert not await store.add_feedback("slack", "C2", reply, "U1", "up", at=now)
    assert not await store.add_feedback("discord", "C1", reply, "U1", "up", at=now)
    assert not await store.add_feedback("slack", "C1", 10**9, "U1", "up", at=now)
    # On Discord the button is clicked in the thread, which the conversation keys under its parent channel.
    assert await store.add_feedback("discord", "20", thread_reply, "U1", "up", at=now)

    total = await store.feedback_since(UsageScope("slack", "T1", "C1"), now - 60)
    assert (total.up, total.down) == (1, 1)
    assert (await store.feedback_since(UsageScope("slack", "T1", "C2"), now - 60)).up == 0
    assert (await store.feedback_since(UsageScope("slack", "T1", "C1"), now + 60)).up == 0
    assert (await store.feedback_since(UsageScope("discord", "G1", "10"), now - 60)).up == 1
    assert sorted(await rows(store, "SELECT user_id, value FROM feedback WHERE platform = 'slack'")) == [
        ("U1", "down"),
        ("U2", "up"),
    ]
