"""``teambot`` as a subprocess: ``teambot run`` in Slack HTTP mode for tests that need a real process (signals,
replicas), any other command with :func:`teambot`, and a file made read-only in a way that binds root too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
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

    async def logged(self, text: str, within: float = 15, count: int = 1) -> list[str]:
        """Until ``text`` has appeared in ``count`` lines of stderr (another process: nothing to be notified of)."""
        async with asyncio.timeout(within):
            while len(found := [line for line in self.stderr if text in line]) < count:
                assert self.proc.returncode is None, "".join(self.stderr)
                await asyncio.sleep(0.05)
        return found

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
    (see :func:`teambot_command`), as ``SLACK_API_URL`` points the Slack SDK at the fake Slack."""
    return [*teambot_command(discord_url), *args]


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
    discord_url: str | None = None,
    discord_gateway: str | None = None,
) -> Bot:
    """Start a bot on ``db`` (a SQLite path or a PostgreSQL URL) and wait until it answers /healthz."""
    port = free_port()
    env = {"TEAMBOT_HTTP_PORT": str(port), **(env or {})}
    proc = await spawn_bot(fake, slack, db, cwd=cwd, env=env, discord_url=discord_url, discord_gateway=discord_gateway)
    bot = Bot(proc, port)
    try:
        await bot.up(http)
    except BaseException:
        # A bot that never came up (or a test cancelled meanwhile) would otherwise outlive the test and keep its
        # port, its database and the fakes' connections: the next tests would meet it.
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await bot._reader
        raise
    return bot


async def spawn_bot(
    fake: FakeOpenAI,
    slack: FakeSlack,
    db: Path | str,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    discord_url: str | None = None,
    discord_gateway: str | None = None,
) -> asyncio.subprocess.Process:
    """``teambot run`` on ``db`` in Slack HTTP mode, its stderr piped; nothing awaited. See
    :func:`teambot_command` for ``discord_url`` and ``discord_gateway``."""
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
        *teambot_command(discord_url, discord_gateway),
        "run",
        cwd=folder,
        env=environment,
        stderr=asyncio.subprocess.PIPE,
    )


def teambot_command(discord_url: str | None = None, discord_gateway: str | None = None) -> list[str]:
    """The command line of ``teambot``; with ``discord_url``, its discord.py talks to the fake Discord there (and
    to the gateway ``discord_gateway``, if given), as :func:`tests.fakes.discord.point_discord_at` sets up."""
    if discord_url is None:
        return [sys.executable, "-m", "bot"]
    script = (
        "import sys\n"
        "from tests.fakes.discord import point_discord_at\n"
        "from bot.cli import main\n"
        "with point_discord_at(sys.argv[1], gateway=sys.argv[2] or None):\n"
        "    main(sys.argv[3:])\n"
    )
    return [sys.executable, "-c", script, discord_url, discord_gateway or ""]


def base_env(**env: str) -> dict[str, str]:
    """Only what a ``teambot`` subprocess needs to start, plus ``env``: nothing of the developer's environment."""
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)} | env


async def teambot(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    within: float = 60,
    discord_url: str | None = None,
) -> tuple[int | None, str, str]:
    """``teambot ARGS`` with only ``env`` set (see :func:`base_env`): exit code, stdout, stderr. A process still
    running after ``within`` seconds is killed and fails the test: a hang is a failure, not a slow pass. See
    :func:`teambot_command` for ``discord_url``."""
    proc = await asyncio.create_subprocess_exec(
        *teambot_argv(*args, discord_url=discord_url),
        cwd=cwd,
        env=base_env(**(env or {})),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), within)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"teambot {' '.join(args)} still running after {within} s\n{err.decode()}")
    return proc.returncode, out.decode(), err.decode()


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` refuses writes, to root as well, for as long as the block runs.

    The tests run as root in CI, and root ignores a file's permissions; the immutable flag (``chattr +i``) binds
    root too, as a read-only mount would, and is a state a user's file can really be in. It needs a file system
    that has the flag (ext4, xfs, btrfs, overlay on those) and CAP_LINUX_IMMUTABLE, which root has. Where that
    fails, a user other than root is bound by the permissions instead; root without either skips.
    """
    chattr = shutil.which("chattr")
    flagged = chattr is not None and subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode == 0
    if flagged:
        assert chattr is not None
        try:
            yield
        finally:
            subprocess.run([chattr, "-i", str(path)], check=True)
        return
    if os.geteuid() == 0:
        pytest.skip("cannot make a file read-only for root here: chattr +i is refused")
    mode = path.stat().st_mode
    path.chmod(0o444)
    try:
        yield
    finally:
        path.chmod(mode)
