"""Settings: every knob teambot has, read once from the environment and an optional ``.env`` file.

Names are a public contract. The OpenAI ones are the names every OpenAI tool uses; Slack's and Discord's
follow their SDK docs; everything else starts with ``TEAMBOT_``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from bot import texts
from bot.errors import ConfigError
from bot.store import IN_MEMORY_REFUSED, is_postgres, sqlite_in_memory

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"

DEFAULT_SYSTEM_PROMPT = (
    "You are teambot, a helpful assistant in a team chat. Several people may talk to you in one "
    "conversation. Answer concisely and use Markdown for code."
)


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

    # Costs, budgets and abuse controls
    prices: dict[str, tuple[float, float]] = Field(default_factory=dict, validation_alias=_env("TEAMBOT_PRICES"))
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

    # Operations
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", validation_alias=_env("TEAMBOT_LOG_LEVEL"))

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
    discord_shards: int | None = Field(None, ge=1, validation_alias=_env("TEAMBOT_DISCORD_SHARDS"))
    discord_shard_ids: Annotated[tuple[int, ...], NoDecode] = Field(
        (), validation_alias=_env("TEAMBOT_DISCORD_SHARD_IDS")
    )
    http_host: str = Field("0.0.0.0", validation_alias=_env("TEAMBOT_HTTP_HOST"))
    http_port: int = Field(3000, ge=0, le=65535, validation_alias=_env("TEAMBOT_HTTP_PORT"))
    ops_host: str | None = Field(None, min_length=1, validation_alias=_env("TEAMBOT_OPS_HOST"))
    ops_port: int | None = Field(None, ge=0, le=65535, validation_alias=_env("TEAMBOT_OPS_PORT"))
    reset_command: str = Field("reset", pattern=r"^[a-z0-9_-]{1,32}$", validation_alias=_env("TEAMBOT_RESET_COMMAND"))
    ignore_bots: bool = Field(True, validation_alias=_env("TEAMBOT_IGNORE_BOTS"))
    drain_seconds: float = Field(10.0, ge=0, validation_alias=_env("TEAMBOT_DRAIN_SECONDS"))
    stream_edit_interval: float = Field(1.0, ge=0.2, validation_alias=_env("TEAMBOT_STREAM_EDIT_INTERVAL"))

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
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

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


def load_settings(env_file: Path | None = Path(".env")) -> Settings:
    """Read the environment (and ``env_file`` if it exists); raise ConfigError naming the variable."""
    try:
        return Settings(_env_file=env_file if env_file and env_file.is_file() else None)  # type: ignore[call-arg]
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
