"""The rows a speed change moves, one run, as one JSON line: for back-to-back runs of two checkouts.

``python -m bench.compare [--core] [--pg] [--e2e]`` from a checkout (run it from each in turn, A, B, A, B, on a
quiet machine: hour to hour this machine moves more than most changes do). ``--core``: overhead of one
conversation x 100 turns, throughput at an instant model (100 conversations x 5), and 500 conversations x 4
turns with a 3 s pause, on SQLite; ``--pg``: the 500 again on a throwaway PostgreSQL; ``--e2e``: each platform's
row through its real SDK (50 single mentions, then a burst of 1,000). A burst gives (mentions/s, the bot's
share of a core).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.core import ModelPace, PostgresEngine, SQLiteEngine, overhead, throughput
from bot import eventloop


def _pair(result: dict[str, float]) -> tuple[float, float]:
    return round(result["p50"], 2), round(result["p99"], 2)


async def measure(core: bool, postgres: bool, e2e: bool, commit: str) -> dict[str, Any]:
    pace = ModelPace()
    out: dict[str, Any] = {"commit": commit, "at": time.strftime("%H:%M:%S"), "load": os.getloadavg()[0]}
    if core:
        with tempfile.TemporaryDirectory() as tmp:
            engine = SQLiteEngine(Path(tmp))
            out["one"] = _pair(await overhead(1, 100, engine, pace))
            out["throughput"] = round(await throughput(100, 5, engine))
            out["c500"] = _pair(await overhead(500, 4, engine, pace, pause=3.0))
    if postgres:
        from tests.postgres_server import running_server

        with running_server() as server:
            out["pg500"] = _pair(await overhead(500, 4, PostgresEngine(server.url()), pace, pause=3.0))
    if e2e:
        from bench.e2e import REPLY_TOKENS
        from bench.e2e import measure as measure_platform
        from bench.model import ModelProcess
        from bench.platforms import KINDS

        with tempfile.TemporaryDirectory() as tmp:
            async with ModelProcess(reply_tokens=REPLY_TOKENS) as model:
                for kind in KINDS:
                    measured = await measure_platform(kind, model, Path(tmp), 50, 1000)
                    out[kind] = (round(measured.rate), round(measured.bot_cpu, 2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--core", action="store_true")
    parser.add_argument("--pg", action="store_true")
    parser.add_argument("--e2e", action="store_true")
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    result = eventloop.run(measure(args.core, args.pg, args.e2e, head.stdout.strip()), use_uvloop=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
