"""A reasoning model's thinking on Slack, through the real slack-bolt and slack_sdk against the loopback fakes:
the assistant status while it thinks (``status``), the thinking in a context block of its own apart from the
answer (``full``), or nothing (``off``); never in the answer, natively streamed or posted and edited."""

from __future__ import annotations

import json
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.stream import CONTEXT_LIMIT, SlackReasoning
from bot import texts
from tests.adapters.slack import test_app as base
from tests.adapters.slack.test_app import Slack
from tests.fakes.openai import THOUGHT, THOUGHT_MARK
from tests.fakes.slack import FakeSlack, mention

fake, model, overrides, slack = base.fake, base.model, base.overrides, base.slack


@pytest.fixture(params=[True, False], ids=["native", "post-and-edit"])
def native(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


THREAD = "1.1"


def statuses(slack: Slack) -> list[str]:
    return [c["status"] for c in slack.fake.calls_to("assistant.threads.setStatus")]


def order(slack: Slack) -> list[str]:
    return [name for name, _ in slack.fake.calls]


async def ask_thinking(slack: Slack, token: str = "[[think]]") -> str:
    slack.model.chunk_delay = 0.01
    await slack.event(mention(f"<@UBOT> {token} why?", ts="1.2", thread_ts=THREAD))
    answer = f"echo: Ada: {token} why?"
    await slack.fake.wait_for(
        lambda: any(m.text == answer for m in slack.fake.posted) and not any(m.streaming for m in slack.fake.posted),
        10,
    )
    return answer


@pytest.mark.parametrize("token", ["[[think]]", "[[thinking]]", "[[reasoning]]"])
async def test_status_keeps_the_thinking_status_up_and_the_thinking_out(slack: Slack, token: str) -> None:
    answer = await ask_thinking(slack, token)
    assert [m.text for m in slack.fake.posted] == [answer]
    assert statuses(slack) == [texts.THINKING_STATUS, ""]
    # Set before the first words went out, cleared once they had.
    first_post = next(i for i, name in enumerate(order(slack)) if name in ("chat.startStream", "chat.postMessage"))
    assert order(slack).index("assistant.threads.setStatus") < first_post
    assert THOUGHT_MARK not in json.dumps(slack.fake.calls)


@pytest.mark.parametrize("overrides", [{"show_reasoning": "full"}])
async def test_full_posts_the_thinking_as_a_context_block_before_the_answer(slack: Slack) -> None:
    answer = await ask_thinking(slack)
    thinking, reply = slack.fake.posted
    assert reply.text == answer and THOUGHT_MARK not in json.dumps(reply.edits + reply.appends)
    [call] = [c for c in slack.fake.calls_to("chat.postMessage") if c.get("blocks")]
    assert call["thread_ts"] == THREAD and call["text"] == texts.REASONING_HEADER
    [block] = call["blocks"] if isinstance(call["blocks"], list) else json.loads(call["blocks"])
    assert block["type"] == "context"
    assert block["elements"][0]["text"] == f"_{texts.REASONING_HEADER}_\n{THOUGHT}"
    assert thinking.text == texts.REASONING_HEADER


@pytest.mark.parametrize("overrides", [{"show_reasoning": "off"}])
async def test_off_shows_nothing_of_the_thinking(slack: Slack) -> None:
    answer = await ask_thinking(slack)
    assert [m.text for m in slack.fake.posted] == [answer]
    assert THOUGHT_MARK not in json.dumps(slack.fake.calls)


async def test_the_thinking_block_pings_nobody_and_fits(fake: FakeSlack) -> None:
    client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
    await SlackReasoning(client, "C1", None).reasoning("<!here> ask <@U1> & @channel " * 400)
    [call] = fake.calls_to("chat.postMessage")
    blocks: list[dict[str, Any]] = call["blocks"] if isinstance(call["blocks"], list) else json.loads(call["blocks"])
    text = blocks[0]["elements"][0]["text"]
    assert len(text) <= CONTEXT_LIMIT and text.endswith(texts.REASONING_CUT)
    assert "<!here>" not in text and "<@U1>" not in text and "@channel " not in text
    assert "&lt;!here&gt;" in text and "&amp;" in text
