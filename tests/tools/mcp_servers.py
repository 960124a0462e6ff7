"""MCP servers for the tests, written with the SDK's own server API (``MCPServer``): small stdio scripts the
provider starts as child processes, and a streamable HTTP server started in the test's own loop."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn

from bot.tools.mcp_config import StdioServer

#: A server whose ``crash`` tool ends the process in the middle of the call, and whose ``hello`` answers.
CRASHING = """
import os
from mcp.server import MCPServer

app = MCPServer("crashy")

@app.tool()
def crash() -> str:
    \"\"\"Ends the server's process at once.\"\"\"
    os._exit(3)

@app.tool()
def hello(name: str) -> str:
    \"\"\"Greets.\"\"\"
    return f"hello {name}"

@app.tool()
def pid() -> int:
    \"\"\"The server's process id.\"\"\"
    return os.getpid()

@app.tool()
async def slow() -> str:
    \"\"\"Takes a minute.\"\"\"
    import anyio
    await anyio.sleep(60)
    return "done"

app.run()
"""

#: A server whose ``grow`` tool adds a tool and announces it, on either protocol era.
CHANGING = """
from mcp.server import MCPServer
from mcp.server.mcpserver import Context

app = MCPServer("changing")

def added() -> str:
    \"\"\"A tool that was not there at first.\"\"\"
    return "new"

@app.tool()
async def grow(ctx: Context) -> str:
    \"\"\"Adds the tool 'added'.\"\"\"
    app.add_tool(added)
    # A 2026-07-28 client hears of it through its subscription, an older one through a notification.
    await ctx.notify_tools_changed()
    if ctx.protocol_version and ctx.protocol_version < "2026":
        await ctx.session.send_tool_list_changed()
    return "grown"

app.run()
"""

#: A server with the given tool names, each answering its own name.
NAMED = """
import sys
from mcp.server import MCPServer

app = MCPServer("named")
for tool in sys.argv[1:]:
    app.add_tool(lambda tool=tool: tool, name=tool, description=f"answers {tool}")
app.run()
"""

#: A server whose tools answer what is in its environment.
ENVIRONMENT = """
import os
from mcp.server import MCPServer

app = MCPServer("env")
app.add_tool(lambda: os.environ.get("OPENAI_API_KEY", "none"), name="key")
app.add_tool(lambda: os.environ.get("EXTRA", "none"), name="extra")
app.run()
"""

#: A server that lists its tools once, then never again: alive, but no longer answering.
STUCK = """
import anyio
from mcp.server import MCPServer

class Stuck(MCPServer):
    listed = 0

    async def list_tools(self):
        Stuck.listed += 1
        if Stuck.listed > 1:
            await anyio.sleep(600)
        return await super().list_tools()

app = Stuck("stuck")
app.add_tool(lambda: "ok", name="ok")
app.run()
"""

#: A server that prints its secret to stderr and exits before it speaks MCP.
LEAKY = """
import os, sys
print("starting with token " + os.environ["API_TOKEN"], file=sys.stderr)
print("fatal: token " + os.environ["API_TOKEN"] + " refused", file=sys.stderr)
sys.exit(1)
"""


def script(tmp_path: Path, name: str, source: str, *args: str, env: dict[str, str] | None = None) -> StdioServer:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return StdioServer(command=sys.executable, args=(str(path), *args), env=env or {})


def silent(pid_file: Path) -> StdioServer:
    """A process that never speaks MCP (it writes its pid to ``pid_file`` first)."""
    return StdioServer(command="/bin/sh", args=("-c", f"echo $$ > '{pid_file}'; exec sleep 600"))


def time_server() -> StdioServer:
    """The reference time server from PyPI (``mcp-server-time``, in the test extras)."""
    return StdioServer(command=sys.executable, args=("-m", "mcp_server_time", "--local-timezone", "UTC"))


class _RequireHeader:
    """Refuses every request without the expected header, as a server behind an API gateway does."""

    def __init__(self, app: Any, name: str, value: str) -> None:
        self.app, self.name, self.value = app, name.lower().encode(), value.encode()
        self.refused = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(self.name) != self.value:
            self.refused += 1
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def http_server(header: str, value: str) -> AsyncIterator[str]:
    """A streamable HTTP MCP server on 127.0.0.1 with one tool (``add``), in this loop; yields its URL."""
    from mcp.server import MCPServer

    app = MCPServer("calc")

    @app.tool()
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    guarded = _RequireHeader(app.streamable_http_app(), header, value)
    server = uvicorn.Server(
        uvicorn.Config(
            guarded, host="127.0.0.1", port=0, log_level="warning", lifespan="on", timeout_graceful_shutdown=1
        )
    )
    # The test process keeps its own signal handlers (uvicorn would take SIGINT and SIGTERM while it serves).
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn signals no event for it
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await serving
