"""The console's side of tools: progress on stderr, approvals asked at the prompt (y/N), through run_console itself.

run_console runs its own event loop in the main thread (it needs the main thread for Ctrl-C), so the fake model is
served from a thread of its own here.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from adapters.console import run_console
from bot import texts
from bot.commands import CommandPolicy, Commands
from bot.conversation import ConversationCore, TurnSettings
from bot.guards import KeySource
from bot.llm import ChatClient, Endpoint, TokenCounter, model_http_client
from bot.store import open_store
from bot.tools import LoopSettings, ToolLoop, ToolPolicy, ToolRegistry, ToolRule
from tests.fakes.openai import FakeOpenAI
from tests.tools.harness import Desk

KEY = "sk-console-tools"


@pytest.fixture
def served() -> Iterator[FakeOpenAI]:
    """The fake model on a loop in another thread, for as long as the test runs."""
    ready = threading.Event()
    holder: dict[str, object] = {}

    def serve() -> None:
        async def main() -> None:
            stop = asyncio.Event()
            holder["loop"], holder["stop"] = asyncio.get_running_loop(), stop
            async with FakeOpenAI(api_key=KEY) as fake:
                holder["fake"] = fake
                ready.set()
                await stop.wait()

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield holder["fake"]  # type: ignore[misc]
    loop, stop = holder["loop"], holder["stop"]
    loop.call_soon_threadsafe(stop.set)  # type: ignore[attr-defined]
    thread.join(10)


class Script:
    """A LineReader that types the given lines, recording each prompt; then the end of the input."""

    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)
        self.prompts: list[str] = []

    def read(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)


def console_core(fake: FakeOpenAI, db: Path, desk: Desk) -> contextlib.AbstractAsyncContextManager[ConversationCore]:
    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[ConversationCore]:
        store = await open_store(str(db))
        try:
            async with model_http_client(5.0) as http:
                llm = ChatClient(http, Endpoint("primary", fake.base_url, "fake-model", KeySource(SecretStr(KEY))))
                counter = TokenCounter.load()
                # Only the console's own kind of message may use it: a DM of an admin, and it needs approval.
                policy = ToolPolicy([ToolRule(("time__*",), where="dm", admins_only=True, approval=True)])
                tools = ToolLoop(ToolRegistry([desk]), policy, counter, LoopSettings(timeout=2.0))
                yield ConversationCore(store, llm, counter, TurnSettings("test", 4000), tools=tools)
        finally:
            await store.close()

    return opened()


def test_the_console_asks_at_the_prompt_and_shows_progress_on_stderr(served: FakeOpenAI, tmp_path: Path) -> None:
    desk = Desk()
    script = Script(
        '[[call:time__now:{"city": "Tokyo"}]] time?',
        "y",
        "[[call:time__now]] and here?",
        "",  # just Enter: denied
        "[[call:time__now]] once more?",
    )  # then the end of the input: the last approval is denied, and the console ends
    out, err = io.StringIO(), io.StringIO()
    run_console(
        console_core(served, tmp_path / "teambot.db", desk),
        lambda core: Commands(core, CommandPolicy()),
        user_name="Ada",
        banner="banner",
        log="teambot.log",
        reader=script,
        out=out,
        err=err,
    )
    approvals = [p for p in script.prompts if "Run it?" in p]
    assert approvals[0] == texts.CONSOLE_APPROVE.format(tool="time__now", arguments='{"city": "Tokyo"}')
    assert len(approvals) == 3
    assert [args for _, args, _ in desk.calls] == [{"city": "Tokyo"}]
    shown = out.getvalue()
    assert "teambot> tool results: 14:00 in Tokyo" in shown
    assert shown.count(texts.TOOL_DENIED.format(tool="time__now")) == 2
    assert err.getvalue().count(texts.CONSOLE_TOOL_STATUS.format(status="Looking up time__now…")) == 3
    assert "Looking up" not in shown
