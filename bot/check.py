"""``teambot check``: is every configured piece reachable and accepted? One pass/fail line each."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx

from bot import errors
from bot.config import Settings
from bot.llm import ChatClient, Endpoint, GenerationParams, RetryPolicy
from bot.runtime import endpoints
from bot.store import describe_db, is_postgres, open_store, sqlite_path


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


async def check_endpoint(endpoint: Endpoint, http: httpx.AsyncClient) -> CheckResult:
    """Listing models costs nothing; where the list does not show the model, one token settles it."""
    name = f"model endpoint ({endpoint.name})"
    key = endpoint.keys.get()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = await http.get(f"{endpoint.base_url}/models", headers=headers)
        listed = response.status_code == 200 and endpoint.model in {
            m.get("id") for m in (response.json().get("data") or []) if isinstance(m, dict)
        }
    except (httpx.HTTPError, ValueError, AttributeError):
        listed = False
    if listed:
        return CheckResult(name, True, f"{endpoint.base_url} lists {endpoint.model}")
    client = ChatClient(http, endpoint, params=GenerationParams(max_output_tokens=1), retry=RetryPolicy(max_retries=0))
    try:
        await client.complete([{"role": "user", "content": "Say OK."}])
    except errors.EndpointNotFound as exc:
        # The detail names the URL asked and the one to try (the chat sentence can only name the setting).
        return CheckResult(name, False, str(exc))
    except errors.LLMError as exc:
        return CheckResult(name, False, f"{endpoint.base_url} with model {endpoint.model}: {exc.user_message}")
    return CheckResult(name, True, f"{endpoint.base_url} answered a one-token request with {endpoint.model}")


async def check_model(settings: Settings) -> list[CheckResult]:
    primary, fallback = endpoints(settings)
    async with httpx.AsyncClient(timeout=min(settings.request_timeout, 20.0)) as http:
        return [await check_endpoint(e, http) for e in (primary, fallback) if e is not None]


async def check_database(settings: Settings) -> CheckResult:
    """Reachable, and at the schema this teambot expects; nothing is created or migrated by checking."""
    name, where = "database", describe_db(settings.db)
    if not is_postgres(settings.db) and not _file_exists(sqlite_path(settings.db)):
        return CheckResult(name, True, f"{where} does not exist yet; 'teambot run' creates it")
    try:
        store = await open_store(settings.db, pool_size=1, migrate=False)
    except errors.ConfigError as exc:
        return CheckResult(name, False, str(exc))
    try:
        version = await store.schema_version()
    finally:
        await store.close()
    return CheckResult(name, True, f"{where} answers, schema version {version}")


async def platform_check(name: str, where: str, check: Awaitable[list[CheckResult]]) -> list[CheckResult]:
    """A platform's lines; a network failure its check let through becomes one FAIL line instead of a traceback.

    The platform SDKs talk over aiohttp: a refused or dropped connection is an ``aiohttp.ClientError`` or an
    ``OSError``, a silent server a ``TimeoutError``; none of them carries a token in its name.
    """
    try:
        return await check
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return [CheckResult(name, False, f"cannot reach {where}: {type(exc).__name__}")]


def _file_exists(path: str) -> bool:
    return Path(path).is_file()
