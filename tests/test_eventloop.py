"""The event loop: uvloop where it is installed and wanted (TEAMBOT_UVLOOP), asyncio's own otherwise."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest

from bot import eventloop, heap
from bot.config import Settings


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_bot_runs_on_uvloop_by_default() -> None:
    assert Settings().uvloop is True
    assert eventloop.run(_loop_module(), use_uvloop=True).startswith("uvloop")


def test_teambot_uvloop_false_keeps_asyncios_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAMBOT_UVLOOP", "false")
    settings = Settings()
    assert settings.uvloop is False
    assert eventloop.loop_factory(settings.uvloop) is None
    assert eventloop.run(_loop_module(), use_uvloop=settings.uvloop).startswith("asyncio")


def test_without_uvloop_installed_the_bot_falls_back_to_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what an interpreter without the package sees: ImportError
    assert eventloop.loop_factory(True) is None
    assert eventloop.run(_loop_module(), use_uvloop=True).startswith("asyncio")


def test_settling_the_heap_freezes_start_up_and_collects_the_young_generation_less_often() -> None:
    before = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, before[1], before[2])
        assert before[0] < heap.YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
