"""The 500-conversation overhead row again, spread over several bot processes sharing one PostgreSQL database.

One process's event loop is what holds the tail of that row back: a turn waits behind other conversations'
streamed tokens. Several replicas behind a load balancer (teambot's PostgreSQL mode: the database, not memory,
decides whose turn it is) each carry a share of them. This measures that answer with the load of
:func:`bench.core.overhead`: conversation c starts at ``(turn_seconds + pause) * c / concurrency``, asks ``turns``
questions ``pause`` seconds after each answer, and each sample is the bot's part of a turn, (model arrival - handle
start) + (handle end - model last byte). Here conversation c goes to bot process ``c % replicas``, as a load
balancer that routes a conversation to one replica would; each process is a real core (:func:`bench.core.bench_core`)
on the same database, and one model process (:class:`bench.model.ModelProcess`) serves them all and times every
request on the one clock every process shares (``time.monotonic``).

Two ways in:

- ``python -m bench`` shows one run per process count as rows of its table (PostgreSQL column).
- ``python -m bench.replicas [--runs 3] [--replicas 1 2 4] [--quick]`` runs only these rows, each count ``runs``
  times, on a throwaway PostgreSQL server.

Each row gives p50 and p99 of the samples, each bot process's share of a core and its CPU per mention, and the
share of a core the PostgreSQL server and the model process used meanwhile: on a machine with fewer cores than
processes, which of them was short of CPU.

A bot process is ``python -m bench.replicas worker CONFIG`` (CONFIG: JSON): it opens its core, answers one warm-up
turn in a conversation of its own, prints ``ready``, waits for the start time (a monotonic clock reading) on its
stdin, drives its share of the conversations and prints one JSON line, ``{"spans": {tag: [started, finished]},
"cpu_seconds": ..., "seconds": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.core import ModelPace, PostgresEngine, add_row, bench_core, percentile
from bench.model import ModelProcess
from bot import eventloop
from bot.messages import ConversationKey, IncomingMessage
from bot.store import open_store

#: (conversations, turns each, seconds a person pauses after an answer): the 500-conversation row of
#: bench.core.OVERHEAD_LOADS; in quick mode a load that only shows the row runs.
LOAD = (500, 4, 3.0)
QUICK_LOAD = (20, 2, 0.2)
#: Bot process counts; quick mode stops at two, which already shows the split working.
REPLICAS = (1, 2, 4)
QUICK_REPLICAS = (1, 2)
#: Seconds every bot process gets to open its core and report ready (imports and the tokenizer on a busy machine).
_READY_TIMEOUT_S = 120.0
#: Seconds a bot process may take over its share of the load (about 20 s on a quiet machine) before it is a hang.
_RUN_TIMEOUT_S = 600.0
#: Seconds between sending the start time and the start, so that every process has read it before.
_START_MARGIN_S = 0.5


@dataclass(frozen=True, slots=True)
class Spread:
    """One run: the bot's added milliseconds per turn, and each bot process's CPU seconds and wall seconds."""

    samples_ms: list[float]
    cpu_seconds: list[float]
    seconds: list[float]
    #: The PostgreSQL server's and the model process's CPU seconds meanwhile; None where they cannot be read.
    server_cpu_seconds: float | None = None
    model_cpu_seconds: float | None = None

    def describe(self) -> str:
        shares = ", ".join(f"{cpu / wall:.0%}" for cpu, wall in zip(self.cpu_seconds, self.seconds, strict=True))
        per_mention = sum(self.cpu_seconds) / len(self.samples_ms) * 1000
        others = [
            f"{name} {cpu / max(self.seconds):.0%} of a core"
            for name, cpu in (("PostgreSQL server", self.server_cpu_seconds), ("model", self.model_cpu_seconds))
            if cpu is not None
        ]
        server = "".join(f"; {other}" for other in others)
        return (
            f"p50 {percentile(self.samples_ms, 50):.2f} ms, p99 {percentile(self.samples_ms, 99):.2f} ms "
            f"(n={len(self.samples_ms)}); bot CPU {shares} of a core, {per_mention:.2f} ms per mention{server}"
        )


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (the 3rd field on is [1]); None once it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _postmaster(data_directory: Path) -> int | None:
    try:
        with open(data_directory / "postmaster.pid") as pidfile:
            return int(pidfile.readline())
    except (OSError, ValueError):
        return None


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU seconds so far, from /proc (another process: no process_time for it)."""
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def model_pid() -> int | None:
    """The pid of this process's :class:`bench.model.ModelProcess` (the child running ``bench.model``), to read
    its CPU: a model process short of CPU stamps requests late, and its lag would count as the bot's."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None and int(fields[1]) == os.getpid():
            try:
                if b"bench.model" in (entry / "cmdline").read_bytes().split(b"\0"):
                    return int(entry.name)
            except OSError:
                continue
    return None


class ServerCPU:
    """CPU seconds of a PostgreSQL server's processes: the postmaster, its children alive, and those it has reaped
    (a backend ends with its connection, and its time moves into the postmaster's children's time). It tells whether
    the shared database, rather than the bot processes, is what a figure waits on."""

    def __init__(self, pid: int) -> None:
        self._pid = pid

    @classmethod
    async def of(cls, db: str) -> ServerCPU | None:
        """The server of ``db``; None where its files or /proc cannot be read (another machine, another user)."""
        conn = await asyncpg.connect(db)
        try:
            folder = await conn.fetchval("SHOW data_directory")
        finally:
            await conn.close()
        pid = _postmaster(Path(folder))
        return cls(pid) if pid is not None and _stat(pid) is not None else None

    def seconds(self) -> float:
        fields = _stat(self._pid)
        if fields is None:
            return float("nan")
        total = sum(int(field) for field in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (child := _stat(int(entry.name))) is not None and int(child[1]) == self._pid:
                total += (int(child[11]) + int(child[12])) / os.sysconf("SC_CLK_TCK")
        return total


def row_name(replicas: int, quick: bool) -> str:
    concurrency, _, pause = QUICK_LOAD if quick else LOAD
    processes = "1 bot process" if replicas == 1 else f"{replicas} bot processes"
    return (
        f"bot overhead per mention, {concurrency} concurrent conversations, {pause:g} s pause after each answer, "
        f"over {processes} sharing one PostgreSQL database (conversation c to process c mod {replicas})"
    )


def row_names(quick: bool) -> list[str]:
    """The rows :func:`run_replicas` gives, known without a server: a table without PostgreSQL still names them."""
    return [row_name(n, quick) for n in (QUICK_REPLICAS if quick else REPLICAS)]


async def spread(replicas: int, engine: PostgresEngine, pace: ModelPace, load: tuple[int, int, float]) -> Spread:
    """One run of ``load`` over ``replicas`` bot processes on a new database, with a model of its own."""
    concurrency, turns, pause = load
    db = await engine.new_db(f"replicas-{replicas}")
    # Migrated here, once, so that no process's start-up includes it (they would wait on its lock in turn).
    store = await open_store(db)
    await store.close()
    # The bot processes run on the loop this one runs on (uvloop unless --event-loop asyncio).
    uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    async with ModelProcess(
        first_byte=pace.first_byte, tokens_per_second=pace.tokens_per_second, reply_tokens=pace.reply_tokens
    ) as model:
        config = {
            "db": db,
            "model": model.base_url,
            "replicas": replicas,
            "concurrency": concurrency,
            "turns": turns,
            "pause": pause,
            "turn_seconds": pace.turn_seconds,
            "uvloop": uvloop,
        }
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.replicas",
                "worker",
                json.dumps({**config, "index": index}),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for index in range(replicas)
        ]
        try:
            results, server_cpu, model_cpu = await _drive(workers, await ServerCPU.of(db), model_pid())
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()
        async with httpx.AsyncClient() as http:
            timings = await model.timings(http)
    spans: dict[str, tuple[float, float]] = {}
    for index, result in enumerate(results):
        mine = {tag: (pair[0], pair[1]) for tag, pair in result["spans"].items()}
        # Each conversation is one process's alone: a wrong split would leave another process's load on this one.
        assert all(int(tag[1:].split("-")[0]) % replicas == index for tag in mine), (index, sorted(mine)[:5])
        spans.update(mine)
    expected = {f"c{c}-t{t}" for c in range(concurrency) for t in range(turns)}
    assert set(spans) == expected, f"{len(expected - set(spans))} turns missing"
    samples = []
    for tag, (started, finished) in spans.items():
        # The model sees the question as the core sends it: "name: text".
        arrived, last_byte = timings[f"u: {tag}"]
        samples.append(((arrived - started) + (finished - last_byte)) * 1000)
    cpu, seconds = [float(r["cpu_seconds"]) for r in results], [float(r["seconds"]) for r in results]
    return Spread(samples, cpu, seconds, server_cpu, model_cpu)


async def _drive(
    workers: list[asyncio.subprocess.Process], server: ServerCPU | None, model: int | None
) -> tuple[list[dict[str, Any]], float | None, float | None]:
    """Wait until every bot process is ready, give them one start time, and collect what each measured; and the
    database server's and the model process's CPU seconds from the start until the last bot process is done."""
    for worker in workers:
        assert worker.stdout is not None
        line = await asyncio.wait_for(worker.stdout.readline(), _READY_TIMEOUT_S)
        if line.strip() != b"ready":
            raise RuntimeError(f"a bot process did not start (exit {await worker.wait()}; its errors are above)")
    start = time.monotonic() + _START_MARGIN_S
    server_before = server.seconds() if server is not None else 0.0
    model_before = cpu_seconds(model) if model is not None else 0.0
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(f"{start!r}\n".encode())
        await worker.stdin.drain()
    results = []
    for worker in workers:
        stdout, _ = await asyncio.wait_for(worker.communicate(), _RUN_TIMEOUT_S)
        if worker.returncode != 0:
            raise RuntimeError(f"a bot process failed (exit {worker.returncode}; its errors are above)")
        results.append(json.loads(stdout))
    server_cpu = server.seconds() - server_before if server is not None else None
    return results, server_cpu, (cpu_seconds(model) - model_before if model is not None else None)


async def run_replicas(
    quick: bool, engine: PostgresEngine, pace: ModelPace, runs: int = 1, counts: tuple[int, ...] = ()
) -> list[tuple[str, str]]:
    """One row per process count (``counts``, else the defaults); with ``runs`` > 1 each cell holds every run,
    separated by semicolons."""
    rows: list[tuple[str, str]] = []
    load = QUICK_LOAD if quick else LOAD
    for replicas in counts or (QUICK_REPLICAS if quick else REPLICAS):
        results = [await spread(replicas, engine, pace, load) for _ in range(runs)]
        add_row(rows, (row_name(replicas, quick), "; ".join(result.describe() for result in results)))
    return rows


async def _worker(config: dict[str, Any]) -> dict[str, Any]:
    index, replicas, concurrency = int(config["index"]), int(config["replicas"]), int(config["concurrency"])
    turns, pause, cycle = int(config["turns"]), float(config["pause"]), float(config["turn_seconds"])
    # The model process is the parent's; bench_core needs only its URL.
    model = ModelProcess()
    model.base_url = str(config["model"])
    spans: dict[str, tuple[float, float]] = {}
    async with bench_core(str(config["db"]), model) as core:
        # One turn of a conversation of its own first: a replica that has been up a while has its lock connection,
        # a pooled database connection and a model connection open, and the tokenizer warm; without it, each of N
        # processes would put those first costs into the samples, N times as many as one process does.
        warm = ConversationKey("bench", "W", f"warm-{index}")
        await core.handle(IncomingMessage(warm, f"warm-{index}", "U", "u", f"warm-{index}"), _noop)
        print("ready", flush=True)
        start = float(await asyncio.to_thread(sys.stdin.readline))

        async def conversation(c: int) -> None:
            # The same schedule as bench.core.overhead, from one start time shared by every process.
            await asyncio.sleep(max(0.0, start + (cycle + pause) * c / concurrency - time.monotonic()))
            key = ConversationKey("bench", "W", f"C{c}")
            for t in range(turns):
                if t:
                    await asyncio.sleep(pause)
                tag = f"c{c}-t{t}"
                started = time.monotonic()
                await core.handle(IncomingMessage(key, tag, "U", "u", tag), _noop)
                spans[tag] = (started, time.monotonic())

        await asyncio.sleep(max(0.0, start - time.monotonic()))
        cpu, began = time.process_time(), time.monotonic()
        await asyncio.gather(*(conversation(c) for c in range(index, concurrency, replicas)))
        cpu, seconds = time.process_time() - cpu, time.monotonic() - began
    return {"spans": spans, "cpu_seconds": cpu, "seconds": seconds}


async def _noop(piece: str) -> None:
    return None


async def _main(quick: bool, runs: int, counts: tuple[int, ...], pace: ModelPace) -> None:
    from tests.postgres_server import running_server

    with running_server() as server:
        await run_replicas(quick, PostgresEngine(server.url()), pace, runs, counts)


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        config = json.loads(sys.argv[2])
        result = eventloop.run(_worker(config), use_uvloop=bool(config["uvloop"]))
        sys.stdout.write(json.dumps(result) + "\n")
        return
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--runs", type=int, default=3, help="runs of each process count (default 3)")
    parser.add_argument("--replicas", type=int, nargs="+", help=f"bot process counts (default {REPLICAS})")
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    counts = tuple(args.replicas or ())
    eventloop.run(_main(args.quick, args.runs, counts, ModelPace()), use_uvloop=args.event_loop == "uvloop")


if __name__ == "__main__":
    main()
