"""What the message actions of every platform share (Slack message shortcuts, Discord message context-menu
commands): the whole thread read for a summary, and the note that says when its oldest part was left out.

A click is a question like a mention, asked by the person who clicked: it goes through the core's
``handle``, so their access lists, rate limits and budgets apply. Its message id is the click's own (Slack's
``trigger_id``, Discord's interaction id), never the message clicked on: two people asking about one message both
get an answer, and a click delivered twice is answered once.
"""

from __future__ import annotations

from collections.abc import Callable

from adapters.streaming import ReplyStream
from bot import texts
from bot.messages import ContextRead, ContextSource

#: Of the history budget, the share a summary's thread may take: the system prompt, the question and the answer's
#: room come out of the same budget, and a thread read to the brim would lose its oldest part again, in silence,
#: when the prompt is built.
THREAD_SHARE = 0.5


def excerpt(text: str, length: int = texts.ACTION_EXCERPT_LENGTH) -> str:
    """The start of ``text`` on one line, for the question to name the message it is about."""
    line = " ".join(text.split())
    if len(line) <= length:
        return line
    return line[: length - 1].rsplit(" ", 1)[0] + "…"


class WholeThread:
    """A :class:`bot.messages.ContextSource` that reads its thread from the start, whatever the conversation has
    read before: a summary is of the whole thread (what is stored already is claimed by id and not stored twice),
    not of what came since the last mention. Remembers whether the oldest part had to be left out."""

    def __init__(self, source: ContextSource, share: float = THREAD_SHARE) -> None:
        self._source = source
        self._share = share
        self.truncated = False

    async def read(self, after: str | None, budget_tokens: int) -> ContextRead:
        read = await self._source.read(None, max(1, int(budget_tokens * self._share)))
        self.truncated = self.truncated or read.truncated
        return read


class Noted:
    """A reply stream whose text starts with a note known only once the turn has read its context (the oldest
    part of a thread left out): the note goes before the first piece and before the final text, never into the
    stored reply."""

    def __init__(self, inner: ReplyStream, note: Callable[[], str | None]) -> None:
        self._inner = inner
        self._note = note
        self._fed = False

    @property
    def text_so_far(self) -> str:
        return self._inner.text_so_far

    async def feed(self, piece: str) -> None:
        if not self._fed:
            self._fed = True
            note = self._note()
            if note:
                piece = f"{note}\n\n{piece}"
        await self._inner.feed(piece)

    async def status(self, text: str | None) -> None:
        await self._inner.status(text)

    async def finish(self, final_text: str, feedback: int | None = None) -> None:
        note = self._note()
        if note:
            final_text = f"{note}\n\n{final_text}"
        await self._inner.finish(final_text, feedback)

    async def cancel(self) -> None:
        await self._inner.cancel()


def oldest_left_out(thread: WholeThread | None) -> Callable[[], str | None]:
    """The note for a summary whose thread was cut (None: no note)."""
    return lambda: texts.ACTION_OLDEST_LEFT_OUT if thread is not None and thread.truncated else None
