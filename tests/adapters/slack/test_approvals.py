"""Tool approvals and progress in Slack, through the real slack-bolt and slack_sdk against the loopback fake Slack:
the request with Approve / Deny buttons, clicks as ``block_actions`` payloads (HTTP mode and Socket Mode), only the
asker may answer, no answer is a denial, a restart denies and a later click is told it expired; the progress of a
turn as the assistant status, a task card in a native stream or a status line in a posted reply."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.approvals import Outcome, outcome_line
from adapters.slack import SlackAdapter
from adapters.slack.app import SlackSink, _status_line
from adapters.slack.approvals import ARGUMENTS_LIMIT, SlackApprovalPrompt, SlackTurnView
from adapters.slack.format import markdown_to_mrkdwn
from adapters.slack.stream import NativeReply, ThinkingStatus
from adapters.streaming import ReplyStream, StreamingReply
from bot import texts
from bot.config import Settings
from bot.messages import ToolRequest
from bot.tools import ToolRule
from tests.adapters.slack import test_app as base
from tests.adapters.slack.test_app import SECRET, Slack
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import (
    FakeSlack,
    Posted,
    approval_click,
    assistant_message,
    block_actions,
    form_body,
    mention,
    signed_headers,
)
from tests.tools.harness import ToolHarness, counter, harness

fake, model, overrides, native, slack = base.fake, base.model, base.overrides, base.native, base.slack
# The tool tests' harness: the real core and tool loop over the tests' own tools, against the fake model.
harness, counter = harness, counter

REQUEST = ToolRequest("call_1", "time__get_current_time", '{"timezone": "Asia/Tokyo"}')


def view_for(slack: Slack, reply: ReplyStream | None = None, thread_status: ThinkingStatus | None = None):
    """The view a mention by Ada (U1) in C1 gets, on the adapter's own approvals."""
    adapter = slack.adapter
    prompt = SlackApprovalPrompt(adapter.client, "C1", None, "Ada")
    reply = reply or StreamingReply(SlackSink(adapter.client, "C1", None), interval=0.05, limit=3900)
    return SlackTurnView(adapter._approvals, prompt, reply, thread_status, "U1", "Ada")


async def asked(slack: Slack, request: ToolRequest = REQUEST, within: float = 30) -> tuple[asyncio.Task[bool], Posted]:
    """Ask for an approval; returns the waiting task and the request as posted."""
    task = asyncio.create_task(view_for(slack).approve(request, "U1", within))
    await slack.fake.wait_for(lambda: any(_has_buttons(m) for m in slack.fake.posted) or task.done())
    [posted] = [m for m in slack.fake.posted if _has_buttons(m)]
    return task, posted


def _has_buttons(message: Posted) -> bool:
    return any(block["type"] == "actions" for block in message.blocks or [])


def click_payload(slack: Slack, blocks: list[dict[str, Any]], approve: bool, user: str, rid: str) -> dict[str, Any]:
    action = approval_click(blocks, approve)
    return block_actions(action, user=user, message_ts="1", response_url=slack.fake.response_url(rid))


async def click(slack: Slack, blocks: list[dict[str, Any]], approve: bool, *, user: str = "U1", rid: str = "a") -> None:
    body = form_body({"payload": json.dumps(click_payload(slack, blocks, approve, user, rid))})
    headers = {"Content-Type": "application/x-www-form-urlencoded", **signed_headers(SECRET, body)}
    response = await slack.http.post(slack.events_url, content=body, headers=headers)
    assert response.status_code == 200


def shown_text(blocks: list[dict[str, Any]]) -> str:
    """Everything the rich text of a request shows, joined."""
    out = []
    for block in blocks:
        for element in block.get("elements") or []:
            out.extend(str(e.get("text", "")) for e in element.get("elements") or [])
    return "".join(out)


async def test_the_asker_approves_and_the_request_says_so(slack: Slack) -> None:
    task, posted = await asked(slack)
    assert posted.channel == "C1"
    shown = shown_text(posted.blocks or [])
    assert "time__get_current_time" in shown and '"timezone": "Asia/Tokyo"' in shown
    assert texts.APPROVAL_FOOTER.format(asker="Ada", seconds=30) in shown
    [actions] = [b for b in posted.blocks or [] if b["type"] == "actions"]
    assert [e["text"]["text"] for e in actions["elements"]] == [texts.APPROVAL_APPROVE, texts.APPROVAL_DENY]

    await click(slack, posted.blocks or [], approve=True)
    assert await asyncio.wait_for(task, 5) is True
    await slack.fake.wait_for(lambda: not _has_buttons(posted))
    assert posted.text == texts.APPROVAL_APPROVED.format(asker="Ada")
    assert texts.APPROVAL_APPROVED.format(asker="Ada") in shown_text(posted.blocks or [])
    assert slack.fake.responses == []  # the asker gets no extra line: the request itself says it
    assert len(slack.adapter._approvals) == 0


async def test_the_asker_denies(slack: Slack) -> None:
    task, posted = await asked(slack)
    await click(slack, posted.blocks or [], approve=False)
    assert await asyncio.wait_for(task, 5) is False
    await slack.fake.wait_for(lambda: not _has_buttons(posted))
    assert posted.text == texts.APPROVAL_DENIED.format(asker="Ada")


async def test_someone_else_cannot_approve_nor_deny(slack: Slack) -> None:
    task, posted = await asked(slack)
    blocks = list(posted.blocks or [])
    await click(slack, blocks, approve=True, user="U2", rid="grace")
    await click(slack, blocks, approve=False, user="U2", rid="grace2")
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 2)
    for response in slack.fake.responses:
        assert response["text"] == texts.APPROVAL_NOT_ASKER.format(asker="Ada")
        assert response["response_type"] == "ephemeral" and response["replace_original"] is False
    assert not task.done() and _has_buttons(posted)  # nothing changed
    await click(slack, blocks, approve=True)
    assert await asyncio.wait_for(task, 5) is True


async def test_no_answer_in_time_is_a_denial(slack: Slack) -> None:
    task, posted = await asked(slack, within=0.3)
    assert await asyncio.wait_for(task, 5) is False
    await slack.fake.wait_for(lambda: not _has_buttons(posted))
    assert posted.text == outcome_line(Outcome.EXPIRED, "Ada", 0.3)
    # A click after that finds nobody waiting: told so, and nothing runs.
    await click(slack, [b for b in json.loads(json.dumps(_original_blocks(slack, posted)))], approve=True)
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 1)
    assert slack.fake.responses[0]["text"] == texts.APPROVAL_UNKNOWN


def _original_blocks(slack: Slack, posted: Posted) -> list[dict[str, Any]]:
    """The blocks a request was first posted with (its buttons), as an old client still shows them."""
    [call] = [c for c in slack.fake.calls_to("chat.postMessage") if "teambot_approval" in json.dumps(c)]
    blocks = call["blocks"]
    return json.loads(blocks) if isinstance(blocks, str) else blocks


async def test_a_restart_denies_and_a_click_from_before_it_is_told_it_expired(slack: Slack) -> None:
    task, posted = await asked(slack)
    old_blocks = list(posted.blocks or [])
    slack.adapter._inflight.add(task)  # as the turn that asked is
    await slack.adapter.stop(drain_seconds=1)
    assert await asyncio.wait_for(task, 5) is False
    await slack.fake.wait_for(lambda: not _has_buttons(posted))
    assert posted.text == texts.APPROVAL_STOPPED

    # The next process knows nothing of that request.
    adapter = SlackAdapter(slack.adapter._core, slack.adapter._settings)
    await adapter.start()
    try:
        slack.adapter = adapter
        await click(slack, old_blocks, approve=True)
        await slack.fake.wait_for(lambda: len(slack.fake.responses) == 1)
        assert slack.fake.responses[0]["text"] == texts.APPROVAL_UNKNOWN
        assert slack.fake.responses[0]["response_type"] == "ephemeral"
    finally:
        await adapter.stop()


async def test_an_unknown_id_changes_nothing(slack: Slack) -> None:
    task, posted = await asked(slack)
    forged = json.loads(json.dumps(posted.blocks).replace(approval_click(posted.blocks or [], True)["value"], "x"))
    await click(slack, forged, approve=True)
    await slack.fake.wait_for(lambda: len(slack.fake.responses) == 1)
    assert slack.fake.responses[0]["text"] == texts.APPROVAL_UNKNOWN
    assert not task.done()
    task.cancel()


async def test_the_request_pings_nobody_and_cannot_be_formatted(slack: Slack) -> None:
    nasty = ToolRequest("c", "<!everyone>*x*", json.dumps({"q": "<!here> <@U2> @channel *bold* ``` <!subteam^S1>"}))
    task, posted = await asked(slack, nasty)
    [call] = [c for c in slack.fake.calls_to("chat.postMessage") if "teambot_approval" in json.dumps(c)]
    # The notification text is escaped mrkdwn; the blocks hold literal rich text only, never mrkdwn.
    assert "<!" not in call["text"] and "<@" not in call["text"] and "&lt;!everyone&gt;" in call["text"]
    blocks = json.dumps(posted.blocks)
    assert '"mrkdwn"' not in blocks and '"link_names"' not in json.dumps(call)
    for element in (posted.blocks or [])[0]["elements"]:
        assert all(e["type"] == "text" for e in element["elements"])  # no user, broadcast or link elements
    task.cancel()


async def test_long_arguments_are_shortened(slack: Slack) -> None:
    task, posted = await asked(slack, ToolRequest("c", "search", json.dumps({"q": "x" * 10_000})))
    [pre] = [e for e in (posted.blocks or [])[0]["elements"] if e["type"] == "rich_text_preformatted"]
    text = pre["elements"][0]["text"]
    assert len(text) < ARGUMENTS_LIMIT + 100 and text.endswith(texts.APPROVAL_ARGUMENTS_CUT.format(count=8_513))
    task.cancel()


async def test_a_click_over_socket_mode_reaches_the_waiting_turn(
    fake: FakeSlack, model: FakeOpenAI, socket_settings: Callable[[], Settings]
) -> None:
    async with base.socket_mode_adapter(fake, socket_settings()) as adapter:
        prompt = SlackApprovalPrompt(adapter.client, "C1", "1.1", "Ada")
        reply = StreamingReply(SlackSink(adapter.client, "C1", "1.1"), interval=0.05, limit=3900)
        view = SlackTurnView(adapter._approvals, prompt, reply, None, "U1", "Ada")
        task = asyncio.create_task(view.approve(REQUEST, "U1", 30))
        await fake.wait_for(lambda: any(_has_buttons(m) for m in fake.posted))
        [posted] = fake.posted
        assert posted.thread_ts == "1.1"
        other = block_actions(approval_click(posted.blocks or [], True), user="U2", response_url=fake.response_url())
        await fake.wait_for_ack(await fake.send_envelope("interactive", other))
        await fake.wait_for(lambda: len(fake.responses) == 1)
        assert fake.responses[0]["text"] == texts.APPROVAL_NOT_ASKER.format(asker="Ada")
        mine = block_actions(approval_click(posted.blocks or [], False), user="U1", response_url=fake.response_url())
        await fake.wait_for_ack(await fake.send_envelope("interactive", mine))
        assert await asyncio.wait_for(task, 5) is False
        await fake.wait_for(lambda: not _has_buttons(posted))


socket_settings = base.socket_settings


# --- progress ---------------------------------------------------------------------------------------------------


async def test_a_status_line_shows_until_the_answer_replaces_it(slack: Slack) -> None:
    reply = StreamingReply(
        SlackSink(slack.adapter.client, "C1", None),
        interval=0.05,
        limit=3900,
        render=markdown_to_mrkdwn,
        status_line=_status_line,
    )
    view = view_for(slack, reply)
    await view.status("Looking up the <time>…")
    await slack.fake.wait_for(lambda: len(slack.fake.posted) == 1)
    [message] = slack.fake.posted
    assert message.text == "_Looking up the &lt;time&gt;…_"
    await view.status(None)
    await reply.feed("It is ")
    await reply.finish("It is *noon*.")
    assert message.text == "It is _noon_." and len(slack.fake.posted) == 1


async def test_the_status_line_follows_text_already_written(slack: Slack) -> None:
    reply = StreamingReply(SlackSink(slack.adapter.client, "C1", None), interval=0.05, limit=3900)
    view = view_for(slack, reply)
    await reply.feed("Let me look.")
    await slack.fake.wait_for(lambda: len(slack.fake.posted) == 1)
    await view.status("Looking up the time…")
    [message] = slack.fake.posted
    await slack.fake.wait_for(lambda: message.text == "Let me look.\n\n_Looking up the time…_")
    await reply.finish("Let me look. Noon.")
    assert message.text == "Let me look. Noon."


async def test_a_native_stream_shows_each_step_as_a_task_card(slack: Slack) -> None:
    client = slack.adapter.client
    reply = NativeReply(
        client,
        channel="C1",
        thread_ts="1.1",
        recipient_team="T1",
        recipient_user="U1",
        interval=0.05,
        fallback=lambda: StreamingReply(SlackSink(client, "C1", "1.1"), interval=0.05, limit=3900),
        on_refused=lambda error: None,
    )
    view = view_for(slack, reply)
    await view.status("Looking up the time…")
    await slack.fake.wait_for(lambda: len(slack.fake.posted) == 1)
    [message] = slack.fake.posted
    assert message.streaming and message.text == ""  # a stream opened by its first task card
    assert message.tasks() == {"step-1": ("Looking up the time…", "in_progress")}
    await view.status("Reading the page…")
    await view.status(None)
    await reply.feed("It is noon.")
    await reply.finish("It is noon.")
    assert message.tasks() == {
        "step-1": ("Looking up the time…", "complete"),
        "step-2": ("Reading the page…", "complete"),
    }
    assert message.text == "It is noon." and not message.streaming


async def test_the_assistant_status_shows_the_step_in_a_thread(slack: Slack) -> None:
    client: AsyncWebClient = slack.adapter.client
    status = ThinkingStatus(client, "D1", "1.1", lambda error: None)
    status.start()
    view = view_for(slack, thread_status=status)
    await view.status("Looking up the time…")
    await view.status(None)
    await status.clear()
    await view.status("Reading the page…")
    await view.status(None)
    calls = [c["status"] for c in slack.fake.calls_to("assistant.threads.setStatus")]
    assert calls == [texts.THINKING_STATUS, "Looking up the time…", texts.THINKING_STATUS, "", "Reading the page…", ""]


# --- "Thinking…" in a channel (TEAMBOT_SHOW_REASONING=status) ----------------------------------------------------


@pytest.mark.parametrize("native", [True, False], ids=["native", "post-and-edit"])
async def test_a_channel_mention_shows_thinking_in_the_reply(slack: Slack, native: bool) -> None:
    slack.model.chunk_delay = 0.02
    await slack.event(mention("<@UBOT> [[think]] why?", ts="1700000000.000100"))
    answer = "echo: Ada: [[think]] why?"
    await slack.fake.wait_for(
        lambda: any(m.text == answer for m in slack.fake.posted) and not any(m.streaming for m in slack.fake.posted),
        10,
    )
    [message] = slack.fake.posted
    if native:
        assert message.streamed and message.tasks() == {"step-1": (texts.REASONING_STATUS, "complete")}
        assert message.chunks[0]["status"] == "in_progress"
    else:
        first = slack.fake.calls_to("chat.postMessage")[0]
        assert first["text"] == f"_{texts.REASONING_STATUS}_"
    assert not slack.fake.calls_to("assistant.threads.setStatus")  # no thread: no assistant status


@pytest.mark.parametrize("overrides", [{"show_reasoning": "off"}])
async def test_no_thinking_line_when_reasoning_is_not_shown(slack: Slack) -> None:
    slack.model.chunk_delay = 0.02
    await slack.event(mention("<@UBOT> [[think]] why?", ts="1700000000.000100"))
    await slack.wait_replies(1)
    assert texts.REASONING_STATUS not in json.dumps(slack.fake.calls)


# --- end to end: the fake model calls a tool that needs approval -------------------------------------------------

TOKYO = '[[call:time__now:{"city": "Tokyo"}]]'


@pytest.mark.parametrize("streaming", [True, False], ids=["native", "post-and-edit"])
async def test_a_tool_call_is_approved_by_the_asker_and_its_result_answers(
    harness: ToolHarness, fake: FakeSlack, streaming: bool
) -> None:
    harness.fake.chunk_delay = 0.01
    core = harness.core(rules=[ToolRule(("time__*",), approval=True)], approval_seconds=30.0)
    settings = base.settings_for(fake, harness.fake, harness.db, slack_native_streaming=streaming)
    async with httpx.AsyncClient() as http:
        adapter = SlackAdapter(core, settings)
        await adapter.start()
        slack = Slack(fake, harness.fake, adapter, http, harness.db)
        try:
            await slack.event(mention(f"<@UBOT> what time is it in Tokyo? {TOKYO}", ts="1700000000.000100"))
            await fake.wait_for(lambda: any(_has_buttons(m) for m in fake.posted), 10)
            [request] = [m for m in fake.posted if _has_buttons(m)]
            shown = shown_text(request.blocks or [])
            assert "time__now" in shown and '"city": "Tokyo"' in shown
            assert harness.desk.calls == []  # nothing runs before the asker says so

            # The reply shows what the turn is doing meanwhile.
            await fake.wait_for(lambda: len(fake.posted) == 2)
            [reply] = [m for m in fake.posted if m is not request]
            step = texts.TOOL_STATUS.format(tools="time__now")
            if streaming:
                assert reply.tasks() == {"step-1": (step, "in_progress")}
            else:
                assert reply.text == f"_{step}_"

            blocks = list(request.blocks or [])
            await click(slack, blocks, approve=True, user="U2", rid="grace")
            await fake.wait_for(lambda: len(fake.responses) == 1)
            assert fake.responses[0]["text"] == texts.APPROVAL_NOT_ASKER.format(asker="Ada")
            assert harness.desk.calls == []

            await click(slack, blocks, approve=True)
            answer = "tool results: 14:00 in Tokyo"
            await fake.wait_for(lambda: answer in reply.text and not reply.streaming, 10)
            assert [name for name, _, _ in harness.desk.calls] == ["time__now"]
            assert request.text == texts.APPROVAL_APPROVED.format(asker="Ada") and not _has_buttons(request)
            # The status line (or task card) is gone: the answer took its place.
            assert step not in reply.text
            if streaming:
                assert reply.tasks() == {"step-1": (step, "complete")}
            tool_results = [m for m in harness.fake.requests[-1]["messages"] if m["role"] == "tool"]
            assert [m["content"] for m in tool_results] == ["14:00 in Tokyo"]
        finally:
            await adapter.stop()


async def test_a_denied_tool_call_does_not_run_and_the_model_hears_why(harness: ToolHarness, fake: FakeSlack) -> None:
    core = harness.core(rules=[ToolRule(("time__*",), approval=True)], approval_seconds=30.0)
    settings = base.settings_for(fake, harness.fake, harness.db)
    async with httpx.AsyncClient() as http:
        adapter = SlackAdapter(core, settings)
        await adapter.start()
        slack = Slack(fake, harness.fake, adapter, http, harness.db)
        try:
            await slack.event(mention(f"<@UBOT> time? {TOKYO}", ts="1700000000.000100"))
            await fake.wait_for(lambda: any(_has_buttons(m) for m in fake.posted), 10)
            [request] = [m for m in fake.posted if _has_buttons(m)]
            await click(slack, list(request.blocks or []), approve=False)
            denied = texts.TOOL_DENIED.format(tool="time__now")
            await fake.wait_for(lambda: any(denied in m.text for m in fake.posted), 10)
            assert harness.desk.calls == []
            assert request.text == texts.APPROVAL_DENIED.format(asker="Ada")
        finally:
            await adapter.stop()


async def test_in_the_assistant_pane_the_status_names_the_step(harness: ToolHarness, fake: FakeSlack) -> None:
    harness.fake.chunk_delay = 0.01
    core = harness.core(rules=[ToolRule(("time__*",), approval=True)], approval_seconds=30.0)
    settings = base.settings_for(fake, harness.fake, harness.db, slack_native_streaming=True)
    async with httpx.AsyncClient() as http:
        adapter = SlackAdapter(core, settings)
        await adapter.start()
        slack = Slack(fake, harness.fake, adapter, http, harness.db)
        try:
            thread = "1700000000.000100"
            await slack.event(assistant_message(f"time? {TOKYO}", thread_ts=thread, ts="1700000000.000200"))
            await fake.wait_for(lambda: any(_has_buttons(m) for m in fake.posted), 10)
            [request] = [m for m in fake.posted if _has_buttons(m)]
            assert (request.channel, request.thread_ts) == ("D1", thread)
            step = texts.TOOL_STATUS.format(tools="time__now")
            await fake.wait_for(lambda: step in statuses(fake))
            await click(slack, list(request.blocks or []), approve=True)
            await fake.wait_for(lambda: any("14:00 in Tokyo" in m.text and not m.streaming for m in fake.posted), 10)
            # "is thinking...", then the step in its place, "is thinking..." again; cleared once the answer shows.
            await fake.wait_for(lambda: statuses(fake)[-1] == "")
            assert statuses(fake) == [texts.THINKING_STATUS, step, texts.THINKING_STATUS, ""]
        finally:
            await adapter.stop()


def statuses(fake: FakeSlack) -> list[str]:
    return [c["status"] for c in fake.calls_to("assistant.threads.setStatus")]


async def test_a_request_slack_refuses_to_post_is_a_denial(slack: Slack) -> None:
    slack.fake.refuse("chat.postMessage", "channel_not_found")
    assert await asyncio.wait_for(view_for(slack).approve(REQUEST, "U1", 30), 5) is False
    assert len(slack.adapter._approvals) == 0
