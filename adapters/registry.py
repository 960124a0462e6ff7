"""Which platform adapters ``teambot run`` starts: each one whose credentials are set."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bot.config import Settings
from bot.conversation import ConversationCore

Runner = Callable[[ConversationCore, Settings], Awaitable[None]]


def configured(settings: Settings) -> list[tuple[str, Runner]]:
    runners: list[tuple[str, Runner]] = []
    return runners
