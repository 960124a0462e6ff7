"""The streamer's contract with a platform: first post at once, throttled edits, final text whole."""

from __future__ import annotations

import asyncio
import itertools
import time

from adapters.streaming import StreamingReply


class Channel:
    """A platform channel in memory: numbered messages and a log of every call with its time."""

    def __init__(self, fail_edits: int = 0) -> None:
        self.messages: list[str] = []
        self.calls: list[tuple[str, float]] = []
        self._fail_edits = fail_edits

    async def post(self, text: str) -> int:
        self.calls.append(("post", time.monotonic()))
        self.messages.append(text)
        return len(self.messages) - 1

    async def edit(self, handle: int, text: str) -> None:
        self.calls.append(("edit", time.monotonic()))
        if self._fail_edits:
            self._fail_edits -= 1
            raise RuntimeError("platform said no")
        self.messages[handle] = text


async def test_a_reply_complete_before_the_first_post_is_posted_once_whole() -> None:
    channel = Channel()
    stream = StreamingReply(channel, interval=1.0, limit=100)
    for piece in ("Hel", "lo ", "there"):
        await stream.feed(piece)
    await stream.finish("Hello there")
    assert channel.messages == ["Hello there"]
    assert [c for c, _ in channel.calls] == ["post"]


async def test_first_text_is_posted_at_once_and_edits_are_throttled() -> None:
    channel = Channel()
    stream = StreamingReply(channel, interval=0.2, limit=1000)
    await stream.feed("first")
    await asyncio.sleep(0)  # the pump posts as soon as it runs
    for i in range(30):
        await stream.feed(f" {i}")
        await asyncio.sleep(0.02)
    await stream.finish("the whole final text")
    kinds = [c for c, _ in channel.calls]
    assert kinds[0] == "post" and kinds.count("post") == 1
    edits = [t for c, t in channel.calls if c == "edit"]
    gaps = [b - a for a, b in itertools.pairwise(edits[:-1])]  # the final edit goes out at once
    assert 2 <= len(edits) <= 6
    assert all(gap >= 0.19 for gap in gaps)
    assert channel.messages == ["the whole final text"]


async def test_long_text_continues_in_further_messages() -> None:
    channel = Channel()
    stream = StreamingReply(channel, interval=0.01, limit=50)
    text = "\n\n".join(f"paragraph {i} " + "x" * 30 for i in range(6))
    await stream.feed(text[:40])
    await asyncio.sleep(0.05)
    await stream.finish(text)
    assert len(channel.messages) >= 4 and all(len(m) <= 50 for m in channel.messages)
    assert "".join(channel.messages).replace("\n", "") == text.replace("\n", "")


async def test_a_failed_intermediate_edit_is_caught_up_by_the_final() -> None:
    channel = Channel(fail_edits=1)
    stream = StreamingReply(channel, interval=0.01, limit=100)
    await stream.feed("a")
    await asyncio.sleep(0.02)
    await stream.feed("b")
    await asyncio.sleep(0.05)
    await stream.finish("ab and the rest")
    assert channel.messages == ["ab and the rest"]


async def test_render_is_applied_to_what_the_platform_sees() -> None:
    channel = Channel()
    stream = StreamingReply(channel, interval=1.0, limit=100, render=str.upper)
    await stream.finish("shout")
    assert channel.messages == ["SHOUT"]


async def test_on_first_post_runs_once() -> None:
    seen: list[int] = []

    async def hook() -> None:
        seen.append(1)

    channel = Channel()
    stream = StreamingReply(channel, interval=0.01, limit=50, on_first_post=hook)
    await stream.feed("x" * 10)
    await asyncio.sleep(0.02)
    await stream.finish("y " * 60)
    assert seen == [1] and len(channel.messages) > 1
