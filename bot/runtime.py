"""Builds the running core from Settings: database, HTTP client, model client, token counter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from bot.commands import CommandPolicy, Commands
from bot.config import Settings
from bot.context import Files, FileSettings
from bot.conversation import ConversationCore, TurnSettings
from bot.guards import (
    AccessPolicy,
    Accounting,
    Budget,
    ConcurrencyGate,
    Guards,
    KeySource,
    Period,
    PriceTable,
    RateLimiter,
    ScopeKind,
    Unit,
    remember,
)
from bot.llm import ChatClient, Endpoint, GenerationParams, RetryPolicy, TokenCounter, model_http_client
from bot.speak import Speaking
from bot.store import Store, open_store
from bot.tools import (
    LoopSettings,
    MCPTools,
    ServerConfig,
    ToolLoop,
    ToolPolicy,
    ToolProvider,
    ToolRegistry,
    builtin_tools,
    load_mcp_config,
)

log = logging.getLogger(__name__)

#: How often handled message ids past their retention (and idle rate buckets) are purged while the bot runs.
PURGE_INTERVAL_S = 3600.0


def endpoints(settings: Settings) -> tuple[Endpoint, Endpoint | None]:
    primary = Endpoint(
        "primary",
        settings.openai_base_url,
        settings.openai_model,
        KeySource(settings.openai_api_key, settings.openai_api_key_file),
    )
    fallback = None
    if settings.fallback_base_url:
        fallback = Endpoint(
            "fallback",
            settings.fallback_base_url,
            settings.fallback_model or settings.openai_model,
            KeySource(settings.fallback_api_key),
        )
    return primary, fallback


def file_settings(settings: Settings) -> FileSettings:
    return FileSettings(settings.max_images, settings.max_attachment_bytes, settings.vision, settings.image_store_mb)


def budgets(settings: Settings) -> list[Budget]:
    configured = (
        (ScopeKind.WORKSPACE, Period.MONTH, settings.budget_workspace_monthly),
        (ScopeKind.USER, Period.DAY, settings.budget_user_daily),
        (ScopeKind.CHANNEL, Period.DAY, settings.budget_channel_daily),
    )
    return [Budget(kind, period, limit) for kind, period, limit in configured if limit is not None]


def guards(settings: Settings, store: Store) -> Guards:
    return Guards(
        access=AccessPolicy(
            settings.allow_workspaces,
            settings.deny_workspaces,
            settings.allow_channels,
            settings.deny_channels,
            settings.allow_users,
            settings.deny_users,
            settings.refuse_silently,
        ),
        user_rate=RateLimiter(settings.user_rate_per_minute, name="user"),
        channel_rate=RateLimiter(settings.channel_rate_per_minute, name="channel"),
        # Buckets live in the store, so replicas sharing a database share the caps.
        buckets=store,
        gate=ConcurrencyGate(settings.max_concurrent_calls, settings.max_queued_calls),
        max_queued_per_conversation=settings.max_queued_per_conversation,
        accounting=Accounting(
            store,
            PriceTable(settings.prices),
            budgets(settings),
            unit=Unit(settings.budget_unit),
            soft_percent=settings.budget_soft_percent,
        ),
    )


def commands(settings: Settings, core: ConversationCore) -> Commands:
    return Commands(core, CommandPolicy(settings.admin_users, settings.models, feedback=settings.feedback))


async def tool_providers(
    settings: Settings, store: Store, servers: dict[str, ServerConfig], stack: contextlib.AsyncExitStack
) -> list[ToolProvider]:
    """Every source of tools, in order of precedence (a name two of them offer stays with the first): the MCP
    servers, then the built-in tools. One that must be started and stopped enters ``stack``, which closes it on
    shutdown. None configured (the default): the turns offer no tools and pay nothing for them."""
    providers: list[ToolProvider] = list(await stack.enter_async_context(open_tools(servers)))
    builtin = builtin_tools(settings, store)
    if builtin is not None:
        providers.append(builtin)
    return providers


def tool_loop(settings: Settings, providers: list[ToolProvider], counter: TokenCounter) -> ToolLoop | None:
    """The tool loop over ``providers`` with the policy of TEAMBOT_MCP_CONFIG; None without providers."""
    # Read even without providers: a broken policy file is one line at start-up, not a surprise later.
    policy = ToolPolicy.from_file(settings.mcp_config, settings.admin_users)
    if not providers:
        return None
    limits = LoopSettings(
        max_rounds=settings.max_tool_rounds,
        timeout=settings.tool_timeout,
        output_tokens=settings.tool_output_tokens,
        approval_seconds=settings.approval_seconds,
        show_used=settings.show_tools_used,
    )
    return ToolLoop(ToolRegistry(providers), policy, counter, limits)


async def purge_periodically(store: Store, interval: float) -> None:
    """Purge what the store keeps only for a while, every ``interval`` seconds, for as long as the bot runs: a
    process that stays up for months must not keep every message id it ever handled."""
    while True:
        await asyncio.sleep(interval)
        try:
            purged = await store.purge_expired()
        except Exception:
            # The database may be away for a while (readiness says so); the next round tries again.
            log.warning("purging expired message ids failed; trying again in %.0f s", interval, exc_info=True)
            continue
        log.debug("purged %d expired message ids", purged)


def mcp_servers(settings: Settings) -> dict[str, ServerConfig]:
    """The MCP servers of ``TEAMBOT_MCP_CONFIG`` (none when it is not set); a bad file is a ConfigError."""
    if settings.mcp_config is None:
        return {}
    servers = load_mcp_config(settings.mcp_config)
    for config in servers.values():
        # Env and header values are secrets: masked in every log line from now on, wherever they turn up.
        for value in MCPTools.secret_values(config):
            remember(value)
    return servers


@contextlib.asynccontextmanager
async def open_tools(servers: dict[str, ServerConfig]) -> AsyncIterator[list[ToolProvider]]:
    """The tool providers, started, for the tool loop: the MCP servers (connected in parallel; one that cannot
    start is retried in the background). Closed on exit: every stdio server is stopped."""
    if not servers:
        yield []
        return
    async with MCPTools(servers) as mcp:
        yield [mcp]


@contextlib.asynccontextmanager
async def open_core(
    settings: Settings, counter: TokenCounter | None = None, *, purge_interval: float = PURGE_INTERVAL_S
) -> AsyncIterator[ConversationCore]:
    """The core and everything it owns (the store, its periodic purge, the model's HTTP client), closed on exit."""
    settings.require_model_access()
    # A bad MCP file stops start-up before anything is opened.
    servers = mcp_servers(settings)
    counter = counter or TokenCounter.load()
    store = await open_store(settings.db, pool_size=settings.db_pool_size)
    purger = asyncio.create_task(purge_periodically(store, purge_interval), name="teambot-purge")
    tools_stack = contextlib.AsyncExitStack()
    try:
        tools = tool_loop(settings, await tool_providers(settings, store, servers, tools_stack), counter)
        async with model_http_client(settings.request_timeout, connect=min(10.0, settings.request_timeout)) as http:
            primary, fallback = endpoints(settings)
            llm = ChatClient(
                http,
                primary,
                fallback=fallback,
                params=GenerationParams(
                    settings.temperature,
                    settings.max_output_tokens,
                    settings.max_tokens_param,
                    settings.reasoning_effort,
                ),
                retry=RetryPolicy(
                    max_retries=settings.max_retries,
                    deadline=settings.request_deadline,
                    max_call=settings.max_call_seconds,
                ),
            )
            turn = TurnSettings(
                settings.system_prompt,
                settings.history_tokens,
                settings.stream,
                summaries=settings.summaries,
                summary_model=settings.summary_model,
            )
            files = Files(file_settings(settings), counter)
            speaking = Speaking(store, settings.speak, settings.conversation_scope)
            await speaking.load()
            refresher = asyncio.create_task(speaking.refresh_periodically(), name="teambot-speak-modes")
            core = ConversationCore(
                store, llm, counter, turn, guards(settings, store), tools=tools, files=files, speaking=speaking
            )
            try:
                yield core
            finally:
                refresher.cancel()
                await asyncio.gather(refresher, return_exceptions=True)
                await core.aclose(settings.drain_seconds)
    finally:
        await tools_stack.aclose()
        purger.cancel()
        await asyncio.gather(purger, return_exceptions=True)
        await store.close()
