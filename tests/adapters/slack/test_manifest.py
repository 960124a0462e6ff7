"""The two Slack app manifests in deploy/: valid YAML, the same app in both, and the HTTP one's URLs filled by
the one line its header documents."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import Settings

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
PLACEHOLDER = "https://YOUR-HOST/slack/events"


def load(mode: str) -> dict[str, Any]:
    manifest = yaml.safe_load((DEPLOY / f"slack-manifest-{mode}.yml").read_text())
    assert isinstance(manifest, dict)
    return manifest


def without_urls(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest less what differs between the modes: the URLs and the Socket Mode switch."""
    features = manifest["features"] | {
        "slash_commands": [{k: v for k, v in c.items() if k != "url"} for c in manifest["features"]["slash_commands"]]
    }
    events = {k: v for k, v in manifest["settings"]["event_subscriptions"].items() if k != "request_url"}
    interactivity = {k: v for k, v in manifest["settings"]["interactivity"].items() if k != "request_url"}
    settings = {k: v for k, v in manifest["settings"].items() if k != "socket_mode_enabled"}
    settings |= {"event_subscriptions": events, "interactivity": interactivity}
    return manifest | {"features": features, "settings": settings}


def test_both_manifests_describe_the_same_app() -> None:
    socket, http = load("socket"), load("http")
    assert without_urls(socket) == without_urls(http)
    assert socket["settings"]["socket_mode_enabled"] is True and http["settings"]["socket_mode_enabled"] is False
    # Socket Mode has no URL anywhere; HTTP mode has one for events and one for every slash command.
    assert all("url" not in c for c in socket["features"]["slash_commands"])
    assert "request_url" not in socket["settings"]["event_subscriptions"]
    assert [c["url"] for c in http["features"]["slash_commands"]] == [PLACEHOLDER] * len(
        http["features"]["slash_commands"]
    )
    assert http["settings"]["event_subscriptions"]["request_url"] == PLACEHOLDER
    # The answers' feedback buttons: their clicks come to the same URL.
    assert "request_url" not in socket["settings"]["interactivity"]
    assert http["settings"]["interactivity"] == {"is_enabled": True, "request_url": PLACEHOLDER}


def test_the_manifest_commands_are_the_default_command_names() -> None:
    commands = [c["command"] for c in load("socket")["features"]["slash_commands"]]
    # /summary keeps its name: only the four commands other apps commonly have can be renamed.
    assert commands == [f"/{name}" for name in Settings().command_names().values()] + ["/summary"]


def test_messages_without_a_mention_and_group_dms_reach_the_bot() -> None:
    # Thread follow-ups and help channels (/speak), and group DMs answered like DMs (bot.speak).
    for mode in ("socket", "http"):
        manifest = load(mode)
        events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
        assert {"message.channels", "message.groups", "message.mpim", "message.im"} <= events
        assert {"channels:history", "groups:history", "mpim:history"} <= set(manifest["oauth_config"]["scopes"]["bot"])


def test_the_thinking_status_is_under_chat_write() -> None:
    # Slack moved assistant.threads.setStatus from assistant:write to chat:write.
    for mode in ("socket", "http"):
        scopes = {
            m["scope"]: m["why"]
            for m in re.finditer(
                r"^\s+- (?P<scope>[a-z:_.]+)\s+# (?P<why>.*)$",
                (DEPLOY / f"slack-manifest-{mode}.yml").read_text(),
                re.M,
            )
        }
        assert "thinking" in scopes["chat:write"] and "thinking" not in scopes["assistant:write"]


@pytest.mark.parametrize("host", ["https://bot.example.com", "https://chat.example.org:8443/teambot"])
def test_the_documented_line_fills_every_url_of_the_http_manifest(tmp_path: Path, host: str) -> None:
    header = (DEPLOY / "slack-manifest-http.yml").read_text()
    [line] = [m.group(1) for m in re.finditer(r"^#\s+(sed .*)$", header, re.M)]
    assert line in (DEPLOY.parent / "README.md").read_text()  # the README shows the same line
    command = line.replace("https://bot.example.com", host).replace("deploy/", f"{DEPLOY}/")
    subprocess.run(command, shell=True, cwd=tmp_path, check=True)
    filled = yaml.safe_load((tmp_path / "slack-manifest.yml").read_text())
    url = f"{host}/slack/events"
    assert {c["url"] for c in filled["features"]["slash_commands"]} == {url}
    assert filled["settings"]["event_subscriptions"]["request_url"] == url
    assert filled["settings"]["interactivity"]["request_url"] == url
    assert without_urls(filled) == without_urls(load("http"))
