"""The MCP client against real servers: mcp-server-time from PyPI over stdio, a streamable HTTP server of the
SDK's own in this loop, and small stdio servers that crash, change their tools or print their secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.messages import ConversationKey
from bot.tools import ToolCallContext, ToolError
from bot.tools.mcp import TOOL_NAME, MCPTools, tool_names
from bot.tools.mcp_config import HttpServer, StdioServer
from tests.tools.mcp_servers import (
    CHANGING,
    CRASHING,
    ENVIRONMENT,
    LEAKY,
    NAMED,
    STUCK,
    http_server,
    script,
    silent,
    time_server,
)

CONTEXT = ToolCallContext(ConversationKey("console", "local", ""), "U1")


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    """Until ``condition()`` holds: the provider signals no event for a server coming back."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - nothing to wait on
            await asyncio.sleep(0.02)


def names(tools: MCPTools) -> list[str]:
    return [spec.name for spec in tools.specs()]


async def test_the_reference_time_server_over_stdio_lists_and_answers() -> None:
    started = time.perf_counter()
    async with MCPTools({"time": time_server()}) as tools:
        took = time.perf_counter() - started
        assert names(tools) == ["time__get_current_time", "time__convert_time"]
        spec = tools.specs()[0]
        assert spec.parameters["type"] == "object" and "timezone" in spec.parameters["properties"]
        assert spec.description
        answer = json.loads(await tools.call("time__get_current_time", {"timezone": "Asia/Tokyo"}, CONTEXT))
        assert answer["timezone"] == "Asia/Tokyo"
        assert answer["datetime"].endswith("+09:00")
        [status] = tools.status()
        assert status.up and status.tools == ("time__get_current_time", "time__convert_time")
    print(f"mcp-server-time started in {took:.2f} s")
    assert tools.specs() == ()


async def test_a_tool_error_comes_back_as_tool_error_with_the_servers_text() -> None:
    async with MCPTools({"time": time_server()}) as tools:
        with pytest.raises(ToolError, match=r"Invalid timezone|Nowhere/Special"):
            await tools.call("time__get_current_time", {"timezone": "Nowhere/Special"}, CONTEXT)
        with pytest.raises(ToolError, match="no tool 'time__nothing'"):
            await tools.call("time__nothing", {}, CONTEXT)


async def test_streamable_http_with_the_configured_header() -> None:
    async with (
        http_server("X-Api-Key", "k-123") as url,
        MCPTools({"calc": HttpServer(url=url, headers={"X-Api-Key": "k-123"})}) as tools,
    ):
        assert names(tools) == ["calc__add"]
        assert await tools.call("calc__add", {"a": 2, "b": 40}, CONTEXT) == "42"


async def test_streamable_http_refused_without_the_header_is_down_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot.tools.mcp")
    async with http_server("X-Api-Key", "k-123") as url:
        config = HttpServer(url=url, headers={"X-Api-Key": "wrong-secret-value"})
        async with MCPTools({"calc": config}, retry=False) as tools:
            assert names(tools) == []
            [status] = tools.status()
            assert not status.up and status.error is not None and "401" in status.error
    assert "wrong-secret-value" not in caplog.text


async def test_an_http_server_that_goes_away_is_left_out_and_retried() -> None:
    async with http_server("X-Api-Key", "k-123") as url:
        tools = MCPTools({"calc": HttpServer(url=url, headers={"X-Api-Key": "k-123"})}, retry_initial=0.05)
        await tools.start()
    try:
        await until(lambda: names(tools) == [])
        with pytest.raises(ToolError, match="no tool 'calc__add'"):
            await tools.call("calc__add", {"a": 1, "b": 2}, CONTEXT)
        await until(lambda: (tools.status()[0].error or "").startswith("cannot connect to 127.0.0.1:"))
    finally:
        await tools.aclose()


async def test_a_missing_command_is_left_out_and_the_others_still_work(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.tools.mcp")
    servers = {"gone": StdioServer(command="/nonexistent/mcp-server"), "time": time_server()}
    async with MCPTools(servers, retry_initial=0.05) as tools:
        assert names(tools) == ["time__get_current_time", "time__convert_time"]
        gone, up = tools.status()
        assert not gone.up and gone.error == "cannot start: the command '/nonexistent/mcp-server' was not found"
        assert up.up
        assert json.loads(await tools.call("time__get_current_time", {"timezone": "UTC"}, CONTEXT))
        # Retried in the background with a growing delay.
        await until(lambda: len([r for r in caplog.records if r.name == "bot.tools.mcp" and "gone" in r.message]) >= 3)
    retries = [r for r in caplog.records if "MCP server gone" in r.message]
    assert [r.levelno for r in retries[:3]] == [logging.WARNING] * 3
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in retries)
    delays = [float(r.getMessage().rsplit("trying again in ", 1)[1].split()[0]) for r in retries[:3]]
    assert delays == [0.05, 0.1, 0.2]


async def test_a_server_that_dies_mid_call_raises_tool_error_and_is_restarted(tmp_path: Path) -> None:
    async with MCPTools({"crashy": script(tmp_path, "crashy", CRASHING)}, retry_initial=0.05) as tools:
        assert names(tools) == ["crashy__crash", "crashy__hello", "crashy__pid", "crashy__slow"]
        with pytest.raises(ToolError, match="'crashy' stopped during the call"):
            await tools.call("crashy__crash", {}, CONTEXT)
        # Its tools are gone at once, and back once the supervisor has started it again.
        assert names(tools) == []
        with pytest.raises(ToolError):
            await tools.call("crashy__hello", {"name": "ada"}, CONTEXT)
        await until(lambda: "crashy__hello" in names(tools))
        assert await tools.call("crashy__hello", {"name": "ada"}, CONTEXT) == "hello ada"


async def test_a_server_that_dies_while_idle_is_found_by_the_health_check(tmp_path: Path) -> None:
    # "legacy": no subscription stream to lose, so only the health check can notice.
    server = script(tmp_path, "crashy", CRASHING)
    async with MCPTools({"crashy": server}, mode="legacy", health_interval=0.2, retry_initial=0.05) as tools:
        first = int(await tools.call("crashy__pid", {}, CONTEXT))
        os.kill(first, signal.SIGKILL)
        await until(lambda: names(tools) == [])
        await until(lambda: "crashy__pid" in names(tools))
        assert int(await tools.call("crashy__pid", {}, CONTEXT)) != first


async def test_a_server_that_stops_answering_is_restarted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.tools.mcp")
    server = script(tmp_path, "stuck", STUCK)
    async with MCPTools(
        {"stuck": server}, mode="legacy", health_interval=0.1, health_timeout=0.5, retry_initial=0.05
    ) as tools:
        assert names(tools) == ["stuck__ok"]
        await until(lambda: names(tools) == [])
        await until(lambda: names(tools) == ["stuck__ok"])
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("MCP server stuck: connected, 1 tools") >= 2
    assert "MCP server stuck: did not list its tools within 0.5 s; trying again in 0.05 s" in messages


async def test_a_call_cancelled_by_the_loops_timeout_leaves_the_server_usable(tmp_path: Path) -> None:
    async with MCPTools({"crashy": script(tmp_path, "crashy", CRASHING)}) as tools:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(tools.call("crashy__slow", {}, CONTEXT), timeout=0.5)
        assert await tools.call("crashy__hello", {"name": "bo"}, CONTEXT) == "hello bo"
        assert tools.status()[0].up


async def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    started = time.perf_counter()
    pid_file = tmp_path / "pid"
    async with MCPTools({"mute": silent(pid_file)}, connect_timeout=1.0, retry=False) as tools:
        assert time.perf_counter() - started < 10
        [status] = tools.status()
        assert not status.up and status.error == "did not start within 1 s"
        # The attempt that ran out of time took its process with it.
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_list_changed_changes_the_specs(tmp_path: Path, mode: str) -> None:
    # The health check would find the change too, much later: the notification must be what brings it.
    async with MCPTools({"live": script(tmp_path, "live", CHANGING)}, mode=mode, health_interval=600) as tools:
        assert names(tools) == ["live__grow"]
        assert await tools.call("live__grow", {}, CONTEXT) == "grown"
        await until(lambda: names(tools) == ["live__grow", "live__added"])
        assert await tools.call("live__added", {}, CONTEXT) == "new"


async def test_two_servers_with_the_same_tool_names_never_collide(tmp_path: Path) -> None:
    servers = {
        "a": script(tmp_path, "a", NAMED, "b__c", "ping"),
        "a__b": script(tmp_path, "ab", NAMED, "c", "ping"),
        "my server.v2": script(tmp_path, "v2", NAMED, "ping"),
    }
    async with MCPTools(servers) as tools:
        exposed = names(tools)
        assert len(set(exposed)) == len(exposed) == 5
        assert all(TOOL_NAME.match(name) for name in exposed)
        assert "a__ping" in exposed and "a__b__ping" in exposed
        # Each name reaches its own server's tool.
        answers = {name: await tools.call(name, {}, CONTEXT) for name in exposed}
        assert sorted(answers.values()) == ["b__c", "c", "ping", "ping", "ping"]
        ambiguous = [n for n in exposed if n.startswith("a__b__c")]
        assert len(ambiguous) == 2 and {answers[n] for n in ambiguous} == {"b__c", "c"}


def test_names_fit_the_wire_and_are_the_same_every_time() -> None:
    pairs = [("github", "create_issue"), ("my.server", "do it!"), ("x" * 40, "y" * 40), ("s", "t")]
    first = tool_names(pairs)
    assert first == tool_names(list(reversed(pairs)))
    assert first[("github", "create_issue")] == "github__create_issue"
    assert first[("s", "t")] == "s__t"
    assert all(TOOL_NAME.match(name) for name in first.values())
    assert len(set(first.values())) == len(pairs)
    # Sanitised names that meet get different names, whatever else is configured.
    clash = tool_names([("a.b", "t"), ("a_b", "t"), ("a b", "t")])
    assert len(set(clash.values())) == 3
    assert all(TOOL_NAME.match(name) for name in clash.values())
    # The separator itself can make two pairs meet: neither keeps the plain name.
    split = tool_names([("a__b", "c"), ("a", "b__c")])
    assert len(set(split.values())) == 2 and "a__b__c" not in split.values()
    long = tool_names([("s", "z" * 100), ("s", "z" * 99)])
    assert len(set(long.values())) == 2 and all(len(n) == 64 for n in long.values())


async def test_a_server_secret_never_reaches_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    leaky = script(tmp_path, "leaky", LEAKY, env={"API_TOKEN": "tok-s3cr3t-value"})
    async with MCPTools({"leaky": leaky}, retry=False) as tools:
        [status] = tools.status()
    assert status.error is not None and "refused" in status.error and "[REDACTED]" in status.error
    assert "tok-s3cr3t-value" not in caplog.text
    assert "tok-s3cr3t-value" not in status.error


async def test_stdio_servers_do_not_inherit_the_bots_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-bot-own-key")
    server = script(tmp_path, "env", ENVIRONMENT, env={"EXTRA": "given"})
    async with MCPTools({"env": server}) as tools:
        assert await tools.call("env__key", {}, CONTEXT) == "none"
        assert await tools.call("env__extra", {}, CONTEXT) == "given"


async def test_stop_ends_every_server_process(tmp_path: Path) -> None:
    async with MCPTools({"crashy": script(tmp_path, "crashy", CRASHING)}) as tools:
        assert names(tools)
    # Closing twice, or a server that never started, is fine too.
    await tools.aclose()
    empty = MCPTools({})
    async with empty:
        assert empty.specs() == ()
