"""Settings: the public variable names, defaults, and one clear line for a bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot import texts
from bot.config import OPENAI_DEFAULT_BASE_URL, load_settings
from bot.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_need_nothing_but_a_key_for_the_hosted_api(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(None)
    assert settings.openai_base_url == OPENAI_DEFAULT_BASE_URL
    assert settings.db == "./teambot.db"
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        settings.require_model_access()
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1/")
    local = load_settings(None)
    local.require_model_access()  # a local server needs no key
    assert local.openai_base_url == "http://localhost:11434/v1"


def test_public_variable_names_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "OPENAI_API_KEY": "sk-abcdefgh12345678",
        "OPENAI_BASE_URL": "http://127.0.0.1:1/v1",
        "OPENAI_MODEL": "llama3.2",
        "TEAMBOT_DB": str(tmp_path / "x.db"),
        "TEAMBOT_SYSTEM_PROMPT": "Be brief.",
        "TEAMBOT_TEMPERATURE": "0.3",
        "TEAMBOT_MAX_OUTPUT_TOKENS": "99",
        "TEAMBOT_HISTORY_TOKENS": "3000",
        "TEAMBOT_REQUEST_TIMEOUT": "7",
        "TEAMBOT_FALLBACK_BASE_URL": "http://127.0.0.1:2/v1",
        "TEAMBOT_FALLBACK_MODEL": "small",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = load_settings(None)
    assert s.openai_api_key is not None and s.openai_api_key.get_secret_value() == "sk-abcdefgh12345678"
    assert "sk-abcdefgh12345678" not in repr(s)
    assert (s.openai_model, s.db, s.system_prompt) == ("llama3.2", env["TEAMBOT_DB"], "Be brief.")
    assert (s.temperature, s.max_output_tokens, s.history_tokens, s.request_timeout) == (0.3, 99, 3000, 7.0)
    assert (s.fallback_base_url, s.fallback_model) == ("http://127.0.0.1:2/v1", "small")


def test_env_file_is_read_and_empty_values_mean_default(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text((ROOT / ".env.example").read_text() + "\nOPENAI_MODEL=from-file\n")
    s = load_settings(env_file)
    assert s.openai_model == "from-file"
    assert s.temperature is None and s.discord_guild is None and s.openai_api_key is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TEAMBOT_TEMPERATURE", "hot"),
        ("TEAMBOT_HISTORY_TOKENS", "-5"),
        ("OPENAI_BASE_URL", "api.openai.com"),
        ("TEAMBOT_HTTP_PORT", "70000"),
        ("TEAMBOT_STREAM", "maybe"),
        ("TEAMBOT_SLACK_SUGGESTED_PROMPTS", "a|b|c|d|e"),
        ("TEAMBOT_PRICES", "not json"),
        ("TEAMBOT_PRICES", '{"m": "cheap"}'),
    ],
)
def test_an_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"^invalid setting {name}: "):
        load_settings(None)


def test_slack_ai_settings_default_on_and_split_prompts_at_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings(None)
    assert defaults.slack_native_streaming is True
    assert defaults.slack_suggested_prompts == texts.SUGGESTED_PROMPTS
    monkeypatch.setenv("TEAMBOT_SLACK_NATIVE_STREAMING", "false")
    monkeypatch.setenv("TEAMBOT_SLACK_SUGGESTED_PROMPTS", "Explain this error, briefly | Write a haiku |")
    s = load_settings(None)
    assert s.slack_native_streaming is False
    assert s.slack_suggested_prompts == ("Explain this error, briefly", "Write a haiku")


def test_every_setting_is_documented_in_env_example() -> None:
    from bot.config import _ALIASES

    documented = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert set(_ALIASES.values()) - documented == set()


def test_the_cli_prints_one_line_not_a_traceback(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "TEAMBOT_TEMPERATURE": "hot"}
    result = subprocess.run(
        [sys.executable, "-m", "bot", "console"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "teambot: invalid setting TEAMBOT_TEMPERATURE: "
        "Input should be a valid number, unable to parse string as a number"
    ]


def test_run_with_no_platform_names_the_variables(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": "sk-abcdefgh12345678"}
    result = subprocess.run(
        [sys.executable, "-m", "bot", "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    for name in ("SLACK_BOT_TOKEN", "DISCORD_TOKEN", "teambot console"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "bind"),
    [
        ({}, None),  # by default one server carries everything, as before the setting existed
        ({"TEAMBOT_OPS_PORT": "3000"}, None),  # the public bind itself: still one server
        ({"TEAMBOT_OPS_HOST": "0.0.0.0", "TEAMBOT_OPS_PORT": "3000"}, None),
        ({"TEAMBOT_OPS_PORT": "9090"}, ("0.0.0.0", 9090)),  # the host follows TEAMBOT_HTTP_HOST
        ({"TEAMBOT_OPS_HOST": "127.0.0.1"}, ("127.0.0.1", 3000)),  # the port follows TEAMBOT_HTTP_PORT
        ({"TEAMBOT_OPS_HOST": "127.0.0.1", "TEAMBOT_OPS_PORT": "9090"}, ("127.0.0.1", 9090)),
        ({"TEAMBOT_HTTP_PORT": "0", "TEAMBOT_OPS_PORT": "0"}, ("0.0.0.0", 0)),  # two "any free port"s: two servers
    ],
)
def test_the_ops_bind_defaults_to_the_public_one(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], bind: tuple[str, int] | None
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings(None).ops_bind() == bind
