"""Tools the model may call: the tool loop, the MCP client, built-in tools, and the policy and approvals that
a shared channel needs."""

from __future__ import annotations

from bot.tools.base import ToolCallContext, ToolError, ToolProvider, ToolSpec
from bot.tools.builtin import BuiltinTools, builtin_tools
from bot.tools.web_fetch import WebFetcher

__all__ = ["BuiltinTools", "ToolCallContext", "ToolError", "ToolProvider", "ToolSpec", "WebFetcher", "builtin_tools"]
