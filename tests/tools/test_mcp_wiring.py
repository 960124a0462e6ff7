"""The MCP servers file, its place in start-up and shutdown, and what ``teambot check`` says about each server."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.check import check_mcp
from bot.cli import configure_logging
from bot.config import Settings
from bot.errors import ConfigError
from bot.guards import redact
from bot.messages import ConversationKey, IncomingMessage, ReplyKind
from bot.runtime import mcp_servers, open_core, open_tools
from bot.tools import MCPTools, load_mcp_config
from bot.tools.mcp_config import HttpServer, StdioServer
from tests.bot_process import teambot
from tests.fakes.openai import FakeOpenAI
from tests.tools.mcp_servers import http_server
from tests.tools.test_mcp import CONTEXT


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


TIME = {"command": sys.executable, "args": ["-m", "mcp_server_time"]}


def test_both_transports_and_other_keys_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "mcpServers": {
                "time": TIME | {"env": {"TZ": "UTC"}},
                "docs": {"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer x"}},
                "typed": {"type": "http", "url": "http://127.0.0.1:9/mcp"},
            },
            "toolPolicies": {"time__*": {"where": "all"}},
        },
    )
    servers = load_mcp_config(path)
    assert servers["time"] == StdioServer(command=sys.executable, args=("-m", "mcp_server_time"), env={"TZ": "UTC"})
    assert servers["docs"] == HttpServer(url="https://mcp.example.com/mcp", headers={"Authorization": "Bearer x"})
    assert list(servers) == ["time", "docs", "typed"]
    assert load_mcp_config(write(tmp_path, {"toolPolicies": {}})) == {}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("{not json", "is not JSON: Expecting property name enclosed in double quotes at line 1, column 2"),
        ("[]", 'must hold a JSON object with an "mcpServers" object in it'),
        ({"mcpServers": []}, "mcpServers: Input should be a valid dictionary"),
        ({"mcpServers": {"x": {"args": []}}}, "server 'x' needs \"command\""),
        ({"mcpServers": {"x": {"command": "a", "url": "http://h/"}}}, "server 'x' has both \"command\""),
        ({"mcpServers": {"x": {"command": "a", "enabled": True}}}, "mcpServers.x.enabled: unknown field"),
        ({"mcpServers": {"x": {"url": "ftp://h/"}}}, "mcpServers.x.url: Value error, must be an http"),
        ({"mcpServers": {"x": {"command": ""}}}, "mcpServers.x.command: String should have at least 1 character"),
        ({"mcpServers": {"x": {"command": "a", "args": "b"}}}, "mcpServers.x.args: Input should be a valid tuple"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_and_the_problem(tmp_path: Path, data: Any, problem: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_mcp_config(path)
    message = str(caught.value)
    assert message.startswith(f"TEAMBOT_MCP_CONFIG: {str(path)!r}")
    assert problem in message, message
    assert "\n" not in message


def test_a_bad_value_is_never_repeated(tmp_path: Path) -> None:
    path = write(tmp_path, {"mcpServers": {"x": {"url": "https://h/mcp", "headers": {"Authorization": 12345678}}}})
    with pytest.raises(ConfigError, match=r"mcpServers\.x\.headers\.Authorization: Input should be a valid string"):
        load_mcp_config(path)
    bad_env = write(tmp_path, {"mcpServers": {"x": {"command": "a", "env": {"TOKEN": ["s3cr3t-in-a-list"]}}}})
    with pytest.raises(ConfigError) as caught:
        load_mcp_config(bad_env)
    assert "s3cr3t-in-a-list" not in str(caught.value)
    bad_url = write(tmp_path, {"mcpServers": {"x": {"url": "ftp://user:s3cr3t-pass@h/"}}})
    with pytest.raises(ConfigError) as caught:
        load_mcp_config(bad_url)
    assert "s3cr3t-pass" not in str(caught.value)


def test_env_and_header_values_are_masked_in_every_log_line(tmp_path: Path) -> None:
    config = {
        "mcpServers": {
            "a": {"command": "x", "env": {"TOKEN": "env-s3cr3t-0001"}},
            "b": {"url": "https://h/mcp", "headers": {"X-Key": "hdr-s3cr3t-0002"}},
        }
    }
    mcp_servers(Settings(mcp_config=write(tmp_path, config)))
    masked = redact("tried env-s3cr3t-0001 and hdr-s3cr3t-0002")
    assert "s3cr3t" not in masked


def test_a_missing_file_or_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_mcp_config(tmp_path / "nothing.json")
    with pytest.raises(ConfigError, match="is a folder"):
        load_mcp_config(tmp_path)


async def test_a_bad_file_stops_start_up_before_the_database_is_made(tmp_path: Path) -> None:
    db = tmp_path / "teambot.db"
    settings = Settings(openai_base_url="http://127.0.0.1:9/v1", db=str(db), mcp_config=write(tmp_path, "{"))
    with pytest.raises(ConfigError, match="TEAMBOT_MCP_CONFIG"):
        async with open_core(settings):
            pass
    assert not db.exists()


async def test_open_tools_starts_the_servers_and_stops_them(tmp_path: Path) -> None:
    servers = load_mcp_config(write(tmp_path, {"mcpServers": {"time": TIME}}))
    async with open_tools(servers) as providers:
        [provider] = providers
        assert isinstance(provider, MCPTools)
        assert [s.name for s in provider.specs()] == ["time__get_current_time", "time__convert_time"]
    assert provider.specs() == () and not provider.status()[0].up
    async with open_tools({}) as none:
        assert none == []


async def test_open_core_runs_the_mcp_servers_with_the_core(tmp_path: Path) -> None:
    marker = tmp_path / "alive"
    # A server that holds a file open while it runs tells from outside whether it is still running.
    script = tmp_path / "holder.py"
    script.write_text(
        "import os, sys\n"
        "from mcp.server import MCPServer\n"
        f"open({str(marker)!r}, 'w').write(str(os.getpid()))\n"
        "app = MCPServer('holder')\n"
        "app.add_tool(lambda: 'ok', name='ok')\n"
        "app.run()\n"
    )
    config = write(tmp_path, {"mcpServers": {"holder": {"command": sys.executable, "args": [str(script)]}}})
    settings = Settings(openai_base_url="http://127.0.0.1:9/v1", db=str(tmp_path / "t.db"), mcp_config=config)
    async with open_core(settings):
        pid = int(marker.read_text())
        os.kill(pid, 0)  # running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_check_lists_each_server_with_its_tools_or_its_error(tmp_path: Path) -> None:
    config = write(tmp_path, {"mcpServers": {"time": TIME, "gone": {"command": "/nonexistent/mcp"}}})
    results = await check_mcp(Settings(mcp_config=config))
    assert [r.line() for r in results] == [
        "PASS  mcp server time: 2 tools: time__get_current_time, time__convert_time",
        "FAIL  mcp server gone: cannot start: the command '/nonexistent/mcp' was not found",
    ]
    assert await check_mcp(Settings()) == []
    [bad] = await check_mcp(Settings(mcp_config=write(tmp_path, "[")))
    assert bad.line().startswith("FAIL  mcp servers: TEAMBOT_MCP_CONFIG: ") and "is not JSON" in bad.line()


async def test_the_check_command_prints_the_server_lines(tmp_path: Path) -> None:
    config = write(tmp_path, {"mcpServers": {"time": TIME, "gone": {"command": "/nonexistent/mcp"}}})
    async with FakeOpenAI() as fake:
        code, out, err = await teambot(
            "check",
            cwd=tmp_path,
            env={"OPENAI_BASE_URL": fake.base_url, "OPENAI_MODEL": "fake-model", "TEAMBOT_MCP_CONFIG": str(config)},
        )
    lines = out.splitlines()
    assert code == 1, out + err
    assert lines[-2:] == [
        "PASS  mcp server time: 2 tools: time__get_current_time, time__convert_time",
        "FAIL  mcp server gone: cannot start: the command '/nonexistent/mcp' was not found",
    ]


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put the root logger and the levels back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("httpx", "httpx2")}
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


async def test_an_mcp_url_with_a_key_in_it_is_not_logged(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO")
    async with http_server("X-Api-Key", "k-123") as url:
        config = HttpServer(url=f"{url}?key=q-s3cr3t-0003", headers={"X-Api-Key": "k-123"})
        async with MCPTools({"calc": config}) as tools:
            assert await tools.call("calc__add", {"a": 1, "b": 1}, CONTEXT) == "2"
    err = capsys.readouterr().err
    assert "MCP server calc: connected" in err
    assert "q-s3cr3t-0003" not in err


async def test_a_running_bot_offers_the_mcp_and_built_in_tools_and_the_real_result_reaches_the_model(
    tmp_path: Path,
) -> None:
    # The whole wiring of `teambot run`: the settings name an MCP server (the reference time server from PyPI) and a
    # built-in tool; the model calls the server's tool and reads its real answer.
    config = write(tmp_path, {"mcpServers": {"time": TIME}})
    async with FakeOpenAI() as model:
        settings = Settings(
            openai_base_url=model.base_url,
            openai_api_key="sk-test",
            db=str(tmp_path / "t.db"),
            mcp_config=config,
            builtin_tools=("search_history",),
        )
        async with open_core(settings) as core:
            key = ConversationKey("slack", "T1", "C1")
            question = '[[call:time__get_current_time:{"timezone": "UTC"}]] what time is it?'
            reply = await core.handle(IncomingMessage(key, "m1", "U1", "Ada", question))
        offered = {tool["function"]["name"] for tool in model.requests[0]["tools"]}
        assert {"time__get_current_time", "time__convert_time", "search_history"} <= offered
        [result] = [m for m in model.requests[-1]["messages"] if m["role"] == "tool"]
        assert '"timezone": "UTC"' in result["content"] and '"datetime"' in result["content"]
        assert reply.kind is ReplyKind.ANSWER and "time__get_current_time" in reply.text.splitlines()[-1]
