"""The event loop teambot runs on: uvloop where it is installed and wanted (TEAMBOT_UVLOOP), else asyncio's own.

uvloop (libuv under asyncio's API) does the loop's own work, the sockets, timers and callbacks of every
streamed token, in C: see BENCHMARKS.md for what it gave. It is a dependency on CPython outside Windows; where it
cannot be imported (another platform or interpreter, a build that failed) the bot runs on asyncio's loop, the same
code, only slower.

:func:`tune_gc` sets up the cyclic garbage collector for a long-running server (see its docstring).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Net container allocations between two collections of the garbage collector's youngest generation (Python's
#: default: 700). See :func:`tune_gc`.
GC_YOUNG_THRESHOLD = 10_000

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(use_uvloop: bool) -> LoopFactory | None:
    """uvloop's ``new_event_loop`` when wanted and importable; None (asyncio's default loop) otherwise."""
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        log.info("uvloop is not installed here: running on asyncio's own event loop")
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory(use_uvloop)) as runner:
        return runner.run(main)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a server with many turns in flight; called once, at start-up.

    Profiled in a Discord burst (1,000 mentions at once, BENCHMARKS.md), the collector took over a quarter of the
    bot's CPU: every 700 allocations it walked the young objects of every turn under way, and those that lived
    through a few such walks (a turn lasts longer than 700 allocations) moved to the oldest generation, which then
    got walked whole, with the ~130,000 objects of the imported libraries, several times a burst. So:

    - ``gc.freeze()``: what exists now (modules, classes, settings: alive for the life of the process) is never
      walked again;
    - the youngest generation is collected every :data:`GC_YOUNG_THRESHOLD` allocations instead of 700. Most
      objects die by reference counting before then, whatever the threshold; what waits longer is only cyclic
      garbage, a few thousand objects at most.

    The older generations keep Python's ratios. Not done by :func:`run`: the tests run many loops in one process.
    """
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)
