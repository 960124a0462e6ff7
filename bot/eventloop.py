"""The event loop teambot runs on: uvloop where it is installed and wanted (TEAMBOT_UVLOOP), else asyncio's own.

uvloop (libuv under asyncio's API) does the loop's own work, the sockets, timers and callbacks of every
streamed token, in C: see BENCHMARKS.md for what it gave. It is a dependency on CPython outside Windows; where it
cannot be imported (another platform or interpreter, a build that failed) the bot runs on asyncio's loop, the same
code, only slower.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

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
