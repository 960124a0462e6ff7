"""The ``teambot`` command as a new user meets it: help, the settings file, misspelt names, library noise, and a
base URL that lacks ``/v1``. Every test runs the real command in a subprocess."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bot import texts
from bot.cli import configure_logging
from tests.bot_process import ROOT, free_port, spawn_bot, teambot
from tests.fakes.discord import FakeDiscord
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack

# --- item 16: help -------------------------------------------------------------------------------------------


async def test_teambot_alone_prints_the_help(tmp_path: Path) -> None:
    code, out, err = await teambot(cwd=tmp_path)
    assert code == 2 and err == ""
    assert out.startswith("usage: teambot")
    for command in ("run", "check", "console", "db", "--env-file", "teambot COMMAND --help"):
        assert command in out

    code, out, err = await teambot("db", cwd=tmp_path)
    assert code == 2 and err == ""
    assert out.startswith("usage: teambot db") and "migrate" in out and "copy" in out


@pytest.mark.parametrize(
    ("command", "says", "reads"),
    [
        ("run", "Start the Slack and/or Discord adapters", ("SLACK_BOT_TOKEN", "DISCORD_TOKEN", "TEAMBOT_HTTP_PORT")),
        ("check", "Validate every setting", ("OPENAI_BASE_URL", "TEAMBOT_FALLBACK_BASE_URL", "SLACK_APP_TOKEN")),
        ("console", "Chat with the bot in this terminal", ("OPENAI_API_KEY", "OPENAI_MODEL", "TEAMBOT_DB")),
        ("db migrate", "bring its schema up to date", ("TEAMBOT_DB",)),
        ("db copy", "Copy the history of a SQLite file", ("TEAMBOT_DB",)),
    ],
)
async def test_each_command_says_what_it_does_and_the_settings_it_reads(
    tmp_path: Path, command: str, says: str, reads: tuple[str, ...]
) -> None:
    code, out, _ = await teambot(*command.split(), "--help", cwd=tmp_path)
    assert code == 0
    flat = " ".join(out.split())  # the help is wrapped to the terminal
    assert says in flat
    settings = flat.split("settings read (environment or --env-file):", 1)[1]
    for name in reads:
        assert name in settings


# --- item 6: the settings file -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (
            "TEAMBOT_DB=from-file.db\n# the key:\n\nOPENAI_API_KEY sk-never-echoed-1234\n",
            "teambot: .env, line 4 (OPENAI_API_KEY): no '=' in this line; write NAME=value",
        ),
        (
            'OPENAI_BASE_URL="http://127.0.0.1:9/v1\nTEAMBOT_DB=from-file.db\n',
            "teambot: .env, line 1 (OPENAI_BASE_URL): the value's opening \" is never closed",
        ),
        (
            "TEAMBOT_DB=from-file.db\nsk-never-echoed-1234\n",
            "teambot: .env, line 2: no '=' in this line; write NAME=value",
        ),
    ],
)
async def test_a_line_the_settings_file_cannot_parse_stops_start_up_naming_file_and_line(
    tmp_path: Path, content: str, line: str
) -> None:
    (tmp_path / ".env").write_text(content)
    code, out, err = await teambot("db", "migrate", cwd=tmp_path)
    assert (code, out, err.splitlines()) == (2, "", [line])
    assert not (tmp_path / "from-file.db").exists() and not (tmp_path / "teambot.db").exists()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
async def test_a_utf16_or_bom_settings_file_is_read(tmp_path: Path, encoding: str) -> None:
    # Windows Notepad's "Unicode" is UTF-16 with a byte-order mark; its "UTF-8" used to write a BOM too.
    (tmp_path / ".env").write_text("TEAMBOT_DB=from-file.db\r\n", encoding=encoding)
    code, out, err = await teambot("db", "migrate", cwd=tmp_path)
    assert code == 0 and err == "", err
    assert out.startswith("teambot: database from-file.db is at schema version")


@pytest.mark.parametrize(("encoding", "line"), [("cp1252", 2), ("utf-16-le", 1)])  # utf-16-le: no BOM
async def test_a_settings_file_in_another_encoding_is_refused_in_one_line(
    tmp_path: Path, encoding: str, line: int
) -> None:
    content = "TEAMBOT_DB=teambot.db\nTEAMBOT_SYSTEM_PROMPT=Réponds en français\n"
    (tmp_path / ".env").write_bytes(content.encode(encoding))
    code, _, err = await teambot("db", "migrate", cwd=tmp_path)
    assert (code, err.splitlines()) == (2, [f"teambot: .env, line {line}: not UTF-8 text; save the file as UTF-8"])
    assert not (tmp_path / "teambot.db").exists()


@pytest.mark.parametrize("where", ["before", "after"])
async def test_env_file_works_before_or_after_the_command(tmp_path: Path, where: str) -> None:
    (tmp_path / "custom.env").write_text("TEAMBOT_DB=custom.db\n")
    option = ["--env-file", "custom.env"]
    args = [*option, "db", "migrate"] if where == "before" else ["db", "migrate", *option]
    code, out, err = await teambot(*args, cwd=tmp_path)
    assert code == 0 and err == "", err
    assert out.startswith("teambot: database custom.db is at schema version")


@pytest.mark.parametrize("where", ["before", "after"])
async def test_an_env_file_that_does_not_exist_is_an_error(tmp_path: Path, where: str) -> None:
    option = ["--env-file", "prod.env"]
    args = [*option, "db", "migrate"] if where == "before" else ["db", "migrate", *option]
    code, out, err = await teambot(*args, cwd=tmp_path)
    assert (code, out, err.splitlines()) == (2, "", ["teambot: --env-file prod.env does not exist"])
    assert not (tmp_path / "teambot.db").exists()  # it did not go on with the defaults


async def test_an_unknown_teambot_name_gets_one_warning_with_the_closest_known_name(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TEAMBOT_DB=teambot.db\nTEAMBOT_HISTROY_TOKENS=3000\nTEAMBOT_SHINY=1\n")
    env = {"TEAMBOT_DRAIN_SECOND": "3", "teambot_histroy_tokens": "3000", "SLACK_CLIENT_ID": "not ours to judge"}
    code, out, err = await teambot("db", "migrate", cwd=tmp_path, env=env)
    assert code == 0 and out.startswith("teambot: database teambot.db")
    assert sorted(err.splitlines()) == [
        "teambot: warning: unknown setting TEAMBOT_DRAIN_SECOND (in the environment) is ignored; "
        "did you mean TEAMBOT_DRAIN_SECONDS?",
        "teambot: warning: unknown setting TEAMBOT_HISTROY_TOKENS (in .env, line 2) is ignored; "
        "did you mean TEAMBOT_HISTORY_TOKENS?",
        "teambot: warning: unknown setting TEAMBOT_SHINY (in .env, line 3) is ignored; "
        ".env.example lists every setting",
    ]


# --- item 5: a base URL without /v1 --------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=frozenset({"fake-model"})) as server:
        yield server


def _root(fake: FakeOpenAI) -> str:
    return fake.base_url.removesuffix("/v1")


async def test_check_tells_a_base_url_without_v1_from_an_unknown_model(fake: FakeOpenAI, tmp_path: Path) -> None:
    env = {"OPENAI_BASE_URL": _root(fake), "OPENAI_MODEL": "fake-model", "TEAMBOT_DB": "teambot.db"}
    code, out, _ = await teambot("check", cwd=tmp_path, env=env)
    [line] = [line for line in out.splitlines() if "model endpoint" in line]
    assert code == 1 and line == (
        f"FAIL  model endpoint (primary): HTTP 404 for {_root(fake)}/chat/completions: the server has no such path "
        f"(404 page not found); the base URL usually ends in /v1: try {fake.base_url}"
    )
    assert fake.not_found == ["GET /models", "POST /chat/completions"] and fake.calls == 0

    # The right base URL and a model the server does not have: that is still the model's fault.
    env = {"OPENAI_BASE_URL": fake.base_url, "OPENAI_MODEL": "llama3.2", "TEAMBOT_DB": "teambot.db"}
    code, out, _ = await teambot("check", cwd=tmp_path, env=env)
    [line] = [line for line in out.splitlines() if "model endpoint" in line]
    assert code == 1 and line == (
        f"FAIL  model endpoint (primary): HTTP 404 from POST {fake.base_url}/chat/completions: "
        "the server does not know this model; check OPENAI_MODEL"
    )


async def test_the_console_reply_names_the_base_url_not_the_model(fake: FakeOpenAI, tmp_path: Path) -> None:
    env = {"OPENAI_BASE_URL": _root(fake), "OPENAI_MODEL": "fake-model", "TEAMBOT_DB": "teambot.db"}
    code, out, err = await teambot("console", "--name", "Ada", cwd=tmp_path, env=env, stdin=b"hello\n")
    assert code == 0 and "Traceback" not in err
    assert f"teambot> {texts.ENDPOINT_NOT_FOUND}\n" in out
    assert "does not know the model" not in out + err


@pytest.mark.parametrize("name", ["OPENAI_BASE_URL", "TEAMBOT_FALLBACK_BASE_URL"])
async def test_a_base_url_ending_in_chat_completions_is_refused_at_start_up(tmp_path: Path, name: str) -> None:
    env = {name: "http://localhost:11434/v1/chat/completions", "OPENAI_API_KEY": "sk-unused-0000"}
    code, out, err = await teambot("console", cwd=tmp_path, env=env, stdin=b"hello\n")
    assert (code, out, err.splitlines()) == (
        2,
        "",
        [
            f"teambot: invalid setting {name}: Value error, ends in /chat/completions, which teambot adds itself: "
            "set it to http://localhost:11434/v1"
        ],
    )


# --- item 7: library noise -----------------------------------------------------------------------------------

_SITECUSTOMIZE = """
import os
from tests.fakes.discord import point_discord_at

# Entered for the life of the process (kept referenced: a collected context manager would restore the defaults),
# so discord.py talks to the test's fake Discord.
POINTED = point_discord_at(os.environ["FAKE_DISCORD_URL"])
POINTED.__enter__()
"""
_LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+) \[[^\]]*\] (?P<text>.*)")


async def test_run_starts_without_library_noise_and_keeps_their_other_lines(tmp_path: Path) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    async with FakeOpenAI() as fake, FakeSlack() as slack, FakeDiscord() as discord:
        port = free_port()
        env = {
            # SLACK_BOT_TOKEN is in the environment (spawn_bot puts it there), which is what makes Bolt warn.
            "TEAMBOT_HTTP_PORT": str(port),
            "DISCORD_TOKEN": "discord-bot-token",
            "FAKE_DISCORD_URL": discord.url,
            "PYTHONPATH": f"{hook}:{ROOT}",
        }
        proc = await spawn_bot(fake, slack, tmp_path / "teambot.db", env=env)
        assert proc.stderr is not None
        lines: list[str] = []
        async with asyncio.timeout(30):
            while not any("teambot is running" in line for line in lines):
                line = (await proc.stderr.readline()).decode()
                assert line, "".join(lines)
                lines.append(line)
        await discord.wait_for(lambda: discord.ready, within=10)
        async with httpx.AsyncClient() as http:
            # An unsigned event: Bolt refuses it and logs that at INFO, through its own loggers.
            response = await http.post(f"http://127.0.0.1:{port}/slack/events", content="{}")
            assert response.status_code == 401
        proc.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
    stderr = "".join(lines) + rest.decode()
    assert proc.returncode == 0, stderr
    for noise in ("`token` will be unused", "voice will NOT be supported"):
        assert noise not in stderr
    # Filtered by message, not by level: both libraries' other lines still reach the log.
    records = [m for line in stderr.splitlines() if (m := _LOG_LINE.match(line))]
    assert any(m["logger"] == "discord.client" and m["level"] == "INFO" for m in records), stderr
    assert any(
        m["logger"].startswith("slack_bolt") and m["text"].startswith("Invalid request signature") for m in records
    ), stderr


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put the root logger and the filters back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    noisy = [logging.getLogger(name) for name in ("slack_bolt", "slack_bolt.AsyncApp", "discord.client")]
    filters = [logger.filters[:] for logger in noisy]
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for logger, kept in zip(noisy, filters, strict=True):
        logger.filters[:] = kept


def test_only_the_noise_is_filtered_not_the_loggers(root_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO")
    configure_logging("INFO")  # configured twice (tests, reloads): still one filter per logger
    assert [len(logging.getLogger(name).filters) for name in ("slack_bolt", "discord.client")] == [1, 1]
    logging.getLogger("slack_bolt").warning("As you gave `client` as well, `token` will be unused.")
    logging.getLogger("discord.client").warning("PyNaCl is not installed, voice will NOT be supported")
    logging.getLogger("discord.client").warning("davey is not installed, voice will NOT be supported")
    logging.getLogger("slack_bolt").warning("Unhandled request ({'type': 'event_callback'})")
    logging.getLogger("discord.client").warning("Shard ID None heartbeat blocked for more than 10 seconds.")
    logged = capsys.readouterr().err.splitlines()
    assert [line.split("] ", 1)[1] for line in logged] == [
        "Unhandled request ({'type': 'event_callback'})",
        "Shard ID None heartbeat blocked for more than 10 seconds.",
    ]
