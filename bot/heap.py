"""What the process does with its heap once it has started: keep the start-up objects out of the cyclic collector.

Everything loaded before the first message (settings, the token counter's tables, SDK clients, the platform's
caches, the modules themselves) lives as long as the process. CPython's full collection would walk all of it
again each time, and that walk runs on the event loop: with about 100,000 such objects it took 30-70 ms, landing
on whichever turns were streaming at that moment (BENCHMARKS.md, "Round three"). ``gc.freeze()`` moves them to a
generation the collector never walks; what turns create is still collected as before.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def settle() -> None:
    """Collect once, then freeze what is left: call when start-up is over, before the first message is taken."""
    gc.collect()
    gc.freeze()
    log.debug("heap settled: %d objects frozen out of the collector's walk", gc.get_freeze_count())
