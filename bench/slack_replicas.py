"""The replicas row through Slack HTTP mode: ``teambot run`` processes on one PostgreSQL database behind one fake
Slack that posts each event to the next process's events URL, round robin, as a load balancer in front of them would.

The load is :mod:`bench.replicas`' (that of :func:`bench.core.overhead`): conversation c (channel C<c>, person U<c>)
starts at ``(turn_seconds + pause) * c / concurrency`` and asks ``turns`` questions, each ``pause`` seconds after
the previous answer arrived in full at the fake Slack. A sample is the time from just before the fake posts the event
to the final text of its reply at the fake, less the model's own time for that turn (arrival to last byte): what
the bot, the SDKs and the fake Slack's Web API add. The bots are real ``python -m bot run`` processes with the guards
at their defaults, the call gate and queues sized for the load (as the end-to-end rows size them for a burst).

``python -m bench.slack_replicas [--runs 3] [--replicas 1 2 4] [--quick]`` runs only these rows on a throwaway
PostgreSQL server; ``python -m bench.slack_replicas platform SECRET LAST_TOKEN`` is the fake Slack's process
(:class:`LoadProcess` starts it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import httpx
from aiohttp import web

from bench.core import ModelPace, PostgresEngine, add_row
from bench.model import ModelProcess
from bench.platforms import SLACK_BOT_TOKEN, ControlledProcess, Platform
from bench.replicas import LOAD, QUICK_LOAD, REPLICAS, ServerCPU, Spread, cpu_seconds, model_pid
from bot import eventloop
from bot.store import open_store
from tests.fakes.slack import Posted, event_envelope, mention, signed_headers

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret"
#: The turn's tag in the question the model is sent ("person 7: c7-t2"), to match the model's timing to the turn.
_TAG = re.compile(r"c\d+-t\d+")
_READY_TIMEOUT_S = 120.0
#: Quick mode starts two bot processes only: enough to see the round robin work, and each start costs seconds.
QUICK_REPLICAS = (2,)


class LoadPlatform(Platform):
    """The fake Slack of the end-to-end rows, with a control route that plays the conversations' schedule:
    ``POST /load`` ``{"events_urls": [...], "concurrency", "turns", "pause", "cycle"}`` answers ``{"spans": {tag:
    [sent, final]}, "cpu_seconds", "seconds"}`` (``time.monotonic``, this process's CPU)."""

    def __init__(self, secret: str, last_token: str) -> None:
        super().__init__("slack-http", secret, last_token)
        self._finished: set[tuple[str, str]] = set()
        #: channel -> the future its current turn's final reply resolves (one turn at a time per conversation)
        self._waiting: dict[str, asyncio.Future[float]] = {}
        self.slack.watchers.append(self._see)

    def _see(self, message: Posted) -> None:
        key = (message.channel, message.ts)
        if key in self._finished or not message.text.rstrip().endswith(self.finals.last_token):
            return
        self._finished.add(key)
        waiting = self._waiting.pop(message.channel, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(time.monotonic())

    def control(self) -> web.Application:
        app = super().control()
        app.router.add_post("/load", self._load)
        return app

    async def _load(self, request: web.Request) -> web.Response:
        body = await request.json()
        urls = [str(url) for url in body["events_urls"]]
        concurrency, turns = int(body["concurrency"]), int(body["turns"])
        pause, cycle = float(body["pause"]), float(body["cycle"])
        spans: dict[str, tuple[float, float]] = {}
        sent = 0
        assert self._http is not None
        http = self._http

        async def conversation(c: int) -> None:
            nonlocal sent
            await asyncio.sleep(max(0.0, start + (cycle + pause) * c / concurrency - time.monotonic()))
            channel = f"C{c}"
            for t in range(turns):
                if t:
                    await asyncio.sleep(pause)
                tag = f"c{c}-t{t}"
                event = mention(f"<@UBOT> {tag}", channel=channel, user=f"U{c}", ts=f"{1_700_000_000 + c}.{t + 1:06d}")
                payload = json.dumps(event_envelope(event))
                # Round robin over the bot processes, per event, as a load balancer deals out requests.
                url = urls[sent % len(urls)]
                sent += 1
                final = asyncio.get_running_loop().create_future()
                self._waiting[channel] = final
                started = time.monotonic()
                headers = {"Content-Type": "application/json", **signed_headers(self.secret, payload)}
                async with http.post(url, data=payload, headers=headers) as response:
                    response.raise_for_status()
                spans[tag] = (started, await asyncio.wait_for(final, 120))

        start, cpu = time.monotonic(), time.process_time()
        await asyncio.gather(*(conversation(c) for c in range(concurrency)))
        return web.json_response(
            {"spans": spans, "cpu_seconds": time.process_time() - cpu, "seconds": time.monotonic() - start}
        )


class LoadProcess(ControlledProcess):
    """A :class:`LoadPlatform` in a subprocess: ``async with LoadProcess(last_token) as slack``, point the bots at
    ``slack.url``, then :meth:`load`."""

    def __init__(self, last_token: str) -> None:
        super().__init__(
            "fake Slack",
            "bench.slack_replicas",
            ["platform", SECRET, last_token],
            ready_within=_READY_TIMEOUT_S,
            calls_within=600,
        )

    async def load(self, events_urls: list[str], load: tuple[int, int, float], cycle: float) -> dict[str, Any]:
        concurrency, turns, pause = load
        body = {"events_urls": events_urls, "concurrency": concurrency, "turns": turns, "pause": pause, "cycle": cycle}
        return cast(dict[str, Any], await self._call("load", body))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start_bot(
    env: dict[str, str], workdir: Path, http: httpx.AsyncClient
) -> tuple[asyncio.subprocess.Process, str]:
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", cwd=workdir, env={**env, "TEAMBOT_HTTP_PORT": str(port)}
    )
    url = f"http://127.0.0.1:{port}"
    async with asyncio.timeout(_READY_TIMEOUT_S):
        while True:
            try:
                if (await http.get(f"{url}/healthz")).status_code == 200:
                    return proc, f"{url}/slack/events"
            except httpx.TransportError:
                pass
            if proc.returncode is not None:
                raise RuntimeError(f"a bot process exited at start ({proc.returncode}; its errors are above)")
            await asyncio.sleep(0.1)


async def spread_http(
    replicas: int, engine: PostgresEngine, pace: ModelPace, load: tuple[int, int, float], **settings: str
) -> tuple[Spread, float]:
    """One run of ``load`` through the fake Slack over ``replicas`` ``teambot run`` processes on a new database;
    also the fake Slack's CPU seconds. ``settings``: more environment variables for the bots (to find what a
    figure depends on)."""
    concurrency, turns, _ = load
    db = await engine.new_db(f"slack_replicas-{replicas}")
    store = await open_store(db)
    await store.close()
    uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    last_token = f"tok{pace.reply_tokens - 1}"
    async with (
        ModelProcess(
            first_byte=pace.first_byte, tokens_per_second=pace.tokens_per_second, reply_tokens=pace.reply_tokens
        ) as model,
        LoadProcess(last_token) as slack,
        httpx.AsyncClient() as http,
    ):
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "OPENAI_BASE_URL": model.base_url,
            "OPENAI_MODEL": "bench",
            "TEAMBOT_DB": db,
            "SLACK_BOT_TOKEN": SLACK_BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": f"{slack.url}/api/",
            "TEAMBOT_HTTP_HOST": "127.0.0.1",
            "TEAMBOT_LOG_LEVEL": "WARNING",
            "TEAMBOT_UVLOOP": "true" if uvloop else "false",
            # Sized for the load: the defaults (8 calls at once, 64 queued) would make it a measure of refusals.
            "TEAMBOT_MAX_CONCURRENT_CALLS": str(concurrency),
            "TEAMBOT_MAX_QUEUED_CALLS": str(concurrency),
            **settings,
        }
        bots: list[asyncio.subprocess.Process] = []
        try:
            with tempfile.TemporaryDirectory() as workdir:
                # A folder of its own as the working directory: no .env of the developer's is read.
                started = [await _start_bot(env, Path(workdir), http) for _ in range(replicas)]
                bots = [proc for proc, _ in started]
                server = await ServerCPU.of(db)
                server_before = server.seconds() if server is not None else 0.0
                model_process = model_pid()
                model_before = cpu_seconds(model_process) if model_process is not None else 0.0
                before = [cpu_seconds(proc.pid) for proc in bots]
                result = await slack.load([url for _, url in started], load, pace.turn_seconds)
                cpu = [cpu_seconds(proc.pid) - was for proc, was in zip(bots, before, strict=True)]
                server_cpu = server.seconds() - server_before if server is not None else None
                model_cpu = cpu_seconds(model_process) - model_before if model_process is not None else None
        finally:
            for proc in bots:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in bots:
                await asyncio.wait_for(proc.wait(), 60)
        model_timings = await model.timings(http)
    timings = {}
    for question, pair in model_timings.items():
        found = _TAG.search(question)
        if found:
            timings[found.group()] = pair
    spans = {tag: (float(pair[0]), float(pair[1])) for tag, pair in result["spans"].items()}
    expected = {f"c{c}-t{t}" for c in range(concurrency) for t in range(turns)}
    assert set(spans) == expected == set(timings), f"{len(expected - set(spans))} turns unanswered"
    samples = []
    for tag, (sent, final) in spans.items():
        arrived, last_byte = timings[tag]
        samples.append(((final - sent) - (last_byte - arrived)) * 1000)
    seconds = float(result["seconds"])
    return Spread(samples, cpu, [seconds] * replicas, server_cpu, model_cpu), float(result["cpu_seconds"])


def row_name(replicas: int, quick: bool) -> str:
    concurrency, _, pause = QUICK_LOAD if quick else LOAD
    processes = "1 teambot run process" if replicas == 1 else f"{replicas} teambot run processes"
    return (
        f"Slack HTTP mode, event to final reply less the model's time, {concurrency} concurrent conversations, "
        f"{pause:g} s pause after each answer, events dealt round robin to {processes} sharing one PostgreSQL database"
    )


def row_names(quick: bool) -> list[str]:
    return [row_name(n, quick) for n in (QUICK_REPLICAS if quick else REPLICAS)]


async def run_slack_replicas(
    quick: bool, engine: PostgresEngine, pace: ModelPace, runs: int = 1, counts: tuple[int, ...] = ()
) -> list[tuple[str, str]]:
    """One row per process count, as :func:`bench.replicas.run_replicas`, plus the fake Slack's CPU."""
    rows: list[tuple[str, str]] = []
    load = QUICK_LOAD if quick else LOAD
    for replicas in counts or (QUICK_REPLICAS if quick else REPLICAS):
        cells = []
        for _ in range(runs):
            spread, slack_cpu = await spread_http(replicas, engine, pace, load)
            cells.append(f"{spread.describe()}; fake Slack {slack_cpu / spread.seconds[0]:.0%} of a core")
        add_row(rows, (row_name(replicas, quick), "; ".join(cells)))
    return rows


async def _main(quick: bool, runs: int, counts: tuple[int, ...], pace: ModelPace) -> None:
    from tests.postgres_server import running_server

    with running_server() as server:
        await run_slack_replicas(quick, PostgresEngine(server.url()), pace, runs, counts)


def main() -> None:
    if sys.argv[1:2] == ["platform"]:
        asyncio.run(LoadPlatform(sys.argv[2], sys.argv[3]).serve())
        return
    parser = argparse.ArgumentParser(
        prog="python -m bench.slack_replicas", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--runs", type=int, default=3, help="runs of each process count (default 3)")
    parser.add_argument("--replicas", type=int, nargs="+", help=f"bot process counts (default {REPLICAS})")
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    counts = tuple(args.replicas or ())
    eventloop.run(_main(args.quick, args.runs, counts, ModelPace()), use_uvloop=args.event_loop == "uvloop")


if __name__ == "__main__":
    main()
