"""The tool loop through ConversationCore, over loopback: the fake model calls the tests' own tool provider."""

# ruff: noqa: F811 - pytest fixtures imported from a shared module are parameters of the same name
from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from bot import texts
from bot.guards import Accounting, Budget, Guards, Period, PriceTable, ScopeKind
from bot.llm import TokenCounter
from bot.messages import ReplyKind
from bot.tools import ToolRule
from tests.fakes.openai import BAD_ARGUMENTS, PREFACE
from tests.tools.harness import ToolHarness, View, counter, harness  # noqa: F401 - fixtures

TOKYO = '[[call:time__now:{"city": "Tokyo"}]]'


def tool_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["messages"] if m["role"] == "tool"]


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_the_model_calls_a_tool_and_its_real_result_reaches_the_model(harness: ToolHarness, stream: bool) -> None:
    core = harness.core(stream=stream)
    reply = await harness.say(core, f"{TOKYO} what time is it in Tokyo?")

    assert reply.kind is ReplyKind.ANSWER
    # The arguments arrived whole although they streamed in pieces of three characters, split inside the strings.
    [(name, arguments, context)] = harness.desk.calls
    assert (name, arguments, context.key, context.asker_id) == (
        "time__now",
        {"city": "Tokyo"},
        harness.message("").key,
        "U-Ada",
    )
    first, second = harness.fake.requests
    assert [t["function"]["name"] for t in first["tools"]] == harness.desk.names
    assert first["tools"][0] == {
        "type": "function",
        "function": {
            "name": "time__now",
            "description": "the time__now tool",
            "parameters": harness.desk.specs()[0].parameters,
        },
    }
    assert first.get("stream", False) is stream
    # The results go back after the assistant message that made the call, tied to it by the call's id.
    call_message, result = second["messages"][-2:]
    assert call_message["role"] == "assistant" and call_message["tool_calls"][0]["function"] == {
        "name": "time__now",
        "arguments": '{"city": "Tokyo"}',
    }
    assert result == {"role": "tool", "tool_call_id": call_message["tool_calls"][0]["id"], "content": "14:00 in Tokyo"}
    assert reply.text == "tool results: 14:00 in Tokyo\n\n" + texts.TOOLS_USED.format(tools="time__now")


async def test_the_tools_used_line_can_be_switched_off(harness: ToolHarness) -> None:
    reply = await harness.say(harness.core(show_used=False), f"{TOKYO} time?")
    assert reply.text == "tool results: 14:00 in Tokyo"


async def test_several_calls_at_once_run_side_by_side(harness: ToolHarness) -> None:
    core = harness.core(timeout=5.0)
    reply = await harness.say(core, "[[call:pair__meet]] [[call:pair__meet]] [[call:time__now]]")
    # Each pair__meet answers only once the other one runs too: run one after the other, both would time out.
    assert reply.text.startswith("tool results: met | met | 14:00 in UTC")
    [second] = harness.fake.requests[1:]
    ids = [m["tool_call_id"] for m in tool_messages(second)]
    assert ids == [c["id"] for c in second["messages"][-4]["tool_calls"]] and len(set(ids)) == 3


@pytest.mark.parametrize(
    ("text", "expected", "outcome"),
    [
        ("[[badargs:time__now]]", "Error: the arguments were not a valid JSON object", "bad_arguments"),
        ('[[call:time__now:{"city": ["a"]}]]', "14:00 in ['a']", "ok"),
        ("[[call:nosuch__tool]]", texts.TOOL_UNKNOWN.format(tool="nosuch__tool"), "unknown"),
        ("[[call:bad__fail]]", texts.TOOL_FAILED.format(tool="bad__fail", why="the backend is down"), "error"),
        ("[[call:slow__wait]]", texts.TOOL_TIMED_OUT.format(tool="slow__wait", seconds=0.2), "timeout"),
    ],
    ids=["malformed-json", "odd-but-valid", "unknown-tool", "tool-error", "timeout"],
)
async def test_a_failing_call_goes_back_to_the_model_as_text(
    harness: ToolHarness, text: str, expected: str, outcome: str
) -> None:
    core = harness.core(timeout=0.2)
    reply = await harness.say(core, text)
    assert reply.kind is ReplyKind.ANSWER
    [result] = tool_messages(harness.fake.requests[-1])
    assert result["content"].startswith(expected)
    tool = "(unknown)" if outcome == "unknown" else text.split(":")[1].split("]")[0]
    assert core.metrics.tool_calls.labels(tool, outcome)._value.get() == 1
    if outcome == "bad_arguments":
        assert harness.fake.requests[-1]["messages"][-2]["tool_calls"][0]["function"]["arguments"] == BAD_ARGUMENTS
        assert harness.desk.calls == []


async def test_a_model_that_never_stops_calling_is_stopped_after_the_round_cap(harness: ToolHarness) -> None:
    core = harness.core(max_rounds=3)
    reply = await harness.say(core, "[[callforever:time__now]] loop")
    assert reply.kind is ReplyKind.ANSWER
    requests = harness.fake.requests
    # Three rounds of calls, then one last request that may not call: it answers in words.
    assert len(requests) == 4 and len(harness.desk.calls) == 3
    assert [r.get("tool_choice") for r in requests] == [None, None, None, "none"]
    assert reply.text.startswith("tool results: 14:00 in UTC")
    assert texts.TOOLS_STOPPED.format(rounds=3) in reply.text


async def test_a_long_output_is_cut_to_the_token_limit_with_a_note(
    harness: ToolHarness,
    counter: TokenCounter,
) -> None:
    core = harness.core(output_tokens=300)
    await harness.say(core, "[[call:big__dump]]")
    [result] = tool_messages(harness.fake.requests[-1])
    note = texts.TOOL_OUTPUT_CUT.format(tokens=300)
    assert result["content"].startswith("word0 word1") and result["content"].endswith(note)
    assert counter.count(result["content"].removesuffix(note)) <= 300


async def test_every_round_is_charged_and_the_budget_checked_before_the_next(harness: ToolHarness) -> None:
    store = harness.store
    # A budget of one token a day: the question itself passes (nothing spent yet), the first round spends it.
    guards = Guards(accounting=Accounting(store, PriceTable(), [Budget(ScopeKind.USER, Period.DAY, 1)]))
    core = harness.core(guards=guards)
    reply = await harness.say(core, f"{TOKYO} time?")
    assert reply.kind is ReplyKind.REFUSED and "budget is used up" in reply.text
    assert len(harness.fake.requests) == 1  # no second model call once the budget is gone
    total = await store.usage_since(_scope(), 0)
    assert total.calls == 1 and total.tokens == sum(u["total_tokens"] for u in harness.fake.usages)


async def test_without_a_budget_every_round_is_in_the_ledger(harness: ToolHarness) -> None:
    guards = Guards(accounting=Accounting(harness.store, PriceTable(), []))
    core = harness.core(guards=guards)
    reply = await harness.say(core, f"{TOKYO} time?")
    assert reply.kind is ReplyKind.ANSWER
    total = await harness.store.usage_since(_scope(), 0)
    assert total.calls == 2 and total.tokens == sum(u["total_tokens"] for u in harness.fake.usages)


def _scope():  # type: ignore[no-untyped-def]
    from bot.store import UsageScope

    return UsageScope("slack", "T1")


async def test_no_tools_configured_sends_no_tools(harness: ToolHarness) -> None:
    reply = await harness.say(harness.core(tools=False), f"{TOKYO} time?")
    assert reply.text == f"echo: Ada: {TOKYO} time?"
    assert "tools" not in harness.fake.requests[0] and harness.desk.calls == []


async def test_a_provider_with_no_tools_now_sends_no_tools(harness: ToolHarness) -> None:
    harness.desk.names = []
    await harness.say(harness.core(), f"{TOKYO} time?")
    assert "tools" not in harness.fake.requests[0]


async def test_progress_is_shown_while_tools_run(harness: ToolHarness) -> None:
    view = View()
    await harness.say(harness.core(), f"{TOKYO} time?", view)
    assert view.statuses == [texts.TOOL_STATUS.format(tools="time__now"), None]


async def test_logs_name_the_tool_and_conversation_but_never_the_arguments(
    harness: ToolHarness,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="bot"):
        await harness.say(harness.core(), '[[call:time__now:{"city": "Secretville"}]] time?')
    lines = [r.getMessage() for r in caplog.records if r.name == "bot.tools.loop"]
    assert any("time__now" in line and "slack:T1:C1" in line and "ok" in line for line in lines)
    assert not any("Secretville" in r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="bot.tools"):
        await harness.say(harness.core(), '[[call:time__now:{"city": "Secretville"}]] again?')
    assert any("Secretville" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


async def test_the_metrics_count_calls_and_time_them(harness: ToolHarness) -> None:
    core = harness.core()
    await harness.say(core, f"{TOKYO} [[call:bad__fail]]")
    rendered = core.metrics.render().decode()
    assert 'teambot_tool_calls_total{outcome="ok",tool="time__now"} 1.0' in rendered
    assert 'teambot_tool_calls_total{outcome="error",tool="bad__fail"} 1.0' in rendered
    assert 'teambot_tool_seconds_count{tool="time__now"} 1.0' in rendered


async def test_the_history_replays_tool_calls_and_results_also_after_a_restart(harness: ToolHarness) -> None:
    await harness.say(harness.core(), f"{TOKYO} time?")
    await harness.say(harness.core(), "and now?")
    replayed = harness.fake.requests[-1]["messages"]
    roles = [m["role"] for m in replayed]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert replayed[2]["tool_calls"][0]["function"]["name"] == "time__now"
    assert (
        replayed[3]["content"] == "14:00 in Tokyo" and replayed[3]["tool_call_id"] == replayed[2]["tool_calls"][0]["id"]
    )
    # The stored answer is the model's own words, without the tools-used line people saw.
    assert replayed[4] == {"role": "assistant", "content": "tool results: 14:00 in Tokyo"}

    # A restart: a new store and core on the same file.
    await harness.store.close()
    from bot.store import open_store

    harness.store = await open_store(str(harness.db))
    await harness.say(harness.core(), "and after a restart?")
    again = harness.fake.requests[-1]["messages"]
    assert [m["role"] for m in again] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert again[3]["content"] == "14:00 in Tokyo"


async def test_a_full_history_drops_tool_results_before_any_message(harness: ToolHarness) -> None:
    # The fake answers with the tool's output: the first reply and its trace are about 600 tokens each.
    await harness.say(harness.core(output_tokens=600), "[[call:big__dump]] dump it")
    await harness.say(harness.core(), f"{TOKYO} time?")
    # A budget with room for the messages and the small trace, not the big one: the older trace goes, whole.
    core = harness.core(history_tokens=1000)
    await harness.say(core, "next")
    messages = harness.fake.requests[-1]["messages"]
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert messages[1]["content"].endswith("[[call:big__dump]] dump it")
    assert messages[5]["content"] == "14:00 in Tokyo"


async def test_reset_forgets_the_tool_calls(harness: ToolHarness) -> None:
    core = harness.core()
    await harness.say(core, f"{TOKYO} time?")
    assert await core.reset(harness.message("").key) == 2
    await harness.say(core, "fresh")
    assert [m["role"] for m in harness.fake.requests[-1]["messages"]] == ["system", "user"]


async def test_the_policy_offers_only_what_may_run_here(harness: ToolHarness) -> None:
    rules = [
        ToolRule(("time__*",), where=frozenset({"C9"})),
        ToolRule(("big__*", "bad__*"), admins_only=True),
        ToolRule(("slow__*",), where="dm"),
        ToolRule(("*",), admins_only=True, where="dm"),
    ]
    core = harness.core(rules=rules, admins=frozenset({"U-Root"}))

    def offered() -> list[str]:
        return [t["function"]["name"] for t in harness.fake.requests[-1].get("tools", [])]

    await harness.say(core, "hi")
    assert offered() == []  # nothing for a person in C1, not in a DM, not an admin
    await harness.say(core, "hi", author="Root")
    assert offered() == ["big__dump", "bad__fail"]
    await harness.say(core, "hi", author="Root", in_dm=True)
    assert offered() == ["big__dump", "bad__fail", "slow__wait", "pair__meet"]
    await harness.say(
        core, "hi", author="Boss", author_is_admin=True, key=harness.message("").key.__class__("slack", "T1", "C9")
    )
    assert offered() == ["time__now", "big__dump", "bad__fail"]
    # A call to a tool not offered here is a tool that does not exist.
    reply = await harness.say(core, f"{TOKYO} time?", author="Root")
    assert "no tool named 'time__now'" in reply.text and harness.desk.calls == []


@pytest.mark.parametrize(
    ("view", "runs"),
    [(View(answer=True), True), (View(answer=False), False), (None, False)],
    ids=["approved", "denied", "no-view"],
)
async def test_a_tool_that_needs_approval_runs_only_once_the_asker_approves(
    harness: ToolHarness, view: View | None, runs: bool
) -> None:
    core = harness.core(rules=[ToolRule(("time__*",), approval=True)], approval_seconds=7.0)
    reply = await harness.say(core, f"{TOKYO} [[call:big__dump]] time?", view)
    ran = [name for name, _, _ in harness.desk.calls]
    assert ran == (["time__now", "big__dump"] if runs else ["big__dump"])
    [time_result, _] = tool_messages(harness.fake.requests[-1])
    expected = "14:00 in Tokyo" if runs else texts.TOOL_DENIED.format(tool="time__now")
    assert time_result["content"] == expected
    if view is not None:
        # Asked once, of the person who asked, with what would run; the tool without a rule was not asked about.
        [(request, asker, within)] = view.asked
        assert (request.tool, json.loads(request.arguments), asker, within) == (
            "time__now",
            {"city": "Tokyo"},
            "U-Ada",
            7.0,
        )
    outcome = "ok" if runs else "denied"
    assert core.metrics.tool_calls.labels("time__now", outcome)._value.get() == 1
    assert reply.kind is ReplyKind.ANSWER


async def test_a_prompt_too_long_after_a_tool_round_is_not_asked_again_from_the_start(harness: ToolHarness) -> None:
    # The question fits; the tool's long output does not: the second request is refused as too long.
    harness.fake.context_limit_chars = 5000
    reply = await harness.say(harness.core(), "[[call:big__dump]] dump it")
    assert reply.kind is ReplyKind.ERROR and reply.text == texts.CONTEXT_TOO_LONG
    # Asking again with half the history would run the tool again: a tool that acts must not act twice.
    assert len(harness.desk.calls) == 1 and len(harness.fake.requests) == 2


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_text_before_the_calls_is_shown_and_kept_with_them(harness: ToolHarness, stream: bool) -> None:
    core = harness.core(stream=stream)
    reply = await harness.say(core, f"{TOKYO} [[preface]] time?")
    assert reply.text == f"{PREFACE}\n\ntool results: 14:00 in Tokyo\n\n" + texts.TOOLS_USED.format(tools="time__now")
    await harness.say(core, "thanks")
    replayed = harness.fake.requests[-1]["messages"]
    assert replayed[2]["content"] == PREFACE and replayed[2]["tool_calls"]
    assert replayed[4] == {"role": "assistant", "content": "tool results: 14:00 in Tokyo"}
