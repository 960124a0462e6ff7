"""Which platform adapters ``teambot run`` starts (each one whose credentials are set), and their lifecycle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from bot import texts
from bot.check import CheckResult, platform_check
from bot.config import Settings
from bot.conversation import ConversationCore
from bot.errors import ConfigError


class Adapter(Protocol):
    """A platform connection: routes on the shared HTTP server, then start, then stop with a drain."""

    name: str

    def mount(self, app: web.Application) -> None: ...

    async def start(self) -> None: ...

    async def stop(self, drain_seconds: float) -> None: ...

    @property
    def connected(self) -> bool: ...


AdapterFactory = Callable[[ConversationCore, Settings], Adapter]


def configured(settings: Settings) -> list[AdapterFactory]:
    """The adapters to start; raises ConfigError for a half-configured platform."""
    factories: list[AdapterFactory] = []
    slack_transport = settings.slack_app_token or settings.slack_signing_secret
    if settings.slack_bot_token is not None:
        if not slack_transport:
            raise ConfigError(
                "SLACK_BOT_TOKEN is set but neither SLACK_APP_TOKEN (Socket Mode) "
                "nor SLACK_SIGNING_SECRET (HTTP mode) is"
            )
        from adapters.slack import SlackAdapter

        factories.append(SlackAdapter)
    elif slack_transport:
        raise ConfigError("SLACK_APP_TOKEN or SLACK_SIGNING_SECRET is set but SLACK_BOT_TOKEN is not")
    if settings.discord_token is not None:
        from adapters.discord import DiscordAdapter

        factories.append(DiscordAdapter)
    return factories


async def check(settings: Settings) -> list[CheckResult]:
    """Every configured platform's ``teambot check`` lines."""
    results: list[CheckResult] = []
    if settings.slack_bot_token is not None:
        from adapters.slack import check_slack

        results += await platform_check("slack", settings.slack_api_url, check_slack(settings))
    else:
        results.append(CheckResult("slack", True, texts.CHECK_SLACK_NOT_CONFIGURED, skipped=True))
    if settings.discord_token is not None:
        from adapters.discord import check_discord

        results += await platform_check("discord", "the Discord API", check_discord(settings))
    else:
        results.append(CheckResult("discord", True, texts.CHECK_DISCORD_NOT_CONFIGURED, skipped=True))
    return results
