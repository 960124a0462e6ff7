"""The console adapter as a person uses it: ``teambot console`` in a subprocess, typing into its stdin."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import texts
from tests.fakes.openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
PROMPT = b"you> "


class Console:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.transcript = b""

    async def until_prompt(self) -> str:
        """Everything printed up to the next prompt."""
        assert self.proc.stdout is not None
        out = await asyncio.wait_for(self.proc.stdout.readuntil(PROMPT), 20)
        self.transcript += out
        return out[: -len(PROMPT)].decode()

    async def say(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.until_prompt()

    async def close(self) -> tuple[int, str]:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        code = await asyncio.wait_for(self.proc.wait(), 20)
        return code, (await self.proc.stderr.read()).decode()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-console-test-key", chunk_delay=0.001) as server:
        yield server


async def start(fake: FakeOpenAI, db: Path, *extra_env: tuple[str, str]) -> Console:
    return await start_at(fake.base_url, db, ("OPENAI_API_KEY", "sk-console-test-key"), *extra_env)


async def start_at(base_url: str, db: Path, *extra_env: tuple[str, str]) -> Console:
    """``teambot console`` on ``db``, talking to the model server at ``base_url``; returns at its first prompt."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OPENAI_BASE_URL": base_url,
        "TEAMBOT_DB": str(db),
        "TEAMBOT_MAX_RETRIES": "1",
        **dict(extra_env),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "console",
        "--name",
        "Ada",
        cwd=db.parent,
        env=env | {"PYTHONPATH": str(ROOT)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    console = Console(proc)
    banner = await console.until_prompt()
    assert "console:local" in banner and base_url in banner
    return console


async def test_a_conversation_survives_a_restart_and_reset_forgets_it(fake: FakeOpenAI, tmp_path: Path) -> None:
    db = tmp_path / "teambot.db"
    console = await start(fake, db)
    assert await console.say("my name is Ada and I like teal") == "teambot> echo: Ada: my name is Ada and I like teal\n"
    assert (await console.close())[0] == 0

    console = await start(fake, db)  # a new process: only the database remembers
    await console.say("what colour do I like?")
    sent = [m["content"] for m in fake.requests[-1]["messages"] if m["role"] != "system"]
    assert sent == [
        "Ada: my name is Ada and I like teal",
        "echo: Ada: my name is Ada and I like teal",
        "Ada: what colour do I like?",
    ]
    assert (
        await console.say("/reset")
        == "teambot> Forgot 4 messages of this conversation. The next mention starts fresh.\n"
    )
    await console.say("hello again")
    assert [m["content"] for m in fake.requests[-1]["messages"] if m["role"] == "user"] == ["Ada: hello again"]
    assert console.proc.stdin is not None
    console.proc.stdin.write(b"/exit\n")
    code = await asyncio.wait_for(console.proc.wait(), 20)  # /exit ends it while stdin is still open
    assert console.proc.stderr is not None
    stderr = (await console.proc.stderr.read()).decode()
    assert code == 0 and "Traceback" not in stderr
    assert fake.headers[-1]["Authorization"] == "Bearer sk-console-test-key"


async def test_one_long_answer_does_not_erase_the_conversation_before_it(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.chunk_delay = 0.0
    console = await start(fake, tmp_path / "t.db", ("TEAMBOT_HISTORY_TOKENS", "2000"))
    await console.say("my name is Ada and I like teal")
    essay = await console.say("write me an essay [[long:50000]]")
    assert essay.startswith("teambot> Paragraph 1: ") and len(essay) > 50_000
    out = await console.say("what did the first paragraph say?")
    # The model gets the essay's beginning, cut to fit the budget, rather than no history at all.
    sent = fake.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "assistant", "user"]
    assert sent[1]["content"].startswith("Paragraph 1: lorem ipsum") and sent[1]["content"].endswith(" […]")
    # And the person is told, in one line under the answer.
    assert out == "teambot> echo: Ada: what did the first paragraph say?\nteambot> " + texts.HISTORY_CUT + "\n"
    code, stderr = await console.close()
    assert code == 0 and "Traceback" not in stderr


async def test_a_first_answer_without_a_key_from_the_fake_model_the_readme_names(tmp_path: Path) -> None:
    # README: `python -m tests.fakes.openai` in a checkout, then the line it prints, in another terminal.
    fake = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.openai",
        "--port",
        "0",
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert fake.stdout is not None and fake.stderr is not None
    try:
        printed = b""
        async with asyncio.timeout(20):
            while b"OPENAI_BASE_URL=" not in printed:
                line = await fake.stdout.readline()
                assert line, (await fake.stderr.read()).decode()
                printed += line
        found = re.search(
            r"^  OPENAI_BASE_URL=(http://127\.0\.0\.1:\d+/v1) \.venv/bin/teambot console$", printed.decode(), re.M
        )
        assert found, printed.decode()
        console = await start_at(found.group(1), tmp_path / "teambot.db")  # no OPENAI_API_KEY at all
        assert await console.say("hello") == "teambot> echo: Ada: hello\n"
        code, stderr = await console.close()
        assert code == 0 and "Traceback" not in stderr
    finally:
        fake.send_signal(signal.SIGINT)  # Ctrl-C in its terminal
        await asyncio.wait_for(fake.wait(), 20)
    assert fake.returncode == 0 and b"Traceback" not in await fake.stderr.read()


async def test_model_errors_reach_the_user_without_a_traceback(fake: FakeOpenAI, tmp_path: Path) -> None:
    console = await start(fake, tmp_path / "t.db")
    assert await console.say("[[quota]] hi") == (
        "teambot> The AI service's quota or credit is used up; an admin must check the provider account.\n"
    )
    out = await console.say("[[cut]] tell me a story about a lighthouse keeper")
    assert out.startswith("teambot> echo: Ada: [[cut]]") and "The answer was cut off" in out
    assert "Unknown command" in await console.say("/nope")
    code, stderr = await console.close()
    assert code == 0 and "Traceback" not in stderr
    assert "sk-console-test-key" not in stderr + console.transcript.decode()


async def test_a_wrong_key_is_explained(fake: FakeOpenAI, tmp_path: Path) -> None:
    console = await start(fake, tmp_path / "t.db", ("OPENAI_API_KEY", "sk-wrong-key-0000000"))
    assert await console.say("hi") == "teambot> The API key was rejected; an admin must check OPENAI_API_KEY.\n"
    code, stderr = await console.close()
    assert code == 0 and "sk-wrong-key-0000000" not in stderr


async def test_usage_system_and_model_in_the_console(fake: FakeOpenAI, tmp_path: Path) -> None:
    console = await start(fake, tmp_path / "t.db", ("TEAMBOT_MODELS", "other-model"))
    await console.say("hello")
    usage = await console.say("/usage")
    assert "• This channel: today" in usage and "• You: today" in usage
    assert (
        await console.say("/system Reply in haiku.") == "teambot> Done: this channel now uses the new system prompt.\n"
    )
    assert await console.say("/model other-model") == "teambot> Done: this channel now uses other-model.\n"
    await console.say("and now?")
    assert fake.requests[-1]["model"] == "other-model"
    assert fake.requests[-1]["messages"][0]["content"].startswith("Reply in haiku.")
    code, stderr = await console.close()
    assert code == 0 and "Traceback" not in stderr


async def test_stdin_from_dev_null_ends_the_console_cleanly(fake: FakeOpenAI, tmp_path: Path) -> None:
    # `teambot console < /dev/null` (a cron job, a CI step): end of input at once, not a hang or a traceback.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "console",
        cwd=tmp_path,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "sk-console-test-key",
            "TEAMBOT_DB": str(tmp_path / "teambot.db"),
        },
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and b"Traceback" not in stderr, stderr.decode()
