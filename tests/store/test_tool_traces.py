"""The storage contract for tool calls kept with a reply, on both engines (fixtures of tests/store/test_store.py)."""

# ruff: noqa: F811 - pytest fixtures imported from a shared module are parameters of the same name
from __future__ import annotations

import json

from bot.messages import ConversationKey
from bot.store import Store, open_store
from bot.store.postgres import MIGRATIONS as PG_MIGRATIONS
from bot.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from tests.store.test_store import A, incoming, rows, store, url  # noqa: F401 - the shared fixtures

TRACE = json.dumps(
    {
        "tokens": 40,
        "messages": [
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "14:00 in Tokyo"},
        ],
    }
)


async def test_a_reply_keeps_its_tool_trace_and_history_returns_it(store: Store) -> None:
    row = await store.begin_turn(incoming(A, 1), 10)
    assert row is not None
    reply = await store.add_reply(
        A, "It is 14:00.", 5, reply_to=row, usage=None, model=None, complete=True, tool_trace=TRACE
    )
    plain_row = await store.begin_turn(incoming(A, 2), 10)
    assert plain_row is not None
    await store.add_reply(A, "plain", 5, reply_to=plain_row, usage=None, model=None, complete=True)
    history = await store.load_history(A, 10_000, before=10**9)
    assert next((m.id, m.tool_trace) for m in history if m.role == "assistant") == (reply, TRACE)
    assert history[-1].tool_trace is None and all(m.tool_trace is None for m in history if m.role == "user")
    # The trace's tokens are not the message's: the window is chosen by the messages' own tokens.
    assert [m.tokens for m in history] == [10, 5, 10, 5]


async def test_reset_deletes_the_tool_traces(store: Store) -> None:
    row = await store.begin_turn(incoming(A, 1), 10)
    assert row is not None
    await store.add_reply(A, "x", 5, reply_to=row, usage=None, model=None, complete=True, tool_trace=TRACE)
    assert await rows(store, "SELECT count(*) FROM messages WHERE tool_trace IS NOT NULL") == [(1,)]
    await store.reset(ConversationKey("slack", "T1", "C1"))
    assert await rows(store, "SELECT count(*) FROM messages WHERE tool_trace LIKE '%Tokyo%'") == [(0,)]


async def test_both_engines_are_at_the_latest_schema(url: str) -> None:
    s = await open_store(url)
    try:
        expected = len(PG_MIGRATIONS) if url.startswith("postgres") else len(SQLITE_MIGRATIONS)
        assert await s.schema_version() == expected
    finally:
        await s.close()
