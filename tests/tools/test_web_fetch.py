"""fetch_url against real aiohttp servers on loopback: allowed only where the test says so, refused by default,
through redirects and DNS names too; size, time and type capped."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from bot.tools import ToolError
from bot.tools.web_fetch import WebFetcher, html_to_text, refusal

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
ONLY_127_0_0_2 = ipaddress.ip_network("127.0.0.2/32")

PAGE = """<!doctype html><html><head><title>The  launch
plan</title><style>body { color: red }</style><script>var secret = "not text";</script></head>
<body><nav>Home</nav><h1>Launch</h1><p>We ship on <b>Friday</b>&nbsp;at noon &amp; celebrate.</p>
<ul><li>one</li><li>two</li></ul><noscript>enable js</noscript></body></html>"""


@dataclass
class Site:
    """A page server on one loopback address, recording what it was sent."""

    host: str
    url: str = ""
    seen: list[web.Request] = field(default_factory=list)
    written: int = 0


async def _handler(site: Site, request: web.Request) -> web.StreamResponse:
    site.seen.append(request)
    name = request.match_info["name"]
    if name == "page":
        return web.Response(text=PAGE, content_type="text/html")
    if name == "plain":
        return web.Response(text="just text", content_type="text/plain", charset="utf-8")
    if name == "latin1":
        return web.Response(body="café".encode("latin-1"), headers={"Content-Type": "text/plain; charset=latin-1"})
    if name == "redirect":
        return web.Response(status=302, headers={"Location": request.query["to"], "Set-Cookie": "session=abc"})
    if name == "chain":
        hops = int(request.query["n"])
        target = "/page" if hops == 0 else f"/chain?n={hops - 1}"
        return web.Response(status=301, headers={"Location": target})
    if name == "echo":
        return web.Response(text=f"cookie={request.headers.get('Cookie')} auth={request.headers.get('Authorization')}")
    if name == "image":
        return web.Response(body=b"\x89PNG...", content_type="image/png")
    if name == "missing":
        return web.Response(status=404, text="nope")
    if name == "big":
        return web.Response(text="x" * 5000, content_type="text/plain")
    if name == "endless":
        # No Content-Length: only counting what is read can stop it.
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        while True:
            await response.write(b"y" * 16384)
            site.written += 16384
    if name == "declared":
        # Says it is large, then stalls: refused on its word, without waiting for a byte more.
        response = web.StreamResponse(headers={"Content-Type": "text/plain", "Content-Length": "10000000"})
        await response.prepare(request)
        await response.write(b"z" * 1000)
        await asyncio.Event().wait()
    if name == "bomb":
        body = gzip.compress(b"0" * 5_000_000)
        return web.Response(body=body, headers={"Content-Type": "text/plain", "Content-Encoding": "gzip"})
    if name == "slow":
        await asyncio.Event().wait()  # never answers: the client's time cap must end it
    raise web.HTTPNotFound()


@pytest.fixture
async def sites() -> AsyncIterator[dict[str, Site]]:
    """A server on 127.0.0.1 and one on 127.0.0.2 (Linux routes all of 127/8 to loopback)."""
    made: dict[str, Site] = {}
    runners = []
    for host in ("127.0.0.1", "127.0.0.2"):
        site = Site(host)
        app = web.Application()

        async def handle(request: web.Request, site: Site = site) -> web.StreamResponse:
            return await _handler(site, request)

        app.router.add_get("/{name}", handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, host, 0).start()
        site.url = f"http://{host}:{runner.addresses[0][1]}"
        made[host] = site
        runners.append(runner)
    yield made
    for runner in runners:
        await runner.cleanup()


class FixedResolver(AbstractResolver):
    """DNS as the test says: each name gives its addresses in turn (the last one repeats)."""

    def __init__(self, names: dict[str, list[str]]) -> None:  # a name not in ``names`` does not exist
        self.names = names
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers = self.names[host]
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


def fetcher(*allowed: ipaddress.IPv4Network, resolver: AbstractResolver | None = None, **caps: float) -> WebFetcher:
    return WebFetcher(
        max_bytes=int(caps.get("max_bytes", 1_000_000)),
        timeout=caps.get("timeout", 5.0),
        allow_networks=allowed,
        resolver=resolver,
    )


def port(site: Site) -> int:
    return int(site.url.rsplit(":", 1)[1])


async def test_a_page_is_fetched_as_readable_text_when_loopback_is_allowed(sites: dict[str, Site]) -> None:
    site = sites["127.0.0.1"]
    text = await fetcher(LOOPBACK).fetch(f"{site.url}/page#top")
    assert text == (
        f"Title: The launch plan\nURL: {site.url}/page\n\nHome\nLaunch\nWe ship on Friday at noon & celebrate.\n"
        "- one\n- two"
    )
    assert "secret" not in text and "color" not in text and "enable js" not in text
    assert await fetcher(LOOPBACK).fetch(f"{site.url}/plain") == f"URL: {site.url}/plain\n\njust text"
    assert (await fetcher(LOOPBACK).fetch(f"{site.url}/latin1")).endswith("café")


async def test_loopback_is_refused_by_default(sites: dict[str, Site]) -> None:
    site = sites["127.0.0.1"]
    with pytest.raises(ToolError, match=r"^fetch_url: refused 127\.0\.0\.1: a loopback address"):
        await fetcher().fetch(f"{site.url}/page")
    with pytest.raises(ToolError, match="loopback"):
        await fetcher().fetch(f"http://[::1]:{port(site)}/page")
    with pytest.raises(ToolError, match="loopback"):
        await fetcher().fetch(f"http://[::ffff:127.0.0.1]:{port(site)}/page")
    assert site.seen == []


async def test_a_name_that_resolves_to_loopback_is_refused(sites: dict[str, Site]) -> None:
    site = sites["127.0.0.1"]
    with pytest.raises(ToolError, match=r"refused localhost \(127\.0\.0\.1\): a loopback address"):
        await fetcher().fetch(f"http://localhost:{port(site)}/page")  # the system's own DNS
    resolver = FixedResolver({"intranet.example": ["127.0.0.1"]})
    with pytest.raises(ToolError, match=r"refused intranet\.example \(127\.0\.0\.1\)"):
        await fetcher(resolver=resolver).fetch(f"http://intranet.example:{port(site)}/page")
    assert resolver.asked == ["intranet.example"]
    assert site.seen == []
    # Allowed, the same name reaches the address it resolved to: the connection uses the checked address.
    assert "Launch" in await fetcher(LOOPBACK, resolver=resolver).fetch(f"http://intranet.example:{port(site)}/page")
    assert len(site.seen) == 1


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "017700000001", "127.0.0.1.", "0"])
async def test_other_spellings_of_loopback_are_refused(sites: dict[str, Site], host: str) -> None:
    site = sites["127.0.0.1"]
    with pytest.raises(ToolError, match=r"^fetch_url: "):
        await fetcher().fetch(f"http://{host}:{port(site)}/page")
    assert site.seen == []


async def test_a_redirect_to_loopback_is_refused(sites: dict[str, Site]) -> None:
    allowed, inside = sites["127.0.0.2"], sites["127.0.0.1"]
    only = fetcher(ONLY_127_0_0_2)
    assert "Launch" in await only.fetch(f"{allowed.url}/page")  # the allowed server itself is fetched
    for target in (f"{inside.url}/page", f"http://localhost:{port(inside)}/page"):
        with pytest.raises(ToolError, match="loopback address"):
            await only.fetch(f"{allowed.url}/redirect?to={target}")
    assert inside.seen == []


async def test_a_name_that_rebinds_to_loopback_between_hops_is_refused(sites: dict[str, Site]) -> None:
    # Checked at every connection, with the address that connection uses: a second answer cannot slip through.
    allowed = sites["127.0.0.2"]
    resolver = FixedResolver({"rebind.example": ["127.0.0.2", "127.0.0.1"]})
    with pytest.raises(ToolError, match=r"rebind\.example \(127\.0\.0\.1\)"):
        await fetcher(ONLY_127_0_0_2, resolver=resolver).fetch(
            f"http://rebind.example:{port(allowed)}/redirect?to=/page"
        )
    assert resolver.asked == ["rebind.example", "rebind.example"]
    assert [r.path for r in allowed.seen] == ["/redirect"]


async def test_redirects_are_followed_up_to_five(sites: dict[str, Site]) -> None:
    site = sites["127.0.0.1"]
    assert f"URL: {site.url}/page" in await fetcher(LOOPBACK).fetch(f"{site.url}/chain?n=4")
    with pytest.raises(ToolError, match="more than 5 redirects"):
        await fetcher(LOOPBACK).fetch(f"{site.url}/chain?n=5")


async def test_no_cookie_or_credentials_go_out(sites: dict[str, Site]) -> None:
    site = sites["127.0.0.1"]
    text = await fetcher(LOOPBACK).fetch(f"{site.url}/redirect?to=/echo")
    assert text.endswith("cookie=None auth=None")
    with pytest.raises(ToolError, match="user name or password"):
        await fetcher(LOOPBACK).fetch(f"http://ada:secret@127.0.0.1:{port(site)}/echo")


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://example.com/", "javascript:alert(1)", "data:,hi"]
)
async def test_only_http_and_https_are_fetched(url: str) -> None:
    with pytest.raises(ToolError, match="only http and https"):
        await fetcher().fetch(url)


async def test_a_redirect_to_another_scheme_is_refused(sites: dict[str, Site]) -> None:
    site = sites["127.0.0.1"]
    with pytest.raises(ToolError, match="only http and https"):
        await fetcher(LOOPBACK).fetch(f"{site.url}/redirect?to=file:///etc/passwd")


async def test_a_page_over_the_size_cap_is_refused(sites: dict[str, Site]) -> None:
    site = sites["127.0.0.1"]
    assert (await fetcher(LOOPBACK, max_bytes=5000).fetch(f"{site.url}/big")).endswith("x" * 5000)
    with pytest.raises(ToolError, match="larger than 4999 bytes"):
        await fetcher(LOOPBACK, max_bytes=4999).fetch(f"{site.url}/big")


async def test_a_page_declared_over_the_cap_is_refused_before_reading(sites: dict[str, Site]) -> None:
    site = sites["127.0.0.1"]
    with pytest.raises(ToolError, match="larger than 1000000 bytes"):
        await fetcher(LOOPBACK, max_bytes=1_000_000, timeout=10).fetch(f"{site.url}/declared")


async def test_an_endless_body_is_cut_at_the_cap_not_the_clock(sites: dict[str, Site]) -> None:
    site = sites["127.0.0.1"]
    with pytest.raises(ToolError, match="larger than 100000 bytes"):
        await fetcher(LOOPBACK, max_bytes=100_000, timeout=30).fetch(f"{site.url}/endless")


async def test_a_compressed_bomb_is_cut_at_the_cap(sites: dict[str, Site]) -> None:
    site = sites["127.0.0.1"]
    with pytest.raises(ToolError, match="larger than 1000000 bytes"):
        await fetcher(LOOPBACK, max_bytes=1_000_000).fetch(f"{site.url}/bomb")


async def test_a_page_that_never_answers_times_out(sites: dict[str, Site]) -> None:
    site = sites["127.0.0.1"]
    with pytest.raises(ToolError, match=r"^fetch_url: 127\.0\.0\.1 did not answer within 0\.3 s$"):
        await fetcher(LOOPBACK, timeout=0.3).fetch(f"{site.url}/slow")


async def test_http_errors_and_non_text_are_one_line(sites: dict[str, Site]) -> None:
    site = sites["127.0.0.1"]
    with pytest.raises(ToolError, match=r"^fetch_url: 127\.0\.0\.1 answered HTTP 404 Not Found$"):
        await fetcher(LOOPBACK).fetch(f"{site.url}/missing")
    with pytest.raises(ToolError, match=r"sent image/png, not text$"):
        await fetcher(LOOPBACK).fetch(f"{site.url}/image")


async def test_an_unknown_name_is_one_line() -> None:
    with pytest.raises(ToolError, match=r"^fetch_url: nowhere\.example was not found \(DNS\)$"):
        await fetcher(resolver=FixedResolver({})).fetch("https://nowhere.example/")


async def test_a_url_without_a_scheme_says_what_is_missing() -> None:
    with pytest.raises(ToolError, match=r"^fetch_url: give a full URL, starting with https:// or http://$"):
        await fetcher().fetch("example.com/page")


async def test_a_closed_port_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(ToolError, match=r"^fetch_url: could not connect to 127\.0\.0\.1$"):
        await fetcher(LOOPBACK).fetch(f"http://127.0.0.1:{free}/")


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fec0::1", "site-local"),
        ("2001:db8::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of 169.254.169.254
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:93.184.216.34", None),
    ],
)
def test_which_addresses_are_refused(address: str, why: str | None) -> None:
    assert refusal(ipaddress.ip_address(address)) == why


def test_html_to_text_survives_broken_markup() -> None:
    assert html_to_text("<p>unclosed <b>bold <div>next</p></i>") == ("", "unclosed bold\nnext")
    assert html_to_text("<title>T</title><svg><title>icon</title></svg>body") == ("T", "body")
