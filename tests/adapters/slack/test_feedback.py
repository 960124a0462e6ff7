"""Answer feedback in Slack, through the real slack-bolt (HTTP mode interactivity) and slack_sdk against the
loopback fake Slack: the buttons under an answer, and a ``block_actions`` click on them."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from adapters.slack.feedback import SECTION_LIMIT
from bot import texts
from tests.adapters.slack import test_app as base
from tests.adapters.slack.test_app import SECRET, Slack
from tests.fakes.slack import block_actions, clicked, form_body, mention, signed_headers, slash_command_form
from tests.test_conversation import until

# The Slack fixtures of test_app: a fake Slack and model, and the adapter started against them over HTTP.
fake, model, overrides, native, slack = base.fake, base.model, base.overrides, base.native, base.slack


def click_body(slack: Slack, blocks: list[dict[str, Any]], verdict: str, *, user: str = "U1", rid: str = "fb") -> str:
    payload = block_actions(
        clicked(blocks, verdict), user=user, message_ts="1", response_url=slack.fake.response_url(rid)
    )
    return form_body({"payload": json.dumps(payload)})


async def click(slack: Slack, blocks: list[dict[str, Any]], verdict: str, **kw: Any) -> int:
    body = click_body(slack, blocks, verdict, **kw)
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(SECRET, body)}
    response = await slack.http.post(slack.events_url, content=body, headers=headers)
    return response.status_code


def feedback_rows(slack: Slack) -> list[tuple[Any, ...]]:
    with sqlite3.connect(slack.db) as db:
        return list(db.execute("SELECT user_id, value, platform, workspace, channel FROM feedback ORDER BY user_id"))


def metric(slack: Slack, value: str) -> float:
    rendered = slack.adapter._core.metrics.render().decode()
    line = f'teambot_feedback_total{{platform="slack",value="{value}"}} '
    found = [row for row in rendered.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


async def answer(slack: Slack, text: str = "<@UBOT> hello", ts: str = "1700000000.000100") -> Any:
    await slack.event(mention(text, ts=ts))
    await slack.wait_replies(1)
    # The buttons come with the last update, once the whole answer is there: until the turn is over.
    await until(lambda: not slack.adapter._inflight)
    return slack.fake.posted[-1]


async def test_a_posted_answer_carries_a_button_pair_and_a_click_is_kept(slack: Slack) -> None:
    post = await answer(slack)
    assert post.blocks is not None
    # The text is in the blocks (a message with blocks shows those), and the buttons come after it.
    assert post.blocks[0] == {"type": "section", "text": {"type": "mrkdwn", "text": post.text}}
    assert post.blocks[-1]["type"] == "actions"
    assert [e["text"]["text"] for e in post.blocks[-1]["elements"]] == ["👍", "👎"]

    assert await click(slack, post.blocks, "up") == 200
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 1)
    response = slack.fake.responses[0]
    assert response["text"] == texts.FEEDBACK_THANKS and response["response_type"] == "ephemeral"
    assert response["replace_original"] is False  # the answer stays
    assert feedback_rows(slack) == [("U1", "up", "slack", "T1", "C1")]
    assert metric(slack, "up") == 1

    # A second click by the same person changes the verdict; another person's is their own.
    assert await click(slack, post.blocks, "down", rid="fb2") == 200
    assert await click(slack, post.blocks, "up", user="U2", rid="fb3") == 200
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 3)
    assert feedback_rows(slack) == [("U1", "down", "slack", "T1", "C1"), ("U2", "up", "slack", "T1", "C1")]
    assert (metric(slack, "up"), metric(slack, "down")) == (2, 1)


async def test_usage_counts_the_feedback(slack: Slack) -> None:
    post = await answer(slack)
    assert await click(slack, post.blocks, "up") == 200
    assert await click(slack, post.blocks, "down", user="U2", rid="fb2") == 200
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 2)
    body = form_body(slash_command_form("/usage", response_url=slack.fake.response_url("u")))
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(SECRET, body)}
    assert (await slack.http.post(slack.events_url, content=body, headers=headers)).status_code == 200
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 3)
    assert texts.USAGE_FEEDBACK_LINE.format(up=1, down=1) in slack.fake.responses[-1]["text"]


async def test_a_replayed_click_is_refused(slack: Slack) -> None:
    post = await answer(slack)
    body = click_body(slack, post.blocks, "up")
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(SECRET, body)}
    assert (await slack.http.post(slack.events_url, content=body, headers=headers)).status_code == 200
    replay = await slack.http.post(slack.events_url, content=body, headers=headers)
    assert replay.status_code == 401
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 1)
    assert metric(slack, "up") == 1


async def test_a_click_on_an_answer_forgotten_by_reset_is_not_kept(slack: Slack) -> None:
    post = await answer(slack)
    body = form_body(slash_command_form("/reset", response_url=slack.fake.response_url("reset")))
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(SECRET, body)}
    assert (await slack.http.post(slack.events_url, content=body, headers=headers)).status_code == 200
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 1)
    assert await click(slack, post.blocks, "up") == 200
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 2)
    assert slack.fake.responses[-1]["text"] == texts.FEEDBACK_GONE
    assert feedback_rows(slack) == [] and metric(slack, "up") == 0


async def test_a_long_answer_keeps_its_text_within_the_section_limit(slack: Slack) -> None:
    slack.model.reply = lambda messages: "word " * 700  # 3,500 characters: one message, two sections
    post = await answer(slack)
    sections = [b for b in post.blocks if b["type"] == "section"]
    assert len(sections) == 2 and all(len(b["text"]["text"]) <= SECTION_LIMIT for b in sections)
    assert "".join(b["text"]["text"] for b in sections).split() == post.text.split()


@pytest.mark.parametrize("overrides", [{"feedback": False}])
async def test_feedback_can_be_switched_off(slack: Slack) -> None:
    post = await answer(slack)
    assert post.blocks is None
    assert not any("blocks" in c and c["blocks"] for c in slack.fake.calls_to("chat.update"))


@pytest.mark.parametrize("native", [True])
async def test_a_streamed_answer_ends_with_slacks_feedback_buttons(slack: Slack) -> None:
    slack.model.chunk_delay = 0.01  # the words come apart: the answer streams
    post = await answer(slack)
    assert post.streamed
    [stop] = slack.fake.calls_to("chat.stopStream")
    [block] = stop["blocks"]
    assert block["type"] == "context_actions"
    [element] = block["elements"]
    assert element["type"] == "feedback_buttons"
    assert await click(slack, post.blocks, "down") == 200
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 1)
    assert feedback_rows(slack) == [("U1", "down", "slack", "T1", "C1")]
    assert metric(slack, "down") == 1
