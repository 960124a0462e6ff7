"""What a tool is to the tool loop, wherever it comes from: an MCP server (bot.tools.mcp) or built in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bot.messages import ConversationKey


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool as the model sees it (the ``function`` of an OpenAI ``tools`` entry)."""

    #: Unique among all the bot's tools, and within the wire's limit (``^[a-zA-Z0-9_-]{1,64}$``): an MCP tool is
    #: ``<server>__<tool>``, so two servers' tools of the same name never collide.
    name: str
    description: str
    #: The JSON schema of the arguments (an object schema).
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCallContext:
    """Who asked and where, for a tool that works on the conversation (search_history) or logs."""

    key: ConversationKey
    asker_id: str
    #: The id of the stored question being answered: a tool that reads the history sees only what came before.
    question_row: int | None = None


class ToolError(Exception):
    """A tool could not do what was asked; the message goes back to the model as the tool's result (text)."""


class ToolProvider(Protocol):
    """A source of tools: the MCP client (one provider for all configured servers) or the built-in tools."""

    def specs(self) -> Sequence[ToolSpec]:
        """The tools available now (an MCP server that is down offers none until it is back)."""
        ...

    async def call(self, name: str, arguments: dict[str, Any], context: ToolCallContext) -> str:
        """Run tool ``name`` (one of :meth:`specs`) and return its result as text; raise :class:`ToolError` with a
        message for the model when it fails. The loop applies the timeout and truncation."""
        ...
