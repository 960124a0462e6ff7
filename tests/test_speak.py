"""bot.speak on a real SQLite store: what a message not addressed to the bot costs, and whose conversation a
message joins."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.messages import ConversationKey, IncomingMessage
from bot.speak import ANSWERED_SIZE, Speaking
from bot.store import ChannelSettings, Store, open_store

CHANNEL = ConversationKey("slack", "T1", "C1")
THREAD = ConversationKey("slack", "T1", "C1", "1700000000.000100")


class CountingStore:
    """The real store, counting the calls made of it."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self._inner, name)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    inner = await open_store(str(tmp_path / "t.db"))
    try:
        yield CountingStore(inner)
    finally:
        await inner.close()


async def test_a_plain_channel_message_costs_no_query(store: CountingStore) -> None:
    speaking = Speaking(store)  # type: ignore[arg-type]
    await speaking.load()
    store.calls.clear()
    for mode in ("thread", "mention"):
        speaking.default_speak = mode
        assert not await speaking.wants(CHANNEL, "U1")
    assert store.calls == []


async def test_a_thread_message_costs_one_lookup_until_the_bot_is_known_to_have_answered(
    store: CountingStore,
) -> None:
    speaking = Speaking(store)  # type: ignore[arg-type]
    assert not await speaking.wants(THREAD, "U1")
    assert store.calls == ["count_messages"]
    store.calls.clear()
    speaking.answered(THREAD)
    assert await speaking.wants(THREAD, "U1")
    assert store.calls == []  # remembered: no query
    # In mention mode not even a thread message asks the store.
    speaking.default_speak = "mention"
    other = ConversationKey("slack", "T1", "C1", "1700000000.000900")
    assert not await speaking.wants(other, "U1") and store.calls == []


async def test_a_thread_answered_before_a_restart_is_found_in_the_store(store: CountingStore) -> None:
    await store.begin_turn(IncomingMessage(THREAD, "m1", "U1", "Ada", "hi"), 3)
    speaking = Speaking(store)  # type: ignore[arg-type]
    assert await speaking.wants(THREAD, "U2")
    store.calls.clear()
    assert await speaking.wants(THREAD, "U2") and store.calls == []


async def test_the_set_of_answered_threads_is_bounded(store: CountingStore) -> None:
    speaking = Speaking(store)  # type: ignore[arg-type]
    for n in range(ANSWERED_SIZE + 5):
        speaking.answered(ConversationKey("slack", "T1", "C1", str(n)))
    assert len(speaking._answered) == ANSWERED_SIZE


async def test_modes_set_on_another_replica_are_read_by_load(store: CountingStore) -> None:
    speaking = Speaking(store)  # type: ignore[arg-type]
    await store.set_channel_settings(CHANNEL, ChannelSettings(speak="all", scope="person"))
    assert speaking.speak(CHANNEL) == "thread"
    await speaking.load()
    assert speaking.speak(THREAD) == "all" and speaking.scope(CHANNEL) == "person"
    assert await speaking.wants(CHANNEL, "U1")


async def test_person_scope_keys_channel_messages_by_person_but_not_threads_nor_dms(store: CountingStore) -> None:
    speaking = Speaking(store, scope="person")  # type: ignore[arg-type]
    assert speaking.scoped(CHANNEL, "U1") == ConversationKey("slack", "T1", "C1", "person-U1")
    assert speaking.scoped(CHANNEL, "U2") != speaking.scoped(CHANNEL, "U1")
    assert speaking.scoped(THREAD, "U1") == THREAD
    assert speaking.scoped(ConversationKey("slack", "T1", "D1"), "U1", in_dm=True) == ConversationKey(
        "slack", "T1", "D1"
    )
    assert speaking.scoped(ConversationKey("console", "local", ""), "me") == ConversationKey("console", "local", "")
    assert Speaking(store).scoped(CHANNEL, "U1") == CHANNEL  # type: ignore[arg-type]
