"""The model client's tests: a loopback server answering from a script (tests/llm/script.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.llm.script import Script


@pytest.fixture
async def script() -> AsyncIterator[Script]:
    async with Script() as server:
        yield server
