"""``teambot run`` as a subprocess in Slack HTTP mode, for tests that need a real process (signals, replicas)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlencode

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack, signed_headers

ROOT = Path(__file__).resolve().parents[1]
SECRET = "run-test-signing-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bot:
    """A ``teambot run`` subprocess in Slack HTTP mode, with its stderr collected as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.stderr: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.append(line.decode())

    async def up(self, http: httpx.AsyncClient) -> None:
        async with asyncio.timeout(30):
            while True:
                try:
                    if (await http.get(f"{self.url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert self.proc.returncode is None, "".join(self.stderr)
                await asyncio.sleep(0.05)

    async def send(self, http: httpx.AsyncClient, envelope: dict) -> None:
        body = json.dumps(envelope)
        headers = {"Content-Type": "application/json", **signed_headers(SECRET, body)}
        assert (await http.post(f"{self.url}/slack/events", content=body, headers=headers)).status_code == 200

    async def command(self, http: httpx.AsyncClient, form: dict[str, str]) -> int:
        """Post a signed slash command (``tests.fakes.slack.slash_command_form``), as Slack does in HTTP mode;
        the HTTP status of the bot's answer."""
        body = urlencode(form)
        headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(SECRET, body)}
        return (await http.post(f"{self.url}/slack/events", content=body, headers=headers)).status_code

    async def wait(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await self._reader
        return code


def teambot_argv(*args: str, discord_url: str | None = None) -> list[str]:
    """``teambot ARGS`` in a fresh interpreter; with ``discord_url``, its discord.py talks to the fake Discord there
    (``tests.fakes.discord.point_discord_at``), as ``SLACK_API_URL`` points the Slack SDK at the fake Slack."""
    if discord_url is None:
        return [sys.executable, "-m", "bot", *args]
    code = (
        # The context manager is kept in a name: collected, it would restore discord.py's real URLs.
        "import sys; from tests.fakes.discord import point_discord_at; pointed = point_discord_at(sys.argv.pop(1)); "
        "pointed.__enter__(); sys.argv[0] = 'teambot'; from bot.cli import main; main()"
    )
    return [sys.executable, "-c", code, discord_url, *args]


async def scrape(http: httpx.AsyncClient, url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families((await http.get(f"{url}/metrics")).text)
        for sample in family.samples
    }


async def start_bot(
    fake: FakeOpenAI,
    slack: FakeSlack,
    db: Path | str,
    http: httpx.AsyncClient,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Bot:
    """Start a bot on ``db`` (a SQLite path or a PostgreSQL URL) and wait until it answers /healthz."""
    port = free_port()
    proc = await spawn_bot(fake, slack, db, cwd=cwd, env={"TEAMBOT_HTTP_PORT": str(port), **(env or {})})
    bot = Bot(proc, port)
    await bot.up(http)
    return bot


async def spawn_bot(
    fake: FakeOpenAI,
    slack: FakeSlack,
    db: Path | str,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """``teambot run`` on ``db`` in Slack HTTP mode, its stderr piped; nothing awaited."""
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "OPENAI_BASE_URL": fake.base_url,
        "TEAMBOT_DB": str(db),
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.api_url,
        "TEAMBOT_HTTP_HOST": "127.0.0.1",
        "TEAMBOT_HTTP_PORT": "0",
        "TEAMBOT_STREAM_EDIT_INTERVAL": "0.2",
        "TEAMBOT_LOG_LEVEL": "INFO",
        **(env or {}),
    }
    folder = cwd or Path(db).parent
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", cwd=folder, env=environment, stderr=asyncio.subprocess.PIPE
    )
