"""Who may use the bot at all: allow and deny lists of workspaces, channels and people."""

from __future__ import annotations

from dataclasses import dataclass

from bot.messages import DM_WORKSPACES, IncomingMessage


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
        if not (
            self.allow_workspaces
            or self.deny_workspaces
            or self.allow_channels
            or self.deny_channels
            or self.allow_users
            or self.deny_users
        ):
            return True  # no lists (the default): nothing to build sets for on every turn
        workspace = msg.key.workspace
        # One person's DMs (``dm-<user id>``) are also named by ``dm``, every person's DMs.
        workspaces = {workspace, DM_WORKSPACES} if workspace.startswith(f"{DM_WORKSPACES}-") else {workspace}
        checks = (
            (workspaces, self.allow_workspaces, self.deny_workspaces),
            ({msg.key.channel}, self.allow_channels, self.deny_channels),
            ({msg.author_id}, self.allow_users, self.deny_users),
        )
        return all((not allow or names & allow) and not names & deny for names, allow, deny in checks)
