"""Settings: every knob teambot has, read once from the environment and an optional ``.env`` file.

Names are a public contract. The OpenAI ones are the names every OpenAI tool uses; Slack's and Discord's
follow their SDK docs; everything else starts with ``TEAMBOT_``.
"""

from __future__ import annotations

import codecs
import difflib
import io
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from dotenv.parser import parse_stream
from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from bot import texts
from bot.errors import ConfigError
from bot.store import IN_MEMORY_REFUSED, is_postgres, sqlite_in_memory, sqlite_path

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"

DEFAULT_SYSTEM_PROMPT = (
    "You are teambot, a helpful assistant in a team chat. Several people may talk to you in one "
    "conversation. Answer concisely and use Markdown for code."
)


#: The tools built into teambot (bot.tools), each offered to the model only when TEAMBOT_BUILTIN_TOOLS names it.
BUILTIN_TOOLS = ("search_history", "fetch_url")

#: What Slack and Discord accept as a slash command's name (lower case, digits, '-' and '_').
_COMMAND_NAME = r"^[a-z0-9_-]{1,32}$"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


#: A comma-separated list in the environment (``U1,U2``), not JSON.
IdList = Annotated[frozenset[str], NoDecode]
#: A ``|``-separated list in the environment: prompts are sentences, and sentences have commas.
PromptList = Annotated[tuple[str, ...], NoDecode]


class Settings(BaseSettings):
    """Every setting; build it once in ``main()`` with :func:`load_settings` and pass it down."""

    model_config = SettingsConfigDict(
        extra="ignore", populate_by_name=True, case_sensitive=False, env_ignore_empty=True
    )

    # The model endpoint
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    openai_api_key_file: Path | None = Field(None, validation_alias=_env("OPENAI_API_KEY_FILE"))
    openai_base_url: str = Field(OPENAI_DEFAULT_BASE_URL, validation_alias=_env("OPENAI_BASE_URL"))
    openai_model: str = Field("gpt-4o-mini", validation_alias=_env("OPENAI_MODEL"))
    temperature: float | None = Field(None, ge=0, le=2, validation_alias=_env("TEAMBOT_TEMPERATURE"))
    max_output_tokens: int = Field(1024, ge=1, validation_alias=_env("TEAMBOT_MAX_OUTPUT_TOKENS"))
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens", validation_alias=_env("TEAMBOT_MAX_TOKENS_PARAM")
    )
    stream: bool = Field(True, validation_alias=_env("TEAMBOT_STREAM"))
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = Field(
        None, validation_alias=_env("TEAMBOT_REASONING_EFFORT")
    )
    show_reasoning: Literal["off", "status", "full"] = Field("status", validation_alias=_env("TEAMBOT_SHOW_REASONING"))
    request_timeout: float = Field(60.0, gt=0, validation_alias=_env("TEAMBOT_REQUEST_TIMEOUT"))
    request_deadline: float = Field(120.0, gt=0, validation_alias=_env("TEAMBOT_REQUEST_DEADLINE"))
    max_call_seconds: float = Field(300.0, gt=0, validation_alias=_env("TEAMBOT_MAX_CALL_SECONDS"))
    max_retries: int = Field(3, ge=0, le=10, validation_alias=_env("TEAMBOT_MAX_RETRIES"))
    fallback_base_url: str | None = Field(None, validation_alias=_env("TEAMBOT_FALLBACK_BASE_URL"))
    fallback_model: str | None = Field(None, validation_alias=_env("TEAMBOT_FALLBACK_MODEL"))
    fallback_api_key: SecretStr | None = Field(None, validation_alias=_env("TEAMBOT_FALLBACK_API_KEY"))

    # The conversation
    db: str = Field("./teambot.db", min_length=1, validation_alias=_env("TEAMBOT_DB"))
    db_pool_size: int = Field(10, ge=1, le=1000, validation_alias=_env("TEAMBOT_DB_POOL_SIZE"))
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, validation_alias=_env("TEAMBOT_SYSTEM_PROMPT"))
    history_tokens: int = Field(8000, ge=256, validation_alias=_env("TEAMBOT_HISTORY_TOKENS"))
    summaries: bool = Field(True, validation_alias=_env("TEAMBOT_SUMMARIES"))
    summary_model: str | None = Field(None, min_length=1, validation_alias=_env("TEAMBOT_SUMMARY_MODEL"))
    feedback: bool = Field(True, validation_alias=_env("TEAMBOT_FEEDBACK"))

    # Built-in tools (bot.tools): none unless named, so a bot without tools sends the model no `tools` at all
    builtin_tools: Annotated[tuple[str, ...], NoDecode] = Field((), validation_alias=_env("TEAMBOT_BUILTIN_TOOLS"))
    fetch_max_bytes: int = Field(2_000_000, ge=1024, validation_alias=_env("TEAMBOT_FETCH_MAX_BYTES"))
    fetch_timeout: float = Field(10.0, gt=0, le=300, validation_alias=_env("TEAMBOT_FETCH_TIMEOUT"))
    # What the bot can see: files and images on messages
    max_images: int = Field(4, ge=0, le=50, validation_alias=_env("TEAMBOT_MAX_IMAGES"))
    max_attachment_bytes: int = Field(20 * 1024 * 1024, ge=1, validation_alias=_env("TEAMBOT_MAX_ATTACHMENT_BYTES"))
    vision: Literal["auto", "on", "off"] = Field("auto", validation_alias=_env("TEAMBOT_VISION"))
    image_store_mb: int = Field(1024, ge=0, validation_alias=_env("TEAMBOT_IMAGE_STORE_MB"))
    # Where the bot speaks (bot.speak): the defaults of the channels whose admins set nothing with /speak, /scope
    speak: Literal["thread", "mention", "all"] = Field("thread", validation_alias=_env("TEAMBOT_SPEAK"))
    conversation_scope: Literal["channel", "person"] = Field(
        "channel", validation_alias=_env("TEAMBOT_CONVERSATION_SCOPE")
    )

    # Costs, budgets and abuse controls
    # [input, output] or [input, output, cached input], US dollars per million tokens
    prices: dict[str, tuple[float, float] | tuple[float, float, float]] = Field(
        default_factory=dict, validation_alias=_env("TEAMBOT_PRICES")
    )
    budget_unit: Literal["tokens", "usd"] = Field("tokens", validation_alias=_env("TEAMBOT_BUDGET_UNIT"))
    budget_workspace_monthly: float | None = Field(
        None, gt=0, validation_alias=_env("TEAMBOT_BUDGET_WORKSPACE_MONTHLY")
    )
    budget_user_daily: float | None = Field(None, gt=0, validation_alias=_env("TEAMBOT_BUDGET_USER_DAILY"))
    budget_channel_daily: float | None = Field(None, gt=0, validation_alias=_env("TEAMBOT_BUDGET_CHANNEL_DAILY"))
    budget_soft_percent: float = Field(80, gt=0, le=100, validation_alias=_env("TEAMBOT_BUDGET_SOFT_PERCENT"))
    user_rate_per_minute: int = Field(10, ge=0, validation_alias=_env("TEAMBOT_USER_RATE_PER_MINUTE"))
    channel_rate_per_minute: int = Field(30, ge=0, validation_alias=_env("TEAMBOT_CHANNEL_RATE_PER_MINUTE"))
    max_concurrent_calls: int = Field(8, ge=1, validation_alias=_env("TEAMBOT_MAX_CONCURRENT_CALLS"))
    max_queued_calls: int = Field(64, ge=0, validation_alias=_env("TEAMBOT_MAX_QUEUED_CALLS"))
    max_queued_per_conversation: int = Field(8, ge=0, validation_alias=_env("TEAMBOT_MAX_QUEUED_PER_CONVERSATION"))
    admin_users: IdList = Field(frozenset(), validation_alias=_env("TEAMBOT_ADMIN_USERS"))
    models: IdList = Field(frozenset(), validation_alias=_env("TEAMBOT_MODELS"))
    allow_workspaces: IdList = Field(frozenset(), validation_alias=_env("TEAMBOT_ALLOW_WORKSPACES"))
    deny_workspaces: IdList = Field(frozenset(), validation_alias=_env("TEAMBOT_DENY_WORKSPACES"))
    allow_channels: IdList = Field(frozenset(), validation_alias=_env("TEAMBOT_ALLOW_CHANNELS"))
    deny_channels: IdList = Field(frozenset(), validation_alias=_env("TEAMBOT_DENY_CHANNELS"))
    allow_users: IdList = Field(frozenset(), validation_alias=_env("TEAMBOT_ALLOW_USERS"))
    deny_users: IdList = Field(frozenset(), validation_alias=_env("TEAMBOT_DENY_USERS"))
    refuse_silently: bool = Field(False, validation_alias=_env("TEAMBOT_REFUSE_SILENTLY"))

    # Tools (bot.tools): the loop's limits, and the file that holds the MCP servers ({"mcpServers": {...}}, the
    # format other MCP hosts use) and the tool policies; read at start
    mcp_config: Path | None = Field(None, validation_alias=_env("TEAMBOT_MCP_CONFIG"))
    max_tool_rounds: int = Field(6, ge=1, le=50, validation_alias=_env("TEAMBOT_MAX_TOOL_ROUNDS"))
    tool_timeout: float = Field(30.0, gt=0, validation_alias=_env("TEAMBOT_TOOL_TIMEOUT"))
    tool_output_tokens: int = Field(4000, ge=100, validation_alias=_env("TEAMBOT_TOOL_OUTPUT_TOKENS"))
    approval_seconds: float = Field(120.0, gt=0, validation_alias=_env("TEAMBOT_APPROVAL_SECONDS"))
    show_tools_used: bool = Field(True, validation_alias=_env("TEAMBOT_SHOW_TOOLS_USED"))

    # Operations
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", validation_alias=_env("TEAMBOT_LOG_LEVEL"))
    log_file: Path | None = Field(None, validation_alias=_env("TEAMBOT_LOG_FILE"))

    # Platforms
    slack_bot_token: SecretStr | None = Field(None, validation_alias=_env("SLACK_BOT_TOKEN"))
    slack_app_token: SecretStr | None = Field(None, validation_alias=_env("SLACK_APP_TOKEN"))
    slack_signing_secret: SecretStr | None = Field(None, validation_alias=_env("SLACK_SIGNING_SECRET"))
    slack_api_url: str = Field("https://slack.com/api/", validation_alias=_env("SLACK_API_URL"))
    slack_reply_in_thread: bool = Field(False, validation_alias=_env("TEAMBOT_SLACK_REPLY_IN_THREAD"))
    slack_native_streaming: bool = Field(True, validation_alias=_env("TEAMBOT_SLACK_NATIVE_STREAMING"))
    slack_suggested_prompts: PromptList = Field(
        texts.SUGGESTED_PROMPTS, validation_alias=_env("TEAMBOT_SLACK_SUGGESTED_PROMPTS")
    )
    discord_token: SecretStr | None = Field(None, validation_alias=_env("DISCORD_TOKEN"))
    discord_guild: int | None = Field(None, validation_alias=_env("TEAMBOT_DISCORD_GUILD"))
    discord_message_content: bool = Field(False, validation_alias=_env("TEAMBOT_DISCORD_MESSAGE_CONTENT"))
    discord_reply_chain: int = Field(10, ge=0, le=100, validation_alias=_env("TEAMBOT_DISCORD_REPLY_CHAIN"))
    discord_shards: int | None = Field(None, ge=1, validation_alias=_env("TEAMBOT_DISCORD_SHARDS"))
    discord_shard_ids: Annotated[tuple[int, ...], NoDecode] = Field(
        (), validation_alias=_env("TEAMBOT_DISCORD_SHARD_IDS")
    )
    http_host: str = Field("0.0.0.0", validation_alias=_env("TEAMBOT_HTTP_HOST"))
    http_port: int = Field(3000, ge=0, le=65535, validation_alias=_env("TEAMBOT_HTTP_PORT"))
    ops_host: str | None = Field(None, min_length=1, validation_alias=_env("TEAMBOT_OPS_HOST"))
    ops_port: int | None = Field(None, ge=0, le=65535, validation_alias=_env("TEAMBOT_OPS_PORT"))
    # Each slash command can be renamed, for workspaces where another app already has that name.
    reset_command: str = Field("reset", pattern=_COMMAND_NAME, validation_alias=_env("TEAMBOT_RESET_COMMAND"))
    usage_command: str = Field("usage", pattern=_COMMAND_NAME, validation_alias=_env("TEAMBOT_USAGE_COMMAND"))
    system_command: str = Field("system", pattern=_COMMAND_NAME, validation_alias=_env("TEAMBOT_SYSTEM_COMMAND"))
    model_command: str = Field("model", pattern=_COMMAND_NAME, validation_alias=_env("TEAMBOT_MODEL_COMMAND"))
    speak_command: str = Field("speak", pattern=_COMMAND_NAME, validation_alias=_env("TEAMBOT_SPEAK_COMMAND"))
    scope_command: str = Field("scope", pattern=_COMMAND_NAME, validation_alias=_env("TEAMBOT_SCOPE_COMMAND"))
    ignore_bots: bool = Field(True, validation_alias=_env("TEAMBOT_IGNORE_BOTS"))
    drain_seconds: float = Field(10.0, ge=0, validation_alias=_env("TEAMBOT_DRAIN_SECONDS"))
    stream_edit_interval: float = Field(1.0, ge=0.2, validation_alias=_env("TEAMBOT_STREAM_EDIT_INTERVAL"))
    # uvloop as the event loop where it can be imported (bot.eventloop); false: asyncio's own loop.
    uvloop: bool = Field(True, validation_alias=_env("TEAMBOT_UVLOOP"))

    @field_validator(
        "admin_users",
        "models",
        "allow_workspaces",
        "deny_workspaces",
        "allow_channels",
        "deny_channels",
        "allow_users",
        "deny_users",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("builtin_tools", mode="before")
    @classmethod
    def _tool_names(cls, value: object) -> object:
        names = value.split(",") if isinstance(value, str) else value
        if not isinstance(names, list | tuple):
            return value
        found = tuple(dict.fromkeys(str(name).strip() for name in names if str(name).strip()))
        unknown = [name for name in found if name not in BUILTIN_TOOLS]
        if unknown:
            raise ValueError(f"unknown built-in tool {unknown[0]!r}; the built-in tools are {', '.join(BUILTIN_TOOLS)}")
        return found

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        # `debug` is as clear as `DEBUG`; the logging module only knows the upper-case names.
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("usage_command", "system_command", "model_command")
    @classmethod
    def _distinct_command(cls, value: str, info: ValidationInfo) -> str:
        # Fields are validated in the order they are declared: each name meets those of the commands before it.
        taken = {info.data.get(f) for f in ("reset_command", "usage_command", "system_command") if f != info.field_name}
        if value in taken:
            raise ValueError(f"/{value} is already the name of another teambot command")
        return value

    @field_validator("discord_shard_ids", mode="before")
    @classmethod
    def _int_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(int(part) for part in value.split(",") if part.strip())
        return value

    @field_validator("discord_shard_ids")
    @classmethod
    def _shards_in_range(cls, value: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        total = info.data.get("discord_shards")
        if value and total is None:
            raise ValueError("needs TEAMBOT_DISCORD_SHARDS, the total number of shards")
        if any(not 0 <= shard < (total or 0) for shard in value):
            raise ValueError("every shard id must be from 0 to TEAMBOT_DISCORD_SHARDS - 1")
        return tuple(sorted(set(value)))

    @field_validator("slack_suggested_prompts", mode="before")
    @classmethod
    def _prompt_list(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split("|") if part.strip())
        if isinstance(value, tuple | list) and len(value) > 4:
            raise ValueError("Slack shows at most 4 suggested prompts")
        return value

    @field_validator("db")
    @classmethod
    def _not_in_memory(cls, value: str) -> str:
        if sqlite_in_memory(value):
            raise ValueError(IN_MEMORY_REFUSED)
        return value

    @field_validator("openai_base_url", "fallback_base_url", "slack_api_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("openai_base_url", "fallback_base_url")
    @classmethod
    def _api_root(cls, value: str | None) -> str | None:
        value = value.rstrip("/") if value else value
        # The client appends /chat/completions itself; a URL that already ends in it would be asked for
        # .../chat/completions/chat/completions and answer 404, which reads like an unknown model.
        if value and value.endswith("/chat/completions"):
            raise ValueError(texts.BASE_URL_WITH_PATH.format(root=value.removesuffix("/chat/completions")))
        return value

    def command_names(self) -> dict[str, str]:
        """The name each platform registers for each command (``reset``, ``usage``, ``system``, ``model``,
        ``speak``, ``scope``)."""
        return {
            "reset": self.reset_command,
            "usage": self.usage_command,
            "system": self.system_command,
            "model": self.model_command,
            "speak": self.speak_command,
            "scope": self.scope_command,
        }

    def secret_values(self) -> tuple[str, ...]:
        """Every configured secret, for the log filter to mask wherever it shows up."""
        secrets = (
            self.openai_api_key,
            self.fallback_api_key,
            self.slack_bot_token,
            self.slack_app_token,
            self.slack_signing_secret,
            self.discord_token,
        )
        found = tuple(s.get_secret_value() for s in secrets if s is not None)
        password = urlsplit(self.db).password if is_postgres(self.db) else None
        # The key in OPENAI_API_KEY_FILE is not here: bot.guards.KeySource registers it, and each rotation, as read.
        return found + ((password,) if password else ())

    def ops_bind(self) -> tuple[str, int] | None:
        """Where ``/readyz`` and ``/metrics`` are served apart from the public HTTP port, or None when they share it.

        Each of ``TEAMBOT_OPS_HOST``/``TEAMBOT_OPS_PORT`` left unset is the public one's, so by default (and when
        both name the public bind itself) there is one server, as before they existed. Port 0 means any free
        port: an ops port of 0 is always a server of its own.
        """
        if self.ops_host is None and self.ops_port is None:
            return None
        host = self.ops_host if self.ops_host is not None else self.http_host
        port = self.ops_port if self.ops_port is not None else self.http_port
        if (host, port) == (self.http_host, self.http_port) and port != 0:
            return None
        return host, port

    def beside_db(self, suffix: str) -> Path:
        """A file of the console's own next to the SQLite database, named after it (``teambot.db`` with ``.log``
        is ``teambot.log``); with PostgreSQL, ``teambot`` plus ``suffix`` in the working directory."""
        if is_postgres(self.db):
            return Path(f"teambot{suffix}")
        return Path(sqlite_path(self.db)).with_suffix(suffix)

    def console_log_file(self) -> Path:
        """Where ``teambot console`` writes its log, away from the conversation on the terminal."""
        return self.log_file or self.beside_db(".log")

    def require_model_access(self) -> None:
        """Fail start-up when the hosted API would certainly reject us for want of a key."""
        hosted = self.openai_base_url.startswith(OPENAI_DEFAULT_BASE_URL)
        if hosted and self.openai_api_key is None and self.openai_api_key_file is None:
            raise ConfigError(
                "OPENAI_API_KEY is not set: set it (or OPENAI_API_KEY_FILE), or point OPENAI_BASE_URL "
                "at a local server such as Ollama"
            )
        if self.openai_api_key_file is not None and not self.openai_api_key_file.is_file():
            raise ConfigError(f"OPENAI_API_KEY_FILE names {str(self.openai_api_key_file)!r}, which is not a file")
        if self.fallback_base_url is None and (self.fallback_model or self.fallback_api_key):
            raise ConfigError("TEAMBOT_FALLBACK_MODEL/TEAMBOT_FALLBACK_API_KEY need TEAMBOT_FALLBACK_BASE_URL")


_ALIASES = {
    name: str(field.validation_alias.choices[0])  # type: ignore[union-attr]
    for name, field in Settings.model_fields.items()
}


def load_settings(
    env_file: Path | None = Path(".env"),
    *,
    must_exist: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Settings:
    """Read the environment (and ``env_file`` if it exists); raise ConfigError naming the variable.

    ``must_exist`` makes a missing ``env_file`` an error (it was named on the command line). A line of the file
    that cannot be read stops start-up naming the file and line, instead of being dropped. Each unknown
    ``TEAMBOT_*`` name, most likely a misspelt one, is passed to ``warn`` once, with the closest known name.
    """
    dotenv = read_env_file(env_file, must_exist=must_exist) if env_file is not None else None
    if warn is not None:
        for warning in unknown_names(os.environ, dotenv):
            warn(warning)
    try:
        return Settings(  # type: ignore[call-arg]
            _env_file=dotenv.path if dotenv else None, _env_file_encoding=dotenv.encoding if dotenv else None
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = str(first["loc"][0]) if first["loc"] else "?"
        name = _ALIASES.get(loc, loc).upper()
        raise ConfigError(f"invalid setting {name}: {first['msg']}") from None
    except SettingsError as exc:
        # A value that must be JSON (a list or a table) and is not: pydantic-settings names the field only.
        field = re.search(r'field "(\w+)"', str(exc))
        name = _ALIASES.get(field.group(1), field.group(1)).upper() if field else "a setting"
        raise ConfigError(f"invalid setting {name}: not valid JSON") from None


@dataclass(frozen=True, slots=True)
class EnvFile:
    """A ``.env`` file that parsed cleanly: its encoding, and the line each name is set on."""

    path: Path
    encoding: str
    names: Mapping[str, int]


#: Byte-order marks an editor may put first (Windows Notepad's "Unicode" is UTF-16 LE with a BOM).
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
#: What a setting's name looks like; only such a word is quoted back from a bad line, never a value or a
#: pasted key.
_NAME = re.compile(r"[A-Z][A-Z0-9]*_[A-Z0-9_]+")


def read_env_file(path: Path, *, must_exist: bool = False) -> EnvFile | None:
    """Check ``path`` line by line with python-dotenv's own parser, the one pydantic-settings reads it with.

    python-dotenv only logs "could not parse statement starting at line N" and drops that line, so an unclosed
    quote on ``OPENAI_BASE_URL`` would silently mean api.openai.com: here it is a ConfigError naming the file
    and the line. None when there is no file (and none was required).
    """
    if not path.is_file():
        if must_exist:
            what = "is a directory" if path.is_dir() else "does not exist"
            raise ConfigError(texts.ENV_FILE_MISSING.format(path=path, what=what))
        return None
    raw = path.read_bytes()
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), "utf-8")
    # UTF-16 without a byte-order mark has a NUL beside every ASCII letter: as UTF-8 it would "decode" to junk.
    bad = raw.find(b"\x00") if encoding == "utf-8" else -1
    try:
        text = raw.decode(encoding) if bad < 0 else ""
    except UnicodeDecodeError as exc:
        bad = exc.start
    if bad >= 0:
        raise ConfigError(texts.ENV_FILE_NOT_TEXT.format(path=path, line=raw[:bad].count(b"\n") + 1))
    names: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(text)):
        statement = binding.original.string
        # The statement starts with the blank lines before it; python-dotenv counts from the first of those.
        line = binding.original.line + statement[: len(statement) - len(statement.lstrip())].count("\n")
        if binding.error or (binding.key is not None and binding.value is None):
            raise ConfigError(_unreadable_line(path, line, statement.strip()))
        if binding.key is not None:
            names.setdefault(binding.key, line)
    return EnvFile(path, encoding, names)


def _unreadable_line(path: Path, line: int, statement: str) -> str:
    first = statement.splitlines()[0] if statement else ""
    head, equals, value = first.partition("=")
    words = head.split()
    # Without "=" the name is the first word (the value follows a space); with it, the last before "="
    # ("export NAME=...").
    word = (words[-1] if equals else words[0]) if words else ""
    name = f" ({word})" if _NAME.fullmatch(word) else ""
    value = value.strip()
    if not equals:
        why = texts.ENV_LINE_NO_EQUALS
    elif value[:1] in {'"', "'"} and value.count(value[0]) - value.count("\\" + value[0]) < 2:
        why = texts.ENV_LINE_OPEN_QUOTE.format(quote=value[0])
    else:
        why = texts.ENV_LINE_UNREADABLE
    return texts.ENV_LINE_ERROR.format(path=path, line=line, name=name, why=why)


_PREFIX = "TEAMBOT_"


def unknown_names(environ: Mapping[str, str], dotenv: EnvFile | None) -> list[str]:
    """One warning per ``TEAMBOT_*`` name that is no setting, with the closest known one (difflib)."""
    known = {alias.upper() for alias in _ALIASES.values()}
    suffixes = sorted(name.removeprefix(_PREFIX) for name in known if name.startswith(_PREFIX))
    seen: dict[str, str] = {}
    for name, line in dotenv.names.items() if dotenv else ():
        seen.setdefault(name.upper(), texts.SETTING_IN_FILE.format(path=dotenv.path if dotenv else "", line=line))
    for name in environ:
        seen.setdefault(name.upper(), texts.SETTING_IN_ENVIRONMENT)
    warnings = []
    for name, where in seen.items():
        if not name.startswith(_PREFIX) or name in known:
            continue
        # Compared without the prefix every candidate shares, which would make any two names look alike.
        close = difflib.get_close_matches(name.removeprefix(_PREFIX), suffixes, n=1, cutoff=0.6)
        warnings.append(
            texts.UNKNOWN_SETTING.format(name=name, where=where)
            + (
                texts.UNKNOWN_SETTING_CLOSEST.format(closest=_PREFIX + close[0])
                if close
                else texts.UNKNOWN_SETTING_NO_MATCH
            )
        )
    return warnings
