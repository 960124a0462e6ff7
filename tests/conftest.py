"""Shared fixtures: a clean environment for every test, so a developer's own settings never leak in."""

from __future__ import annotations

import os

import pytest

_PREFIXES = ("OPENAI_", "TEAMBOT_", "SLACK_", "DISCORD_")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_PREFIXES):
            monkeypatch.delenv(name, raising=False)
