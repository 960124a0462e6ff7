"""Tools the model may call: the tool loop, the MCP client, built-in tools, and the policy and approvals that
a shared channel needs."""

from __future__ import annotations

from bot.tools.base import ToolCallContext, ToolError, ToolProvider, ToolSpec

__all__ = ["ToolCallContext", "ToolError", "ToolProvider", "ToolSpec"]
