"""The Discord adapter through the real discord.py client, against the loopback fake Discord and model."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.discord import TEXT_LIMIT, DiscordAdapter
from bot import texts
from bot.config import Settings
from bot.errors import ConfigError
from bot.logcontext import TurnFilter
from bot.runtime import open_core
from tests.fakes.discord import (
    ADMIN_ROLE_ID,
    BOT_USER,
    CHANNEL_ID,
    EPHEMERAL,
    GRACE,
    GUILD_ID,
    INTENT_DM_MESSAGES,
    INTENT_GUILD_MESSAGES,
    INTENT_GUILDS,
    INTENT_MESSAGE_CONTENT,
    OTHER_BOT,
    OTHER_CHANNEL_ID,
    THREAD_ID,
    FakeDiscord,
)
from tests.fakes.openai import FakeOpenAI

BOT_MENTION = f"<@{BOT_USER['id']}>"
DM_CHANNEL = "7001"


@dataclass
class Discord:
    fake: FakeDiscord
    model: FakeOpenAI
    adapter: DiscordAdapter

    def sent(self, channel: str = CHANNEL_ID) -> list[Any]:
        return self.fake.channel_messages(channel)

    async def wait_text(self, expected: str, channel: str = CHANNEL_ID, within: float = 5.0) -> None:
        await self.fake.wait_for(lambda: any(m.content == expected for m in self.sent(channel)), within)


@pytest.fixture
async def model() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def granted_intents() -> int:
    """The privileged intents switched on for the fake's app."""
    return 0


@pytest.fixture
async def discord_bot(
    model: FakeOpenAI, tmp_path: Path, overrides: dict[str, Any], granted_intents: int
) -> AsyncIterator[Discord]:
    values: dict[str, Any] = {
        "openai_base_url": model.base_url,
        "db": str(tmp_path / "teambot.db"),
        "max_retries": 0,
        "discord_token": "fake-discord-token",
        "stream_edit_interval": 0.2,
    }
    settings = Settings(**(values | overrides))
    async with FakeDiscord(privileged_intents=granted_intents) as fake, open_core(settings) as core:
        with fake.patch_discord():
            adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05)
            await asyncio.wait_for(adapter.start(), 10)
            try:
                assert adapter.connected
                yield Discord(fake, model, adapter)
            finally:
                await adapter.stop()
            assert not adapter.connected


async def test_a_mention_in_a_guild_is_answered_as_a_reply(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    trigger = fake.message_create(f"{BOT_MENTION} what is a 429?", mentions=(BOT_USER,))
    await fake.dispatch("MESSAGE_CREATE", trigger)
    await discord_bot.wait_text("echo: Ada: what is a 429?")
    first = discord_bot.sent()[0]
    assert str(first.payload["message_reference"]["message_id"]) == trigger["id"]
    assert first.payload["allowed_mentions"]["parse"] == []
    assert all(edit["allowed_mentions"]["parse"] == [] for m in discord_bot.sent() for edit in m.edits)
    assert fake.typing_calls == [CHANNEL_ID]


async def test_direct_messages_need_no_mention(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create("hello there", channel_id=DM_CHANNEL, guild_id=None))
    await discord_bot.wait_text("echo: Ada: hello there", channel=DM_CHANNEL)


async def test_a_reply_to_the_bot_addresses_it(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    bots_message = fake.message_create("an earlier answer", author=BOT_USER)
    # A reply with its ping on mentions the bot, so its content arrives without the Message Content intent.
    reply = fake.message_create("tell me more", referenced=bots_message, mentions=(BOT_USER,))
    await fake.dispatch("MESSAGE_CREATE", reply)
    await discord_bot.wait_text("echo: Ada: tell me more")


async def test_a_blank_reply_without_ping_gets_no_hint(discord_bot: Discord, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="adapters.discord")
    caplog.handler.addFilter(TurnFilter())
    fake = discord_bot.fake
    bots_message = fake.message_create("an earlier answer", author=BOT_USER)
    reply = fake.message_create("tell me more", referenced=bots_message)
    await fake.dispatch("MESSAGE_CREATE", reply)

    def quiet() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "without readable content" in r.getMessage()]

    await fake.wait_for(lambda: bool(quiet()))
    assert quiet()[0].levelno == logging.DEBUG
    # The line belongs to its turn: conversation key and message id.
    assert vars(quiet()[0])["turn"] == f"discord:{GUILD_ID}:{CHANNEL_ID} discord:{reply['id']}"
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} next", mentions=(BOT_USER,)))
    await discord_bot.wait_text("echo: Ada: next")
    assert [m.content for m in discord_bot.sent()] == ["echo: Ada: next"]
    assert discord_bot.model.calls == 1


async def test_the_bot_asks_for_guilds_guild_messages_and_dms_only(discord_bot: Discord) -> None:
    assert discord_bot.fake.intents == {0: INTENT_GUILDS | INTENT_GUILD_MESSAGES | INTENT_DM_MESSAGES}


@pytest.fixture
def content_intent_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAMBOT_DISCORD_MESSAGE_CONTENT", "true")


@pytest.mark.parametrize("granted_intents", [INTENT_MESSAGE_CONTENT])
@pytest.mark.usefixtures("content_intent_env")
async def test_message_content_is_asked_for_when_configured(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    assert fake.intents == {0: INTENT_GUILDS | INTENT_GUILD_MESSAGES | INTENT_DM_MESSAGES | INTENT_MESSAGE_CONTENT}
    bots_message = fake.message_create("an earlier answer", author=BOT_USER)
    await fake.dispatch("MESSAGE_CREATE", fake.message_create("without a ping", referenced=bots_message))
    await discord_bot.wait_text("echo: Ada: without a ping")


async def test_a_content_intent_the_app_lacks_stops_start_up_with_a_clear_error(
    model: FakeOpenAI, tmp_path: Path
) -> None:
    settings = Settings(
        openai_base_url=model.base_url,
        db=str(tmp_path / "t.db"),
        discord_token="fake-discord-token",
        discord_message_content=True,
    )
    async with FakeDiscord() as fake, open_core(settings) as core:
        with fake.patch_discord():
            adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05)
            with pytest.raises(ConfigError, match="TEAMBOT_DISCORD_MESSAGE_CONTENT"):
                await asyncio.wait_for(adapter.start(), 10)
            await adapter.stop()
    assert fake.intents[0] & INTENT_MESSAGE_CONTENT


async def test_messages_not_for_the_bot_and_from_bots_are_ignored(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    someone_else = fake.message_create("not for the bot", author=GRACE)
    await fake.dispatch("MESSAGE_CREATE", fake.message_create("chatting", referenced=someone_else))
    await fake.dispatch(
        "MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} hi", author=OTHER_BOT, mentions=(BOT_USER,))
    )
    await fake.dispatch(
        "MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} me", author=BOT_USER, mentions=(BOT_USER,))
    )
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} a person", mentions=(BOT_USER,)))
    await discord_bot.wait_text("echo: Ada: a person")
    assert discord_bot.model.calls == 1


async def test_mentions_become_names(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    text = f"{BOT_MENTION} ask <@!{GRACE['id']}> and <@&{ADMIN_ROLE_ID}> in <#{OTHER_CHANNEL_ID}>"
    await fake.dispatch(
        "MESSAGE_CREATE", fake.message_create(text, mentions=(BOT_USER, GRACE), mention_roles=(ADMIN_ROLE_ID,))
    )
    await discord_bot.wait_text("echo: Ada: ask @Grace and @Admins in #random")


async def test_an_empty_mention_gets_a_hint(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"  {BOT_MENTION} ", mentions=(BOT_USER,)))
    await discord_bot.wait_text(texts.EMPTY_MENTION)
    assert discord_bot.model.calls == 0


async def test_history_is_kept_per_channel_and_thread(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} in the channel", mentions=(BOT_USER,)))
    await discord_bot.wait_text("echo: Ada: in the channel")
    in_thread = fake.message_create(f"{BOT_MENTION} in the thread", channel_id=THREAD_ID, mentions=(BOT_USER,))
    await fake.dispatch("MESSAGE_CREATE", in_thread)
    await discord_bot.wait_text("echo: Ada: in the thread", channel=THREAD_ID)
    assert [m["content"] for m in discord_bot.model.requests[-1]["messages"][1:]] == ["Ada: in the thread"]
    elsewhere = fake.message_create(f"{BOT_MENTION} other channel", channel_id=OTHER_CHANNEL_ID, mentions=(BOT_USER,))
    await fake.dispatch("MESSAGE_CREATE", elsewhere)
    await discord_bot.wait_text("echo: Ada: other channel", channel=OTHER_CHANNEL_ID)
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} back again", mentions=(BOT_USER,)))
    await discord_bot.wait_text("echo: Ada: back again")
    assert [m["content"] for m in discord_bot.model.requests[-1]["messages"][1:]] == [
        "Ada: in the channel",
        "echo: Ada: in the channel",
        "Ada: back again",
    ]


async def test_streaming_edits_are_throttled_and_the_final_edit_is_whole(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    discord_bot.model.chunk_delay = 0.02
    words = " ".join(f"word{i}" for i in range(60))
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} {words}", mentions=(BOT_USER,)))
    await discord_bot.wait_text(f"echo: Ada: {words}", within=10)
    [message] = discord_bot.sent()
    assert 2 <= len(message.edits) <= 10


async def test_a_429_on_edit_is_waited_out(discord_bot: Discord, caplog: pytest.LogCaptureFixture) -> None:
    fake = discord_bot.fake
    discord_bot.model.chunk_delay = 0.02
    fake.rate_limit("PATCH", r"channels/\d+/messages/\d+", times=1, retry_after=0.3)
    words = " ".join(f"w{i}" for i in range(40))
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} {words}", mentions=(BOT_USER,)))
    await discord_bot.wait_text(f"echo: Ada: {words}", within=10)
    assert len(fake.limited) == 1
    assert "streaming update failed" not in caplog.text  # waited out, not dropped and caught up later


async def test_a_5000_character_answer_is_split_in_three_with_fences_balanced(discord_bot: Discord) -> None:
    code = "```python\n" + "\n".join(f"print({i})" for i in range(320)) + "\n```"
    answer = "\n\n".join(["Intro " + "blah " * 160, code, "Outro " + "blah " * 150])
    assert 4950 <= len(answer) <= 5050
    discord_bot.model.reply = lambda messages: answer
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} code please", mentions=(BOT_USER,)))
    expected = answer.replace("```python", " ").replace("```", " ").split()

    def shown() -> list[str]:
        return " ".join(m.content for m in discord_bot.sent()).replace("```python", " ").replace("```", " ").split()

    await fake.wait_for(lambda: shown() == expected, 10)
    contents = [m.content for m in discord_bot.sent()]
    assert len(contents) == 3
    assert all(len(c) <= TEXT_LIMIT and c.count("```") % 2 == 0 for c in contents)
    assert contents[1].startswith("```python\n")  # the fence reopened with its language


async def test_model_output_cannot_ping_anyone(discord_bot: Discord) -> None:
    discord_bot.model.reply = lambda messages: f"@everyone @here <@{GRACE['id']}> <@&{ADMIN_ROLE_ID}>"
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} ping them", mentions=(BOT_USER,)))
    await discord_bot.wait_text(f"@everyone @here <@{GRACE['id']}> <@&{ADMIN_ROLE_ID}>")
    for message in discord_bot.sent():
        assert message.payload["allowed_mentions"] == {"parse": [], "replied_user": False}
        assert all(edit["allowed_mentions"]["parse"] == [] for edit in message.edits)


async def test_model_failure_is_the_reply(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} [[quota]]", mentions=(BOT_USER,)))
    await discord_bot.wait_text(texts.QUOTA_EXHAUSTED)


async def test_reset_is_an_ephemeral_slash_command(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} remember", mentions=(BOT_USER,)))
    await discord_bot.wait_text("echo: Ada: remember")
    await fake.dispatch("INTERACTION_CREATE", fake.interaction_create("reset"))
    await fake.wait_for(lambda: len(fake.followups) == 1)
    [deferral] = fake.interaction_responses
    assert deferral["type"] == 5 and deferral["data"]["flags"] & EPHEMERAL  # "thinking...", visible to one
    [followup] = fake.followups
    assert followup["flags"] & EPHEMERAL
    assert followup["content"] == texts.RESET_DONE.format(count=2, s="s")


async def test_reset_during_a_slow_answer_is_deferred_at_once(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    question = f"{BOT_MENTION} [[stall:2]] slow one"
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(question, mentions=(BOT_USER,)))
    answer = "echo: Ada: [[stall:2]] slow one"
    # The first words are out: the turn holds the conversation's lock for the 2 s the model stalls.
    await fake.wait_for(lambda: bool(discord_bot.sent()))
    await fake.dispatch("INTERACTION_CREATE", fake.interaction_create("reset"))
    await fake.wait_for(lambda: bool(fake.interaction_responses), within=1.0)
    assert fake.interaction_responses[0]["type"] == 5
    assert not any(m.content == answer for m in discord_bot.sent())  # deferred while the answer still streams
    assert fake.followups == []
    await fake.wait_for(lambda: bool(fake.followups), within=10)
    [followup] = fake.followups
    assert followup["flags"] & EPHEMERAL
    # Two: the question and its whole answer, so /reset ran once the answer was stored.
    assert followup["content"] == texts.RESET_DONE.format(count=2, s="s")


async def test_commands_are_synced_once_at_start_globally(discord_bot: Discord) -> None:
    assert [(scope, [c["name"] for c in body]) for scope, body in discord_bot.fake.command_syncs] == [
        ("global", ["reset", "usage", "system", "model"])
    ]


@pytest.mark.parametrize("overrides", [{"discord_guild": int(GUILD_ID), "reset_command": "forget"}], indirect=False)
async def test_commands_sync_to_the_configured_guild(discord_bot: Discord) -> None:
    assert [(scope, [c["name"] for c in body]) for scope, body in discord_bot.fake.command_syncs] == [
        (f"guild:{GUILD_ID}", ["forget", "usage", "system", "model"]),
        ("global", []),  # no stale global copies showing twice in that guild
    ]


async def test_commands_are_not_synced_again_when_the_session_is_invalidated(discord_bot: Discord) -> None:
    fake, client = discord_bot.fake, discord_bot.adapter.client
    ready_again = asyncio.create_task(client.wait_for("ready", timeout=20))
    await fake.invalidate_session()
    await ready_again  # a second READY: discord.py waited 5 s, then identified afresh
    assert fake.identify_count == 2
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} still there?", mentions=(BOT_USER,)))
    await discord_bot.wait_text("echo: Ada: still there?")
    # Anything syncing on "ready" would have started before this answer's round trips.
    assert [scope for scope, _ in fake.command_syncs] == ["global"]


async def test_a_gateway_disconnect_resumes_without_losing_or_doubling_a_mention(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    during = fake.message_create(f"{BOT_MENTION} during the hiccup", mentions=(BOT_USER,))
    await fake.disconnect(code=4000, queued=(("MESSAGE_CREATE", during),))
    await fake.wait_for(lambda: fake.resume_count == 1, 15)
    assert [f["d"]["id"] for f in fake.replayed if f["t"] == "MESSAGE_CREATE"] == [during["id"]]
    trigger = fake.message_create(f"{BOT_MENTION} after the hiccup", mentions=(BOT_USER,))
    await fake.dispatch("MESSAGE_CREATE", trigger)
    await fake.dispatch("MESSAGE_CREATE", trigger)  # delivered again, as a replay after a resume can
    await discord_bot.wait_text("echo: Ada: during the hiccup")
    await discord_bot.wait_text("echo: Ada: after the hiccup")
    await discord_bot.model.wait_for_requests(2)
    assert sorted(m.content for m in discord_bot.sent()) == [
        "echo: Ada: after the hiccup",
        "echo: Ada: during the hiccup",
    ]
    assert discord_bot.model.calls == 2
    assert fake.identify_count == 1 and len(fake.command_syncs) == 1  # resumed, not re-identified or re-synced


async def command(
    discord_bot: Discord, command_name: str, *, roles: tuple[str, ...] = (), **options: str
) -> dict[str, Any]:
    fake = discord_bot.fake
    before = len(fake.followups)
    opts = [{"name": k, "type": 3, "value": v} for k, v in options.items()]
    await fake.dispatch("INTERACTION_CREATE", fake.interaction_create(command_name, roles=roles, options=opts))
    await fake.wait_for(lambda: len(fake.followups) > before)
    deferral = fake.interaction_responses[-1]
    assert deferral["type"] == 5 and deferral["data"]["flags"] & EPHEMERAL  # acknowledged within Discord's 3 s
    followup = fake.followups[-1]
    assert followup["flags"] & EPHEMERAL  # every command answers privately
    return followup


async def test_system_needs_manage_server(discord_bot: Discord) -> None:
    assert (await command(discord_bot, "system", prompt="Be terse."))["content"] == texts.ADMIN_ONLY.format(
        admins=texts.ADMINS_DISCORD
    )
    done = await command(discord_bot, "system", roles=(ADMIN_ROLE_ID,), prompt="Be terse.")
    assert done["content"] == texts.SYSTEM_SET
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} hi", mentions=(BOT_USER,)))
    await discord_bot.wait_text("echo: Ada: hi")
    assert discord_bot.model.requests[-1]["messages"][0]["content"].startswith("Be terse.")


async def test_model_needs_manage_server(discord_bot: Discord) -> None:
    refused = await command(discord_bot, "model", name="some-other-model")
    assert refused["content"] == texts.ADMIN_ONLY.format(admins=texts.ADMINS_DISCORD)
    assert "Manage Server" in refused["content"]


async def test_usage_is_ephemeral(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} hi", mentions=(BOT_USER,)))
    await discord_bot.wait_text("echo: Ada: hi")
    answer = await command(discord_bot, "usage")
    assert "• This channel: today" in answer["content"] and "No budgets are set." in answer["content"]


async def test_a_rejected_token_stops_start_up_with_a_clear_error(model: FakeOpenAI, tmp_path: Path) -> None:
    settings = Settings(openai_base_url=model.base_url, db=str(tmp_path / "t.db"), discord_token="wrong-token")
    async with FakeDiscord(token="right-token") as fake, open_core(settings) as core:
        with fake.patch_discord():
            adapter = DiscordAdapter(core, settings, guild_ready_timeout=0.05)
            with pytest.raises(ConfigError, match=r"Discord refused DISCORD_TOKEN \(401 Unauthorized\)"):
                await asyncio.wait_for(adapter.start(), 10)
            await adapter.stop()
