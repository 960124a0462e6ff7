"""The registry combines the providers' tools under unique names, read again on every turn."""

from __future__ import annotations

import logging

import pytest

from bot.tools import ToolRegistry
from tests.tools.harness import Desk


def test_names_stay_unique_the_first_provider_keeps_a_name_and_the_clash_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = Desk(), Desk()
    second.names = ["time__now", "extra__tool"]
    registry = ToolRegistry([first, second])
    with caplog.at_level(logging.WARNING, logger="bot.tools"):
        for _ in range(3):
            available = registry.available()
            assert list(available) == [*first.names, "extra__tool"]
            assert available["time__now"][1] is first and available["extra__tool"][1] is second
    assert [r.getMessage() for r in caplog.records].count(
        "two tool providers offer a tool named time__now; the second one is left out"
    ) == 1


def test_a_provider_whose_tools_change_is_read_again() -> None:
    desk = Desk()
    registry = ToolRegistry([desk])
    assert "time__now" in registry.available()
    desk.names = ["fresh__tool"]  # a server that sent tools/list_changed, or came back with other tools
    assert list(registry.available()) == ["fresh__tool"]
    desk.names = []  # a server that is down offers nothing meanwhile
    assert registry.available() == {}
    assert not ToolRegistry([]) and ToolRegistry([desk])
