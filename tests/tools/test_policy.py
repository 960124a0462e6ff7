"""The tool policy read from the TEAMBOT_MCP_CONFIG file: first match wins, and a bad file is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.config import Settings
from bot.errors import ConfigError
from bot.llm import TokenCounter
from bot.messages import ConversationKey, IncomingMessage
from bot.runtime import tool_loop
from bot.tools import ToolPolicy
from tests.tools.harness import Desk


def message(channel: str = "C1", *, user: str = "U1", in_dm: bool = False, admin: bool = False) -> IncomingMessage:
    key = ConversationKey("slack", "T1", channel)
    return IncomingMessage(key, "m1", user, "Ada", "hi", in_dm=in_dm, author_is_admin=admin)


def policy_file(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_rules_from_the_file_first_match_wins(tmp_path: Path) -> None:
    path = policy_file(
        tmp_path,
        {
            "mcpServers": {"time": {"command": "mcp-server-time"}},
            "toolPolicies": [
                {"tools": "time__get_*", "where": ["C9"], "approval": True},
                {"tools": ["time__*", "fetch_url"], "who": "admins"},
                {"tools": "shell__*", "where": "dm"},
            ],
        },
    )
    policy = ToolPolicy.from_file(path, admin_users=frozenset({"U-boss"}))
    get = policy.rule("time__get_current_time")
    assert get.approval and not get.allows(message("C1"), False) and get.allows(message("C9"), False)
    convert = policy.rule("time__convert_time")  # not the first rule's: the second one decides
    assert not convert.approval and not convert.allows(message(), False) and convert.allows(message(), True)
    assert policy.is_admin(message(user="U-boss")) and policy.is_admin(message(admin=True))
    assert not policy.is_admin(message())
    shell = policy.rule("shell__run")
    assert shell.allows(message(in_dm=True), False) and not shell.allows(message(), True)
    other = policy.rule("search_history")  # no rule: open
    assert other.allows(message(), False) and not other.approval


def test_no_file_and_a_file_without_policies_allow_everything(tmp_path: Path) -> None:
    for policy in (ToolPolicy.from_file(None), ToolPolicy.from_file(policy_file(tmp_path, {"mcpServers": {}}))):
        assert policy.rules == () and policy.rule("anything").allows(message(), False)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "is not valid JSON"),
        ([], "must hold a JSON object"),
        ({"toolPolicies": {}}, "toolPolicies must be a list"),
        ({"toolPolicies": [{"tools": ""}]}, "entry 1: 'tools' must be a name pattern"),
        ({"toolPolicies": [{"tools": "a"}, {"tools": "b", "where": "everywhere"}]}, "entry 2: 'where' must be"),
        ({"toolPolicies": [{"tools": "a", "who": "bosses"}]}, "'who' must be"),
        ({"toolPolicies": [{"tools": "a", "approval": "yes"}]}, "'approval' must be true or false"),
        ({"toolPolicies": [{"tools": "a", "aproval": True}]}, "unknown field 'aproval'"),
    ],
)
def test_a_bad_policy_is_one_line_naming_the_setting(tmp_path: Path, content: object, says: str) -> None:
    with pytest.raises(ConfigError, match=r"^TEAMBOT_MCP_CONFIG: ") as caught:
        ToolPolicy.from_file(policy_file(tmp_path, content))
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TEAMBOT_MCP_CONFIG: cannot read"):
        ToolPolicy.from_file(tmp_path / "nope.json")


def test_the_runtime_reads_the_policy_even_without_providers(tmp_path: Path) -> None:
    counter = TokenCounter.load()
    assert tool_loop(Settings(), [], counter) is None
    bad = Settings(TEAMBOT_MCP_CONFIG=str(policy_file(tmp_path, "{not json")))  # type: ignore[call-arg]
    with pytest.raises(ConfigError):
        tool_loop(bad, [], counter)
    good = Settings(TEAMBOT_MCP_CONFIG=str(policy_file(tmp_path, {"toolPolicies": [{"tools": "x"}]})))  # type: ignore[call-arg]
    loop = tool_loop(good, [Desk()], counter)
    assert loop is not None and loop.policy.rules[0].patterns == ("x",) and loop.settings.max_rounds == 6
