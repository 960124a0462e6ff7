"""The cyclic garbage collector set up for a server with many turns in flight: :func:`settle`, once it is up.

Every collection runs on the event loop and stalls every turn under way. Two costs were measured (BENCHMARKS.md,
"Round three"):

- Everything loaded before the first message (modules, settings, the token counter's tables, SDK clients, the
  platform's caches; about 100,000 to 130,000 objects) lives as long as the process, yet each full collection
  walked it again: 30-70 ms at a time. ``gc.freeze()`` moves it where the collector never looks.
- The youngest generation was collected every 700 allocations, and each time it walked the objects of every turn
  under way (about 15,000 at 500 conversations: 3-9 ms), which, outliving a few such walks (a turn lasts longer
  than 700 allocations), moved on to be walked again in the older generations. In a Discord burst the collector
  took over a quarter of the bot's CPU. Every :data:`YOUNG_THRESHOLD` allocations instead: most objects die by
  reference counting long before, and the turn's hot path makes no cyclic garbage (tests/llm/test_client.py), so
  what waits longer is little.
- At 10,000 a young collection still came every ~1,400 streamed turns: the count the collector keeps rose by about
  7 a turn, though fewer than 2 objects a turn outlive it (its count of the young never goes below zero). Each
  walked every object of the turns then in flight (15,000-25,000 at 500 conversations: coroutines, aiohttp's
  requests and responses, timers) for 4-8 ms on the loop, to find 2 objects of garbage: lumps in the
  500-conversation tail. A collection walks about as much whatever the threshold (what is in flight), so at
  :data:`YOUNG_THRESHOLD` they come five times less often; cyclic garbage (a Discord answer's ~20 objects, an
  exception's traceback) waits for up to that many objects, a few MB.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

#: Net container allocations between two collections of the youngest generation (Python's default: 700).
YOUNG_THRESHOLD = 50_000


def settle() -> None:
    """Collect once, freeze what is left, collect the young generation less often: call when start-up is over,
    before the first message is taken. The older generations keep Python's ratios."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)
    log.debug("heap settled: %d objects frozen out of the collector's walk", gc.get_freeze_count())
