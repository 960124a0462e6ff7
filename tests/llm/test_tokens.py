"""Offline token counting and truncation."""

from __future__ import annotations

import pytest

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


def test_a_text_is_cut_whenever_it_has_more_tokens_than_allowed() -> None:
    # A short text is let through uncounted: even a character of four one-byte tokens must not get past that.
    counter = TokenCounter.load()
    for text in ("\U0002070e" * 10, "\U0001f9d1\U0001f3fd\u200d\U0001f4bb" * 5, MULTIBYTE[:40]):
        assert counter.count(text) > len(text)  # more tokens than characters: the case the shortcut must not miss
        for budget in range(1, 4 * len(text) + 2):
            cut = counter.truncate(text, budget)
            assert cut == text if counter.count(text) <= budget else cut.endswith(TRUNCATION_MARK), budget


def test_counts_without_the_special_token_search_are_the_same() -> None:
    # Counting skips the encoder's search for special tokens where a text cannot hold one: the same numbers.
    counter = TokenCounter.load()
    encoding = TokenCounter.load()._encoding
    assert encoding is not None
    texts = [MULTIBYTE, "hello world", "a <| b |> c", "<|endof", "lone \ud83d half", "word " * 3000, ""]
    for text in texts:
        assert counter.count(text) == len(encoding.encode(text)), text[:20]
    # A text that holds one is refused as it always was (the encoder raises).
    with pytest.raises(ValueError, match="disallowed special token"):
        counter.count("say <|endoftext|> now")
    with pytest.raises(ValueError, match="disallowed special token"):
        counter.truncate("say <|endoftext|> now", 1000)  # short enough not to need a count, and counted all the same


class OtherSpecials:
    """An encoding whose special token does not begin as OpenAI's do: counting must not skip the search for it."""

    special_tokens_set = frozenset({"[END]"})

    def encode(self, text: str) -> list[int]:
        if "[END]" in text:
            raise ValueError("disallowed special token '[END]'")
        return self.encode_ordinary(text)

    def encode_ordinary(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, tokens: list[int]) -> str:
        return "".join(map(chr, tokens))


def test_an_encoding_with_other_special_tokens_is_always_searched() -> None:
    counter = TokenCounter(OtherSpecials())
    assert counter.count("abc") == 3
    with pytest.raises(ValueError, match="disallowed special token"):
        counter.count("abc [END]")
