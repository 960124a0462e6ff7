"""Tools the model may call: the tool loop, the MCP client, built-in tools, and the policy and approvals that
a shared channel needs."""

from __future__ import annotations

from bot.tools.base import ToolCallContext, ToolError, ToolProvider, ToolSpec
from bot.tools.builtin import BuiltinTools, builtin_tools
from bot.tools.history import with_traces
from bot.tools.loop import LoopSettings, ToolLoop, ToolOutcome, TurnTools
from bot.tools.mcp import MCPTools, ServerStatus
from bot.tools.mcp_config import ServerConfig, load_mcp_config
from bot.tools.policy import POLICY_KEY, ToolPolicy, ToolRule, parse_rules
from bot.tools.registry import ToolRegistry
from bot.tools.web_fetch import WebFetcher

__all__ = [
    "POLICY_KEY",
    "BuiltinTools",
    "LoopSettings",
    "MCPTools",
    "ServerConfig",
    "ServerStatus",
    "ToolCallContext",
    "ToolError",
    "ToolLoop",
    "ToolOutcome",
    "ToolPolicy",
    "ToolProvider",
    "ToolRegistry",
    "ToolRule",
    "ToolSpec",
    "TurnTools",
    "WebFetcher",
    "builtin_tools",
    "load_mcp_config",
    "parse_rules",
    "with_traces",
]
