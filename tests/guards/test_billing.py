"""Usage as billed: cached input at its own price (never twice), reasoning tokens recorded, and both reported."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot import texts
from bot.commands import CommandContext, Commands
from bot.conversation import ConversationCore, TurnSettings
from bot.guards import Accounting, Guards, PriceTable
from bot.llm import ChatClient, Endpoint, RetryPolicy, TokenCounter, model_http_client
from bot.messages import ConversationKey, IncomingMessage, ReplyKind, Usage
from bot.store import open_store
from tests.fakes.openai import FakeOpenAI

KEY = ConversationKey("slack", "T1", "C1")
#: A system prompt long enough (over 1,024 tokens) for the fake's prompt cache to serve it.
LONG_SYSTEM = "You are a test bot. " + " ".join(f"rule{n} applies." for n in range(900))


def test_cached_input_is_charged_at_its_own_price_instead_of_the_input_price() -> None:
    table = PriceTable()
    # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million.
    assert table.cost("gpt-4o-mini", 1_000_000, 0, cached_tokens=400_000).cost == pytest.approx(
        0.6 * 0.15 + 0.4 * 0.075
    )
    # Unknown (None) or no cache hit: the whole prompt at the input price.
    assert table.cost("gpt-4o-mini", 1_000_000, 0, cached_tokens=None).cost == pytest.approx(0.15)
    assert table.cost("gpt-4o-mini", 1_000_000, 0, cached_tokens=0).cost == pytest.approx(0.15)
    # Never more cached than prompt: a garbled count cannot price the prompt below its cached price.
    assert table.cost("gpt-4o-mini", 100, 0, cached_tokens=10_000).cost == pytest.approx(100 * 0.075 / 1e6)


def test_a_models_price_is_looked_up_once_and_what_is_remembered_stays_bounded() -> None:
    from bot.guards import pricing

    table = PriceTable()
    # The same answers a second time, from what the first lookup remembered (prefix match and unknown included).
    for _ in range(2):
        assert table.lookup("gpt-4o-mini-2024-07-18") == table.lookup("gpt-4o-mini") is not None
        assert table.lookup("openai/gpt-4o-mini") == table.lookup("gpt-4o-mini")
        assert table.lookup("llama3:8b") is None
    # Model names come from the servers' answers: however many there are, the memo stays within its size.
    for n in range(3 * pricing._FOUND_SIZE):
        table.lookup(f"local-model-{n}")
        assert len(table._found) <= pricing._FOUND_SIZE
    assert table.cost("gpt-4o-mini", 1_000_000, 0).cost == pytest.approx(0.15)


def test_price_overrides_take_two_or_three_numbers() -> None:
    table = PriceTable({"old-style": (1.0, 2.0), "new-style": (1.0, 2.0, 0.1)})
    # Two numbers, as TEAMBOT_PRICES always took: cached input costs what input costs (an estimate never too low).
    assert table.cost("old-style", 1_000_000, 1_000_000, cached_tokens=1_000_000).cost == pytest.approx(3.0)
    assert table.cost("new-style", 1_000_000, 1_000_000, cached_tokens=1_000_000).cost == pytest.approx(2.1)


def test_the_setting_takes_both_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.config import Settings

    monkeypatch.setenv("TEAMBOT_PRICES", '{"a": [1, 2], "b": [1, 2, 0.5]}')
    prices = Settings(_env_file=None).prices  # type: ignore[call-arg]
    assert PriceTable(prices).lookup("a") == (1.0, 2.0, 1.0)
    assert PriceTable(prices).lookup("b") == (1.0, 2.0, 0.5)


async def _bot_turns(tmp_path: Path, fake: FakeOpenAI, texts_: list[str]) -> tuple[ConversationCore, list[tuple]]:
    store = await open_store(str(tmp_path / "teambot.db"))
    try:
        accounting = Accounting(store, PriceTable({"fake-model": (1_000.0, 2_000.0, 100.0)}), [])
        async with model_http_client(5.0) as http:
            llm = ChatClient(http, Endpoint("primary", fake.base_url, "fake-model"), retry=RetryPolicy(max_retries=0))
            settings = TurnSettings(LONG_SYSTEM, 8000)
            core = ConversationCore(store, llm, TokenCounter.load(), settings, Guards(accounting=accounting))
            for n, text in enumerate(texts_):
                reply = await core.handle(IncomingMessage(KEY, f"m{n}", "U1", "Ada", text))
                assert reply.kind is ReplyKind.ANSWER
            report = await Commands(core).run("usage", CommandContext(KEY, "U1"))
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "teambot.db") as db:
        rows = db.execute(
            "SELECT prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, cost FROM usage ORDER BY id"
        ).fetchall()
    return core, [*rows, report]


async def test_the_ledger_records_cached_and_reasoning_tokens_and_prices_them(tmp_path: Path) -> None:
    async with FakeOpenAI(usage_details=True) as fake:
        core, (first, second, report) = await _bot_turns(
            tmp_path, fake, ["first question [[reasoning_tokens:30]]", "second question"]
        )
    assert first[2] == 0 and first[3] == 30  # reported as none cached: known, 0
    assert second[2] == fake.usages[1]["prompt_tokens_details"]["cached_tokens"] > 1024 and second[3] == 0
    # The second call's cost: the cached part at $100/M instead of $1,000/M, counted once.
    prompt, completion, cached = second[0], second[1], second[2]
    assert second[4] == pytest.approx(((prompt - cached) * 1000 + cached * 100 + completion * 2000) / 1e6)
    share = cached / (first[0] + second[0])
    assert texts.USAGE_CACHE_PART.format(share=share) in report
    assert texts.USAGE_REASONING_PART.format(tokens=30) in report
    metrics = core.metrics.render().decode()
    assert f'teambot_tokens_total{{direction="cached"}} {float(cached)}' in metrics
    assert 'teambot_tokens_total{direction="reasoning"} 30.0' in metrics
    assert f"teambot_cache_reported_prompt_tokens_total {float(first[0] + second[0])}" in metrics


async def test_a_server_that_does_not_report_them_leaves_them_unknown(tmp_path: Path) -> None:
    async with FakeOpenAI() as fake:
        core, (first, second, report) = await _bot_turns(tmp_path, fake, ["first question", "second question"])
    assert first[2:4] == (None, None) and second[2:4] == (None, None)
    assert "prompt cache" not in report and "reasoning" not in report
    metrics = core.metrics.render().decode()
    assert 'direction="cached"' not in metrics and "teambot_cache_reported_prompt_tokens_total 0.0" in metrics


def test_a_charge_carries_the_parts_into_the_ledger_entry(tmp_path: Path) -> None:
    accounting = Accounting(None, PriceTable(), [])  # type: ignore[arg-type]  # charge() does not touch the store
    record = accounting.charge(KEY, "U1", "gpt-4o-mini", Usage(100, 50, cached_tokens=60, reasoning_tokens=20))
    assert (record.cached_tokens, record.reasoning_tokens) == (60, 20)
    assert record.cost == pytest.approx((40 * 0.15 + 60 * 0.075 + 50 * 0.60) / 1e6)
