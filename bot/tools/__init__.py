"""Tools the model may call: the tool loop, the MCP client, built-in tools, and the policy and approvals that
a shared channel needs."""

from __future__ import annotations

from bot.tools.base import ToolCallContext, ToolError, ToolProvider, ToolSpec
from bot.tools.mcp import MCPTools, ServerStatus
from bot.tools.mcp_config import ServerConfig, load_mcp_config

__all__ = [
    "MCPTools",
    "ServerConfig",
    "ServerStatus",
    "ToolCallContext",
    "ToolError",
    "ToolProvider",
    "ToolSpec",
    "load_mcp_config",
]
