"""``teambot check``: is every configured piece reachable and accepted? One pass/fail line each."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
import httpx

from bot import errors
from bot.config import Settings
from bot.llm import ChatClient, Endpoint, GenerationParams, RetryPolicy, model_http_client, shown_url
from bot.runtime import endpoints, mcp_servers
from bot.store import describe_db, is_postgres, open_store, sqlite_path, sqlite_schema
from bot.tools import MCPTools


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    #: Nothing to check: the piece is not configured (a platform without its token). Not a failure.
    skipped: bool = False
    #: Works, but less than it could: a line to read (WARN), not a failure.
    warning: bool = False

    def line(self) -> str:
        status = "SKIP" if self.skipped else "FAIL" if not self.ok else "WARN" if self.warning else "PASS"
        return f"{status}  {self.name}: {self.detail}"


async def check_endpoint(endpoint: Endpoint, http: httpx.AsyncClient) -> CheckResult:
    """Listing models costs nothing; where the list does not show the model, one token settles it.

    A failure is told by its cause (the connection refused, the name that does not resolve, the TLS error, the
    HTTP status and the URL that answered it): the sentence the chat would get says only that something failed.
    The list is asked with httpx (this is no hot path, and its errors say the most); the one token goes through the
    model client the bot uses, over aiohttp, whose requests are watched for the status that refused it.
    """
    name = f"model endpoint ({endpoint.name})"
    # As every other line of the check shows a URL: without a user:password (or query) the base URL may carry.
    shown = shown_url(endpoint.base_url)
    key = endpoint.keys.get()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    models_url = f"{endpoint.base_url}/models"
    try:
        response = await http.get(models_url, headers=headers)
    except httpx.HTTPError as exc:
        return CheckResult(name, False, describe_http_failure(exc, models_url, http.timeout.connect))
    try:
        listed = response.status_code == 200 and endpoint.model in {
            m.get("id") for m in (response.json().get("data") or []) if isinstance(m, dict)
        }
    except (ValueError, AttributeError):
        listed = False
    if listed:
        return CheckResult(name, True, f"{shown} lists {endpoint.model}")
    answered: list[int] = []

    async def record(session: object, context: SimpleNamespace, params: aiohttp.TraceRequestEndParams) -> None:
        answered.append(params.response.status)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(record)
    timeout = http.timeout.read or 20.0
    async with model_http_client(timeout, connect=http.timeout.connect, trace_configs=[trace]) as model_http:
        client = ChatClient(
            model_http, endpoint, params=GenerationParams(max_output_tokens=1), retry=RetryPolicy(max_retries=0)
        )
        try:
            await client.complete([{"role": "user", "content": "Say OK."}])
        except errors.EndpointNotFound as exc:
            # The detail names the URL asked and the one to try (the chat sentence can only name the setting).
            return CheckResult(name, False, str(exc))
        except errors.LLMError as exc:
            if not answered or answered[-1] < 400:
                return CheckResult(name, False, f"{shown} with model {endpoint.model}: {type(exc).__name__}")
            detail = f"HTTP {answered[-1]} from POST {shown_url(f'{endpoint.base_url}/chat/completions')}"
            return CheckResult(name, False, detail + _HINTS.get(type(exc), ""))
    return CheckResult(name, True, f"{shown} answered a one-token request with {endpoint.model}")


#: What to look at after the model endpoint refused the one-token request, by the error the client made of it.
_HINTS: dict[type[errors.LLMError], str] = {
    errors.AuthFailed: ": the key was refused; check OPENAI_API_KEY (or OPENAI_API_KEY_FILE)",
    errors.Forbidden: ": the key may not use this model; check OPENAI_API_KEY and OPENAI_MODEL",
    errors.ModelNotFound: ": the server does not know this model; check OPENAI_MODEL",
    errors.QuotaExhausted: ": the account has no credit or quota left",
}


def describe_http_failure(exc: httpx.HTTPError, url: str, connect_timeout: float | None = None) -> str:
    """A failed request in one line: which host and port, and what failed (refused, DNS, TLS, a timeout).

    The URL is shown without any user:password in it; the exception's text never is (it may hold the URL).
    """
    target = httpx.URL(url)
    where = f"{target.host}:{target.port or (443 if target.scheme == 'https' else 80)}"
    causes = list(_chain(exc))
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection to {where} within {connect_timeout or 0:.0f} s ({shown_url(url)}): check the network"
    if isinstance(exc, httpx.TimeoutException):
        return f"{where} did not answer in time ({shown_url(url)})"
    if any(isinstance(c, ssl.SSLError) for c in causes):
        reason = next(c for c in causes if isinstance(c, ssl.SSLError))
        return f"TLS error with {where}: {getattr(reason, 'reason', None) or type(reason).__name__} ({shown_url(url)})"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return f"cannot resolve the host name {target.host!r} (DNS) in {shown_url(url)}: check OPENAI_BASE_URL"
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return f"connection refused by {where} ({shown_url(url)}): is the server running there?"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {where} ({shown_url(url)}): check the network and proxy settings"
    return f"the request to {shown_url(url)} failed: {type(exc).__name__}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


async def check_model(settings: Settings) -> list[CheckResult]:
    primary, fallback = endpoints(settings)
    async with httpx.AsyncClient(timeout=min(settings.request_timeout, 20.0)) as http:
        return [await check_endpoint(e, http) for e in (primary, fallback) if e is not None]


async def check_database(settings: Settings) -> CheckResult:
    """Reachable, and at the schema this teambot expects; nothing is created, migrated or written by checking.

    A SQLite path goes through the same checks as start-up (its folder, a file and not a folder, writable).
    """
    name, where = "database", describe_db(settings.db)
    if not is_postgres(settings.db):
        try:
            version, latest = await sqlite_schema(sqlite_path(settings.db))
        except errors.ConfigError as exc:
            return CheckResult(name, False, str(exc))
        if version is None:
            return CheckResult(name, True, f"{where} does not exist yet; 'teambot run' creates it")
        if version < latest:
            return CheckResult(name, True, f"{where} is at schema version {version}; 'teambot run' migrates it")
        return CheckResult(name, True, f"{where} answers, schema version {version}")
    try:
        store = await open_store(settings.db, pool_size=1, migrate=False, purge=False)
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


async def check_mcp(settings: Settings, *, connect_timeout: float = 15.0) -> list[CheckResult]:
    """One line per MCP server of ``TEAMBOT_MCP_CONFIG``: its tools as the model sees them, or why it is down.

    Each server is started once, all at the same time, and stopped again; nothing when the setting is unset."""
    if settings.mcp_config is None:
        return []
    try:
        servers = mcp_servers(settings)
    except errors.ConfigError as exc:
        return [CheckResult("mcp servers", False, str(exc))]
    if not servers:
        return [CheckResult("mcp servers", True, f"{str(settings.mcp_config)!r} names no server")]
    async with MCPTools(servers, connect_timeout=connect_timeout, retry=False) as tools:
        status = tools.status()
    return [
        CheckResult(
            f"mcp server {s.name}",
            s.up,
            (f"{len(s.tools)} tools: {', '.join(s.tools)}" if s.tools else "up, no tools") if s.up else str(s.error),
        )
        for s in status
    ]
