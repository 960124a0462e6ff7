"""Splitting long replies: within the limit, at natural boundaries, with code fences balanced."""

from __future__ import annotations

import re

import pytest

from adapters.text_split import split_message

FENCE = re.compile(r"^\s*```", re.MULTILINE)


def balanced(chunk: str) -> bool:
    return len(FENCE.findall(chunk)) % 2 == 0


def words(text: str) -> list[str]:
    return [w for w in re.split(r"\s+", text.replace("```python", " ").replace("```", " ")) if w]


def test_short_text_is_one_chunk_and_empty_is_none() -> None:
    assert split_message("hello", 2000) == ["hello"]
    assert split_message("", 2000) == []


def test_splits_at_paragraphs_first() -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "word " * 30 for i in range(10))
    chunks = split_message(text, 400)
    assert all(len(c) <= 400 for c in chunks)
    assert all(c.startswith("Paragraph") for c in chunks)
    assert words("".join(chunks)) == words(text)


def test_fifty_thousand_characters() -> None:
    text = "\n\n".join(f"Section {i}\n" + "\n".join("line of prose " * 8 for _ in range(5)) for i in range(110))
    assert len(text) > 50_000
    chunks = split_message(text, 3900)
    assert len(chunks) >= 13 and all(len(c) <= 3900 for c in chunks)
    assert words("\n".join(chunks)) == words(text)


def test_code_fence_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"print({i})" for i in range(400))
    text = f"Here is the code:\n\n```python\n{code}\n```\n\nThat was it."
    chunks = split_message(text, 500)
    assert all(len(c) <= 500 for c in chunks)
    assert all(balanced(c) for c in chunks)
    assert all(c.startswith("```python\n") for c in chunks[1:-1])
    assert words(" ".join(chunks)) == words(text)


def test_a_word_longer_than_the_limit_is_hard_cut() -> None:
    text = "x" * 5000
    chunks = split_message(text, 2000)
    assert [len(c) for c in chunks] == [2000, 2000, 1000]


def test_an_unclosed_fence_from_the_model_is_closed() -> None:
    chunks = split_message("```\nnever closed", 2000)
    assert chunks == ["```\nnever closed\n```"]


def test_unicode_and_emoji_survive() -> None:
    text = ("שלום עולם 🎉 ünïcödé " * 300).strip()
    chunks = split_message(text, 2000)
    assert all(len(c) <= 2000 for c in chunks)
    assert " ".join(chunks).split() == text.split()


def test_a_tiny_limit_is_refused() -> None:
    with pytest.raises(ValueError):
        split_message("text", 10)


def test_a_fence_opened_mid_line_counts() -> None:
    code = "\n".join(f"x = {i}" for i in range(200))
    text = f"Here it is: ```python\n{code}\n``` and that is all."
    chunks = split_message(text, 500)
    assert len(chunks) > 1 and all(c.count("```") % 2 == 0 for c in chunks)
    assert chunks[1].startswith("```python\n")
    assert split_message("echo: ```python\nprint(1)\n```", 2000) == ["echo: ```python\nprint(1)\n```"]
