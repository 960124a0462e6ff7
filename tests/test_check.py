"""``teambot check`` against good and bad endpoints and tokens, on the loopback fakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from adapters import registry
from bot import texts
from bot.check import check_database, check_model
from bot.config import Settings
from bot.store import open_store
from bot.store.postgres import MIGRATIONS as POSTGRES_MIGRATIONS
from tests.bot_process import free_port, teambot
from tests.fakes.discord import FakeDiscord
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack


async def teambot_check(cwd: Path, **env: str) -> tuple[int | None, str, str]:
    """``teambot check`` in a subprocess with only ``env`` set: exit code, stdout, stderr."""
    return await teambot("check", cwd=cwd, env=env)


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


@pytest.mark.parametrize("model", ["fake-model", "other"])
async def test_a_password_in_the_base_url_is_never_shown(model: str) -> None:
    # Listed, or tried with one token: either way the line names the endpoint without its user:password.
    async with FakeOpenAI() as fake:
        base_url = fake.base_url.replace("http://", "http://teambot:pw-never-shown@")
        [result] = await check_model(settings(openai_base_url=base_url, openai_model=model))
    assert result.ok and fake.base_url in result.detail
    assert "pw-never-shown" not in result.line()


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
    assert results[1].detail.startswith("connection refused by 127.0.0.1:9 (http://127.0.0.1:9/v1/models)")


async def test_slack_tokens_good_and_bad() -> None:
    async with FakeSlack() as slack:
        good = await registry.check(
            settings(slack_bot_token=slack.bot_token, slack_app_token="xapp-1", slack_api_url=slack.api_url)
        )
        bad = await registry.check(
            settings(slack_bot_token="xoxb-wrong", slack_signing_secret="s", slack_api_url=slack.api_url)
        )
    assert [(r.name, r.ok) for r in good] == [
        ("slack bot token", True),
        ("slack scopes", True),
        ("slack app token", True),
        ("discord", True),
    ]
    assert [(r.name, r.ok) for r in bad] == [
        ("slack bot token", False),
        ("slack signing secret", True),
        ("discord", True),
    ]
    assert good[-1].skipped and good[-1].line().startswith("SKIP  discord: not configured: set DISCORD_TOKEN")
    assert "invalid_auth" in bad[0].detail


async def test_discord_token_good_and_bad() -> None:
    async with FakeDiscord(token="the-right-token") as fake:
        with fake.patch_discord():
            good = await registry.check(settings(discord_token="the-right-token"))
            bad = await registry.check(settings(discord_token="a-wrong-token"))
    assert [(r.name, r.ok) for r in good][1:] == [
        ("discord token", True),
        ("discord invite", True),
        ("discord message content", True),
    ]
    assert good[0].skipped and good[0].line().startswith("SKIP  slack: not configured: set SLACK_BOT_TOKEN")
    assert [r.ok for r in bad] == [True, False]
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


async def test_an_invalid_setting_fails_the_check_in_one_line(tmp_path: Path) -> None:
    code, out, err = await teambot_check(tmp_path, TEAMBOT_BUDGET_UNIT="euros")
    assert code == 2
    assert out.startswith("FAIL  configuration: invalid setting TEAMBOT_BUDGET_UNIT")
    assert (out + err).count("TEAMBOT_BUDGET_UNIT") == 1, out + err  # once, not on stdout and stderr both


@pytest.mark.parametrize("where", ["a folder", "a missing folder"])
async def test_check_refuses_the_database_path_run_refuses(tmp_path: Path, where: str) -> None:
    db = tmp_path / "data" if where == "a folder" else tmp_path / "nowhere" / "teambot.db"
    if where == "a folder":
        db.mkdir()
    async with FakeOpenAI() as fake:
        env = {"TEAMBOT_DB": str(db), "OPENAI_BASE_URL": fake.base_url, "OPENAI_MODEL": "fake-model"}
        code, out, err = await teambot("check", cwd=tmp_path, env=env)
        run_code, _, run_err = await teambot("run", cwd=tmp_path, env=env | {"DISCORD_TOKEN": "x"})
    [line] = [line for line in out.splitlines() if line.startswith(("PASS  database", "FAIL  database"))]
    assert code == 1 and err == "", out + err
    # The same validation, the same words: what check says is the line run stops with.
    assert run_code == 2 and run_err.startswith("teambot: TEAMBOT_DB: "), run_err
    assert line == "FAIL  database: " + run_err.removeprefix("teambot: ").strip()
    assert ("is a folder" if where == "a folder" else "does not exist") in line
    assert _files(tmp_path) == ({"data": (b"", 0)} if where == "a folder" else {})


async def test_a_missing_key_is_one_configuration_line_and_the_rest_is_still_checked(tmp_path: Path) -> None:
    code, out, err = await teambot_check(tmp_path, TEAMBOT_DB=str(tmp_path / "teambot.db"))
    lines = out.splitlines()
    assert code == 1 and err == "", out + err
    assert lines[0].startswith("FAIL  configuration: OPENAI_API_KEY is not set")
    assert not any(line.startswith("PASS  configuration") for line in lines)
    assert not any("model endpoint" in line for line in lines)  # the missing key says it already
    assert lines[1:] == [
        f"PASS  database: {tmp_path / 'teambot.db'} does not exist yet; 'teambot run' creates it",
        "SKIP  slack: " + texts.CHECK_SLACK_NOT_CONFIGURED,
        "SKIP  discord: " + texts.CHECK_DISCORD_NOT_CONFIGURED,
    ]


async def test_an_existing_database_is_checked_without_a_write(tmp_path: Path) -> None:
    db = tmp_path / "teambot.db"
    store = await open_store(str(db))
    await store.close()
    before = _files(tmp_path)
    async with FakeOpenAI() as fake:
        code, out, _ = await teambot_check(tmp_path, TEAMBOT_DB=str(db), OPENAI_BASE_URL=fake.base_url)
    assert code == 0 and f"PASS  database: {db} answers, schema version " in out, out
    assert _files(tmp_path) == before


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Each entry's bytes and modification time (a folder: nothing, 0)."""
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else (b"", 0) for p in sorted(folder.iterdir())
    }


@pytest.mark.parametrize("failure", ["refused", "dns", "tls", "404"])
async def test_a_model_endpoint_failure_names_its_cause(tmp_path: Path, failure: str) -> None:
    async with FakeOpenAI() as fake:
        port = fake.base_url.split(":")[2].split("/")[0]
        base_url = {
            "refused": f"http://127.0.0.1:{free_port()}/v1",
            "dns": "http://no-such-host.invalid/v1",
            "tls": f"https://127.0.0.1:{port}/v1",  # a plain-HTTP server answering a TLS hello
            "404": fake.base_url.removesuffix("/v1"),  # the common mistake: no /v1
        }[failure]
        code, out, _ = await teambot_check(tmp_path, OPENAI_BASE_URL=base_url, TEAMBOT_DB=str(tmp_path / "t.db"))
    [line] = [line for line in out.splitlines() if "model endpoint" in line]
    assert code == 1 and line.startswith("FAIL  model endpoint (primary): "), out
    assert texts.UNREACHABLE not in line and "AI service" not in line  # not the sentence meant for chat
    expected = {
        "refused": f"connection refused by {base_url.removeprefix('http://').removesuffix('/v1')} ({base_url}/models)",
        "dns": "cannot resolve the host name 'no-such-host.invalid' (DNS)",
        "tls": f"TLS error with 127.0.0.1:{port}: ",
        "404": f"HTTP 404 for http://127.0.0.1:{port}/chat/completions: the server has no such path",
    }[failure]
    assert expected in line, line


async def test_the_database_line_on_each_engine(tmp_path: Path, postgres_url: str) -> None:
    missing = await check_database(settings(db=str(tmp_path / "new.db")))
    assert missing.ok and "does not exist yet" in missing.detail
    assert not (tmp_path / "new.db").exists()  # checking creates nothing

    not_migrated = await check_database(settings(db=postgres_url))
    assert not not_migrated.ok and "teambot db migrate" in not_migrated.detail
    store = await open_store(postgres_url)
    await store.close()
    conn = await asyncpg.connect(postgres_url)
    try:
        # A message id past its retention: opening the store purges it, checking must not (it writes nothing).
        await conn.execute("INSERT INTO handled_messages (message_id, handled_at) VALUES ('old', 0)")
        migrated = await check_database(settings(db=postgres_url))
        assert await conn.fetchval("SELECT count(*) FROM handled_messages") == 1
    finally:
        await conn.close()
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
        env = {"OPENAI_BASE_URL": model.base_url, "OPENAI_MODEL": "fake-model", "DISCORD_TOKEN": "the-right-token"}
        code, out, _ = await teambot("check", cwd=tmp_path, env=env, discord_url=fake.url)
    assert code == 0, out
    assert (
        "PASS  discord invite: https://discord.com/oauth2/authorize?client_id=1000"
        "&scope=bot+applications.commands&permissions=274877975552\n" in out
    )
