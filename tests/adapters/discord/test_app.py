"""The Discord adapter through the real discord.py client, against the loopback fake Discord and model."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.discord import TEXT_LIMIT, DiscordAdapter
from adapters.discord import app as discord_app
from bot import texts
from bot.config import Settings
from bot.errors import ConfigError
from bot.logcontext import TurnFilter
from bot.runtime import open_core
from tests.fakes.discord import (
    ADA,
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
    UNCACHED_THREAD_ID,
    FakeDiscord,
)
from tests.fakes.openai import FakeOpenAI
from tests.test_conversation import until

BOT_MENTION = f"<@{BOT_USER['id']}>"
DM_CHANNEL = "7001"
GRACE_DM_CHANNEL = "7002"


@dataclass
class Discord:
    fake: FakeDiscord
    model: FakeOpenAI
    adapter: DiscordAdapter
    db: Path

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
                yield Discord(fake, model, adapter, Path(settings.db))
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


async def test_an_answer_slower_than_the_typing_delay_shows_the_bot_typing_first(
    discord_bot: Discord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(discord_app, "TYPING_DELAY", 0.05)
    discord_bot.model.first_byte_delay = 0.5
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} take your time", mentions=(BOT_USER,)))
    await fake.wait_for(lambda: fake.typing_calls == [CHANNEL_ID], 5)
    assert not discord_bot.sent()  # typing while the answer is not out yet
    await discord_bot.wait_text("echo: Ada: take your time")


async def test_answers_waiting_in_one_channel_share_one_typing_indicator(
    discord_bot: Discord, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Discord shows one "teambot is typing…" per channel: a second indicator there would change nothing.
    monkeypatch.setattr(discord_app, "TYPING_DELAY", 0.05)
    discord_bot.model.hold = asyncio.Event()
    fake = discord_bot.fake
    typers = discord_bot.adapter._typers._typers
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} first", mentions=(BOT_USER,)))
    await fake.wait_for(lambda: fake.typing_calls == [CHANNEL_ID], 5)
    # The second waits behind the first (one conversation) and, past the delay, for the same indicator.
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} second", mentions=(BOT_USER,)))
    await until(lambda: typers.get(int(CHANNEL_ID), (None, 0))[1] == 2)
    elsewhere = fake.message_create(f"{BOT_MENTION} elsewhere", mentions=(BOT_USER,), channel_id=OTHER_CHANNEL_ID)
    await fake.dispatch("MESSAGE_CREATE", elsewhere)
    await fake.wait_for(lambda: OTHER_CHANNEL_ID in fake.typing_calls, 5)
    discord_bot.model.hold.set()
    await discord_bot.wait_text("echo: Ada: first")
    await discord_bot.wait_text("echo: Ada: second")
    await discord_bot.wait_text("echo: Ada: elsewhere", channel=OTHER_CHANNEL_ID)
    assert fake.typing_calls == [CHANNEL_ID, OTHER_CHANNEL_ID]
    assert typers == {}  # every indicator stopped with its last answer


async def test_a_typing_indicator_that_failed_is_started_again_for_the_next_answer(
    discord_bot: Discord, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refused typing call ends its indicator: the next answer to wait in that channel starts a new one instead of
    # counting itself in on one that shows nothing.
    monkeypatch.setattr(discord_app, "TYPING_DELAY", 0.05)
    discord_bot.model.hold = asyncio.Event()
    fake = discord_bot.fake
    fake.typing_refusals = 1
    typers = discord_bot.adapter._typers._typers
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} first", mentions=(BOT_USER,)))
    await fake.wait_for(lambda: fake.typing_calls == [CHANNEL_ID], 5)
    await until(lambda: int(CHANNEL_ID) in typers and typers[int(CHANNEL_ID)][0].done())
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} second", mentions=(BOT_USER,)))
    await fake.wait_for(lambda: fake.typing_calls == [CHANNEL_ID, CHANNEL_ID], 5)
    discord_bot.model.hold.set()
    await discord_bot.wait_text("echo: Ada: first")
    await discord_bot.wait_text("echo: Ada: second")
    assert typers == {}


async def test_an_answer_out_within_the_typing_delay_sends_no_typing_indicator(
    discord_bot: Discord, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The REST call and the two tasks of the indicator would be spent on nothing: the answer is there at once.
    monkeypatch.setattr(discord_app, "TYPING_DELAY", 30.0)
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION} quick one", mentions=(BOT_USER,)))
    await discord_bot.wait_text("echo: Ada: quick one")
    assert fake.typing_calls == []


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
        ("global", ["reset", "usage", "system", "model", "speak", "scope", "summary", "Ask teambot", "Summarize"])
    ]


RENAMED = {"reset_command": "forget", "usage_command": "spend", "model_command": "llm"}


@pytest.mark.parametrize("overrides", [{"discord_guild": int(GUILD_ID), **RENAMED}], indirect=False)
async def test_commands_sync_to_the_configured_guild(discord_bot: Discord) -> None:
    assert [(scope, [c["name"] for c in body]) for scope, body in discord_bot.fake.command_syncs] == [
        (
            f"guild:{GUILD_ID}",
            ["forget", "spend", "system", "llm", "speak", "scope", "summary", "Ask teambot", "Summarize"],
        ),
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
    discord_bot: Discord,
    command_name: str,
    *,
    roles: tuple[str, ...] = (),
    channel_id: str = CHANNEL_ID,
    guild_id: str | None = GUILD_ID,
    user: dict[str, Any] = ADA,
    **options: str,
) -> dict[str, Any]:
    fake = discord_bot.fake
    before = len(fake.followups)
    opts = [{"name": k, "type": 3, "value": v} for k, v in options.items()]
    interaction = fake.interaction_create(
        command_name, roles=roles, options=opts, channel_id=channel_id, guild_id=guild_id, user=user
    )
    await fake.dispatch("INTERACTION_CREATE", interaction)
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


async def ask(
    discord_bot: Discord,
    text: str,
    *,
    channel_id: str = CHANNEL_ID,
    guild_id: str | None = GUILD_ID,
    author: dict[str, Any] = ADA,
) -> None:
    """A question to the bot: a mention in a guild channel or thread, a plain message in a DM."""
    fake = discord_bot.fake
    if guild_id is None:
        message = fake.message_create(text, channel_id=channel_id, guild_id=None, author=author)
    else:
        message = fake.message_create(
            f"{BOT_MENTION} {text}", channel_id=channel_id, author=author, mentions=(BOT_USER,)
        )
    await fake.dispatch("MESSAGE_CREATE", message)


async def wait_prefix(discord_bot: Discord, prefix: str, channel: str = CHANNEL_ID) -> str:
    fake = discord_bot.fake
    await fake.wait_for(lambda: any(m.content.startswith(prefix) for m in discord_bot.sent(channel)))
    return next(m.content for m in discord_bot.sent(channel) if m.content.startswith(prefix))


# --- threads belong to their channel ------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{"deny_channels": CHANNEL_ID}])
@pytest.mark.parametrize("thread", [THREAD_ID, UNCACHED_THREAD_ID])
async def test_a_thread_of_a_denied_channel_is_refused(discord_bot: Discord, thread: str) -> None:
    await ask(discord_bot, "let me in", channel_id=thread)
    await discord_bot.wait_text(texts.NOT_ALLOWED, channel=thread)
    await ask(discord_bot, "elsewhere", channel_id=OTHER_CHANNEL_ID)
    await discord_bot.wait_text("echo: Ada: elsewhere", channel=OTHER_CHANNEL_ID)
    assert discord_bot.model.calls == 1
    # A thread discord.py was never told about is looked up once, to learn its parent.
    assert discord_bot.fake.calls("GET", rf"channels/{UNCACHED_THREAD_ID}") == (
        [None] if thread == UNCACHED_THREAD_ID else []
    )


@pytest.mark.parametrize("overrides", [{"allow_channels": CHANNEL_ID}])
async def test_a_thread_of_an_allowed_channel_is_answered(discord_bot: Discord) -> None:
    await ask(discord_bot, "in the thread", channel_id=THREAD_ID)
    await discord_bot.wait_text("echo: Ada: in the thread", channel=THREAD_ID)


@pytest.mark.parametrize("overrides", [{"models": "small-model"}])
async def test_a_thread_follows_its_channels_system_prompt_and_model(discord_bot: Discord) -> None:
    done = await command(discord_bot, "system", roles=(ADMIN_ROLE_ID,), prompt="Be terse.")
    assert done["content"] == texts.SYSTEM_SET
    # /model typed inside the thread sets the parent channel's model.
    done = await command(discord_bot, "model", roles=(ADMIN_ROLE_ID,), channel_id=THREAD_ID, name="small-model")
    assert done["content"] == texts.MODEL_SET.format(model="small-model")
    shown = await command(discord_bot, "system", channel_id=THREAD_ID)
    assert shown["content"] == texts.SYSTEM_SHOW.format(prompt="Be terse.")
    for channel in (THREAD_ID, CHANNEL_ID):
        await ask(discord_bot, f"hi from {channel}", channel_id=channel)
        await discord_bot.wait_text(f"echo: Ada: hi from {channel}", channel=channel)
        request = discord_bot.model.requests[-1]
        assert request["messages"][0]["content"].startswith("Be terse.")
        assert request["model"] == "small-model"


@pytest.mark.parametrize("overrides", [{"channel_rate_per_minute": 1}])
async def test_the_channel_rate_limit_covers_its_threads(discord_bot: Discord) -> None:
    await ask(discord_bot, "first")
    await discord_bot.wait_text("echo: Ada: first")
    await ask(discord_bot, "second", channel_id=THREAD_ID, author=GRACE)  # another person: the channel's limit
    await wait_prefix(discord_bot, texts.SLOW_DOWN.split("{")[0], channel=THREAD_ID)
    assert discord_bot.model.calls == 1


@pytest.mark.parametrize("overrides", [{"budget_channel_daily": 1}])
async def test_the_channel_budget_covers_its_threads(discord_bot: Discord) -> None:
    await ask(discord_bot, "first", channel_id=THREAD_ID)
    await discord_bot.wait_text("echo: Ada: first", channel=THREAD_ID)
    await ask(discord_bot, "second", author=GRACE)
    await wait_prefix(discord_bot, "Sorry, this channel's daily budget is used up")
    assert discord_bot.model.calls == 1


async def test_reset_in_a_thread_forgets_the_thread_and_in_the_channel_everything(discord_bot: Discord) -> None:
    await ask(discord_bot, "in the channel")
    await discord_bot.wait_text("echo: Ada: in the channel")
    await ask(discord_bot, "in the thread", channel_id=THREAD_ID)
    await discord_bot.wait_text("echo: Ada: in the thread", channel=THREAD_ID)
    forgot = await command(discord_bot, "reset", channel_id=THREAD_ID)
    assert forgot["content"] == texts.RESET_DONE.format(count=2, s="s")
    await ask(discord_bot, "again in the channel")
    await discord_bot.wait_text("echo: Ada: again in the channel")
    assert [m["content"] for m in discord_bot.model.requests[-1]["messages"][1:]] == [
        "Ada: in the channel",
        "echo: Ada: in the channel",
        "Ada: again in the channel",
    ]
    await ask(discord_bot, "again in the thread", channel_id=THREAD_ID)
    await discord_bot.wait_text("echo: Ada: again in the thread", channel=THREAD_ID)
    # /reset in the channel covers its threads, as in Slack.
    forgot = await command(discord_bot, "reset")
    assert forgot["content"] == texts.RESET_DONE.format(count=6, s="s")


# --- a person's DMs are their own scope ---------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{"budget_workspace_monthly": 1}])
async def test_each_persons_dms_have_their_own_budget(discord_bot: Discord) -> None:
    await ask(discord_bot, "first", channel_id=DM_CHANNEL, guild_id=None)
    await discord_bot.wait_text("echo: Ada: first", channel=DM_CHANNEL)
    # Ada's DMs used up the budget of her DMs, not of everyone's.
    await ask(discord_bot, "mine", channel_id=GRACE_DM_CHANNEL, guild_id=None, author=GRACE)
    await discord_bot.wait_text("echo: Grace: mine", channel=GRACE_DM_CHANNEL)
    await ask(discord_bot, "second", channel_id=DM_CHANNEL, guild_id=None)
    await wait_prefix(discord_bot, "Sorry, this workspace's monthly budget is used up", channel=DM_CHANNEL)
    assert discord_bot.model.calls == 2
    # /usage in a DM: the "workspace" is that person's DMs, so its line counts only what they asked.
    for person, channel in ((ADA, DM_CHANNEL), (GRACE, GRACE_DM_CHANNEL)):
        usage = await command(discord_bot, "usage", channel_id=channel, guild_id=None, user=person)
        lines = dict(line.split(": ", 1) for line in usage["content"].splitlines() if line.startswith("• "))
        assert lines["• This workspace"] == lines["• You"] == lines["• This channel"]
        assert not lines["• You"].startswith("today 0 tokens")


@pytest.mark.parametrize(
    ("overrides", "answered"),
    [
        ({"deny_workspaces": "dm"}, []),
        ({"deny_workspaces": f"dm-{ADA['id']}"}, ["Grace"]),
        ({"allow_workspaces": GUILD_ID}, []),
        ({"allow_workspaces": f"{GUILD_ID},dm"}, ["Ada", "Grace"]),
        ({"allow_workspaces": f"{GUILD_ID},dm-{GRACE['id']}"}, ["Grace"]),
    ],
)
async def test_access_lists_name_one_persons_dms_or_all_of_them(discord_bot: Discord, answered: list[str]) -> None:
    for person, channel in ((ADA, DM_CHANNEL), (GRACE, GRACE_DM_CHANNEL)):
        await ask(discord_bot, "hello", channel_id=channel, guild_id=None, author=person)
    for person, channel in ((ADA, DM_CHANNEL), (GRACE, GRACE_DM_CHANNEL)):
        name = person["global_name"]
        await discord_bot.wait_text(f"echo: {name}: hello" if name in answered else texts.NOT_ALLOWED, channel=channel)
    assert discord_bot.model.calls == len(answered)


async def test_a_command_in_a_dm_is_about_that_persons_dm(discord_bot: Discord) -> None:
    await ask(discord_bot, "remember", channel_id=DM_CHANNEL, guild_id=None)
    await discord_bot.wait_text("echo: Ada: remember", channel=DM_CHANNEL)
    forgot = await command(discord_bot, "reset", channel_id=DM_CHANNEL, guild_id=None)
    assert forgot["content"] == texts.RESET_DONE.format(count=2, s="s")


# --- commands that fail, and what Discord is told about mentions ------------------------------------------


async def test_a_command_that_fails_gets_a_private_apology(
    discord_bot: Discord, caplog: pytest.LogCaptureFixture
) -> None:
    with sqlite3.connect(discord_bot.db) as db:
        db.execute("DROP TABLE messages")  # the database breaks under the bot
    answer = await command(discord_bot, "reset")
    assert answer["content"] == texts.APOLOGY
    assert "the command /reset failed" in caplog.text and "Traceback" in caplog.text


async def test_command_answers_and_hints_cannot_ping_anyone(discord_bot: Discord) -> None:
    """Sends outside the sink rely on the client's ``allowed_mentions``: without it they would ping."""
    pings = f"@everyone @here <@{GRACE['id']}> <@&{ADMIN_ROLE_ID}>"
    await command(discord_bot, "system", roles=(ADMIN_ROLE_ID,), prompt=pings)
    shown = await command(discord_bot, "system")
    assert pings in shown["content"]
    assert all(f["allowed_mentions"] == {"parse": []} for f in discord_bot.fake.followups)
    fake = discord_bot.fake
    await fake.dispatch("MESSAGE_CREATE", fake.message_create(f"{BOT_MENTION}", mentions=(BOT_USER,)))
    await discord_bot.wait_text(texts.EMPTY_MENTION)
    [hint] = discord_bot.sent()
    assert hint.payload["allowed_mentions"] == {"parse": [], "replied_user": False}


async def test_answers_cannot_ping_anyone_even_on_a_client_without_the_default(discord_bot: Discord) -> None:
    """The sink's own sends and edits carry ``allowed_mentions`` themselves, whatever the client says."""
    discord_bot.adapter.client.allowed_mentions = None
    discord_bot.model.chunk_delay = 0.005
    answer = " ".join(f"@everyone <@{GRACE['id']}> x{i}" for i in range(100))
    assert len(answer) > TEXT_LIMIT
    discord_bot.model.reply = lambda messages: answer
    await ask(discord_bot, "ping them all")
    await discord_bot.fake.wait_for(
        lambda: len(discord_bot.sent()) == 2 and discord_bot.sent()[-1].content.endswith("x99"), 10
    )
    first, second = discord_bot.sent()
    assert first.payload["allowed_mentions"] == {"parse": [], "replied_user": False}  # the reply
    assert second.payload["allowed_mentions"]["parse"] == []  # the continuation, sent to the channel
    edits = [edit for m in (first, second) for edit in m.edits]
    assert edits and all(edit["allowed_mentions"]["parse"] == [] for edit in edits)


async def test_a_message_in_a_channel_discord_will_not_describe_is_not_answered(
    discord_bot: Discord, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="adapters.discord")
    await ask(discord_bot, "where am I?", channel_id="3999")  # neither cached nor known to Discord: 404
    await discord_bot.fake.wait_for(lambda: "Discord did not say what the channel is" in caplog.text)
    await ask(discord_bot, "and here?")
    await discord_bot.wait_text("echo: Ada: and here?")
    assert discord_bot.sent("3999") == [] and discord_bot.model.calls == 1
