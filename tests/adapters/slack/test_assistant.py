"""Slack's AI-app surface through the real slack-bolt and slack_sdk: the assistant pane, the thinking status,
native streaming and its fallback, against the loopback fake Slack and model."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from adapters.slack import SlackAdapter
from adapters.slack.format import markdown_to_mrkdwn
from adapters.slack.stream import neutralise_mentions
from bot import texts
from bot.config import Settings
from bot.runtime import open_core
from tests.adapters.slack import test_app as base
from tests.adapters.slack.test_app import Slack, long_reply, settings_for
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import (
    MARKDOWN_LIMIT,
    FakeSlack,
    assistant_message,
    assistant_thread_started,
    direct_message,
    event_envelope,
    mention,
)

# The Slack fixtures of test_app: a fake Slack and model, and the adapter started against them over HTTP.
fake, model, overrides, slack = base.fake, base.model, base.overrides, base.slack


@pytest.fixture
def native() -> bool:
    return True


THREAD = "1700000000.000100"
OTHER_THREAD = "1700000000.000900"


def calls(slack: Slack) -> list[str]:
    return [name for name, _ in slack.fake.calls]


def statuses(slack: Slack) -> list[str]:
    return [c["status"] for c in slack.fake.calls_to("assistant.threads.setStatus")]


async def answered(slack: Slack, n: int = 1, within: float = 10) -> None:
    """Until ``n`` replies are out and none is still streaming."""
    await slack.fake.wait_for(
        lambda: (
            len([m for m in slack.fake.posted if m.text != texts.ASSISTANT_GREETING]) >= n
            and not any(m.streaming for m in slack.fake.posted)
        ),
        within,
    )


def replies(slack: Slack) -> list[Any]:
    return [m for m in slack.fake.posted if m.text != texts.ASSISTANT_GREETING]


#: Seconds between the model's words. An answer whole before anything of it was shown goes out in one post
#: (tests/adapters/slack/test_stream.py); the tests of the stream, and of its fallback, need words that come apart.
WORD_GAP = 0.01


async def until_texts(slack: Slack, *expected: str) -> None:
    """Until the replies out are exactly ``expected``, each as it ends, and none is still streaming."""
    await slack.fake.wait_for(
        lambda: [m.text for m in replies(slack)] == list(expected) and not any(m.streaming for m in slack.fake.posted)
    )


async def test_a_new_assistant_thread_is_greeted_with_suggested_prompts(slack: Slack) -> None:
    await slack.event(assistant_thread_started(thread_ts=THREAD))
    await slack.fake.wait_for(lambda: bool(slack.fake.calls_to("assistant.threads.setSuggestedPrompts")))
    [greeting] = slack.fake.posted
    assert (greeting.channel, greeting.thread_ts, greeting.text) == ("D1", THREAD, texts.ASSISTANT_GREETING)
    [prompts] = slack.fake.calls_to("assistant.threads.setSuggestedPrompts")
    assert prompts["channel_id"] == "D1" and prompts["thread_ts"] == THREAD
    assert prompts["title"] == texts.ASSISTANT_PROMPTS_TITLE
    assert prompts["prompts"] == [{"title": p, "message": p} for p in texts.SUGGESTED_PROMPTS]
    assert slack.model.calls == 0


@pytest.mark.parametrize("overrides", [{"slack_suggested_prompts": ("Explain this error, briefly", "Write a haiku")}])
async def test_suggested_prompts_are_configurable(slack: Slack) -> None:
    await slack.event(assistant_thread_started(thread_ts=THREAD))
    await slack.fake.wait_for(lambda: bool(slack.fake.calls_to("assistant.threads.setSuggestedPrompts")))
    sent = slack.fake.calls_to("assistant.threads.setSuggestedPrompts")[0]["prompts"]
    assert [p["message"] for p in sent] == ["Explain this error, briefly", "Write a haiku"]


async def test_a_question_in_the_pane_thinks_then_streams_natively(slack: Slack) -> None:
    words = " ".join(f"word{i}" for i in range(60))
    slack.model.first_byte_delay = 0.3  # the status must be up while the model has said nothing
    slack.model.chunk_delay = 0.02  # about 1.2 s of streaming
    await slack.event(assistant_message(f"{words}", thread_ts=THREAD, ts="1700000000.000200"))
    await answered(slack)

    [reply] = replies(slack)
    assert reply.streamed and (reply.channel, reply.thread_ts) == ("D1", THREAD)
    assert reply.text == f"echo: Ada: {words}"  # the model's whole reply, as Markdown
    assert 3 <= len(reply.appends) <= 12  # paced at about one call per 0.2 s, not one per token
    assert all(len(a) <= MARKDOWN_LIMIT for a in reply.appends)
    assert slack.fake.calls_to("chat.postMessage") == [] and slack.fake.calls_to("chat.update") == []

    order = calls(slack)
    thinking = order.index("assistant.threads.setStatus")
    assert statuses(slack) == [texts.THINKING_STATUS, ""]
    cleared = len(order) - 1 - order[::-1].index("assistant.threads.setStatus")
    assert thinking < order.index("chat.startStream") < cleared < order.index("chat.stopStream")
    status_call = slack.fake.calls_to("assistant.threads.setStatus")[0]
    assert (status_call["channel_id"], status_call["thread_ts"]) == ("D1", THREAD)

    [title] = slack.fake.calls_to("assistant.threads.setTitle")
    assert title["thread_ts"] == THREAD and title["title"].startswith("word0 word1")
    assert len(title["title"]) <= texts.TITLE_LENGTH


async def test_each_assistant_thread_is_its_own_conversation(slack: Slack) -> None:
    await slack.event(assistant_message("first in A", thread_ts=THREAD, ts="1700000000.000200"))
    await answered(slack, 1)
    await slack.event(assistant_message("first in B", thread_ts=OTHER_THREAD, ts="1700000000.001000"))
    await answered(slack, 2)
    await slack.event(assistant_message("second in A", thread_ts=THREAD, ts="1700000000.000300"))
    await answered(slack, 3)
    prompts = [[m["content"] for m in r["messages"][1:]] for r in slack.model.requests]
    assert prompts[1] == ["Ada: first in B"]
    assert prompts[2] == ["Ada: first in A", "echo: Ada: first in A", "Ada: second in A"]
    assert [r.thread_ts for r in replies(slack)] == [THREAD, OTHER_THREAD, THREAD]
    # A thread is titled by its first question only.
    assert [t["title"] for t in slack.fake.calls_to("assistant.threads.setTitle")] == ["first in A", "first in B"]


async def test_a_mention_in_a_channel_thread_streams_natively_to_its_author(slack: Slack) -> None:
    slack.model.chunk_delay = WORD_GAP
    await slack.event(mention("<@UBOT> stream me", ts="1.2", thread_ts="1.1"))
    await answered(slack)
    [start] = slack.fake.calls_to("chat.startStream")
    assert (start["channel"], start["thread_ts"]) == ("C1", "1.1")
    assert (start["recipient_team_id"], start["recipient_user_id"]) == ("T1", "U1")
    assert replies(slack)[0].text == "echo: Ada: stream me"
    assert statuses(slack) == [texts.THINKING_STATUS, ""]
    assert slack.fake.calls_to("chat.postMessage") == []


@pytest.mark.parametrize("overrides", [{"slack_reply_in_thread": True}])
async def test_a_top_level_mention_streams_natively_when_replies_go_in_a_thread(slack: Slack) -> None:
    slack.model.chunk_delay = WORD_GAP
    await slack.event(mention("<@UBOT> hello", ts="1700000000.000100"))
    await answered(slack)
    assert replies(slack)[0].streamed and replies(slack)[0].thread_ts == "1700000000.000100"
    assert replies(slack)[0].text == "echo: Ada: hello"


async def test_a_top_level_mention_in_a_channel_streams_natively_in_place(slack: Slack) -> None:
    words = " ".join(f"w{i}" for i in range(30))
    slack.model.chunk_delay = 0.02
    await slack.event(mention(f"<@UBOT> {words}", ts="1.1"))
    await answered(slack)
    [start] = slack.fake.calls_to("chat.startStream")
    assert "thread_ts" not in start  # a top-level message in the channel, where the question was
    assert (start["channel"], start["recipient_team_id"], start["recipient_user_id"]) == ("C1", "T1", "U1")
    [reply] = replies(slack)
    assert reply.streamed and reply.thread_ts is None and reply.text == f"echo: Ada: {words}"
    assert slack.fake.calls_to("chat.postMessage") == [] and slack.fake.calls_to("chat.update") == []
    assert statuses(slack) == []  # Slack sets a status only on a thread


async def test_a_top_level_direct_message_is_posted_and_edited(slack: Slack) -> None:
    # In a DM Slack streams only into a thread (the assistant pane's are threads).
    await slack.event(direct_message("hello", ts="1.1"))
    await slack.wait_posts(1)
    assert slack.fake.calls_to("chat.startStream") == [] and statuses(slack) == []
    assert slack.fake.posted[0].text == "echo: Ada: hello" and not slack.fake.posted[0].streamed


@pytest.mark.parametrize("overrides", [{"slack_native_streaming": False}])
async def test_native_streaming_can_be_switched_off(slack: Slack) -> None:
    await slack.event(assistant_message("hi", thread_ts=THREAD, ts="1700000000.000200"))
    await slack.wait_posts(1)
    await slack.fake.wait_for(lambda: statuses(slack) == [texts.THINKING_STATUS, ""])
    assert slack.fake.calls_to("chat.startStream") == []
    assert slack.fake.posted[0].text == "echo: Ada: hi" and slack.fake.posted[0].thread_ts == THREAD


async def test_a_refused_stream_falls_back_to_one_post_and_the_refusal_is_remembered(slack: Slack) -> None:
    slack.fake.refuse("chat.startStream", "not_allowed_token_type")
    words = " ".join(f"w{i}" for i in range(40))
    slack.model.chunk_delay = 0.02
    await slack.event(assistant_message(words, thread_ts=THREAD, ts="1700000000.000200"))
    await slack.fake.wait_for(lambda: bool(slack.fake.posted) and slack.fake.posted[0].text.endswith("w39"), 10)
    assert len(slack.fake.calls_to("chat.startStream")) == 1
    [reply] = slack.fake.posted  # one reply, never two
    assert not reply.streamed and reply.thread_ts == THREAD
    assert reply.text == f"echo: Ada: {words}"
    assert slack.fake.calls_to("chat.update")  # the fallback streams too, by editing
    await slack.fake.wait_for(lambda: statuses(slack) == [texts.THINKING_STATUS, ""])

    await slack.event(assistant_message("again", thread_ts=THREAD, ts="1700000000.000300"))
    await slack.fake.wait_for(lambda: len(slack.fake.posted) == 2 and slack.fake.posted[1].text == "echo: Ada: again")
    assert len(slack.fake.calls_to("chat.startStream")) == 1  # not asked again in this workspace
    assert slack.fake.posted[1].text == "echo: Ada: again" and len(slack.fake.posted) == 2


async def test_a_failure_about_one_thread_falls_back_but_is_not_remembered(slack: Slack) -> None:
    slack.fake.refuse("chat.startStream", "thread_not_found", times=1)
    slack.model.chunk_delay = WORD_GAP
    await slack.event(mention("<@UBOT> one", ts="1.2", thread_ts="1.1"))
    await until_texts(slack, "echo: Ada: one")
    await slack.event(mention("<@UBOT> two", ts="1.3", thread_ts="1.1"))
    await until_texts(slack, "echo: Ada: one", "echo: Ada: two")
    assert len(slack.fake.calls_to("chat.startStream")) == 2
    assert slack.fake.posted[1].streamed and slack.fake.posted[1].text == "echo: Ada: two"


def fail(slack: Slack, method: str, failure: str) -> None:
    """``failure`` is an error code Slack answers once, or the content type of an HTML error page."""
    if "/" in failure:
        slack.fake.error_page(method, content_type=failure)
    else:
        slack.fake.refuse(method, failure, times=1)


@pytest.mark.parametrize("method", ["chat.startStream", "assistant.threads.setStatus"])
@pytest.mark.parametrize("failure", ["internal_error", "fatal_error", "request_timeout", "text/html", "text/plain"])
async def test_a_passing_failure_costs_only_that_reply_its_native_path(slack: Slack, method: str, failure: str) -> None:
    fail(slack, method, failure)
    slack.model.chunk_delay = WORD_GAP
    await slack.event(mention("<@UBOT> one", ts="1.2", thread_ts="1.1"))
    await until_texts(slack, "echo: Ada: one")
    await slack.event(mention("<@UBOT> two", ts="1.3", thread_ts="1.1"))
    await until_texts(slack, "echo: Ada: one", "echo: Ada: two")
    assert [m.text for m in slack.fake.posted] == ["echo: Ada: one", "echo: Ada: two"]  # each answered once
    assert slack.fake.posted[1].streamed
    if method == "chat.startStream":
        assert not slack.fake.posted[0].streamed  # that one reply was posted and edited
        assert len(slack.fake.calls_to("chat.startStream")) == 2
    else:
        # Asked again for the second reply, and cleared once it started.
        await slack.fake.wait_for(lambda: statuses(slack) == [texts.THINKING_STATUS, texts.THINKING_STATUS, ""])


@pytest.mark.parametrize("method", ["chat.startStream", "assistant.threads.setStatus"])
@pytest.mark.parametrize("error", ["missing_scope", "no_permission", "method_deprecated", "unknown_method"])
async def test_a_real_refusal_is_remembered_for_the_workspace(slack: Slack, method: str, error: str) -> None:
    fail(slack, method, error)
    slack.model.chunk_delay = WORD_GAP
    await slack.event(mention("<@UBOT> one", ts="1.2", thread_ts="1.1"))
    await until_texts(slack, "echo: Ada: one")
    await slack.event(mention("<@UBOT> two", ts="1.3", thread_ts="1.1"))
    await until_texts(slack, "echo: Ada: one", "echo: Ada: two")
    assert [m.text for m in slack.fake.posted] == ["echo: Ada: one", "echo: Ada: two"]
    assert len(slack.fake.calls_to(method)) == 1


async def test_a_refused_status_is_not_asked_for_again(slack: Slack) -> None:
    slack.fake.refuse("assistant.threads.setStatus", "missing_scope")
    await slack.event(mention("<@UBOT> one", ts="1.2", thread_ts="1.1"))
    await answered(slack, 1)
    await slack.event(mention("<@UBOT> two", ts="1.3", thread_ts="1.1"))
    await answered(slack, 2)
    assert len(slack.fake.calls_to("assistant.threads.setStatus")) == 1
    assert [m.text for m in slack.fake.posted] == ["echo: Ada: one", "echo: Ada: two"]


async def test_a_429_on_append_stream_is_waited_out(slack: Slack) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    slack.model.chunk_delay = 0.02
    slack.fake.rate_limit("chat.appendStream", times=1, retry_after=1)
    await slack.event(mention(f"<@UBOT> {words}", ts="1.2", thread_ts="1.1"))
    await answered(slack, 1, within=10)
    assert [name for name, _ in slack.fake.limited] == ["chat.appendStream"]
    [reply] = replies(slack)  # still the one streamed message: no fallback post
    assert reply.streamed and reply.text == f"echo: Ada: {words}"
    assert slack.fake.calls_to("chat.postMessage") == []


async def test_a_long_streamed_reply_continues_in_further_messages(slack: Slack) -> None:
    slack.model.reply = long_reply
    expected = long_reply([]).replace("```python", " ").replace("```", " ").split()
    await slack.event(assistant_message("essay please", thread_ts=THREAD, ts="1700000000.000200"))

    def shown() -> list[str]:
        return " ".join(m.text for m in replies(slack)).replace("```python", " ").replace("```", " ").split()

    await slack.fake.wait_for(lambda: shown() == expected and not any(m.streaming for m in slack.fake.posted), 15)
    streamed = replies(slack)
    assert len(streamed) >= 5 and all(m.streamed and m.thread_ts == THREAD for m in streamed)
    assert all(len(m.text) <= MARKDOWN_LIMIT for m in streamed)
    assert all(m.text.count("```") % 2 == 0 for m in streamed)  # a fence cut in two is closed and reopened
    assert slack.fake.calls_to("chat.postMessage") == []


async def test_mass_mentions_in_a_streamed_reply_cannot_ping(slack: Slack) -> None:
    reply = "<!channel> <!here> <@U1> <!subteam^S1> @everyone @here **ping** a@here.com"
    slack.model.reply = lambda messages: reply
    await slack.event(assistant_message("hi", thread_ts=THREAD, ts="1700000000.000200"))
    await answered(slack)
    text = replies(slack)[0].text
    assert "<!" not in text and "<@" not in text and "@here " not in text and "@everyone" not in text
    assert text == neutralise_mentions(reply) and text.replace("\u2060", "") == reply
    assert text.endswith("a@here.com")  # an address is not a mention


async def test_reset_in_the_pane_forgets_the_thread_in_view(slack: Slack) -> None:
    await slack.event(assistant_message("remember A", thread_ts=THREAD, ts="1700000000.000200"))
    await answered(slack, 1)
    await slack.event(assistant_thread_started(thread_ts=OTHER_THREAD))
    await slack.event(assistant_message("remember B", thread_ts=OTHER_THREAD, ts="1700000000.001000"))
    await answered(slack, 2)
    answer = await base.slash(slack, "/reset", channel_id="D1", rid="r1")
    assert answer["text"] == texts.RESET_DONE.format(count=2, s="s")
    await slack.event(assistant_message("who am I?", thread_ts=OTHER_THREAD, ts="1700000000.001100"))
    await answered(slack, 3)
    assert [m["content"] for m in slack.model.requests[-1]["messages"][1:]] == ["Ada: who am I?"]
    await slack.event(assistant_message("and A?", thread_ts=THREAD, ts="1700000000.000300"))
    await answered(slack, 4)
    assert slack.model.requests[-1]["messages"][1]["content"] == "Ada: remember A"
    usage = await base.slash(slack, "/usage", channel_id="D1", rid="r2")
    assert usage["response_type"] == "ephemeral"


async def test_after_a_restart_reset_in_the_pane_still_forgets_only_the_thread_last_used(
    fake: FakeSlack, model: FakeOpenAI, tmp_path: Path
) -> None:
    settings = settings_for(fake, model, tmp_path / "teambot.db", slack_native_streaming=True)
    async with httpx.AsyncClient() as http:
        for life in ("before", "after"):
            # A new process (or another replica): nothing remembered in memory, only the database.
            async with open_core(settings) as core:
                adapter = SlackAdapter(core, settings)
                await adapter.start()
                try:
                    slack = Slack(fake, model, adapter, http)
                    if life == "before":
                        await slack.event(assistant_message("remember A", thread_ts=THREAD, ts="1700000000.000200"))
                        await answered(slack, 1)
                        await slack.event(
                            assistant_message("remember B", thread_ts=OTHER_THREAD, ts="1700000000.001000")
                        )
                        await answered(slack, 2)
                        continue
                    answer = await base.slash(slack, "/reset", channel_id="D1", rid="r1")
                    assert answer["text"] == texts.RESET_DONE.format(count=2, s="s")  # B's question and answer
                    await slack.event(assistant_message("and A?", thread_ts=THREAD, ts="1700000000.000300"))
                    await answered(slack, 3)
                    assert model.requests[-1]["messages"][1]["content"] == "Ada: remember A"
                finally:
                    await adapter.stop()


@pytest.fixture
def socket_settings(fake: FakeSlack, model: FakeOpenAI, tmp_path: Path) -> Callable[[], Settings]:
    return lambda: settings_for(
        fake,
        model,
        tmp_path / "s.db",
        slack_app_token="xapp-1-A1-123-abc",
        slack_signing_secret=None,
        slack_native_streaming=True,
    )


async def test_the_assistant_pane_over_socket_mode(
    fake: FakeSlack, model: FakeOpenAI, socket_settings: Callable[[], Settings]
) -> None:
    model.chunk_delay = WORD_GAP
    async with base.socket_mode_adapter(fake, socket_settings()):
        started = await fake.send_envelope("events_api", event_envelope(assistant_thread_started(thread_ts=THREAD)))
        await fake.wait_for_ack(started)
        await fake.wait_for(lambda: bool(fake.calls_to("assistant.threads.setSuggestedPrompts")))
        question = assistant_message("over the socket", thread_ts=THREAD, ts="1700000000.000200")
        await fake.wait_for_ack(await fake.send_envelope("events_api", event_envelope(question)))
        await fake.wait_for(lambda: any(m.streamed and not m.streaming for m in fake.posted))
        [reply] = fake.streamed()
        assert reply.text == "echo: Ada: over the socket" and reply.thread_ts == THREAD
        assert [c["status"] for c in fake.calls_to("assistant.threads.setStatus")] == [texts.THINKING_STATUS, ""]
        assert fake.calls_to("assistant.threads.setTitle")[0]["title"] == "over the socket"


@pytest.mark.parametrize("mode", ["socket", "http"])
def test_the_manifest_switches_the_pane_on_with_its_scope_events_and_prompts(mode: str) -> None:
    path = Path(__file__).resolve().parents[3] / "deploy" / f"slack-manifest-{mode}.yml"
    manifest = yaml.safe_load(path.read_text())
    pane = manifest["features"]["assistant_view"]
    assert pane["assistant_description"]
    assert [p["message"] for p in pane["suggested_prompts"]] == list(texts.SUGGESTED_PROMPTS)
    assert {"assistant:write", "chat:write"} <= set(manifest["oauth_config"]["scopes"]["bot"])
    events = manifest["settings"]["event_subscriptions"]["bot_events"]
    assert {"assistant_thread_started", "assistant_thread_context_changed", "message.im"} <= set(events)


async def test_a_title_lost_on_the_network_does_not_lose_the_answer(slack: Slack) -> None:
    slack.fake.drop("assistant.threads.setTitle", times=2)  # slack_sdk retries a dropped connection once
    await slack.event(assistant_message("first question", thread_ts=THREAD, ts="1700000000.000200"))
    await answered(slack)
    assert replies(slack)[0].text == "echo: Ada: first question"


async def test_a_failure_before_the_turn_gets_an_apology_not_silence(slack: Slack) -> None:
    # Between Bolt's ack and the core the adapter reads the store (is the thread new, to title it?): broken here.
    # The event is already acked, so Slack will not send it again; the person hears the apology in the thread.
    with sqlite3.connect(slack.db) as db:
        db.execute("DROP TABLE conversations")
    await slack.event(assistant_message("a question", thread_ts=THREAD, ts="1700000000.000200"))
    await answered(slack)
    [apology] = replies(slack)
    assert (apology.thread_ts, apology.text) == (THREAD, markdown_to_mrkdwn(texts.APOLOGY))
    assert slack.model.calls == 0
    # The thinking status it had set is cleared again.
    await slack.fake.wait_for(lambda: statuses(slack)[-1:] == [""])
