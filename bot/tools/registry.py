"""All the bot's tools in one place: the providers (MCP servers, built-in tools) combined under unique names."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot.tools.base import ToolProvider, ToolSpec

log = logging.getLogger(__name__)


class ToolRegistry:
    """The tools of every provider, read again on each turn: an MCP server that comes back, goes away or changes its
    list (``tools/list_changed``) is seen by the next turn without anything to refresh here.

    Names must be unique across providers; where two offer the same name, the first provider keeps it (the order
    of ``providers``) and the other's tool is left out, with one warning per name.
    """

    def __init__(self, providers: Sequence[ToolProvider]) -> None:
        self.providers = tuple(providers)
        self._warned: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.providers)

    def available(self) -> dict[str, tuple[ToolSpec, ToolProvider]]:
        """Each tool available now, by name, with the provider that runs it."""
        found: dict[str, tuple[ToolSpec, ToolProvider]] = {}
        for provider in self.providers:
            for spec in provider.specs():
                if spec.name in found:
                    if spec.name not in self._warned:
                        self._warned.add(spec.name)
                        log.warning("two tool providers offer a tool named %s; the second one is left out", spec.name)
                    continue
                found[spec.name] = (spec, provider)
        return found
