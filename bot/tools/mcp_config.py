"""The MCP servers file (``TEAMBOT_MCP_CONFIG``), in the ``mcpServers`` format other MCP hosts use.

    {"mcpServers": {
        "time":   {"command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "Europe/Paris"}},
        "issues": {"url": "https://mcp.example.com/mcp", "headers": {"Authorization": "Bearer ..."}}}}

A server with ``command`` runs as a child process over stdio; one with ``url`` is reached over streamable HTTP.
Other top-level keys (the tool policies, for one) belong to other readers and are ignored here. Header and env
values hold secrets: no error message built here ever repeats a value from the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.errors import ConfigError

#: The setting that names the file, for the messages.
SETTING = "TEAMBOT_MCP_CONFIG"


class StdioServer(BaseModel):
    """A server the bot starts as a child process and talks to over its stdin and stdout."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Other hosts accept an explicit transport name; the shape of the entry already says it.
    type: Literal["stdio"] | None = None
    command: str = Field(min_length=1)
    args: tuple[str, ...] = ()
    #: Added to a minimal environment (PATH, HOME, ...): the bot's own secrets are not passed on.
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None


class HttpServer(BaseModel):
    """A server reached over streamable HTTP."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["http", "streamable-http", "streamableHttp"] | None = None
    url: str
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # The URL itself may carry a token in its query: the message does not repeat it.
            raise ValueError("must be an http:// or https:// URL with a host")
        return value


ServerConfig = StdioServer | HttpServer


class _File(BaseModel):
    # Other top-level keys ("toolPolicies", a host's own settings) are not ours to judge.
    model_config = ConfigDict(extra="ignore")

    mcpServers: dict[str, dict[str, Any]] = Field(default_factory=dict)  # the format's own name


def load_mcp_config(path: Path) -> dict[str, ServerConfig]:
    """The servers configured in ``path``, by name; a :class:`ConfigError` in one line naming the file and the
    problem when the file cannot be read, is not JSON, or does not have the ``mcpServers`` shape."""
    where = f"{SETTING}: {str(path)!r}"
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a folder; name the JSON file in it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} cannot be read ({type(exc).__name__})") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(data, dict):
        raise ConfigError(f'{where} must hold a JSON object with an "mcpServers" object in it')
    try:
        servers = _File.model_validate(data).mcpServers
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_describe(exc, ())}") from None
    parsed: dict[str, ServerConfig] = {}
    for name, entry in servers.items():
        if not name.strip():
            raise ConfigError(f'{where}: a server in "mcpServers" has an empty name')
        parsed[name] = _server(where, name, entry)
    return parsed


def _server(where: str, name: str, entry: dict[str, Any]) -> ServerConfig:
    has_command, has_url = "command" in entry, "url" in entry
    if has_command == has_url:
        problem = "has both" if has_command else "needs"
        raise ConfigError(
            f'{where}: server {name!r} {problem} "command" (a process over stdio) or "url" (streamable HTTP)'
        )
    model: type[StdioServer] | type[HttpServer] = StdioServer if has_command else HttpServer
    try:
        return model.model_validate(entry)
    except ValidationError as exc:
        raise ConfigError(f"{where}: server {name!r}: {_describe(exc, ('mcpServers', name))}") from None


def _describe(exc: ValidationError, prefix: tuple[str, ...]) -> str:
    """The first problem, by where it is and what is wrong; never the value (a header or env value is a secret).

    pydantic's own text repeats the input, so it is built from the location and the message only."""
    error = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(part) for part in (*prefix, *error["loc"]))
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field (a stdio server takes command, args, env, cwd; an HTTP server url, headers)"
    return f"{loc}: {message}" if loc else message
