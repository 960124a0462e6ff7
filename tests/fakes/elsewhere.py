"""A loopback server that is no platform's: a URL on it in a payload must never be fetched. It records every request
(``requests``: method, path and whether an Authorization header came), and answers each with a small file."""

from __future__ import annotations

from aiohttp import web

from tests.fakes.loopback import LoopbackServer


class Elsewhere(LoopbackServer):
    """``async with Elsewhere() as other``; put ``other.url + "/x.png"`` in a payload; assert ``requests == []``."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, str, bool]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{path:.*}", self._any)

    async def _any(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, "Authorization" in request.headers))
        await self._notify()
        return web.Response(body=b"hello from elsewhere", content_type="text/plain")
