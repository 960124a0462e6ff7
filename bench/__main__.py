"""Run the benchmark and print (and write) its table: ``python -m bench [--quick] [--out FILE]``."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench.core import ModelPace, PostgresEngine, SQLiteEngine, run_caching, run_core
from bench.tools import run_tools
from bot import eventloop


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


Row = tuple[str, str, str]


async def run(quick: bool, pace: ModelPace) -> list[Row]:
    """Every measure on SQLite; the core's measures again on PostgreSQL where a server can be started."""
    from bench.e2e import run_e2e
    from bench.files import run_files
    from bench.threads import run_threads
    from tests.postgres_server import Unavailable, running_server

    with tempfile.TemporaryDirectory() as tmp:
        sqlite = await run_core(quick, SQLiteEngine(Path(tmp)), pace)
    try:
        with running_server() as server:
            postgres = dict(await run_core(quick, PostgresEngine(server.url()), pace))
        missing = "n/a"
    except Unavailable as exc:
        postgres, missing = {}, f"not measured: {exc}"
    rows: list[Row] = [(name, value, postgres.get(name, missing)) for name, value in sqlite]
    rows += [(name, value, "n/a (runs on SQLite)") for name, value in await run_e2e(quick)]
    rows += [(name, value, "n/a (runs on SQLite)") for name, value in await run_threads(quick)]
    with tempfile.TemporaryDirectory() as tmp:
        rows += [(name, value, "n/a (runs on SQLite)") for name, value in await run_caching(Path(tmp))]
    with tempfile.TemporaryDirectory() as tmp:
        rows += [(name, value, "n/a (runs on SQLite)") for name, value in await run_tools(quick, Path(tmp))]
        rows += [(name, value, "n/a (runs on SQLite)") for name, value in await run_files(quick, Path(tmp))]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that it runs, in seconds")
    parser.add_argument("--out", type=Path, default=Path("bench-results/latest.md"))
    default = ModelPace()
    parser.add_argument(
        "--first-byte", type=float, default=default.first_byte, help="overhead rows: model's seconds to first token"
    )
    parser.add_argument(
        "--tokens-per-second", type=float, default=default.tokens_per_second, help="overhead rows: model's pace"
    )
    parser.add_argument("--reply-tokens", type=int, default=default.reply_tokens, help="overhead rows: reply length")
    parser.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the bot's event loop, as TEAMBOT_UVLOOP picks it (default uvloop, where installed)",
    )
    args = parser.parse_args()
    pace = ModelPace(args.first_byte, args.tokens_per_second, args.reply_tokens)
    started = time.time()
    use_uvloop = args.event_loop == "uvloop"
    eventloop.tune_gc()  # as `teambot run` does
    rows = eventloop.run(run(args.quick, pace), use_uvloop=use_uvloop)
    loop = "uvloop" if use_uvloop and eventloop.loop_factory(True) else "asyncio"
    lines = [
        f"Machine: {machine()}",
        f"Command: {' '.join(['python -m bench', *sys.argv[1:]])} ({time.time() - started:.0f} s)",
        f"Model in the overhead rows: {pace.describe()}; the bot's event loop: {loop}",
        "",
        "| measure | SQLite | PostgreSQL |",
        "| --- | --- | --- |",
        *(f"| {name} | {lite} | {postgres} |" for name, lite, postgres in rows),
    ]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
