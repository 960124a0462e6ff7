"""Run the benchmark and print (and write) its table: ``python -m bench [--quick] [--out FILE]``."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path

from bench.core import run_core


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


async def run(quick: bool) -> list[tuple[str, str]]:
    rows = await run_core(quick)
    from bench.e2e import run_e2e

    rows += await run_e2e(quick)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that it runs, in seconds")
    parser.add_argument("--out", type=Path, default=Path("bench-results/latest.md"))
    args = parser.parse_args()
    started = time.time()
    rows = asyncio.run(run(args.quick))
    lines = [
        f"Machine: {machine()}",
        f"Command: python -m bench{' --quick' if args.quick else ''}  ({time.time() - started:.0f} s)",
        "",
        "| measure | result |",
        "| --- | --- |",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
