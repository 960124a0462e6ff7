"""Where the bot speaks on Slack, through the real slack-bolt against the fake Slack: thread follow-ups without a
mention, ``/speak mention`` and ``/speak all``, group DMs, and ``/scope person`` (bot.speak)."""

from __future__ import annotations

from typing import Any

import pytest

from bot import texts
from tests.adapters.slack import test_app as base
from tests.adapters.slack.test_app import Slack, slash
from tests.fakes.slack import mention

# The Slack fixtures of test_app: a fake Slack and model, and the adapter started against them over HTTP.
fake, model, overrides, native, slack = base.fake, base.model, base.overrides, base.native, base.slack

ROOT = "1700000000.000100"
ADMIN = "U9"


def message(
    text: str, *, ts: str, thread_ts: str | None = None, channel: str = "C1", user: str = "U1", kind: str = "channel"
) -> dict[str, Any]:
    """A ``message.channels`` (or ``.groups``/``.mpim``) event: what Slack sends for every message in a
    conversation the app is in, mention or not."""
    event: dict[str, Any] = {
        "type": "message",
        "channel_type": kind,
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def asked(slack: Slack) -> list[str]:
    """The last user message of each model request: what was taken for a question."""
    return [r["messages"][-1]["content"] for r in slack.model.requests]


def statuses(slack: Slack) -> list[str]:
    """The "is thinking..." statuses set (not cleared)."""
    return [c["status"] for c in slack.fake.calls_to("assistant.threads.setStatus") if c.get("status")]


async def settle(slack: Slack, ts: str, answers: int, *, thread_ts: str | None = ROOT) -> None:
    """A mention after the message under test, awaited to its answer: by then the message before it has been
    dealt with (its listener ran first, and a turn it started would hold the conversation before this one)."""
    await slack.event(mention(f"<@UBOT> and now {ts}", ts=ts, thread_ts=thread_ts))
    await slack.model.wait_for_requests(answers)
    await slack.wait_replies(answers)


async def admin_sets(slack: Slack, command: str, arg: str, rid: str) -> None:
    slack.fake.users[ADMIN] = {"display_name": "Boss", "is_admin": True}
    done = await slash(slack, command, arg, user_id=ADMIN, rid=rid)
    assert done["text"].startswith("Done"), done["text"]


async def test_a_follow_up_in_a_thread_the_bot_answered_needs_no_mention(slack: Slack) -> None:
    await slack.event(mention("<@UBOT> the deploy failed", ts="1700000000.000200", thread_ts=ROOT))
    await slack.wait_replies(1)
    await slack.event(message("and the rollback too", ts="1700000000.000300", thread_ts=ROOT, user="U2"))
    await slack.model.wait_for_requests(2)
    await slack.wait_replies(2)
    assert asked(slack)[-1] == "Grace Hopper: and the rollback too"
    assert slack.fake.posted[-1].thread_ts == ROOT


async def test_a_thread_the_bot_did_not_answer_in_is_left_alone(slack: Slack) -> None:
    await slack.event(message("people talking", ts="1700000000.000200", thread_ts=ROOT))
    await settle(slack, "1700000000.000300", 1, thread_ts="1700000000.000050")
    assert asked(slack) == ["Ada: and now 1700000000.000300"]


async def test_a_plain_channel_message_is_ignored_in_thread_mode(slack: Slack) -> None:
    await slack.event(message("lunch anyone?", ts="1700000000.000200"))
    await settle(slack, "1700000000.000300", 1, thread_ts=None)
    assert asked(slack) == ["Ada: and now 1700000000.000300"]


async def test_in_mention_mode_a_follow_up_is_ignored(slack: Slack) -> None:
    await admin_sets(slack, "/speak", "mention", "r1")
    await slack.event(mention("<@UBOT> the deploy failed", ts="1700000000.000200", thread_ts=ROOT))
    await slack.wait_replies(1)
    await slack.event(message("and the rollback too", ts="1700000000.000300", thread_ts=ROOT))
    await settle(slack, "1700000000.000400", 2)
    assert asked(slack) == ["Ada: the deploy failed", "Ada: and now 1700000000.000400"]
    assert len(slack.fake.posted) == 2


async def test_in_all_mode_every_message_is_a_question(slack: Slack) -> None:
    await admin_sets(slack, "/speak", "all", "r1")
    await slack.event(message("how do I reset my password?", ts="1700000000.000200"))
    await slack.wait_replies(1)
    await slack.event(message("and my 2FA?", ts="1700000000.000300", user="U2"))
    await slack.model.wait_for_requests(2)
    await slack.wait_replies(2)
    assert asked(slack) == ["Ada: how do I reset my password?", "Grace Hopper: and my 2FA?"]
    shown = await slash(slack, "/speak", rid="r2")  # anyone may look
    assert shown["text"] == texts.SPEAK_SHOW.format(what=texts.SPEAK_MODES["all"], mode="all")


async def test_a_mention_in_a_followed_thread_is_answered_once(slack: Slack) -> None:
    await slack.event(mention("<@UBOT> first", ts="1700000000.000200", thread_ts=ROOT))
    await slack.wait_replies(1)
    # Slack sends a mention in a channel the app reads twice: as app_mention and as message.channels.
    again = "<@UBOT> second"
    await slack.event(message(again, ts="1700000000.000300", thread_ts=ROOT))
    await slack.event(mention(again, ts="1700000000.000300", thread_ts=ROOT))
    await settle(slack, "1700000000.000400", 3)
    assert asked(slack) == ["Ada: first", "Ada: second", "Ada: and now 1700000000.000400"]
    assert len(slack.fake.posted) == 3
    # One turn started per message: the thinking status was set once for each, never by the second event.
    assert len(statuses(slack)) == 3


async def test_a_group_dm_needs_no_mention(slack: Slack) -> None:
    await slack.event(message("what is HTTP 429?", ts="1700000000.000200", channel="G1", kind="mpim"))
    await slack.wait_replies(1)
    assert asked(slack) == ["Ada: what is HTTP 429?"]
    assert slack.fake.posted[0].channel == "G1"


async def test_only_admins_change_where_the_bot_speaks(slack: Slack) -> None:
    refused = await slash(slack, "/speak", "all", user_id="U1", rid="r1")
    assert refused["text"] == texts.ADMIN_ONLY.format(admins=texts.ADMINS_SLACK)
    refused = await slash(slack, "/scope", "person", user_id="U1", rid="r2")
    assert refused["text"] == texts.ADMIN_ONLY.format(admins=texts.ADMINS_SLACK)
    # Still in thread mode: a plain channel message is not a question.
    await slack.event(message("lunch anyone?", ts="1700000000.000200"))
    await settle(slack, "1700000000.000300", 1, thread_ts=None)
    assert asked(slack) == ["Ada: and now 1700000000.000300"]
    slack.fake.users[ADMIN] = {"display_name": "Boss", "is_admin": True}
    wrong = await slash(slack, "/speak", "loud", user_id=ADMIN, rid="r3")
    assert wrong["text"] == texts.SPEAK_NOT_KNOWN.format(mode="loud")


async def test_in_person_scope_two_people_in_a_channel_do_not_see_each_others_history(slack: Slack) -> None:
    await admin_sets(slack, "/scope", "person", "r1")
    await slack.event(mention("<@UBOT> my locker code is 4711", ts="1700000000.000200"))
    await slack.wait_replies(1)
    await slack.event(mention("<@UBOT> what is my locker code?", ts="1700000000.000300", user="U2"))
    await slack.model.wait_for_requests(2)
    await slack.wait_replies(2)
    seen_by_grace = [m["content"] for m in slack.model.requests[1]["messages"][1:]]
    assert seen_by_grace == ["Grace Hopper: what is my locker code?"]
    await slack.event(mention("<@UBOT> and mine?", ts="1700000000.000400"))
    await slack.model.wait_for_requests(3)
    await slack.wait_replies(3)
    seen_by_ada = [m["content"] for m in slack.model.requests[2]["messages"][1:]]
    assert seen_by_ada[0] == "Ada: my locker code is 4711" and "Grace" not in " ".join(seen_by_ada)
    # /reset forgets only the asker's own conversation.
    reset = await slash(slack, "/reset", user_id="U2", rid="r2")
    assert reset["text"] == texts.RESET_DONE.format(count=2, s="s")
    await slack.event(mention("<@UBOT> still there?", ts="1700000000.000500"))
    await slack.model.wait_for_requests(4)
    assert slack.model.requests[3]["messages"][1]["content"] == "Ada: my locker code is 4711"


@pytest.mark.parametrize("overrides", [{"speak": "mention"}])
async def test_the_default_mode_comes_from_the_settings(slack: Slack) -> None:
    await slack.event(mention("<@UBOT> the deploy failed", ts="1700000000.000200", thread_ts=ROOT))
    await slack.wait_replies(1)
    await slack.event(message("and the rollback too", ts="1700000000.000300", thread_ts=ROOT))
    await settle(slack, "1700000000.000400", 2)
    assert asked(slack) == ["Ada: the deploy failed", "Ada: and now 1700000000.000400"]
