"""Offline token counting and truncation."""

from __future__ import annotations

from bot.llm import TRUNCATION_MARK, TokenCounter


def test_counts_offline_with_the_openai_encoding() -> None:
    counter = TokenCounter.load()
    assert counter.count("hello world") == 2
    assert counter.count_message("hello world") == 6


def test_truncate_keeps_the_beginning_within_the_limit() -> None:
    for counter in (TokenCounter.load(), TokenCounter(None)):
        text = "word " * 10_000
        cut = counter.truncate(text, 100)
        assert cut.endswith(TRUNCATION_MARK) and text.startswith(cut[: -len(TRUNCATION_MARK)])
        assert counter.count(cut) <= 101
        assert counter.truncate("short", 100) == "short"


def test_estimate_without_an_encoding_is_about_four_bytes_a_token() -> None:
    assert TokenCounter(None).count("a" * 400) == 100
