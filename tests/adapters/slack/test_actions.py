"""Slack message shortcuts through the real slack-bolt (HTTP-mode interactivity) and slack_sdk against the loopback
fake Slack: "Ask teambot about this" and "Summarize this thread" on a message, each a turn by whoever clicked."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.slack.actions import ASK, SUMMARIZE
from bot import texts
from tests.adapters.slack import test_app as base
from tests.adapters.slack.test_app import SECRET, Slack
from tests.adapters.slack.test_threads import REPLIES, ROOT, a_thread, prompt, written
from tests.fakes.slack import form_body, message_action, signed_headers
from tests.test_conversation import until

# The Slack fixtures of test_app: a fake Slack and model, and the adapter started against them over HTTP.
fake, model, overrides, native, slack = base.fake, base.model, base.overrides, base.native, base.slack


async def click(slack: Slack, callback_id: str, message: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """Someone picks a message shortcut: Slack posts the payload, form-encoded and signed; returns the payload."""
    payload = message_action(callback_id, message, response_url=slack.fake.response_url(kw.pop("rid", "a")), **kw)
    await send(slack, payload)
    return payload


async def send(slack: Slack, payload: dict[str, Any], timestamp: int | None = None) -> None:
    body = form_body({"payload": json.dumps(payload)})
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(SECRET, body, timestamp)}
    response = await slack.http.post(slack.events_url, content=body, headers=headers)
    assert response.status_code == 200  # acked at once: Bolt answers before the turn runs


def replies(slack: Slack, kind: str) -> float:
    """The turns of the Slack adapter that ended as ``kind`` (answer, duplicate, refused…)."""
    return slack.adapter._core.metrics.replies.labels("slack", kind)._value.get()


async def test_ask_about_a_message_gives_the_model_the_message_and_answers_in_its_thread(slack: Slack) -> None:
    slack.model.reply = lambda messages: "It means the service is overloaded."
    message = slack.fake.thread_message("we got HTTP 503 from the <https://x.example|gateway>", ts=ROOT, thread_ts=ROOT)
    await click(slack, ASK, message, user="U2")
    await slack.wait_replies(1)
    question = texts.ACTION_ASK.format(author="Ada", excerpt="we got HTTP 503 from the gateway (https://x.example)")
    # The message under its author's name, then the fixed question asked by the person who clicked.
    assert prompt(slack) == [
        ("user", "Ada: we got HTTP 503 from the gateway (https://x.example)"),
        ("user", f"Grace Hopper: {question}"),
    ]
    [post] = slack.fake.posted
    assert (post.channel, post.thread_ts, post.text) == ("C1", ROOT, "It means the service is overloaded.")
    assert slack.fake.calls_to(REPLIES) == []  # "Ask" reads no thread


async def test_two_people_asking_about_one_message_both_get_an_answer_and_a_redelivery_gets_none(
    slack: Slack,
) -> None:
    message = slack.fake.thread_message("the cache is cold", ts=ROOT, thread_ts=ROOT)
    first = await click(slack, ASK, message, user="U1")
    await slack.wait_replies(1)
    await click(slack, ASK, message, user="U2", rid="b")
    await slack.wait_replies(2)
    # The same click delivered again (signed anew, as a Socket Mode redelivery carries no signature) is not.
    await send(slack, first, timestamp=int(time.time()) + 1)
    await until(lambda: replies(slack, "duplicate") == 1)
    assert len(slack.model.requests) == 2 and len(slack.fake.posted) == 2
    # The message is stored once, whoever asked about it.
    assert [c for r, c in prompt(slack, 1)].count("Ada: the cache is cold") == 1


@pytest.mark.parametrize("overrides", [{"history_tokens": 400}])
async def test_summarize_a_long_thread_reads_it_whole_within_the_budget_and_says_what_was_left_out(
    slack: Slack,
) -> None:
    slack.model.reply = lambda messages: "They discussed the outage."
    root = slack.fake.thread_message("the very first message", ts=ROOT, thread_ts=ROOT, user="U2")
    for n in range(1, 120):
        written(slack.fake, 1000 + n, f"remark number {n} about the outage and what we saw then", user="U2")
    slack.fake.replies_page_cap = 15
    await click(slack, SUMMARIZE, root)
    await slack.wait_replies(1)
    contents = [c for _, c in prompt(slack)]
    assert contents[-1] == f"Ada: {texts.ACTION_SUMMARIZE}"
    assert contents[-2].startswith("Grace Hopper: remark number 119 ")
    assert "Grace Hopper: the very first message" not in contents
    assert len(slack.fake.calls_to(REPLIES)) == 8  # 120 messages, every page: the newest are at the end
    [post] = slack.fake.posted
    assert post.thread_ts == ROOT
    assert (
        post.text.splitlines()[0] == "_(The thread is longer than I can read at once: I left out its oldest messages.)_"
    )
    assert post.text.endswith("They discussed the outage.")
    # The note is for people: the stored answer, which later turns see, is the model's alone.
    await click(slack, ASK, root, rid="b")
    await slack.wait_replies(2)
    assert ("assistant", "They discussed the outage.") in prompt(slack)


async def test_summarize_a_short_thread_has_no_note_and_reads_it_whole_after_a_mention(slack: Slack) -> None:
    a_thread(slack.fake)
    root = slack.fake.threads[("C1", ROOT)][0]
    await click(slack, SUMMARIZE, root)
    await slack.wait_replies(1)
    assert prompt(slack) == [
        ("user", "Grace Hopper: the deploy of 4.2 failed"),
        ("user", "Ada: I see a red build (https://ci.example.com/42)"),
        ("user", "CI (bot): build 42: test_login failed"),
        ("user", "Grace Hopper: reverting @Ada's change now"),
        ("user", f"Ada: {texts.ACTION_SUMMARIZE}"),
    ]
    assert not slack.fake.posted[0].text.startswith("_(")
    # A second summary reads the thread again from its start, and stores nothing twice.
    await click(slack, SUMMARIZE, root, rid="b")
    await slack.wait_replies(2)
    assert len(slack.fake.calls_to(REPLIES)) == 2 and "oldest" not in slack.fake.calls_to(REPLIES)[1]
    assert [c for _, c in prompt(slack)].count("Grace Hopper: the deploy of 4.2 failed") == 1


@pytest.mark.parametrize("overrides", [{"deny_users": frozenset({"U2"})}])
async def test_a_denied_person_clicking_gets_the_refusal_privately(slack: Slack) -> None:
    message = slack.fake.thread_message("the cache is cold", ts=ROOT, thread_ts=ROOT)
    await click(slack, ASK, message, user="U2")
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 1)
    [response] = slack.fake.responses
    assert response["text"] == texts.NOT_ALLOWED and response["response_type"] == "ephemeral"
    assert slack.fake.posted == [] and slack.model.requests == []
    # The message's author may ask: the access lists are the clicker's.
    await click(slack, ASK, message, user="U1", rid="b")
    await slack.wait_replies(1)


async def test_a_message_with_nothing_to_read_gets_a_private_line(slack: Slack) -> None:
    message = slack.fake.thread_message("", ts=ROOT, thread_ts=ROOT)
    await click(slack, ASK, message)
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 1)
    assert slack.fake.responses[0]["text"] == texts.ACTION_NOTHING_TO_READ
    assert slack.model.requests == []


@pytest.mark.parametrize("manifest", ["deploy/slack-manifest-http.yml", "deploy/slack-manifest-socket.yml"])
def test_the_manifests_declare_both_shortcuts_with_interactivity_on(manifest: str) -> None:
    loaded = yaml.safe_load((Path(__file__).parents[3] / manifest).read_text())
    shortcuts = {s["callback_id"]: s for s in loaded["features"]["shortcuts"]}
    assert set(shortcuts) == {ASK, SUMMARIZE}
    assert all(s["type"] == "message" and len(s["description"]) <= 80 for s in shortcuts.values())
    assert shortcuts[ASK]["name"] == texts.SLACK_ACTION_ASK
    assert shortcuts[SUMMARIZE]["name"] == texts.SLACK_ACTION_SUMMARIZE
    assert loaded["settings"]["interactivity"]["is_enabled"] is True


async def test_the_click_is_acknowledged_before_the_model_answers(slack: Slack) -> None:
    # The fake model stalls 2 s on this message (it is quoted in the question): Slack's 3 s must not wait on it.
    message = slack.fake.thread_message("[[stall:2]] why so slow?", ts=ROOT, thread_ts=ROOT)
    started = time.monotonic()
    await click(slack, ASK, message)
    assert time.monotonic() - started < 1.5
    assert not any("why so slow" in p.text for p in slack.fake.posted)  # the answer is still being written
    await slack.fake.wait_for(lambda: any("why so slow" in p.text for p in slack.fake.posted), within=10)
    assert slack.fake.posted[0].thread_ts == ROOT
