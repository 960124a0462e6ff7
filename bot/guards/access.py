"""Who may use the bot at all: allow and deny lists of workspaces, channels and people."""

from __future__ import annotations

from dataclasses import dataclass

from bot.messages import IncomingMessage


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Allowlists (empty: everyone) and denylists of workspaces/guilds, channels and users."""

    allow_workspaces: frozenset[str] = frozenset()
    deny_workspaces: frozenset[str] = frozenset()
    allow_channels: frozenset[str] = frozenset()
    deny_channels: frozenset[str] = frozenset()
    allow_users: frozenset[str] = frozenset()
    deny_users: frozenset[str] = frozenset()
    refuse_silently: bool = False

    def allows(self, msg: IncomingMessage) -> bool:
        checks = (
            (msg.key.workspace, self.allow_workspaces, self.deny_workspaces),
            (msg.key.channel, self.allow_channels, self.deny_channels),
            (msg.author_id, self.allow_users, self.deny_users),
        )
        return all((not allow or value in allow) and value not in deny for value, allow, deny in checks)
