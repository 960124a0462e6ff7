"""The MCP client: every server in the ``TEAMBOT_MCP_CONFIG`` file, as one :class:`~bot.tools.ToolProvider`.

Each server has a supervisor task of its own. It connects (stdio or streamable HTTP, with a timeout), lists the
tools, then keeps the connection until the server dies or the bot stops; a server that cannot start or dies is
logged in one line and tried again after 1, 2, 4, ... seconds (capped), and its tools are left out meanwhile.
The model sees a tool as ``<server>__<tool>``, made to fit the wire's ``^[a-zA-Z0-9_-]{1,64}$`` and never the
same name for two tools.

The SDK runs on anyio; here it runs on the bot's own asyncio loop. Every SDK context (the transport, the session)
is entered and left in the one supervisor task that owns it, as anyio's cancel scopes require; a connection is
ended by that task, never from outside, and a connection attempt that runs out of time is cancelled as a whole.
The SDK is imported on first use: a bot without MCP servers does not pay for the import (over half a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TextIO

from bot.guards import redact
from bot.tools.base import ToolCallContext, ToolError, ToolSpec
from bot.tools.mcp_config import HttpServer, ServerConfig, StdioServer

if TYPE_CHECKING:
    from mcp import Client
    from mcp.types import CallToolResult, Tool

log = logging.getLogger(__name__)

#: What a tool name may be on the OpenAI wire.
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAX_NAME = 64
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")

#: Between a server's name and its tool's in the name the model sees.
SEPARATOR = "__"
#: Pages of tools/list read at most from one server: a paginator that never ends cannot hang the bot.
_MAX_PAGES = 100


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """One server as ``teambot check`` and the logs tell it: up with its tools, or down with why."""

    name: str
    up: bool
    #: The names the model sees, in the server's order.
    tools: tuple[str, ...]
    error: str | None


@dataclass(eq=False)
class _Attempt:
    """What one connection attempt leaves behind to explain a failure: the server's stderr (stdio), the last
    HTTP error status (the SDK turns a 401 into an error without its status)."""

    stderr: TextIO
    http_status: int | None = None


@dataclass(eq=False)
class _Server:
    name: str
    config: ServerConfig
    client: Client | None = None
    tools: list[Tool] = field(default_factory=list)
    error: str | None = None
    #: Set when the connection must end: the server died (seen by a call or the health check) or the bot stops.
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when the server said its tools changed.
    relist: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set once the first attempt to connect is over, whatever its outcome: start() waits for it.
    tried: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    #: Counts connections: news that a connection died ends that one only, never its successor.
    generation: int = 0
    #: Why the bot ended the current connection itself (a call or the health check found it dead), for the log.
    lost: str | None = None


class MCPTools:
    """The tools of every configured MCP server; implements :class:`~bot.tools.ToolProvider`.

    Use as ``async with MCPTools(servers) as tools:``; entering connects every server at once and returns when
    each has connected or failed its first attempt (at most ``connect_timeout``), leaving every server that
    failed to retry in the background. Leaving closes every connection and stops every stdio server.
    """

    def __init__(
        self,
        servers: Mapping[str, ServerConfig],
        *,
        connect_timeout: float = 15.0,
        retry_initial: float = 1.0,
        retry_max: float = 300.0,
        health_interval: float = 60.0,
        health_timeout: float = 15.0,
        retry: bool = True,
        mode: Literal["auto", "legacy"] = "auto",
    ) -> None:
        self._servers = [_Server(name, config) for name, config in servers.items()]
        self._connect_timeout = connect_timeout
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        #: How often a quiet connection is asked for its tools: it finds a server that died while idle, and
        #: changes a server did not announce.
        self._health_interval = health_interval
        #: How long that listing may take before the server counts as dead.
        self._health_timeout = health_timeout
        self._retry = retry
        #: How the protocol version is agreed: "auto" asks the server (2026-07-28 or the older handshake),
        #: "legacy" forces the handshake, as servers built on SDKs before 2026 speak it.
        self._mode = mode
        self._closing = False
        self._stopping = asyncio.Event()
        self._specs: tuple[ToolSpec, ...] = ()
        self._routes: dict[str, tuple[_Server, str]] = {}

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect every server in parallel; return once each has connected or failed its first attempt."""
        for server in self._servers:
            server.task = asyncio.create_task(self._supervise(server), name=f"teambot-mcp-{server.name}")
        await asyncio.gather(*(s.tried.wait() for s in self._servers))

    async def aclose(self) -> None:
        """End every connection (stdio servers get their stdin closed, then a signal) and stop retrying."""
        self._closing = True
        self._stopping.set()
        for server in self._servers:
            server.ended.set()
        tasks = [s.task for s in self._servers if s.task is not None]
        if not tasks:
            return
        # The SDK gives a stdio server 2 s to exit after its stdin closes, then 2 s after SIGTERM.
        _, pending = await asyncio.wait(tasks, timeout=10.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- ToolProvider ------------------------------------------------------------------------------------------

    def specs(self) -> Sequence[ToolSpec]:
        return self._specs

    async def call(self, name: str, arguments: dict[str, Any], context: ToolCallContext) -> str:
        import anyio
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED
        from pydantic import ValidationError

        route = self._routes.get(name)
        if route is None:
            raise ToolError(f"there is no tool {name!r} now (its MCP server may be down)")
        server, tool = route
        client, generation = server.client, server.generation
        if client is None or server.ended.is_set():
            raise ToolError(f"the MCP server {server.name!r} is not running; it is being restarted, try later")
        log.debug("MCP server %s: calling %s for %s", server.name, tool, context.key)
        try:
            result = await client.call_tool(tool, arguments)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                self._lost(server, generation, "the connection closed during a call")
                raise ToolError(
                    f"the MCP server {server.name!r} stopped during the call; it is being restarted"
                ) from None
            raise ToolError(f"the MCP server {server.name!r} refused the call: {exc.message}") from None
        except ValidationError:
            raise ToolError(f"the MCP server {server.name!r} answered with a malformed result") from None
        except (OSError, EOFError, anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            self._lost(server, generation, f"the connection failed during a call ({type(exc).__name__})")
            raise ToolError(f"the MCP server {server.name!r} stopped during the call; it is being restarted") from None
        return result_text(result)

    @staticmethod
    def secret_values(config: ServerConfig) -> tuple[str, ...]:
        """The values in a server's configuration that may be secrets: every env and header value."""
        return tuple((config.env if isinstance(config, StdioServer) else config.headers).values())

    # -- status ------------------------------------------------------------------------------------------------

    def status(self) -> list[ServerStatus]:
        """Each server, in the file's order: up with the names the model sees, or down with why."""
        names = {(id(server), tool): exposed for exposed, (server, tool) in self._routes.items()}
        return [
            ServerStatus(
                s.name,
                s.client is not None,
                tuple(names[(id(s), t.name)] for t in s.tools if (id(s), t.name) in names),
                s.error,
            )
            for s in self._servers
        ]

    # -- the supervisor ----------------------------------------------------------------------------------------

    async def _supervise(self, server: _Server) -> None:
        try:
            await self._keep_connected(server)
        finally:
            server.tried.set()

    async def _keep_connected(self, server: _Server) -> None:
        delay = self._retry_initial
        while not self._closing:
            started = time.monotonic()
            failure, connected = await self._attempt(server)
            if self._closing:
                return
            server.error = failure
            server.tried.set()
            if not self._retry:
                return
            if connected and time.monotonic() - started > self._retry_max:
                delay = self._retry_initial  # it ran for a good while: a new failure starts the backoff over
            log.warning("MCP server %s: %s; trying again in %g s", server.name, failure, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            delay = min(delay * 2, self._retry_max)

    async def _attempt(self, server: _Server) -> tuple[str, bool]:
        """Connect once and stay connected until the end; return why it ended, and whether it had connected."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as stderr:
            attempt = _Attempt(stderr)
            connection = asyncio.create_task(self._connection(server, ready, attempt))
            failure: str | None = None
            try:
                await asyncio.wait({connection, ready}, timeout=self._connect_timeout, return_when="FIRST_COMPLETED")
                if ready.done():
                    server.tried.set()
                    await asyncio.wait({connection})
                elif not connection.done():
                    failure = f"did not start within {self._connect_timeout:g} s"
            finally:
                # Also when this task is cancelled: the connection must not outlive its supervisor.
                connection.cancel()
                await asyncio.gather(connection, return_exceptions=True)
                self._disconnected(server)
            error = None if connection.cancelled() else connection.exception()
            said = _redact(_last_line(stderr), server.config)
        if error is not None:
            failure = describe_failure(error, server.config, said, attempt.http_status)
        return failure or server.lost or describe_exit(server.config, said), ready.done()

    async def _connection(self, server: _Server, ready: asyncio.Future[None], attempt: _Attempt) -> None:
        """One connection, from connect to end, in this one task (the SDK's contexts must be left where entered)."""
        import anyio
        from mcp import Client

        server.generation += 1
        server.lost = None
        server.ended.clear()
        server.relist.clear()
        if self._closing:  # stopped between the supervisor's check and this task's first step
            return

        async def on_message(message: object) -> None:
            from mcp.types import ToolListChangedNotification

            if isinstance(message, ToolListChangedNotification):
                server.relist.set()

        async with (
            Client(
                _transport(server.config, attempt), mode=self._mode, cache=None, message_handler=on_message
            ) as client,
            anyio.create_task_group() as tasks,
        ):
            server.tools = await _list_tools(client)
            server.client = client
            server.error = None
            self._reindex()
            log.info("MCP server %s: connected, %d tools", server.name, len(server.tools))
            ready.set_result(None)
            try:
                tasks.start_soon(self._watch, server, client, server.generation)
                if _announces_changes(client):
                    tasks.start_soon(self._listen, server, client, server.generation)
                await server.ended.wait()
                tasks.cancel_scope.cancel()
            finally:
                # Before the SDK's teardown: a call that starts now gets a ToolError, not a closing session.
                self._disconnected(server)

    async def _watch(self, server: _Server, client: Client, generation: int) -> None:
        """List the tools again when the server says they changed, and now and then anyway (a health check)."""
        from mcp import MCPError
        from pydantic import ValidationError

        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.relist.wait(), timeout=self._health_interval)
            server.relist.clear()
            try:
                # A server that no longer answers is as good as dead.
                tools = await asyncio.wait_for(_list_tools(client), timeout=self._health_timeout)
            except (MCPError, ValidationError, OSError, TimeoutError) as exc:
                why = (
                    f"did not list its tools within {self._health_timeout:g} s" if isinstance(exc, TimeoutError) else ""
                )
                self._lost(server, generation, why or f"listing its tools failed ({_short(exc)})")
                return
            if tools != server.tools:
                server.tools = tools
                self._reindex()
                log.info("MCP server %s: its tools changed, %d now", server.name, len(tools))

    async def _listen(self, server: _Server, client: Client, generation: int) -> None:
        """On a 2026-07-28 connection, change notifications come through a subscription."""
        from mcp import MCPError
        from mcp.client.subscriptions import SubscriptionLost

        try:
            async with client.listen(tools_list_changed=True) as subscription:
                async for _ in subscription:
                    server.relist.set()
        except SubscriptionLost:
            # The stream ends abruptly when the server does: that is news for the supervisor at once.
            self._lost(server, generation, "the connection dropped")
        except (MCPError, RuntimeError) as exc:
            # The health check still notices a change, later; a lost stream is a dead connection for it too.
            log.debug("MCP server %s: no change notifications (%s)", server.name, _short(exc))

    def _lost(self, server: _Server, generation: int, why: str) -> None:
        """The connection is dead: its tools go at once (the model must not be offered them while the
        supervisor winds the connection down), and the supervisor restarts it."""
        if generation != server.generation:
            return  # news of a connection already replaced
        if not server.ended.is_set():
            server.lost = why
        server.ended.set()
        self._disconnected(server)

    def _disconnected(self, server: _Server) -> None:
        server.client = None
        server.tools = []
        self._reindex()

    def _reindex(self) -> None:
        """The names the model sees, for every tool of every server that is up."""
        pairs = [(s, t) for s in self._servers if s.client is not None for t in s.tools]
        names = tool_names([(s.name, t.name) for s, t in pairs])
        self._routes = {names[(s.name, t.name)]: (s, t.name) for s, t in pairs}
        self._specs = tuple(
            ToolSpec(names[(s.name, t.name)], t.description or t.title or "", _parameters(t.input_schema))
            for s, t in pairs
        )


def tool_names(pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The name the model sees for each (server, tool): ``<server>__<tool>`` where that fits the wire and is
    the only claimant; otherwise the sanitised name, shortened, with a hash of the pair (the same every time)."""
    plain: dict[tuple[str, str], str] = {}
    claims: dict[str, int] = {}
    for server, tool in pairs:
        name = _UNSAFE.sub("_", f"{server}{SEPARATOR}{tool}")
        plain[(server, tool)] = name
        claims[name] = claims.get(name, 0) + 1
    names: dict[tuple[str, str], str] = {}
    for (server, tool), name in plain.items():
        exact = name == f"{server}{SEPARATOR}{tool}" and len(name) <= _MAX_NAME
        if not exact or claims[name] > 1:
            digest = hashlib.sha256(f"{server}\0{tool}".encode()).hexdigest()[:10]
            name = f"{name[: _MAX_NAME - len(digest) - 1]}_{digest}"
        names[(server, tool)] = name
    return names


def result_text(result: CallToolResult) -> str:
    """A tool's result as the model reads it: the text parts, a line for each other part; an error result is a
    :class:`ToolError` with its text."""
    from mcp.types import (
        AudioContent,
        BlobResourceContents,
        EmbeddedResource,
        ImageContent,
        ResourceLink,
        TextContent,
        TextResourceContents,
    )

    parts: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        elif isinstance(block, ImageContent | AudioContent):
            kind = "image" if isinstance(block, ImageContent) else "audio"
            parts.append(f"[{kind} ({block.mime_type}, {_size(len(block.data) * 3 // 4)}) not shown]")
        elif isinstance(block, ResourceLink):
            parts.append(f"[resource link: {block.uri}]")
        elif isinstance(block, EmbeddedResource):
            resource = block.resource
            if isinstance(resource, TextResourceContents):
                parts.append(resource.text)
            elif isinstance(resource, BlobResourceContents):
                mime = resource.mime_type or "binary"
                parts.append(f"[resource {resource.uri} ({mime}, {_size(len(resource.blob) * 3 // 4)}) not shown]")
        else:
            parts.append(f"[{getattr(block, 'type', 'unknown')} content not shown]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(parts)
    if result.is_error:
        raise ToolError(text or "the tool failed and said nothing more")
    return text


def describe_failure(
    error: BaseException, config: ServerConfig, stderr_line: str | None, http_status: int | None = None
) -> str:
    """Why a server could not start or stopped, in one line: no traceback, no header or env value."""
    from mcp import MCPError

    leaf = _leaf(error)
    if isinstance(config, StdioServer):
        if isinstance(leaf, FileNotFoundError):
            return f"cannot start: the command {config.command!r} was not found"
        if isinstance(leaf, PermissionError):
            return f"cannot start: the command {config.command!r} is not executable"
        return f"stopped ({_short(leaf)})" + (f": {stderr_line}" if stderr_line else "")
    host = _host(config)
    if http_status is not None:
        hint = " (check its headers: the credentials were refused)" if http_status in (401, 403) else ""
        return f"{host} answered HTTP {http_status}{hint}"
    if isinstance(leaf, MCPError):
        return f"{host}: {_short(leaf)}"
    name = type(leaf).__name__
    if "Connect" in name or isinstance(leaf, ConnectionError):
        return f"cannot connect to {host}"
    return f"{host}: {name}"


def describe_exit(config: ServerConfig, stderr_line: str | None) -> str:
    if isinstance(config, StdioServer):
        return "the server exited" + (f": {stderr_line}" if stderr_line else "")
    return f"{_host(config)} closed the connection"


def _leaf(error: BaseException) -> BaseException:
    # anyio's task groups wrap what failed inside them, sometimes twice.
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _short(error: BaseException) -> str:
    """An MCP error's own message (the server's words, no secret of ours), else only the exception's type: the
    text of a transport's exception may hold a URL with a token in it."""
    from mcp import MCPError

    if isinstance(error, MCPError) and error.message.strip():
        return error.message.strip().splitlines()[0][:200]
    return type(error).__name__


def _host(config: HttpServer) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(config.url)
    # Only the host and port: the path or query of a URL may carry a token.
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _size(n: int) -> str:
    return f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} bytes"


def _parameters(schema: dict[str, Any] | None) -> dict[str, Any]:
    # The wire wants an object schema; a tool without arguments may send none at all.
    if not schema:
        return {"type": "object", "properties": {}}
    return schema if schema.get("type") == "object" else {"type": "object", **schema}


def _last_line(stderr: TextIO) -> str | None:
    """The last line the server wrote to stderr (usually the error), cut to fit a log line."""
    try:
        stderr.seek(0)
        lines = [line.strip() for line in stderr.read()[-4096:].splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    return lines[-1][:200] if lines else None


def _transport(config: ServerConfig, attempt: _Attempt) -> Any:
    from mcp import StdioServerParameters

    if isinstance(config, StdioServer):
        # The SDK starts the process with a minimal environment (PATH, HOME, USER, ...) and adds ``env`` to it:
        # the bot's own keys are not passed on to a server.
        params = StdioServerParameters(command=config.command, args=list(config.args), env=config.env, cwd=config.cwd)
        from mcp.client.stdio import stdio_client

        return stdio_client(params, errlog=attempt.stderr)
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    async def record(response: httpx2.Response) -> None:
        if response.status_code >= 400:
            attempt.http_status = response.status_code

    # The SDK's own timeouts: 30 s to connect, 300 s for a response stream that stays open.
    http = httpx2.AsyncClient(
        headers=config.headers, timeout=httpx2.Timeout(30.0, read=300.0), event_hooks={"response": [record]}
    )
    return _owning(http, streamable_http_client(config.url, http_client=http))


@contextlib.asynccontextmanager
async def _owning(http: Any, transport: Any) -> Any:
    # The transport leaves a client it was given open: this closes it after the transport.
    async with http, transport as streams:
        yield streams


def _redact(line: str | None, config: ServerConfig) -> str | None:
    """The server's last words without any env or header value of its configuration (they hold secrets, and a
    failing server may well print them)."""
    return None if line is None else redact(line, *MCPTools.secret_values(config))


async def _list_tools(client: Client) -> list[Tool]:
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _announces_changes(client: Client) -> bool:
    from mcp_types.version import MODERN_PROTOCOL_VERSIONS

    tools = client.server_capabilities.tools
    return client.protocol_version in MODERN_PROTOCOL_VERSIONS and bool(tools and tools.list_changed)
