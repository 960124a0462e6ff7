"""The built-in tools (``search_history``, ``fetch_url``) as one :class:`bot.tools.ToolProvider`, each switched on by
naming it in ``TEAMBOT_BUILTIN_TOOLS``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from bot.config import BUILTIN_TOOLS, Settings
from bot.store import Store
from bot.tools import history_search
from bot.tools.base import ToolCallContext, ToolError, ToolSpec
from bot.tools.web_fetch import WebFetcher

FETCH_URL = "fetch_url"

FETCH_SPEC = ToolSpec(
    name=FETCH_URL,
    description=(
        "Fetch a public web page (http or https) and return its readable text, headed by its title and final URL. "
        "Private and internal addresses are refused; large or slow pages fail."
    ),
    parameters={
        "type": "object",
        "properties": {"url": {"type": "string", "description": "The page's full URL, starting with https://"}},
        "required": ["url"],
        "additionalProperties": False,
    },
)


class BuiltinTools:
    """The built-in tools switched on, as a :class:`bot.tools.ToolProvider` for the tool loop.

    ``search_history`` reads ``store``; ``fetch_url`` uses ``fetcher``. Both are always available while on: a
    failure is a :class:`bot.tools.ToolError` for the model, never an exception out of :meth:`call`.
    """

    def __init__(self, enabled: Iterable[str], *, store: Store, fetcher: WebFetcher | None = None) -> None:
        names = tuple(dict.fromkeys(enabled))
        unknown = [name for name in names if name not in BUILTIN_TOOLS]
        if unknown:
            raise ValueError(f"unknown built-in tools: {', '.join(unknown)}")
        if FETCH_URL in names and fetcher is None:
            raise ValueError("fetch_url needs a fetcher")
        self._store = store
        self._fetcher = fetcher
        by_name = {history_search.NAME: history_search.SPEC, FETCH_URL: FETCH_SPEC}
        self._specs = tuple(by_name[name] for name in names)

    def specs(self) -> Sequence[ToolSpec]:
        return self._specs

    async def call(self, name: str, arguments: dict[str, Any], context: ToolCallContext) -> str:
        if not any(spec.name == name for spec in self._specs):
            raise ToolError(f"no built-in tool named {name!r} is switched on")
        if name == history_search.NAME:
            return await history_search.search_history(self._store, arguments, context)
        url = arguments.get("url")
        if not isinstance(url, str) or not url.strip():
            raise ToolError(f"{FETCH_URL}: give the page's address in 'url'")
        assert self._fetcher is not None  # checked when switched on
        return await self._fetcher.fetch(url)


def builtin_tools(settings: Settings, store: Store) -> BuiltinTools | None:
    """The provider of the built-in tools ``TEAMBOT_BUILTIN_TOOLS`` switches on, or None when it names none (then
    the bot offers no built-in tool, and a turn without tools costs what it did)."""
    if not settings.builtin_tools:
        return None
    fetcher = None
    if FETCH_URL in settings.builtin_tools:
        fetcher = WebFetcher(max_bytes=settings.fetch_max_bytes, timeout=settings.fetch_timeout)
    return BuiltinTools(settings.builtin_tools, store=store, fetcher=fetcher)
