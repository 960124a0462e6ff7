"""Showing a reply as it streams: post the first text at once, then edit at most once per interval.

Platform-agnostic; each adapter gives a :class:`MessageSink` (how to post and edit on its platform), a
``render`` function (Markdown to the platform's format) and its message length limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from adapters.text_split import split_message
from bot import texts
from bot.conversation import ConversationCore
from bot.messages import IncomingMessage, ReplyKind, TurnView

log = logging.getLogger(__name__)

H = TypeVar("H")

#: Once the drain deadline has passed, how long a reply cut off by the shutdown gets to show it was cut off.
CUT_OFF_SECONDS = 2.0
#: How long the adapters wait for their cancelled turns to do that (and the core to release their messages).
CANCEL_GRACE_SECONDS = 2 * CUT_OFF_SECONDS + 1.0


class MessageSink(Protocol[H]):
    """Where a reply goes: the adapter posts and edits messages; rate limits are waited out inside.

    ``feedback`` is given only with the last message of a finished reply: the stored reply's id, for the
    platform's feedback buttons under it.
    """

    async def post(self, text: str, feedback: int | None = None) -> H: ...

    async def edit(self, handle: H, text: str, feedback: int | None = None) -> None: ...


class ReplyStream(Protocol):
    """How one reply reaches the platform as it is written: pieces in, then the whole text, or nothing."""

    @property
    def text_so_far(self) -> str:
        """Every piece fed so far, joined."""
        ...

    async def feed(self, piece: str) -> None:
        """More of the answer; it takes the place of a status line shown meanwhile."""
        ...

    async def status(self, text: str | None) -> None:
        """Show a short progress line with the reply (``Looking up the time…``, ``Thinking…``) until the answer
        goes on; None takes it away."""
        ...

    async def finish(self, final_text: str, feedback: int | None = None) -> None:
        """Show exactly ``final_text``; with ``feedback`` (the stored reply's id), feedback buttons under it."""
        ...

    async def cancel(self) -> None: ...


class StreamingReply(Generic[H]):
    """Feeds pieces of text to a sink: first post as soon as there is text, edits no faster than ``interval``.

    A reply that is complete before the first post went out is posted once, whole, so streaming never makes a
    fast answer slower or noisier. Text longer than ``limit`` continues in further messages.

    A status line (:meth:`status`, drawn by ``status_line`` in the platform's format) shows under the text so far,
    or alone before any text: the answer's next words, and the final text, replace it. ``on_first_post`` runs
    once the first words of the answer are out, not for a status line alone.
    """

    def __init__(
        self,
        sink: MessageSink[H],
        *,
        interval: float,
        limit: int,
        render: Callable[[str], str] = lambda text: text,
        on_first_post: Callable[[], Awaitable[None]] | None = None,
        status_line: Callable[[str], str] = lambda text: f"_{text}_",
    ) -> None:
        self._sink = sink
        self._status_line = status_line
        self._status: str | None = None
        self._answer_shown = False
        self._interval = interval
        self._limit = limit
        self._render = render
        self._on_first_post = on_first_post
        self._text = ""
        self._final: str | None = None
        self._feedback: int | None = None
        self._wake = asyncio.Event()
        self._handles: list[H] = []
        self._shown: list[str] = []
        self._last_send = 0.0
        self._pump: asyncio.Task[None] | None = None
        #: The pump is to start at the loop's next turn (:meth:`_start_soon`).
        self._starting = False
        #: :meth:`finish` or :meth:`cancel` was called: no pump starts any more.
        self._closed = False
        #: The model's answer is whole (:meth:`text_complete`): a first post not yet made waits for :meth:`finish`.
        self._complete = False

    @property
    def text_so_far(self) -> str:
        return self._text

    @property
    def handles(self) -> list[H]:
        return list(self._handles)

    async def feed(self, piece: str) -> None:
        self._text += piece
        self._status = None
        self._wake.set()
        if self._pump is None and not self._starting:
            self._start_soon()

    def _start_soon(self) -> None:
        """Start the pump at the loop's next turn: the first words go out one turn of the loop later than from a
        task created here (microseconds on an idle loop). A fast answer whole by then (:meth:`text_complete`, an
        instant model's stream read at once) needs no pump: :meth:`finish` posts it, and the task and its
        wake-ups (~20 µs per answer) are saved."""
        self._starting = True
        asyncio.get_running_loop().call_soon(self._start_pump)

    def _start_pump(self) -> None:
        self._starting = False
        if self._pump is None and not self._closed and not (self._complete and not self._handles):
            self._pump = asyncio.create_task(self._run(), name="stream-pump")

    async def status(self, text: str | None) -> None:
        if text == self._status:
            return
        self._status = text
        if text is None and not self._handles:
            return  # nothing was shown yet, so nothing to take away
        self._wake.set()
        if self._pump is None:
            self._pump = asyncio.create_task(self._run(), name="stream-pump")

    def text_complete(self) -> None:
        """The model's answer is whole and about to be stored. If none of it is shown yet (a fast answer, the first
        post not yet gone out), it is posted once, by :meth:`finish`, with its feedback buttons, instead of posted
        now and edited a moment later for the buttons: one message create, not a create and an edit."""
        self._complete = True

    async def finish(self, final_text: str, feedback: int | None = None) -> None:
        """Make the platform show exactly ``final_text`` (with feedback buttons under it for ``feedback``), then
        stop."""
        self._final, self._feedback = final_text, feedback
        self._closed = True
        self._wake.set()
        if self._pump is None:
            # Nothing under way to wait for: shown from here.
            await self._show(final_text, final=True)
            return
        await self._pump

    async def cancel(self) -> None:
        """Stop updating; whatever failed in the pump was already reported by ``finish``."""
        self._closed = True
        pump, self._pump = self._pump, None
        if pump is None:
            return
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._final is not None:
                await self._show(self._final, final=True)
                return
            if self._complete and not self._handles:
                continue  # the whole answer goes out with finish, a few milliseconds from now
            if self._handles:
                # Throttle edits; a finish arriving during the wait is shown at once.
                wait = self._last_send + self._interval - time.monotonic()
                if wait > 0:
                    try:
                        await asyncio.wait_for(self._wake.wait(), wait)
                        self._wake.set()
                        continue
                    except TimeoutError:
                        pass
            if self._text.strip() or self._status:
                await self._show(self._text, final=False)

    def _rendered(self, text: str, *, final: bool) -> str:
        rendered = self._render(text) if text.strip() or final else ""
        if final or self._status is None:
            return rendered
        line = self._status_line(self._status)
        return f"{rendered}\n\n{line}" if rendered.strip() else line

    async def _show(self, text: str, *, final: bool) -> None:
        rendered = self._rendered(text, final=final)
        chunks = split_message(rendered, self._limit) or [rendered]
        for index, chunk in enumerate(chunks):
            if not chunk.strip():
                continue
            # The buttons go under the last message of the finished reply (a sink without them is never asked).
            feedback = self._feedback if final and index == len(chunks) - 1 else None
            try:
                if index < len(self._handles):
                    if feedback is not None:
                        await self._sink.edit(self._handles[index], chunk, feedback)
                        self._shown[index] = chunk
                    elif self._shown[index] != chunk:
                        await self._sink.edit(self._handles[index], chunk)
                        self._shown[index] = chunk
                elif feedback is not None:
                    self._handles.append(await self._sink.post(chunk, feedback))
                    self._shown.append(chunk)
                else:
                    self._handles.append(await self._sink.post(chunk))
                    self._shown.append(chunk)
            except Exception:
                if final:
                    raise
                # A failed intermediate edit is not worth a lost reply: the next one, or the final, catches up.
                log.warning("streaming update failed; the next update will carry the text", exc_info=True)
                break
            if not self._answer_shown and self._handles and (text.strip() or final):
                self._answer_shown = True
                if self._on_first_post is not None:
                    await self._on_first_post()
        self._last_send = time.monotonic()


class ReasoningSink(Protocol):
    """How a platform shows a model's thinking, always apart from the answer (TEAMBOT_SHOW_REASONING)."""

    async def thinking(self) -> None:
        """The model has started to think: show that it is at work ("Thinking…"), until the answer shows."""
        ...

    async def reasoning(self, text: str) -> None:
        """The model's whole thinking, shown collapsed and apart from the answer; called once, before it."""
        ...


class ReasoningView:
    """Follows one turn's thinking: ``status`` shows the progress once, as soon as the model starts to think;
    ``full`` also shows the thinking itself once it is over, when the answer starts (or with the reply, when
    nothing streamed). Showing it is decoration: a platform that refuses costs the reply nothing."""

    def __init__(self, mode: str, sink: ReasoningSink) -> None:
        self.full = mode == "full"
        self._sink = sink
        self._text: list[str] = []
        self._started = False
        self._shown = False

    async def on_reasoning(self, piece: str) -> None:
        if self.full:
            self._text.append(piece)
        if not self._started:
            self._started = True
            await self._decorate(self._sink.thinking)

    async def before_answer(self) -> None:
        if self._shown or not self._text:
            return
        self._shown = True
        text = "".join(self._text).strip()
        if text:
            await self._decorate(lambda: self._sink.reasoning(text))

    @staticmethod
    async def _decorate(show: Callable[[], Awaitable[None]]) -> None:
        try:
            await show()
        except Exception:
            log.warning("the model's thinking could not be shown; the answer goes on", exc_info=True)


async def deliver(
    core: ConversationCore,
    msg: IncomingMessage,
    sink: MessageSink[H],
    *,
    interval: float,
    limit: int,
    render: Callable[[str], str] = lambda text: text,
    on_first_post: Callable[[], Awaitable[None]] | None = None,
    reply_stream: ReplyStream | None = None,
    show_reasoning: str = "off",
    reasoning_sink: ReasoningSink | None = None,
    feedback: bool = False,
    view: TurnView | None = None,
    refuse: Callable[[str], Awaitable[None]] | None = None,
    on_complete: Callable[[], None] | None = None,
) -> ReplyStream:
    """Run one turn and show its reply: the one top-level handler per event that every adapter uses.

    The reply streams through ``reply_stream`` when given (a platform's own streaming), else as posts and edits
    of ``sink``; with ``feedback`` (TEAMBOT_FEEDBACK), a stored answer gets the platform's feedback buttons under it.
    Known failures arrive as a reply with a message for people; anything else is a bug, logged with
    its traceback, and the people in the channel get a short apology instead of silence. Callers run it inside
    ``bot.logcontext.turn`` for the message, so every line of the delivery names the turn.

    The model's thinking goes to ``reasoning_sink`` as ``show_reasoning`` says (``off``, ``status``, ``full``),
    never into the reply. ``view`` (the platform's :class:`bot.messages.TurnView`) shows tool progress and asks
    for approvals. With ``refuse``, a refusal (access, rate limit, budget) goes there, to the person alone,
    instead of the channel: a click on a message action is one person's, not the channel's. ``on_complete`` hears
    that the model's answer is whole, just before the core stores it (see ``ConversationCore.handle``).
    """
    if reply_stream is None:
        reply_stream = StreamingReply(sink, interval=interval, limit=limit, render=render, on_first_post=on_first_post)
    thinking = ReasoningView(show_reasoning, reasoning_sink) if reasoning_sink and show_reasoning != "off" else None
    on_text = reply_stream.feed
    if thinking is not None and thinking.full:
        stream_feed = reply_stream.feed
        full = thinking

        async def on_text(piece: str) -> None:
            await full.before_answer()  # the thinking goes out before the answer it led to
            await stream_feed(piece)

    try:
        on_reasoning = thinking.on_reasoning if thinking is not None else None
        reply = await core.handle(msg, on_text, on_reasoning, view=view, on_complete=on_complete)
        if thinking is not None and thinking.full:
            await thinking.before_answer()
        if reply.kind is ReplyKind.REFUSED and refuse is not None:
            await reply_stream.cancel()
            await refuse(reply.text)
        elif reply.should_post and feedback and reply.reply_id is not None:
            await reply_stream.finish(reply.text, reply.reply_id)
        elif reply.should_post:
            await reply_stream.finish(reply.text)
        else:
            await reply_stream.cancel()
        if reply.notice:
            await sink.post(render(reply.notice))
    except asyncio.CancelledError:
        # The process is stopping and the drain deadline has passed. A reply left as it is would read as complete
        # (an edited message) or as still being written (a native stream, until the platform times it out).
        await _show_cut_off(reply_stream, msg)
        raise
    except Exception:
        log.exception("answering %s in %s failed", msg.message_id, msg.key)
        await reply_stream.cancel()
        try:
            await sink.post(render(texts.APOLOGY))
        except Exception:
            log.exception("could not post the apology for %s in %s either", msg.message_id, msg.key)
    return reply_stream


async def _show_cut_off(reply_stream: ReplyStream, msg: IncomingMessage) -> None:
    """End the reply with the cut-off mark, in :data:`CUT_OFF_SECONDS` at most: the process is going away."""
    mark = texts.INTERRUPTED_MARK.format(reason=texts.STOPPING)
    shown = reply_stream.text_so_far
    try:
        async with asyncio.timeout(CUT_OFF_SECONDS):
            await reply_stream.finish(shown + mark if shown.strip() else mark.strip())
        log.info("the reply to %s in %s was cut off by the shutdown and marked so", msg.message_id, msg.key)
    except TimeoutError:
        log.warning("could not mark the reply to %s in %s as cut off in time", msg.message_id, msg.key)
    except Exception:
        log.warning("could not mark the reply to %s in %s as cut off", msg.message_id, msg.key, exc_info=True)


def track(turns: set[asyncio.Task[Any]]) -> None:
    """Keep the running task in ``turns`` until it ends, so that :func:`drain` waits for it: the SDKs run each event
    handler as a detached task, which a stop would otherwise cut off."""
    task = asyncio.current_task()
    if task is not None:
        turns.add(task)
        task.add_done_callback(turns.discard)


async def drain(turns: set[asyncio.Task[Any]], deadline: float) -> None:
    """Let the turns under way finish, up to ``deadline`` seconds; then cancel the rest and give them a moment
    (:data:`CANCEL_GRACE_SECONDS`) to mark their replies cut off and release their messages for another try.

    Each adapter's ``stop`` calls it while its platform client is still open, so those last calls can go out.
    """
    if not turns:
        return
    log.info("waiting for %d replies in progress", len(turns))
    _, pending = await asyncio.wait(set(turns), timeout=deadline)
    if not pending:
        return
    log.warning("%d replies still in progress at the drain deadline: cutting them off", len(pending))
    for task in pending:
        task.cancel()
    _, stuck = await asyncio.wait(pending, timeout=CANCEL_GRACE_SECONDS)
    if stuck:
        log.warning("%d cut-off replies did not finish within %.0f s", len(stuck), CANCEL_GRACE_SECONDS)
