"""Which platform adapters ``teambot run`` starts: each one whose credentials are set."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bot.check import CheckResult
from bot.config import Settings
from bot.conversation import ConversationCore
from bot.errors import ConfigError

Runner = Callable[[ConversationCore, Settings], Awaitable[None]]


def configured(settings: Settings) -> list[tuple[str, Runner]]:
    """The adapters to start; raises ConfigError for a half-configured platform."""
    runners: list[tuple[str, Runner]] = []
    slack_transport = settings.slack_app_token or settings.slack_signing_secret
    if settings.slack_bot_token is not None:
        if not slack_transport:
            raise ConfigError(
                "SLACK_BOT_TOKEN is set but neither SLACK_APP_TOKEN (Socket Mode) "
                "nor SLACK_SIGNING_SECRET (HTTP mode) is"
            )
        from adapters.slack import run_slack

        runners.append(("slack", run_slack))
    elif slack_transport:
        raise ConfigError("SLACK_APP_TOKEN or SLACK_SIGNING_SECRET is set but SLACK_BOT_TOKEN is not")
    if settings.discord_token is not None:
        from adapters.discord import run_discord

        runners.append(("discord", run_discord))
    return runners


async def check(settings: Settings) -> list[CheckResult]:
    """Every configured platform's ``teambot check`` lines."""
    results: list[CheckResult] = []
    if settings.slack_bot_token is not None:
        from adapters.slack import check_slack

        results += await check_slack(settings)
    if settings.discord_token is not None:
        from adapters.discord import check_discord

        results += await check_discord(settings)
    return results
