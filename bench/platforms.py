"""The fake Slack or the fake Discord in a process of its own, with what sends the mentions and times the replies.

The end-to-end rows would otherwise measure the bot and the fake platform together: the fake serves several Web API
calls per mention, and on the bot's event loop it takes the bot's CPU. ``python -m bench.platforms KIND SECRET
LAST_TOKEN`` (KIND: ``slack-http``, ``slack-socket`` or ``discord``) starts the fake on 127.0.0.1:0 and a control
app beside it, and prints one JSON line: ``{"url": the fake, "control": the control app}``. Control routes:

- ``POST /connect`` ``{"events_url": ...}``: Slack HTTP mode, where the bot takes events; Socket Mode and Discord
  wait until the bot's socket is connected.
- ``POST /singles`` ``{"count": n}``: mentions 0..n-1, one at a time; answers ``{"latencies_ms": [...]}``.
- ``POST /burst`` ``{"first": i, "count": n}``: mentions i..i+n-1 all at once; answers ``{"seconds": ...,
  "cpu_seconds": ...}``, the time until the last final reply and this process's CPU time meanwhile.
- ``POST /first-words`` ``{"first": i, "count": n}``: mentions i..i+n-1, one at a time; answers ``{"first_ms":
  [...], "final_ms": [...]}``: from the mention to the first text of its reply a person can see (the first post or
  the first streamed text), and to the final text.

Mention i goes to channel i % 100, from person i. The fake Slack's workspace is the people the loads use
(:data:`PEOPLE`): the burst's people are members, as in a company, so ``users.list`` lists every one of them and the
bot, which reads the list at start, knows their names before the first mention (``users.info`` answers for them
too). Every time is taken here, on one clock, from just before a mention
is sent until the fake records a reply text ending in ``LAST_TOKEN``: replies are counted, so the n-th final reply
means all of the first n mentions are answered. :class:`PlatformProcess` runs it for the benchmark, as
:class:`bench.model.ModelProcess` runs the model.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self, cast

import aiohttp
from aiohttp import web

from tests.fakes.discord import BOT_USER, CHANNEL_ID, GUILD_ID, FakeDiscord, user_payload
from tests.fakes.slack import FakeSlack, event_envelope, mention, signed_headers

Kind = Literal["slack-http", "slack-socket", "discord"]
KINDS: tuple[Kind, ...] = ("slack-http", "slack-socket", "discord")
SLACK_BOT_TOKEN = "xoxb-bench"
CHANNELS = 100
#: Mention i comes from person i (a different person each, so the per-person rate limit at its default never
#: refuses one). The fake Slack's workspace has this many members, listed by users.list: everyone the loads use (the
#: end-to-end rows' 200 single mentions and burst of 1,000, bench.compare's 50 and 1,000, the replicas rows' 500
#: conversations), with room to spare; fewer than the bot's 10,000 names, so it lists them all.
PEOPLE = 2_000
#: The fake guild's text channels, announced when the client connects, as Discord announces every channel it can see.
DISCORD_CHANNELS = [CHANNEL_ID, *(str(5000 + n) for n in range(CHANNELS - 1))]


class Finals:
    """When each final reply reached the fake, in order of arrival."""

    def __init__(self, last_token: str) -> None:
        self.last_token = last_token
        self.times: list[float] = []
        self._seen: set[object] = set()
        self._grew = asyncio.Event()
        #: When the first text of a reply not yet final was stored since :meth:`expect_first` (None: not yet): the
        #: first word a person sees, posted or streamed. Meant for one mention at a time.
        self.first_text: float | None = None

    def expect_first(self) -> None:
        self.first_text = None

    def see(self, key: object, text: str) -> None:
        # Called on every text the fake stores, so it must stay O(1): thousands of calls per burst.
        if self.first_text is None and key not in self._seen and text.strip():
            self.first_text = time.perf_counter()
        if key not in self._seen and text.rstrip().endswith(self.last_token):
            self._seen.add(key)
            self.times.append(time.perf_counter())
            self._grew.set()

    async def wait(self, count: int, within: float) -> float:
        """When the ``count``-th final reply arrived."""
        async with asyncio.timeout(within):
            while len(self.times) < count:
                self._grew.clear()
                await self._grew.wait()
        return self.times[count - 1]


class Platform:
    """One fake platform and its control app."""

    def __init__(self, kind: Kind, secret: str, last_token: str) -> None:
        self.kind = kind
        self.secret = secret
        self.finals = Finals(last_token)
        people = {f"U{n}": {"display_name": f"person {n}"} for n in range(PEOPLE)}
        self.slack = FakeSlack(bot_token=SLACK_BOT_TOKEN, users=people)
        self.discord = FakeDiscord(extra_channels=tuple(DISCORD_CHANNELS[1:]))
        self.slack.watchers.append(lambda m: self.finals.see((m.channel, m.ts), m.text))
        self.discord.watchers.append(lambda m: self.finals.see(m.id, m.content))
        self.events_url = ""
        self._http: aiohttp.ClientSession | None = None

    @property
    def fake(self) -> FakeSlack | FakeDiscord:
        return self.discord if self.kind == "discord" else self.slack

    def control(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/connect", self._connect)
        app.router.add_post("/singles", self._singles)
        app.router.add_post("/burst", self._burst)
        app.router.add_post("/first-words", self._first_words)
        return app

    async def send(self, i: int) -> None:
        channel = i % CHANNELS
        if self.kind == "discord":
            payload = self.discord.message_create(
                f"<@{BOT_USER['id']}> q{i}",
                author=user_payload(str(100_000 + i), f"person{i}", global_name=f"person {i}"),
                mentions=(BOT_USER,),
                channel_id=DISCORD_CHANNELS[channel],
                guild_id=GUILD_ID,
            )
            await self.discord.dispatch("MESSAGE_CREATE", payload)
            return
        envelope = event_envelope(mention(f"<@UBOT> q{i}", channel=f"C{channel}", user=f"U{i}", ts=f"{i}.1"))
        if self.kind == "slack-socket":
            await self.slack.send_envelope("events_api", envelope)
            return
        assert self._http is not None
        body = json.dumps(envelope)
        headers = {"Content-Type": "application/json", **signed_headers(self.secret, body)}
        async with self._http.post(self.events_url, data=body, headers=headers) as response:
            response.raise_for_status()

    async def _connect(self, request: web.Request) -> web.Response:
        self.events_url = str((await request.json()).get("events_url") or "")
        if self.kind == "slack-socket":
            await self.slack.wait_for_socket(30)
        elif self.kind == "discord":
            await self.discord.wait_ready(30)
        elif not self.events_url:
            raise web.HTTPBadRequest(text="Slack HTTP mode needs the bot's events_url")
        return web.json_response({"ok": True})

    async def _singles(self, request: web.Request) -> web.Response:
        latencies = []
        for i in range(int((await request.json())["count"])):
            started = time.perf_counter()
            await self.send(i)
            latencies.append((await self.finals.wait(i + 1, 30) - started) * 1000)
        return web.json_response({"latencies_ms": latencies})

    async def _first_words(self, request: web.Request) -> web.Response:
        body = await request.json()
        first, count = int(body["first"]), int(body["count"])
        firsts, finals = [], []
        for i in range(first, first + count):
            self.finals.expect_first()
            started = time.perf_counter()
            await self.send(i)
            final = await self.finals.wait(i + 1, 30)
            assert self.finals.first_text is not None  # the final text is a text too
            firsts.append((self.finals.first_text - started) * 1000)
            finals.append((final - started) * 1000)
        return web.json_response({"first_ms": firsts, "final_ms": finals})

    async def _burst(self, request: web.Request) -> web.Response:
        body = await request.json()
        first, count = int(body["first"]), int(body["count"])
        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(self.send(first + i) for i in range(count)))
        last = await self.finals.wait(first + count, 120)
        return web.json_response({"seconds": last - started, "cpu_seconds": time.process_time() - cpu})

    async def serve(self) -> None:
        connector = aiohttp.TCPConnector(limit=256)
        async with self.fake, aiohttp.ClientSession(connector=connector) as http:
            self._http = http
            runner = web.AppRunner(self.control(), access_log=None)
            await runner.setup()
            try:
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                control = f"http://127.0.0.1:{runner.addresses[0][1]}"
                print(json.dumps({"url": self.fake.url, "control": control}), flush=True)
                await asyncio.Event().wait()
            finally:
                await runner.cleanup()


@dataclass(frozen=True, slots=True)
class Burst:
    seconds: float
    #: CPU time of the fake platform's process during the burst.
    cpu_seconds: float


class ControlledProcess:
    """A fake in a subprocess, ``python -m MODULE ARGS``, that prints one JSON line, ``{"url": the fake, "control":
    its control app}``, and is then driven through the control app's routes (:meth:`_call`)."""

    def __init__(self, name: str, module: str, args: list[str], *, ready_within: float, calls_within: float) -> None:
        self._name, self._module, self._args = name, module, args
        self._ready_within, self._calls_within = ready_within, calls_within
        self.url = ""
        self._control = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self._module, *self._args, stdout=asyncio.subprocess.PIPE
        )
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), self._ready_within)
        if not line:
            await self.__aexit__(None, None, None)
            raise RuntimeError(f"the {self._name} process exited before it printed its URLs")
        urls = json.loads(line)
        self.url, self._control = urls["url"], urls["control"]
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._calls_within))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.close()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()

    async def _call(self, route: str, body: dict[str, object]) -> dict[str, object]:
        assert self._http is not None
        async with self._http.post(f"{self._control}/{route}", json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"{self._name} /{route}: {response.status} {await response.text()}")
            return cast(dict[str, object], await response.json())


class PlatformProcess(ControlledProcess):
    """A :class:`Platform` in a subprocess: ``async with PlatformProcess("discord", ...) as platform``, then point
    the bot at ``platform.url`` and drive it with :meth:`connect`, :meth:`singles` and :meth:`burst`."""

    def __init__(self, kind: Kind, *, secret: str, last_token: str) -> None:
        super().__init__(
            "fake platform", "bench.platforms", [kind, secret, last_token], ready_within=60, calls_within=300
        )

    async def connect(self, events_url: str | None = None) -> None:
        await self._call("connect", {"events_url": events_url})

    async def singles(self, count: int) -> list[float]:
        return [float(ms) for ms in cast(list[float], (await self._call("singles", {"count": count}))["latencies_ms"])]

    async def first_words(self, first: int, count: int) -> tuple[list[float], list[float]]:
        answer = await self._call("first-words", {"first": first, "count": count})
        return (
            [float(ms) for ms in cast(list[float], answer["first_ms"])],
            [float(ms) for ms in cast(list[float], answer["final_ms"])],
        )

    async def burst(self, first: int, count: int) -> Burst:
        answer = await self._call("burst", {"first": first, "count": count})
        return Burst(float(cast(float, answer["seconds"])), float(cast(float, answer["cpu_seconds"])))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in KINDS:
        sys.exit(f"usage: python -m bench.platforms {{{','.join(KINDS)}}} SIGNING_SECRET LAST_TOKEN")
    asyncio.run(Platform(cast(Kind, sys.argv[1]), sys.argv[2], sys.argv[3]).serve())
