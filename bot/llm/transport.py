"""The HTTP client of the model calls: one aiohttp session (its connection pool), its time limits, no cookies.

Model calls go through aiohttp directly. They went through httpx's API over aiohttp's pool before, and httpx's
request and response objects, its headers and cookie handling and the stream wrappers between the two libraries
were about 45 % of a call's CPU, a call a third of the bot's CPU in a burst (BENCHMARKS.md, "Round three").
"""

from __future__ import annotations

import functools
import ssl
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import aiohttp
import httpx
from yarl import URL

#: How long an idle connection is kept for the next call: httpx's default, which the model calls had until now.
KEEPALIVE_SECONDS = 5.0


class ModelHTTP:
    """The one HTTP client for model calls, shared by every call: ``async with model_http_client(t) as http``.

    ``read_timeout`` is the longest silence allowed while an answer is awaited or read (the stream's stall limit
    is applied to events with it, see :class:`bot.llm.ChatClient`); ``connect`` bounds making a connection.
    """

    def __init__(
        self,
        timeout: float,
        *,
        connect: float | None = None,
        max_connections: int = 256,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        self.read_timeout = timeout
        self.connect_timeout = connect if connect is not None else timeout
        # As httpx's limits were mapped onto aiohttp by httpx-aiohttp: the wait for a connection from the pool and
        # its making together within `timeout` (httpx's pool limit), the socket's connect within `connect`, and
        # each read within `timeout`; no limit on the whole call (the client's own deadlines do that).
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=self.connect_timeout, sock_read=timeout
        )
        self._max_connections = max_connections
        self._trace_configs = list(trace_configs)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the model's HTTP client is used outside its 'async with'")
        return self._session

    async def __aenter__(self) -> ModelHTTP:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            keepalive_timeout=KEEPALIVE_SECONDS,
            ssl=_ssl_context(),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            # A model server's Set-Cookie is never sent back: a call carries the key and the prompt, nothing else.
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=self._trace_configs or None,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """The certificates httpx trusted: SSL_CERT_FILE or SSL_CERT_DIR when set, else certifi's bundle. Loading the
    bundle takes about 0.1 s: once per process, shared by every client (a context may serve many connections)."""
    return httpx.create_ssl_context()


def model_http_client(
    timeout: float,
    *,
    connect: float | None = None,
    max_connections: int = 256,
    trace_configs: Sequence[aiohttp.TraceConfig] = (),
) -> ModelHTTP:
    """The one HTTP client for model calls (see :class:`ModelHTTP`): use it as ``async with``.

    aiohttp's pool keeps a list of idle connections per host; httpcore's own pool, used before that, looked at every
    open connection for every request, so its cost grew with the calls under way (BENCHMARKS.md).
    ``trace_configs`` are aiohttp's request hooks (``teambot check`` records the status a server answered).
    """
    return ModelHTTP(timeout, connect=connect, max_connections=max_connections, trace_configs=trace_configs)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one endpoint's calls go, worked out once: the URL to post to (without any user:password, which goes
    into ``authorization`` instead), the URL as the person configured it, and the proxy the environment names."""

    url: URL
    #: ``{base_url}/chat/completions`` as written, user:password included: for the error texts (via ``shown_url``).
    written: str
    #: ``Basic ...`` from a user:password in the base URL, which httpx sent in place of the key's bearer header.
    basic: str | None
    proxy: URL | None
    #: ``Proxy-Authorization`` from a user:password in the proxy's URL (aiohttp does not read it from there): for a
    #: plain-HTTP model it goes with each request, for HTTPS on the proxy's CONNECT (``proxy_headers``).
    proxy_authorization: str | None
    proxy_headers: dict[str, str] | None


def target(base_url: str) -> Target:
    written = f"{base_url}/chat/completions"
    url = URL(written)
    basic = None
    if url.user is not None or url.password is not None:
        basic = aiohttp.encode_basic_auth(url.user or "", url.password or "")  # UTF-8, as httpx encoded it
        url = url.with_user(None)
    proxy = env_proxy(url)
    proxy_authorization = proxy_headers = None
    if proxy is not None and (proxy.user is not None or proxy.password is not None):
        credentials = aiohttp.encode_basic_auth(proxy.user or "", proxy.password or "")
        proxy = proxy.with_user(None)
        if url.scheme == "https":
            proxy_headers = {"Proxy-Authorization": credentials}
        else:
            proxy_authorization = credentials
    return Target(url, written, basic, proxy, proxy_authorization, proxy_headers)


def env_proxy(url: URL) -> URL | None:
    """The proxy that ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` name for ``url``, unless ``NO_PROXY`` exempts
    its host: what httpx honoured. Looked up once per endpoint: aiohttp's own ``trust_env`` would look up the proxy
    and ``.netrc`` on a thread for every call."""
    if url.host is None:
        return None
    # With the port when the URL names one: a NO_PROXY entry may name it too (localhost:11434), as httpx matched it;
    # an entry without a port still matches the host alone.
    host = url.host if url.explicit_port is None else f"{url.host}:{url.explicit_port}"
    if urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy:
        return None
    # A proxy named without a scheme (HTTP_PROXY=proxy:3128, common) is an HTTP proxy, as httpx read it: taken as
    # it stands, aiohttp refuses it as an invalid URL on every call, and that error's text names it, password and all.
    return URL(proxy if "://" in proxy else f"http://{proxy}")
