"""Shared fixtures: a clean environment for every test, and a PostgreSQL server for the tests that need one."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.postgres_server import REQUIRE_ENV, PostgresServer, Unavailable, running_server

_PREFIXES = ("OPENAI_", "TEAMBOT_", "SLACK_", "DISCORD_")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_PREFIXES):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One server for the whole run; skipped, with the reason shown, only where none can start and CI is not
    asking for one."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_server())
        except Unavailable as exc:
            if os.environ.get(REQUIRE_ENV):
                pytest.fail(f"PostgreSQL is required ({REQUIRE_ENV} is set) but cannot start: {exc}")
            pytest.skip(f"no PostgreSQL server: {exc}")
        yield server


@pytest.fixture
async def postgres_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A new, empty database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_server.url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield postgres_server.url(name)
    admin = await asyncpg.connect(postgres_server.url())
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
