"""Which tools may run where, for whom, and which need the asker's approval first: the rules a shared channel needs.

The rules are in the JSON file of ``TEAMBOT_MCP_CONFIG`` (beside ``mcpServers``), under ``toolPolicies``::

    {"toolPolicies": [
        {"tools": "fetch_url", "where": "all", "who": "everyone", "approval": true},
        {"tools": ["tickets__create_*", "tickets__close_*"], "where": ["C0123", "C0456"], "who": "admins"},
        {"tools": "shell__*", "where": "dm", "who": "admins", "approval": true}
    ]}

``tools`` is a glob pattern (``*``, ``?``, ``[abc]``) on the names the model sees, or a list of them; ``where`` is
``"all"`` (default), ``"dm"`` (direct messages only) or a list of channel ids (a thread counts as its channel); ``who``
is ``"everyone"`` (default) or ``"admins"``; ``approval`` (default false) asks the person who asked before each call.
The first rule whose pattern matches a tool decides for it; a tool no rule matches may run anywhere, for everyone,
without approval (end the list with ``{"tools": "*", ...}`` to change that). A tool that may not run for a message is
not offered to the model at all.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import ConfigError
from bot.messages import IncomingMessage

#: The key of the rules in the TEAMBOT_MCP_CONFIG file.
POLICY_KEY = "toolPolicies"
_SETTING = "TEAMBOT_MCP_CONFIG"


@dataclass(frozen=True, slots=True)
class ToolRule:
    """One entry of ``toolPolicies``."""

    patterns: tuple[str, ...]
    #: None: everywhere; "dm": direct messages only; otherwise the channel ids where the tools may run.
    where: str | frozenset[str] | None = None
    admins_only: bool = False
    approval: bool = False

    def matches(self, tool: str) -> bool:
        return any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.patterns)

    def allows(self, msg: IncomingMessage, admin: bool) -> bool:
        if self.admins_only and not admin:
            return False
        if self.where is None:
            return True
        if self.where == "dm":
            return msg.in_dm
        return msg.key.channel in self.where


#: What a tool no rule matches gets.
OPEN = ToolRule(("*",))


class ToolPolicy:
    """The rules, first match wins; :meth:`rule` says what applies to one tool."""

    def __init__(self, rules: Sequence[ToolRule] = (), admin_users: frozenset[str] = frozenset()) -> None:
        self.rules = tuple(rules)
        self.admin_users = admin_users

    def rule(self, tool: str) -> ToolRule:
        return next((rule for rule in self.rules if rule.matches(tool)), OPEN)

    def is_admin(self, msg: IncomingMessage) -> bool:
        """The platform says so (workspace admin, Manage Server), or TEAMBOT_ADMIN_USERS names the author."""
        return msg.author_is_admin or msg.author_id in self.admin_users

    @classmethod
    def from_file(cls, path: Path | None, admin_users: frozenset[str] = frozenset()) -> ToolPolicy:
        """The rules of the TEAMBOT_MCP_CONFIG file (none when it is not set); ConfigError names the setting and
        says what is wrong, for start-up to print in one line."""
        if path is None:
            return cls((), admin_users)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{_SETTING}: cannot read {str(path)!r} ({exc.strerror or exc})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{_SETTING}: {str(path)!r} is not valid JSON ({exc})") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{_SETTING}: {str(path)!r} must hold a JSON object")
        return cls(parse_rules(data.get(POLICY_KEY, [])), admin_users)


def parse_rules(raw: Any) -> list[ToolRule]:
    """The ``toolPolicies`` list as rules; ConfigError names the entry and the field that is wrong."""
    if not isinstance(raw, list):
        raise ConfigError(f"{_SETTING}: {POLICY_KEY} must be a list of rules")
    rules = []
    for n, entry in enumerate(raw, start=1):
        where = f"{_SETTING}: {POLICY_KEY} entry {n}"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be an object")
        unknown = set(entry) - {"tools", "where", "who", "approval"}
        if unknown:
            raise ConfigError(f"{where}: unknown field {sorted(unknown)[0]!r} (known: tools, where, who, approval)")
        tools = entry.get("tools")
        patterns = (tools,) if isinstance(tools, str) else tools
        if (
            not isinstance(patterns, list | tuple)
            or not patterns
            or not all(isinstance(p, str) and p for p in patterns)
        ):
            raise ConfigError(f"{where}: 'tools' must be a name pattern or a list of them")
        place = entry.get("where", "all")
        scope: str | frozenset[str] | None
        if place == "all":
            scope = None
        elif place == "dm":
            scope = "dm"
        elif isinstance(place, list) and all(isinstance(c, str) and c for c in place):
            scope = frozenset(place)
        else:
            raise ConfigError(f'{where}: \'where\' must be "all", "dm" or a list of channel ids')
        who = entry.get("who", "everyone")
        if who not in ("everyone", "admins"):
            raise ConfigError(f'{where}: \'who\' must be "everyone" or "admins"')
        approval = entry.get("approval", False)
        if not isinstance(approval, bool):
            raise ConfigError(f"{where}: 'approval' must be true or false")
        rules.append(ToolRule(tuple(patterns), scope, who == "admins", approval))
    return rules
