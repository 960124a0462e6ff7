"""The built-in tools as the tool loop sees them: a provider built from the settings, called through call()."""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bot.config import BUILTIN_TOOLS, Settings, load_settings
from bot.errors import ConfigError
from bot.messages import ConversationKey, IncomingMessage
from bot.store import Store, open_store
from bot.tools import BuiltinTools, ToolCallContext, ToolError, WebFetcher, builtin_tools

A = ConversationKey("slack", "T1", "C1")
OTHER = ConversationKey("slack", "T1", "C2")
_ids = itertools.count()


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a database lives, on each engine in turn."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return str(tmp_path / "teambot.db")


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = await open_store(url)
    yield s
    await s.close()


async def said(store: Store, key: ConversationKey, text: str, author: str = "Ada") -> int:
    return await store.add_question(IncomingMessage(key, f"m{next(_ids)}", "U1", author, text), 10)


def settings(**env: str) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


def search_only(store: Store) -> BuiltinTools:
    provider = builtin_tools(settings(builtin_tools="search_history"), store)
    assert provider is not None
    return provider


async def test_no_builtin_tool_is_on_by_default(store: Store) -> None:
    assert settings().builtin_tools == ()
    assert builtin_tools(settings(), store) is None


async def test_each_tool_is_switched_on_by_name(store: Store) -> None:
    both = builtin_tools(settings(builtin_tools=" fetch_url , search_history,fetch_url"), store)
    assert both is not None
    assert [s.name for s in both.specs()] == ["fetch_url", "search_history"]
    assert [s.name for s in search_only(store).specs()] == ["search_history"]
    for spec in both.specs():
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", spec.name)
        assert spec.parameters["type"] == "object" and spec.description
    context = ToolCallContext(A, "U1", None)
    with pytest.raises(ToolError, match="no built-in tool named 'fetch_url' is switched on"):
        await search_only(store).call("fetch_url", {"url": "https://example.com"}, context)


def test_the_settings_name_the_tools_and_refuse_an_unknown_one(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = settings()
    assert (defaults.fetch_max_bytes, defaults.fetch_timeout) == (2_000_000, 10.0)
    monkeypatch.setenv("TEAMBOT_BUILTIN_TOOLS", "search_history")
    monkeypatch.setenv("TEAMBOT_FETCH_MAX_BYTES", "5000")
    monkeypatch.setenv("TEAMBOT_FETCH_TIMEOUT", "2.5")
    loaded = load_settings(None)
    assert (loaded.builtin_tools, loaded.fetch_max_bytes, loaded.fetch_timeout) == (("search_history",), 5000, 2.5)
    monkeypatch.setenv("TEAMBOT_BUILTIN_TOOLS", "search_history,web_search")
    with pytest.raises(ConfigError, match=r"^invalid setting TEAMBOT_BUILTIN_TOOLS: .*unknown built-in tool 'web_"):
        load_settings(None)
    assert set(BUILTIN_TOOLS) == {"search_history", "fetch_url"}


async def test_search_history_finds_older_messages_of_this_conversation_only(store: Store) -> None:
    old = await said(store, A, "the   release   train leaves on Tuesday", author="Grace")
    await said(store, OTHER, "release train secrets of another channel")
    await said(store, A, "lunch?")
    reply_to = await said(store, A, "when does the release train leave?")  # the question being answered
    later = await said(store, A, "release train moved")  # after the question: not visible to it
    text = await search_only(store).call(
        "search_history", {"query": "release train"}, ToolCallContext(A, "U1", reply_to)
    )
    [head, line] = text.splitlines()
    assert head == "1 message found, newest first:"
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d UTC\] Grace: the release train leaves on Tuesday", line)
    assert "another channel" not in text and "moved" not in text
    assert old < reply_to < later


async def test_search_history_lists_newest_first_and_caps_count_and_length(store: Store) -> None:
    rows = [await said(store, A, f"deploy number {n} " + "x" * (2000 if n == 4 else 0)) for n in range(30)]
    reply = await store.add_reply(A, "I did the deploy", 5, reply_to=rows[-1], usage=None, model=None, complete=True)
    context = ToolCallContext(A, "U1", reply + 1)
    lines = (await search_only(store).call("search_history", {"query": "deploy", "limit": 3}, context)).splitlines()
    assert lines[0] == "3 messages found, newest first:"
    assert lines[1].endswith("] you (the assistant): I did the deploy")
    assert lines[2].endswith(": deploy number 29") and lines[3].endswith(": deploy number 28")
    many = (await search_only(store).call("search_history", {"query": "deploy", "limit": 500}, context)).splitlines()
    assert len(many) == 1 + 25
    long = await search_only(store).call("search_history", {"query": "number 4"}, context)
    assert long.endswith(" […]") and len(long) < 1200


@pytest.mark.parametrize("query", ['foo" OR bar', "NEAR(", "*foo", "AND OR NOT", "a:b", "(foo"])
async def test_search_history_takes_any_text_as_words(store: Store, query: str) -> None:
    await said(store, A, 'foo" OR bar a:b')
    text = await search_only(store).call("search_history", {"query": query}, ToolCallContext(A, "U1", None))
    assert text.startswith(("1 message found", "No earlier message"))


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({}, "give one or more words"),
        ({"query": 3}, "give one or more words"),
        ({"query": "  ?! "}, "give one or more words"),
        ({"query": "x", "limit": "ten"}, "'limit' must be a number"),
        ({"query": "x", "limit": True}, "'limit' must be a number"),
    ],
)
async def test_search_history_bad_arguments_are_one_line(
    store: Store, arguments: dict[str, object], error: str
) -> None:
    with pytest.raises(ToolError, match=f"^search_history: {error}"):
        await search_only(store).call("search_history", arguments, ToolCallContext(A, "U1", None))


async def test_search_history_after_reset_finds_nothing(store: Store) -> None:
    await said(store, A, "the wifi password is hunter2")
    tools = search_only(store)
    context = ToolCallContext(A, "U1", None)
    assert "hunter2" in await tools.call("search_history", {"query": "wifi password"}, context)
    await store.reset(A)
    assert (await tools.call("search_history", {"query": "wifi password"}, context)).startswith("No earlier message")


async def test_fetch_url_through_the_provider(store: Store) -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<title>Hi</title><p>hello there</p>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    address = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        context = ToolCallContext(A, "U1", None)
        loopback = WebFetcher(max_bytes=10_000, timeout=5, allow_networks=[ipaddress.ip_network("127.0.0.0/8")])
        allowed = BuiltinTools(["fetch_url"], store=store, fetcher=loopback)
        assert await allowed.call("fetch_url", {"url": address}, context) == f"Title: Hi\nURL: {address}\n\nhello there"
        with pytest.raises(ToolError, match=r"^fetch_url: give the page's address"):
            await allowed.call("fetch_url", {"href": address}, context)
        # As the settings build it: no exemption, so loopback is refused.
        configured = builtin_tools(settings(builtin_tools="fetch_url"), store)
        assert configured is not None
        with pytest.raises(ToolError, match="loopback address"):
            await configured.call("fetch_url", {"url": address}, context)
    finally:
        await runner.cleanup()
