"""The ``fetch_url`` tool: GET a public web page and give the model its readable text.

A URL comes from the model, and the model reads whatever anyone in the channel wrote: it must not become a way
into the bot's own network (SSRF). So every address is checked after DNS resolution, inside the resolver the
connection itself uses (the address checked is the address connected to: no DNS-rebinding window), every redirect
is followed by hand and checked the same way, and the body is read only up to a size cap, within a time cap.

Errors are :class:`bot.tools.ToolError` with one line for the model.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Iterable
from html.parser import HTMLParser

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from charset_normalizer import from_bytes
from yarl import URL

from bot.tools.base import ToolError

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
#: NAT64's well-known prefix (RFC 6052): a gateway routes 64:ff9b::a.b.c.d to the IPv4 address a.b.c.d.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_HEADERS = {
    "User-Agent": "teambot (fetch_url tool)",
    "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.8,*/*;q=0.1",
}
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_TEXT_TYPES = frozenset({"application/json", "application/xml", "application/javascript", "application/x-yaml"})


def refusal(address: IPAddress, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why ``address`` may not be fetched from (``"loopback"``, ``"private"``, ...), or None for a public one.

    An IPv4 address inside IPv6 (mapped ``::ffff:a.b.c.d``, 6to4, Teredo, NAT64) is judged by the IPv4 address it
    reaches. ``allowed`` exempts networks (tests serve pages on loopback).
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return refusal(address.ipv4_mapped, allowed)
        embedded = [address.sixtofour, address.teredo[1] if address.teredo else None]
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        for inner in embedded:
            if inner is not None and (why := refusal(inner, allowed)) is not None:
                return why
    if any(address.version == net.version and address in net for net in allowed):
        return None
    for why, flag in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        # fec0::/10, deprecated but still routed inside some networks; Python counts it neither private nor reserved.
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if flag:
            return why
    # Whatever else is not reachable on the internet (shared address space 100.64/10, benchmarking, ...).
    return None if address.is_global else "non-public"


def _refused(host: str, address: str, why: str) -> ToolError:
    shown = host if host == address else f"{host} ({address})"
    return ToolError(f"fetch_url: refused {shown}: a {why} address; only public internet addresses are fetched")


class _CheckingResolver(AbstractResolver):
    """Resolves through ``inner`` and refuses the name when any of its addresses is not public: the connector
    connects only to addresses that came through here, so none can change between the check and the connect."""

    def __init__(self, inner: AbstractResolver, allowed: tuple[IPNetwork, ...]) -> None:
        self._inner = inner
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for result in found:
            why = refusal(ipaddress.ip_address(result["host"]), self._allowed)
            if why is not None:
                raise _refused(host, result["host"], why)
        if not found:
            raise ToolError(f"fetch_url: {host} has no address")
        return found

    async def close(self) -> None:
        # The inner resolver belongs to whoever made it (WebFetcher closes its own default one).
        return None


class WebFetcher:
    """GETs public http(s) pages and returns their text; see the module's docstring for the guards.

    ``allow_networks`` exempts address ranges from the refusal (a test serving pages on 127.0.0.0/8); it is a
    constructor parameter only, never a setting. ``resolver`` replaces the system's DNS (tests inject names).
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout: float,
        allow_networks: Iterable[IPNetwork] = (),
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._allowed = tuple(allow_networks)
        self._resolver = resolver

    async def fetch(self, url: str) -> str:
        """The readable text of the page at ``url`` (HTML reduced to its text), headed by its title and final URL."""
        target = self._parse(url)
        inner = self._resolver or aiohttp.ThreadedResolver()
        connector = aiohttp.TCPConnector(
            resolver=_CheckingResolver(inner, self._allowed), use_dns_cache=False, force_close=True
        )
        # No cookie jar, no proxy or .netrc from the environment: nothing of the bot's goes out with the request.
        session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, headers=_HEADERS
        )
        try:
            async with asyncio.timeout(self.timeout):
                return await self._follow(session, target)
        except TimeoutError:
            raise ToolError(f"fetch_url: {target.host} did not answer within {self.timeout:g} s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ToolError(f"fetch_url: the TLS certificate of {exc.host} is not valid") from None
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, socket.gaierror):
                raise ToolError(f"fetch_url: {exc.host} was not found (DNS)") from None
            raise ToolError(f"fetch_url: could not connect to {exc.host}") from None
        except aiohttp.ClientError as exc:
            raise ToolError(f"fetch_url: the request to {target.host} failed ({type(exc).__name__})") from None
        finally:
            await session.close()
            if self._resolver is None:
                await inner.close()

    def _parse(self, url: str, base: URL | None = None) -> URL:
        """``url`` (relative to ``base``, for a redirect) if it is an http(s) URL fit to fetch, else ToolError."""
        try:
            parsed = URL(url.strip())
            if base is not None:
                parsed = base.join(parsed)
        except ValueError:
            raise ToolError("fetch_url: not a valid URL") from None
        if not parsed.scheme:
            raise ToolError("fetch_url: give a full URL, starting with https:// or http://")
        if parsed.scheme not in ("http", "https"):
            raise ToolError(f"fetch_url: only http and https URLs are fetched, not {parsed.scheme}:")
        if not parsed.host:
            raise ToolError("fetch_url: the URL has no host")
        if parsed.user is not None or parsed.password is not None:
            raise ToolError("fetch_url: URLs with a user name or password are not fetched")
        self._check_literal(parsed.host)
        return parsed.with_fragment(None)

    def _check_literal(self, host: str) -> None:
        """An IP address written in the URL: the connector skips the resolver for those, so it is checked here.

        What aiohttp takes for an address (a colon, or digits and dots) must be one in the canonical form, so that
        ``127.1`` or ``2130706433`` cannot reach the socket layer, which would read them as 127.0.0.1.
        """
        if not (":" in host or host.replace(".", "").isdigit()):
            return
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ToolError(f"fetch_url: {host!r} is not a valid IP address") from None
        why = refusal(address, self._allowed)
        if why is not None:
            raise _refused(host, host, why)

    async def _follow(self, session: aiohttp.ClientSession, url: URL) -> str:
        for _ in range(MAX_REDIRECTS + 1):
            log.debug("fetch_url GET %s", url)
            async with session.get(url, allow_redirects=False) as response:
                if response.status in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise ToolError(f"fetch_url: {url.host} redirected without saying where")
                    url = self._parse(location, base=url)
                    continue
                if response.status >= 400:
                    raise ToolError(
                        f"fetch_url: {url.host} answered HTTP {response.status} {response.reason or ''}".rstrip()
                    )
                return await self._read(response, url)
        raise ToolError(f"fetch_url: more than {MAX_REDIRECTS} redirects")

    async def _read(self, response: aiohttp.ClientResponse, url: URL) -> str:
        kind = response.content_type.lower()
        if not (
            kind.startswith("text/") or kind in _HTML_TYPES or kind in _TEXT_TYPES or kind.endswith(("+json", "+xml"))
        ):
            raise ToolError(f"fetch_url: {url.host} sent {kind or 'no content type'}, not text")
        too_big = ToolError(f"fetch_url: the page is larger than {self.max_bytes} bytes")
        if response.content_length is not None and response.content_length > self.max_bytes:
            raise too_big
        body = bytearray()
        # Counted after decompression: a small gzip bomb stops at the cap like a large page.
        async for chunk in response.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > self.max_bytes:
                raise too_big
        text = _decode(bytes(body), response.charset)
        if kind in _HTML_TYPES:
            title, text = html_to_text(text)
            head = f"Title: {title}\nURL: {url}" if title else f"URL: {url}"
        else:
            head = f"URL: {url}"
        return f"{head}\n\n{text}"


def _decode(body: bytes, charset: str | None) -> str:
    if charset:
        try:
            return body.decode(charset, errors="replace")
        except LookupError:
            pass  # a charset Python does not know: guessed below
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        best = from_bytes(body).best()
        return str(best) if best is not None else body.decode("latin-1")


#: Elements whose content is no reading matter.
#: (Not ``head``: its end tag is optional, and what it holds is skipped or void anyway.)
_SKIPPED = frozenset({"script", "style", "noscript", "template", "svg", "iframe", "object", "canvas"})
#: Elements that start a new line of text.
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "details", "div", "dl", "dt", "fieldset",
        "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main",
        "nav", "ol", "p", "pre", "section", "summary", "table", "td", "th", "tr", "ul",
    }
)  # fmt: skip
#: Void elements never close, so they never enter the skip depth.
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})


class _TextExtractor(HTMLParser):
    """Collects the text of an HTML page a person would read: no scripts or styles, a line per block."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.title = ""
        self._line: list[str] = []
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = not self.title  # the page's title, not an SVG's or a second one
        elif tag in _SKIPPED and tag not in _VOID:
            self._skip += 1
        elif tag in _BLOCKS:
            self._break()
            if tag == "li" and not self._skip:
                self._line.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIPPED:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCKS:
            self._break()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self._line.append(data)

    def _break(self) -> None:
        line = " ".join("".join(self._line).split())
        if line and line != "-":
            self.lines.append(line)
        self._line = []

    def close(self) -> None:
        super().close()
        self._break()


def html_to_text(html: str) -> tuple[str, str]:
    """The title and readable text of an HTML page: script, style and other non-text elements dropped, one line
    per block element, runs of whitespace collapsed. Malformed markup is read as far as it goes, never an error."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return " ".join(parser.title.split()), "\n".join(parser.lines)
