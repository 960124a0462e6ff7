"""Tools the model may call: the tool loop, the MCP client, built-in tools, and the policy and approvals that
a shared channel needs."""

from __future__ import annotations

from bot.tools.base import ToolCallContext, ToolError, ToolProvider, ToolSpec
from bot.tools.history import with_traces
from bot.tools.loop import LoopSettings, ToolLoop, ToolOutcome, TurnTools
from bot.tools.policy import POLICY_KEY, ToolPolicy, ToolRule, parse_rules
from bot.tools.registry import ToolRegistry

__all__ = [
    "POLICY_KEY",
    "LoopSettings",
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
    "parse_rules",
    "with_traces",
]
