"""``teambot run`` with Discord as a process against the fake Discord: what a person setting it up reads."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.bot_process import ROOT, free_port, teambot_argv
from tests.fakes.discord import GUILD_ID, FakeDiscord
from tests.fakes.openai import FakeOpenAI

INVITE = "https://discord.com/oauth2/authorize?client_id=1000&scope=bot+applications.commands&permissions=274877975552"


async def run_until_connected(fake: FakeDiscord, model: FakeOpenAI, tmp_path: Path, **env: str) -> list[str]:
    """Start ``teambot run`` with Discord, stop it with SIGTERM once connected; its stderr lines."""
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "OPENAI_BASE_URL": model.base_url,
        "DISCORD_TOKEN": "fake-discord-token",
        "TEAMBOT_DB": str(tmp_path / "teambot.db"),
        "TEAMBOT_HTTP_HOST": "127.0.0.1",
        "TEAMBOT_HTTP_PORT": str(free_port()),
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        *teambot_argv("run", discord_url=fake.url), cwd=tmp_path, env=environment, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not any("Discord adapter connected" in line for line in lines):
                line = await proc.stderr.readline()
                assert line, "".join(lines)  # the process ended before connecting
                lines.append(line.decode())
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    lines += (rest or b"").decode().splitlines(keepends=True)
    assert proc.returncode == 0, "".join(lines)
    return lines


async def test_a_server_list_discord_refuses_costs_only_the_warning(tmp_path: Path) -> None:
    async with FakeDiscord(shards=2) as fake, FakeOpenAI() as model:
        fake.forbid("GET", "users/@me/guilds")
        lines = await run_until_connected(
            fake, model, tmp_path, TEAMBOT_DISCORD_SHARDS="2", TEAMBOT_DISCORD_GUILD=GUILD_ID
        )
        # The commands are still registered in the server; start-up goes on without the warning.
        assert [scope for scope, _ in fake.command_syncs] == [f"guild:{GUILD_ID}", "global"]
    assert not [line for line in lines if "TEAMBOT_DISCORD_GUILD=" in line]
    assert "Traceback" not in "".join(lines)


@pytest.mark.parametrize(
    ("shards", "guild", "warned"),
    [(1, None, False), (1, GUILD_ID, False), (2, GUILD_ID, True)],
    ids=["global", "guild-only-server", "guild-and-another-server"],
)
async def test_start_up_prints_the_invite_link_and_warns_when_the_guild_setting_hides_commands(
    tmp_path: Path, shards: int, guild: str | None, warned: bool
) -> None:
    env = {"TEAMBOT_DISCORD_SHARDS": str(shards)} if shards > 1 else {}
    if guild is not None:
        env["TEAMBOT_DISCORD_GUILD"] = guild
    async with FakeDiscord(shards=shards) as fake, FakeOpenAI() as model:
        lines = await run_until_connected(fake, model, tmp_path, **env)
    assert [line for line in lines if INVITE in line] != []
    assert len([line for line in lines if INVITE in line]) == 1
    warnings = [line for line in lines if "TEAMBOT_DISCORD_GUILD=" in line]
    if warned:
        # One line, before the global commands are cleared, saying where they disappear and what to do.
        [warning] = warnings
        assert " WARNING " in warning and "in the 1 other server this bot is in /reset, /usage" in warning
        assert "unset it" in warning
    else:
        assert warnings == []
    assert "Traceback" not in "".join(lines)
