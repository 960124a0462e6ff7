"""What a Discord mention sees around it, through the real discord.py client against the fake Discord and model:
the reply chain (gateway payload first, REST for older links, 429s waited out, failures survived), a thread's
starter and earlier messages (read once), forwarded messages, and the Message Content intent when it is missing."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from adapters.discord import check_discord
from bot import texts
from bot.config import Settings
from bot.logcontext import TurnFilter
from tests.adapters.discord import test_app as base
from tests.adapters.discord.test_app import BOT_MENTION, DM_CHANNEL, Discord
from tests.fakes.discord import (
    ADA,
    BOT_USER,
    CHANNEL_ID,
    GRACE,
    INTENT_MESSAGE_CONTENT,
    OTHER_BOT,
    OTHER_CHANNEL_ID,
    THREAD_ID,
    FakeDiscord,
)

# The Discord fixtures of test_app: the fake model, and the adapter started against the fake Discord.
model, overrides, granted_intents, discord_bot = base.model, base.overrides, base.granted_intents, base.discord_bot

#: The app has the Message Content intent and asks for it: other people's messages arrive whole.
with_content = (
    pytest.mark.parametrize("granted_intents", [INTENT_MESSAGE_CONTENT]),
    pytest.mark.parametrize("overrides", [{"discord_message_content": True}]),
)
MESSAGE_GET = rf"channels/{CHANNEL_ID}/messages/\d+"


def gets(fake: FakeDiscord) -> list[str]:
    """The messages the bot read one by one (``GET channels/{id}/messages/{id}``), in order."""
    return [path for method, path, _ in fake.rest_calls if method == "GET" and re.fullmatch(MESSAGE_GET, path)]


def prompt(bot: Discord, request: int = -1) -> list[str]:
    """What the model was sent, after the system prompt: each message's role and content."""
    return [f"{m['role']}: {m['content']}" for m in bot.model.requests[request]["messages"][1:]]


async def ask(
    bot: Discord, text: str, *, channel: str = CHANNEL_ID, referenced: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Ada mentions the bot (in reply to ``referenced``) and the answer arrives."""
    fake = bot.fake
    calls = bot.model.calls
    mention = fake.message_create(
        f"{BOT_MENTION} {text}", mentions=(BOT_USER,), channel_id=channel, referenced=referenced
    )
    await fake.dispatch("MESSAGE_CREATE", mention)
    await bot.wait_text(f"echo: Ada: {text}", channel=channel)
    assert bot.model.calls == calls + 1
    return mention


def chain(fake: FakeDiscord, *lines: tuple[dict[str, Any], str], channel: str = CHANNEL_ID) -> list[dict[str, Any]]:
    """Messages that each reply to the one before, on Discord but never announced to the bot (REST only)."""
    messages: list[dict[str, Any]] = []
    for author, text in lines:
        messages.append(
            fake.message_create(text, author=author, channel_id=channel, referenced=messages[-1] if messages else None)
        )
    fake.post(*messages)
    return messages


@with_content[0]
@with_content[1]
async def test_a_reply_sees_the_replied_to_message_from_the_gateway_payload_alone(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    [trace] = chain(fake, (GRACE, "Traceback: KeyError 'user_id' in billing.py line 42"))
    await ask(discord_bot, "what does this mean?", referenced=trace)
    assert prompt(discord_bot) == [
        "user: Grace: Traceback: KeyError 'user_id' in billing.py line 42",
        "user: Ada: what does this mean?",
    ]
    # The gateway carried the message: no REST call was needed.
    assert fake.calls("GET", r"channels/\d+/messages.*") == []


@with_content[0]
@pytest.mark.parametrize("overrides", [{"discord_message_content": True, "discord_reply_chain": 3}])
async def test_older_links_of_the_chain_come_by_rest_oldest_first_up_to_the_limit(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    _, _, three, four = chain(
        fake,
        (GRACE, "one: the deploy failed"),
        (ADA, "two: which step?"),
        (OTHER_BOT, "three: step migrate, exit 1"),
        (GRACE, "four: the migration again"),
    )
    await ask(discord_bot, "why?", referenced=four)
    assert prompt(discord_bot) == [
        "user: Ada: two: which step?",
        "user: otherbot (bot): three: step migrate, exit 1",
        "user: Grace: four: the migration again",
        "user: Ada: why?",
    ]
    # Four came with the mention, three by REST with two resolved inside it; one is past the limit of 3.
    assert gets(fake) == [f"channels/{CHANNEL_ID}/messages/{three['id']}"]


@with_content[0]
@with_content[1]
async def test_a_429_on_a_chain_read_is_waited_out(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    *_, last = chain(fake, (GRACE, "the first"), (ADA, "the second"), (GRACE, "the third"))
    fake.rate_limit("GET", MESSAGE_GET, times=1, retry_after=0.1)
    await ask(discord_bot, "sum up", referenced=last)
    assert prompt(discord_bot) == [
        "user: Grace: the first",
        "user: Ada: the second",
        "user: Grace: the third",
        "user: Ada: sum up",
    ]
    assert fake.limited == [("GET", f"channels/{CHANNEL_ID}/messages/{chain_id(fake, 'the second')}")]


def chain_id(fake: FakeDiscord, text: str) -> str:
    return next(m["id"] for m in fake.posted.values() if m["content"] == text)


@with_content[0]
@with_content[1]
async def test_a_chain_read_refused_by_discord_still_answers_with_one_log_line(
    discord_bot: Discord, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(TurnFilter())
    fake = discord_bot.fake
    *_, last = chain(fake, (GRACE, "hidden behind a 403"), (ADA, "the one in the payload"))
    fake.forbid("GET", MESSAGE_GET)
    await ask(discord_bot, "still there?", referenced=last)
    assert prompt(discord_bot) == ["user: Ada: the one in the payload", "user: Ada: still there?"]
    [line] = [r for r in caplog.records if "reply chain" in r.getMessage()]
    assert line.levelno == logging.WARNING and line.exc_info is None
    assert "HTTP 403 (code 50001)" in line.getMessage()


@with_content[0]
@with_content[1]
async def test_the_chain_stops_at_the_bots_own_answer(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    await ask(discord_bot, "what is a 429?")
    [answer] = discord_bot.sent()
    [answer_payload] = [m for m in fake._channel_log(CHANNEL_ID) if m["id"] == answer.id]
    # Grace's message replies to the bot's answer (which replied to Ada's question, already in the conversation).
    follow_up = fake.message_create("so we should back off?", author=GRACE, referenced=answer_payload)
    fake.post(follow_up)
    await ask(discord_bot, "and how long?", referenced=follow_up)
    assert prompt(discord_bot) == [
        "user: Ada: what is a 429?",
        "assistant: echo: Ada: what is a 429?",
        "user: Grace: so we should back off?",
        "user: Ada: and how long?",
    ]
    # The answer was read (the fake, unlike Discord, does not echo the bot's own messages into its cache), found to
    # be the bot's, and nothing behind it.
    assert gets(fake) == [f"channels/{CHANNEL_ID}/messages/{answer.id}"]


@with_content[0]
@with_content[1]
async def test_a_thread_mention_sees_the_starter_and_earlier_messages_once(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    # The thread was started from Grace's message in the channel: the message has the thread's id.
    starter = fake.message_create("deploy of v2.3 failed", author=GRACE, message_id=THREAD_ID)
    earlier = [
        fake.message_create("it is the migration", author=ADA, channel_id=THREAD_ID),
        fake.message_create("CI: pipeline red", author=OTHER_BOT, channel_id=THREAD_ID),
    ]
    fake.post(starter, *earlier)
    await ask(discord_bot, "what happened here?", channel=THREAD_ID)
    assert prompt(discord_bot) == [
        "user: Grace: deploy of v2.3 failed",
        "user: Ada: it is the migration",
        "user: otherbot (bot): CI: pipeline red",
        "user: Ada: what happened here?",
    ]
    fake.post(fake.message_create("rolled back, all green", author=GRACE, channel_id=THREAD_ID))
    await ask(discord_bot, "and now?", channel=THREAD_ID)
    # Only what is new since the last mention was read; the bot's own answer is the conversation's already.
    assert prompt(discord_bot) == [
        "user: Grace: deploy of v2.3 failed",
        "user: Ada: it is the migration",
        "user: otherbot (bot): CI: pipeline red",
        "user: Ada: what happened here?",
        "assistant: echo: Ada: what happened here?",
        "user: Grace: rolled back, all green",
        "user: Ada: and now?",
    ]
    assert len(fake.calls("GET", rf"channels/{CHANNEL_ID}/messages/{THREAD_ID}")) == 1


@with_content[0]
@with_content[1]
async def test_a_thread_read_stops_at_the_mention(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    fake.post(fake.message_create("before the question", author=GRACE, channel_id=THREAD_ID))
    mention = fake.message_create(f"{BOT_MENTION} what now?", mentions=(BOT_USER,), channel_id=THREAD_ID)
    # Written after the mention, before the bot got to it: it belongs after the question, not before.
    fake.post(fake.message_create("after the question", author=GRACE, channel_id=THREAD_ID))
    await fake.dispatch("MESSAGE_CREATE", mention)
    await discord_bot.wait_text("echo: Ada: what now?", channel=THREAD_ID)
    assert prompt(discord_bot) == ["user: Grace: before the question", "user: Ada: what now?"]
    await ask(discord_bot, "and then?", channel=THREAD_ID)
    assert prompt(discord_bot)[2:] == [
        "assistant: echo: Ada: what now?",
        "user: Grace: after the question",
        "user: Ada: and then?",
    ]


@with_content[0]
@with_content[1]
async def test_a_thread_started_under_the_bots_answer_sees_it_as_the_bots_own(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    fake.post(fake.message_create("HTTP 429 means too many requests.", author=BOT_USER, message_id=THREAD_ID))
    await ask(discord_bot, "and 503?", channel=THREAD_ID)
    assert prompt(discord_bot) == ["assistant: HTTP 429 means too many requests.", "user: Ada: and 503?"]


@with_content[0]
@pytest.mark.parametrize("overrides", [{"discord_message_content": True, "history_tokens": 400}])
async def test_a_long_thread_is_read_newest_first_within_the_budget(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    starter = fake.message_create("the thread's question", author=GRACE, message_id=THREAD_ID)
    fake.post(starter)
    fake.post(*(fake.message_create(f"message {n} " + "x" * 120, channel_id=THREAD_ID) for n in range(30)))
    await ask(discord_bot, "summary?", channel=THREAD_ID)
    seen = prompt(discord_bot)
    # The starter is always kept; of the rest, the newest that fit, in order; the oldest left out.
    assert seen[0] == "user: Grace: the thread's question"
    numbers = [int(line.split()[3]) for line in seen[1:-1]]
    assert numbers and numbers == list(range(30 - len(numbers), 30))
    assert len(numbers) < 30
    assert seen[-1] == "user: Ada: summary?"


async def test_a_forward_in_a_dm_is_read_as_its_content(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    original = fake.message_create("the release is moved to Friday", author=GRACE, channel_id=OTHER_CHANNEL_ID)
    forward = fake.message_create("", channel_id=DM_CHANNEL, guild_id=None, forwarded=original)
    await fake.dispatch("MESSAGE_CREATE", forward)
    expected = f"echo: Ada: {texts.DISCORD_FORWARDED}\nthe release is moved to Friday"
    await discord_bot.wait_text(expected, channel=DM_CHANNEL)


@with_content[0]
@with_content[1]
async def test_a_reply_to_a_forward_sees_the_forwarded_content(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    original = fake.message_create("the release is moved to Friday", author=GRACE, channel_id=OTHER_CHANNEL_ID)
    forward = fake.message_create("", author=GRACE, forwarded=original)
    fake.post(forward)
    await ask(discord_bot, "is that final?", referenced=forward)
    assert prompt(discord_bot) == [
        f"user: Grace: {texts.DISCORD_FORWARDED}\nthe release is moved to Friday",
        "user: Ada: is that final?",
    ]


async def test_without_the_content_intent_the_reply_says_so_once(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    [hidden] = chain(fake, (GRACE, "a message Discord sends the bot empty"))
    await ask(discord_bot, "what does it say?", referenced=hidden)
    await discord_bot.wait_text(texts.DISCORD_CONTENT_HIDDEN)
    # The model saw what was visible: the question alone.
    assert prompt(discord_bot) == ["user: Ada: what does it say?"]
    [again] = chain(fake, (GRACE, "another one"))
    await ask(discord_bot, "and this?", referenced=again)
    # In the thread too: the channel has been told.
    fake.post(fake.message_create("in the thread", author=GRACE, channel_id=THREAD_ID))
    await ask(discord_bot, "and here?", channel=THREAD_ID)
    notes = [m for ch in (CHANNEL_ID, THREAD_ID) for m in discord_bot.sent(ch)]
    assert [m.content for m in notes].count(texts.DISCORD_CONTENT_HIDDEN) == 1


async def test_without_the_content_intent_a_thread_read_says_so_too(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    fake.post(fake.message_create("the thread's question", author=GRACE, message_id=THREAD_ID))
    fake.post(fake.message_create("an answer in the thread", author=GRACE, channel_id=THREAD_ID))
    await ask(discord_bot, "what was asked?", channel=THREAD_ID)
    await discord_bot.wait_text(texts.DISCORD_CONTENT_HIDDEN, channel=THREAD_ID)
    assert prompt(discord_bot) == ["user: Ada: what was asked?"]


@with_content[0]
@pytest.mark.parametrize("overrides", [{"discord_message_content": True, "discord_reply_chain": 0}])
async def test_a_reply_chain_of_zero_reads_nothing(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    *_, last = chain(fake, (GRACE, "first"), (ADA, "second"))
    await ask(discord_bot, "only me?", referenced=last)
    assert prompt(discord_bot) == ["user: Ada: only me?"]
    assert gets(fake) == []


async def test_without_the_content_intent_a_visible_context_needs_no_notice(discord_bot: Discord) -> None:
    fake = discord_bot.fake
    # A message that mentions the bot arrives whole even without the intent.
    visible = fake.message_create(f"{BOT_MENTION} look at this later", author=GRACE, mentions=(BOT_USER,))
    fake.post(visible)
    await ask(discord_bot, "now?", referenced=visible)
    assert prompt(discord_bot) == ["user: Grace: @teambot look at this later", "user: Ada: now?"]
    assert all(m.content != texts.DISCORD_CONTENT_HIDDEN for m in discord_bot.sent())


@pytest.mark.parametrize(
    ("asked", "granted", "line"),
    [
        (True, INTENT_MESSAGE_CONTENT, "PASS  discord message content: " + texts.CHECK_DISCORD_CONTENT_ON),
        (True, 0, "FAIL  discord message content: " + texts.CHECK_DISCORD_CONTENT_REFUSED),
        (False, 0, "WARN  discord message content: " + texts.CHECK_DISCORD_CONTENT_OFF),
        (False, INTENT_MESSAGE_CONTENT, "WARN  discord message content: " + texts.CHECK_DISCORD_CONTENT_NOT_ASKED),
    ],
)
async def test_the_check_reports_the_message_content_intent(asked: bool, granted: int, line: str) -> None:
    settings = Settings(discord_token="t", discord_message_content=asked)
    async with FakeDiscord(privileged_intents=granted) as fake:
        with fake.patch_discord():
            results = await check_discord(settings)
    assert results[-1].line() == line
    assert [r.ok for r in results] == [True, True, asked is False or bool(granted)]


async def test_a_plain_mention_reads_nothing_around_it(discord_bot: Discord) -> None:
    await ask(discord_bot, "just a question")
    assert prompt(discord_bot) == ["user: Ada: just a question"]
    assert discord_bot.fake.calls("GET", r"channels/.*") == []
