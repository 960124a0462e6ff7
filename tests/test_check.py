"""``teambot check`` against good and bad endpoints and tokens, on the loopback fakes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters import registry
from bot.check import check_database, check_model
from bot.config import Settings
from bot.store import open_store
from bot.store.postgres import MIGRATIONS as POSTGRES_MIGRATIONS
from tests.bot_process import teambot_argv
from tests.fakes.discord import FakeDiscord
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack

ROOT = Path(__file__).resolve().parents[1]


async def teambot_check(cwd: Path, **env: str) -> tuple[int | None, str, str]:
    """``teambot check`` in a subprocess with only ``env`` set: exit code, stdout, stderr."""
    base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "check",
        cwd=cwd,
        env=base | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


def settings(**values: Any) -> Settings:
    return Settings(**values)


async def test_a_good_endpoint_passes_by_listing_models() -> None:
    async with FakeOpenAI(api_key="sk-good-key-0000") as fake:
        [result] = await check_model(
            settings(openai_base_url=fake.base_url, openai_api_key="sk-good-key-0000", openai_model="fake-model")
        )
    assert result.ok and "lists fake-model" in result.detail and fake.calls == 0


async def test_a_model_missing_from_the_list_is_tried_with_one_token() -> None:
    async with FakeOpenAI() as fake:
        [result] = await check_model(settings(openai_base_url=fake.base_url, openai_model="other"))
    assert result.ok and "one-token" in result.detail
    assert fake.requests[0]["max_tokens"] == 1


async def test_a_bad_key_and_an_unreachable_fallback_fail() -> None:
    async with FakeOpenAI(api_key="sk-good-key-0000") as fake:
        results = await check_model(
            settings(
                openai_base_url=fake.base_url,
                openai_api_key="sk-bad-key-1111",
                fallback_base_url="http://127.0.0.1:9/v1",
            )
        )
    assert [r.ok for r in results] == [False, False]
    assert "OPENAI_API_KEY" in results[0].detail and "sk-bad" not in results[0].detail
    assert "cannot reach" in results[1].detail


async def test_slack_tokens_good_and_bad() -> None:
    async with FakeSlack() as slack:
        good = await registry.check(
            settings(slack_bot_token=slack.bot_token, slack_app_token="xapp-1", slack_api_url=slack.api_url)
        )
        bad = await registry.check(
            settings(slack_bot_token="xoxb-wrong", slack_signing_secret="s", slack_api_url=slack.api_url)
        )
    assert [(r.name, r.ok) for r in good] == [("slack bot token", True), ("slack app token", True)]
    assert [(r.name, r.ok) for r in bad] == [("slack bot token", False), ("slack signing secret", True)]
    assert "invalid_auth" in bad[0].detail


async def test_discord_token_good_and_bad() -> None:
    async with FakeDiscord(token="the-right-token") as fake:
        with fake.patch_discord():
            good = await registry.check(settings(discord_token="the-right-token"))
            bad = await registry.check(settings(discord_token="a-wrong-token"))
    assert [(r.name, r.ok) for r in good] == [("discord token", True), ("discord invite", True)]
    assert [r.ok for r in bad] == [False]
    assert "a-wrong-token" not in bad[0].line()


@pytest.mark.parametrize(("key", "code"), [("sk-good-key-0000", 0), ("sk-bad-key-1111", 1)])
async def test_the_command_prints_a_line_each_and_sets_the_exit_code(tmp_path: Path, key: str, code: int) -> None:
    async with FakeOpenAI(api_key="sk-good-key-0000") as fake:
        code_seen, out, err = await teambot_check(
            tmp_path, OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY=key, OPENAI_MODEL="fake-model"
        )
    lines = out.splitlines()
    assert code_seen == code
    assert lines[0].startswith("PASS  configuration")
    assert lines[1].startswith("PASS  model endpoint" if code == 0 else "FAIL  model endpoint")
    assert key not in out + err


async def test_an_invalid_setting_fails_the_check(tmp_path: Path) -> None:
    code, out, _ = await teambot_check(tmp_path, TEAMBOT_BUDGET_UNIT="euros")
    assert code == 2
    assert out.startswith("FAIL  configuration: invalid setting TEAMBOT_BUDGET_UNIT")


async def test_the_database_line_on_each_engine(tmp_path: Path, postgres_url: str) -> None:
    missing = await check_database(settings(db=str(tmp_path / "new.db")))
    assert missing.ok and "does not exist yet" in missing.detail
    assert not (tmp_path / "new.db").exists()  # checking creates nothing

    not_migrated = await check_database(settings(db=postgres_url))
    assert not not_migrated.ok and "teambot db migrate" in not_migrated.detail
    store = await open_store(postgres_url)
    await store.close()
    migrated = await check_database(settings(db=postgres_url))
    assert migrated.ok and migrated.detail.endswith(f"schema version {len(POSTGRES_MIGRATIONS)}")

    password_url = postgres_url.replace("teambot@", "teambot:pw-never-shown@").rsplit(":", 1)[0] + ":1/x"
    unreachable = await check_database(settings(db=password_url))
    assert not unreachable.ok and "cannot connect" in unreachable.line()
    assert "pw-never-shown" not in unreachable.line()


async def test_an_unreachable_slack_with_an_app_token_fails_with_a_line_not_a_traceback(tmp_path: Path) -> None:
    app_token = "xapp-1-A0123456789-0123456789-unreachable"
    async with FakeOpenAI() as fake:
        code, out, err = await teambot_check(
            tmp_path,
            OPENAI_BASE_URL=fake.base_url,
            OPENAI_MODEL="fake-model",
            SLACK_BOT_TOKEN="xoxb-0000000000-unreachable",
            SLACK_APP_TOKEN=app_token,
            SLACK_API_URL="http://127.0.0.1:9/api/",  # the discard port: nothing listens
        )
    assert code == 1 and "Traceback" not in err, err
    slack_lines = [line for line in out.splitlines() if "slack" in line]
    assert slack_lines and all(line.startswith("FAIL") and "cannot reach" in line for line in slack_lines)
    assert app_token not in out + err


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"TEAMBOT_USAGE_COMMAND": "reset"}, "TEAMBOT_USAGE_COMMAND"),
        ({"TEAMBOT_MODEL_COMMAND": "Bad Name"}, "TEAMBOT_MODEL_COMMAND"),
    ],
)
async def test_a_command_name_taken_twice_or_invalid_is_refused(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    code, out, _ = await teambot_check(tmp_path, **env)
    assert code == 2
    assert out.startswith(f"FAIL  configuration: invalid setting {named}")


async def test_the_check_prints_the_discord_invite_link(tmp_path: Path) -> None:
    async with FakeOpenAI() as model, FakeDiscord(token="the-right-token") as fake:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "OPENAI_BASE_URL": model.base_url,
            "OPENAI_MODEL": "fake-model",
            "DISCORD_TOKEN": "the-right-token",
        }
        proc = await asyncio.create_subprocess_exec(
            *teambot_argv("check", discord_url=fake.url), cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    assert (
        "PASS  discord invite: https://discord.com/oauth2/authorize?client_id=1000"
        "&scope=bot+applications.commands&permissions=274877975552\n" in out.decode()
    )
