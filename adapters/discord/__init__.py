"""Discord: mentions, DMs and slash commands through discord.py's gateway client, sharded or not."""

from __future__ import annotations

from adapters.discord.app import TEXT_LIMIT, DiscordAdapter, DiscordSink, check_discord

__all__ = ["TEXT_LIMIT", "DiscordAdapter", "DiscordSink", "check_discord"]
