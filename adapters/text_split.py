"""Splitting a long reply into messages a platform accepts, at the most natural boundary that fits.

Paragraphs first, then lines, then spaces, then a hard cut. A code fence that a split falls inside is closed at
the end of its chunk and reopened, with the same language tag, at the start of the next, so every chunk renders
as the model meant it.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"```([^\n`]*)")
FENCE_CLOSE = "\n```"


def open_fence_after(text: str, fence: str | None) -> str | None:
    """The opening of the fence still open at the end of ``text`` (given the one open at its start), or None.

    Every run of three backticks toggles, wherever it stands on its line: Slack and Discord both open a code
    block at a fence in mid-line, as a model writes after "Here it is: ```python".
    """
    for match in _FENCE.finditer(text):
        fence = "```" + match.group(1).strip() if fence is None else None
    return fence


def cut_point(text: str, limit: int) -> int:
    """Where to cut ``text`` so the head is at most ``limit`` characters, preferring natural boundaries."""
    window = text[:limit]
    # A paragraph break is best, but not at the price of a half-empty message; a line or a space will do then.
    for separator, not_before in (("\n\n", limit // 2), ("\n", limit // 4), (" ", limit // 4)):
        at = window.rfind(separator)
        if at > not_before:
            return at + len(separator)
    return limit


def split_message(text: str, limit: int) -> list[str]:
    """Chunks of at most ``limit`` characters that together say ``text``; ``[]`` for empty text."""
    if limit < 40:
        raise ValueError("limit too small to keep code fences balanced")
    chunks: list[str] = []
    rest = text
    fence: str | None = None  # the fence line to reopen at the start of the next chunk
    while rest:
        # An absurdly long info string would leave no room for content: reopen with a bare fence then.
        prefix = (f"{fence}\n" if len(fence) < limit // 4 else "```\n") if fence else ""
        room = limit - len(prefix)
        if len(rest) <= room:
            chunk = prefix + rest
            rest = ""
            closing = open_fence_after(chunk, None)
            if closing and len(chunk) + len(FENCE_CLOSE) <= limit:
                chunk += FENCE_CLOSE  # the model left a fence open; close it so the message renders
            chunks.append(chunk)
            break
        cut = cut_point(rest, room)
        fence = open_fence_after(prefix + rest[:cut], None)
        if fence:  # the cut lands inside a fence: make room to close it
            cut = cut_point(rest, room - len(FENCE_CLOSE))
            fence = open_fence_after(prefix + rest[:cut], None)
        head, rest = rest[:cut], rest[cut:]
        chunk = prefix + head.rstrip("\n")
        if fence:
            chunk += FENCE_CLOSE
        if chunk.strip():
            chunks.append(chunk)
        rest = rest.lstrip("\n") if not fence else rest
    return chunks
