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


MULTIBYTE = (
    "👩‍👩‍👧‍👦 家族で週末に🏔️山へ行きました。天気は☀️晴れ、気温は25度でした。"
    "🇯🇵🇫🇷 Ünïcödé façade — 漢字とかなと카나다라 🎉🎉🎉 🧑🏽‍💻 𠜎𠜱𠝹𠱓 "
) * 4


def test_truncate_never_cuts_inside_a_character() -> None:
    # Byte-level tokens split emoji and CJK characters; a cut between them used to leave U+FFFD in the text.
    for counter in (TokenCounter.load(), TokenCounter(None)):
        for budget in range(1, 129):
            cut = counter.truncate(MULTIBYTE, budget)
            kept = cut.removesuffix(TRUNCATION_MARK)
            assert "\ufffd" not in cut, (budget, cut)
            assert cut.endswith(TRUNCATION_MARK) and MULTIBYTE.startswith(kept), budget


def test_truncate_keeps_a_replacement_character_that_was_in_the_text() -> None:
    counter = TokenCounter.load()
    text = "\ufffd broken upstream " * 200
    cut = counter.truncate(text, 20)
    assert cut.startswith("\ufffd broken upstream") and text.startswith(cut.removesuffix(TRUNCATION_MARK))
