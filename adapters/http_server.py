"""The HTTP servers of ``teambot run``: ``/healthz`` on each, ``/readyz`` and ``/metrics`` on the ops one.

By default one server on ``TEAMBOT_HTTP_HOST:TEAMBOT_HTTP_PORT`` carries everything, Slack's HTTP mode included.
With ``TEAMBOT_OPS_HOST``/``TEAMBOT_OPS_PORT`` set to another bind, readiness and metrics move to a server of their
own there (say on 127.0.0.1 or a cluster-internal port) and the public port serves only what Slack must reach.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bot.errors import ConfigError
from bot.metrics import Metrics

log = logging.getLogger(__name__)

Readiness = Callable[[], Awaitable[dict[str, bool]]]


class HttpServer:
    """One aiohttp server: build it, let adapters (and :func:`add_ops_routes`) add routes to ``app``, then
    :meth:`start` it. Every server answers ``GET /healthz``: the process is up."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self.app = web.Application()
        self.app.router.add_get("/healthz", _healthz)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def has_routes(self) -> bool:
        """Whether anything besides ``/healthz`` was added (a server with nothing to serve need not listen)."""
        return any(
            route.resource is not None and route.resource.canonical != "/healthz" for route in self.app.router.routes()
        )

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            # A port in use or an address this machine does not have: one line naming it, not a traceback.
            raise ConfigError(f"cannot listen on {self._host}:{self._port} ({exc.strerror or exc})") from None
        self.port = self._runner.addresses[0][1]
        paths = sorted({str(r.resource.canonical) for r in self.app.router.routes() if r.resource is not None})
        log.info("serving %s on %s:%s", ", ".join(paths), self._host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def add_ops_routes(app: web.Application, metrics: Metrics, readiness: Readiness) -> None:
    """``GET /readyz`` (200 when every check passes, else 503, the checks in the body) and ``GET /metrics``."""

    async def readyz(request: web.Request) -> web.Response:
        checks = await readiness()
        status = 200 if all(checks.values()) else 503
        return web.Response(status=status, text=json.dumps(checks) + "\n", content_type="application/json")

    async def metrics_page(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")
