"""Slack's own AI-app surface for replies: native streaming and the "is thinking..." status.

A natively streamed reply is one message made with ``chat.startStream``, grown with ``chat.appendStream`` and
closed with ``chat.stopStream``. Slack renders its ``markdown_text`` as Markdown, so the model's text goes out
as written, except that mention syntax is broken up invisibly so it can never ping anyone. Slack streams replies
in threads and top-level messages in channels (not at the top of a DM). Text is appended no faster than once
per ``interval``; a reply longer than :data:`MESSAGE_LIMIT` continues in a further streamed message, an open
code fence closed and reopened.

Where Slack refuses to stream (a missing scope, a token or a context it does not support), the reply goes out
once through the adapter's post-then-edit path instead, and the workspace is remembered, so later replies there
do not ask again. Any other failure (Slack's own trouble, a 5xx) costs only that one reply its native path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.feedback import context_actions
from adapters.slack.format import escape_mrkdwn
from adapters.streaming import ReplyStream
from adapters.text_split import FENCE_CLOSE, cut_point, open_fence_after
from bot import texts

log = logging.getLogger(__name__)

#: Slack takes at most 12,000 characters of ``markdown_text`` per call. Each streamed message stays below that in
#: total, leaving room for the invisible characters that break up mentions and for a closing fence.
MESSAGE_LIMIT = 11_000

STREAM = "native streaming"
STATUS = "thinking status"

# A word joiner is invisible and keeps Slack from reading the characters around it as one token.
_JOINER = "\u2060"
_MENTION = re.compile(
    r"<(?=!(?:here|channel|everyone|subteam\^)|@[UW])|(?<![\w@])@(?=(?:here|channel|everyone)\b)", re.IGNORECASE
)
#: Longer than any mention's opening ("<!everyone" and the character after it): text this close to the end
#: that starts with "<" or "@" may still grow into one, so it waits for the next append.
_HOLD = 12

#: Slack's answers that mean "not in this workspace, not with this app": a token, scope, plan or context that
#: does not allow the feature. Only these are remembered. Anything else (``internal_error``, ``fatal_error``,
#: ``request_timeout``, a 5xx page, an error about one thread) may pass, so it costs that one reply its native
#: path and nothing more: remembering it would switch the feature off for the whole workspace until a restart.
REFUSALS = frozenset(
    {
        # the token or the app may not use the method
        "not_allowed_token_type",
        "missing_scope",
        "no_permission",
        "not_allowed",
        "not_authed",
        "access_denied",
        "restricted_action",
        "team_access_not_granted",
        "ekm_access_denied",
        # the workspace, its plan or this kind of conversation does not offer it
        "feature_not_enabled",
        "not_supported",
        "unsupported_context",
        "invalid_context",
        "context_not_supported",
        "method_not_supported_for_channel_type",
        # the method itself is gone or unknown here
        "method_deprecated",
        "unknown_method",
    }
)


def error_code(exc: SlackApiError) -> str:
    """Slack's error code, or ``http_<status>`` when the answer was not Slack's JSON.

    A load balancer's or proxy's error page reaches slack_sdk as text (``response.data`` is a ``str``), as an
    empty dict, or, when it claims to be JSON and is not, as the raw aiohttp response; none of them has an
    ``error`` to read.
    """
    response = exc.response
    data = getattr(response, "data", None)
    if isinstance(data, dict) and data.get("error"):
        return str(data["error"])
    status = getattr(response, "status_code", None) or getattr(response, "status", None)
    return f"http_{status}" if status else "unknown_error"


def neutralise_mentions(markdown: str) -> str:
    """``markdown`` with ``<!here>``, ``<!channel>``, ``<!everyone>``, ``<!subteam^..>``, ``<@U..>``, ``@here``,
    ``@channel`` and ``@everyone`` broken up by an invisible word joiner: it reads the same and pings nobody."""
    return _MENTION.sub(lambda m: m.group(0) + _JOINER, markdown)


def _neutralise_after(before: str, piece: str) -> str:
    """``piece`` neutralised as it reads after ``before`` (already sent): an address like ``a@here.com`` split
    after the ``a`` is still an address."""
    return neutralise_mentions(before + piece)[len(before) :]


def _safe_end(text: str, start: int) -> int:
    """How much of ``text`` can go out now: all but a tail that might still grow into a mention."""
    tail_from = max(start, len(text) - _HOLD)
    held = max(text.rfind("<", tail_from), text.rfind("@", tail_from))
    return held if held >= start else len(text)


class Refusals:
    """Workspaces where Slack refused one of its AI features: each is asked once, then left alone."""

    def __init__(self) -> None:
        self._refused: set[tuple[str, str]] = set()

    def allows(self, workspace: str, feature: str) -> bool:
        return (workspace, feature) not in self._refused

    def refused(self, workspace: str, feature: str, error: str) -> None:
        if error not in REFUSALS:
            log.info("Slack could not give %s in workspace %s this time (%s)", feature, workspace, error)
            return
        if (workspace, feature) not in self._refused:
            log.warning("Slack refused %s in workspace %s (%s); not trying it there again", feature, workspace, error)
        self._refused.add((workspace, feature))


class ThinkingStatus:
    """Slack's "is thinking..." under the question, from the start of the turn until the answer shows.

    Set in the background so the model call does not wait for it; a status Slack refuses is only decoration,
    so failures are logged and the reply goes on.
    """

    def __init__(self, client: AsyncWebClient, channel: str, thread_ts: str, on_refused: Callable[[str], None]) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts
        self._on_refused = on_refused
        self._setting: asyncio.Task[bool] | None = None
        self._cleared = False

    def start(self) -> None:
        self._setting = asyncio.create_task(self._set(texts.THINKING_STATUS), name="slack-status")

    async def clear(self) -> None:
        if self._setting is None or self._cleared:
            return
        self._cleared = True
        if await self._setting:
            await self._set("")

    async def show(self, text: str | None) -> None:
        """A tool's progress (``Looking up the time…``) in place of "is thinking..."; None puts that back, or
        clears the status once the answer shows. Nothing where Slack refused the first status."""
        if self._setting is None or not await self._setting:
            return
        await self._set(text if text is not None else "" if self._cleared else texts.THINKING_STATUS)

    async def _set(self, status: str) -> bool:
        try:
            await self._client.assistant_threads_setStatus(
                channel_id=self._channel, thread_ts=self._thread_ts, status=status
            )
            return True
        except SlackApiError as exc:
            error = error_code(exc)
            log.info("assistant.threads.setStatus in %s failed: %s", self._channel, error)
            self._on_refused(error)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("assistant.threads.setStatus in %s failed: %s", self._channel, type(exc).__name__)
        return False


#: A context block's text takes at most 3,000 characters.
CONTEXT_LIMIT = 3000


class SlackReasoning:
    """A model's thinking in Slack, apart from the answer (TEAMBOT_SHOW_REASONING).

    ``status``: in a thread, the assistant status ("is thinking...") set at the start of every turn already stays
    until the answer's first words, however long the model thinks. In a channel, where that status is not
    Slack's assistant pane, the reply (``reply``) also shows "Thinking…": a task card in a native stream, a
    status line in a posted and edited reply, replaced by the answer. ``full``: the thinking itself, before the
    answer, as a message of its own holding one context block (small grey text), escaped so that it can ping
    nobody.
    """

    def __init__(
        self, client: AsyncWebClient, channel: str, thread_ts: str | None, reply: ReplyStream | None = None
    ) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts
        self._reply = reply

    async def thinking(self) -> None:
        if self._reply is not None:
            await self._reply.status(texts.REASONING_STATUS)

    async def reasoning(self, text: str) -> None:
        header = f"_{texts.REASONING_HEADER}_\n"
        body = neutralise_mentions(escape_mrkdwn(text))
        room = CONTEXT_LIMIT - len(header)
        if len(body) > room:
            body = body[: room - len(texts.REASONING_CUT)]
            entity = body.rfind("&")
            if entity >= 0 and ";" not in body[entity:]:
                body = body[:entity]  # never half an escape (&am)
            body += texts.REASONING_CUT
        block = {"type": "context", "elements": [{"type": "mrkdwn", "text": header + body}]}
        await self._client.chat_postMessage(
            channel=self._channel,
            thread_ts=self._thread_ts,
            text=texts.REASONING_HEADER,
            blocks=[block],
            unfurl_links=False,
            unfurl_media=False,
        )


class NativeReply:
    """One reply streamed with Slack's chat.*Stream methods; a :class:`ReplyStream` for ``deliver``.

    ``fallback`` builds the post-then-edit stream that takes over if Slack refuses to start a stream (then
    ``on_refused`` hears the error) or a stream breaks off: it gets whatever text Slack has not shown yet, so
    the reply appears once, never twice.
    """

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        channel: str,
        thread_ts: str | None,
        recipient_team: str,
        recipient_user: str,
        interval: float,
        fallback: Callable[[], ReplyStream],
        on_refused: Callable[[str], None],
        on_first_post: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts
        self._recipient = {"recipient_team_id": recipient_team, "recipient_user_id": recipient_user}
        self._interval = interval
        self._make_fallback = fallback
        self._on_refused = on_refused
        self._on_first_post = on_first_post
        self._text = ""  # the model's text so far
        #: The model's answer is whole (``complete``): its finish follows, so nothing is shown before it.
        self._complete = False
        self._final: str | None = None
        self._feedback: int | None = None
        self._closing = False
        self._sent = 0  # characters of _text that Slack has been given
        self._ts: str | None = None  # the streamed message still open
        self._message = ""  # the Markdown in the current message, for its length and open fences
        self._before = ""  # the last character of the model's text in the current message
        self._reopen = ""  # the fence line that starts the next message
        self._posted = False
        self._fallback: ReplyStream | None = None
        self._wake = asyncio.Event()
        self._last_send = 0.0
        self._pump: asyncio.Task[None] | None = None
        #: The pump is to start at the loop's next turn (:meth:`_start_soon`).
        self._starting = False
        #: Task cards (``task_update`` chunks) waiting to go out before any more text, and the one in progress.
        self._chunks: list[dict[str, Any]] = []
        self._task: tuple[str, str] | None = None
        self._task_ids = itertools.count(1)

    @property
    def fell_back(self) -> bool:
        return self._fallback is not None

    @property
    def text_so_far(self) -> str:
        return self._text

    async def feed(self, piece: str) -> None:
        self._text += piece
        if self._fallback is not None:
            await self._fallback.feed(piece)
            return
        self._end_task()  # the answer goes on: the step before it is done
        self._wake.set()
        if self._pump is None and not self._starting:
            self._start_soon()

    async def status(self, text: str | None) -> None:
        """A step of the turn (a tool at work, the model thinking) as a task card in the stream: in progress
        until the next step, the answer's next words or None, then complete."""
        if self._fallback is not None:
            await self._fallback.status(text)
            return
        if self._task is not None and self._task[1] == text:
            return
        self._end_task()
        if text is not None:
            self._task = (f"step-{next(self._task_ids)}", text)
            self._chunks.append(_task_update(*self._task, "in_progress"))
        if self._chunks:
            self._wake.set()
            self._ensure_pump()

    def _end_task(self) -> None:
        if self._task is not None:
            self._chunks.append(_task_update(*self._task, "complete"))
            self._task = None

    def complete(self) -> None:
        """The model's answer is whole and its :meth:`finish` follows once it is stored: if nothing is shown yet,
        the pump waits for it, and the reply goes out as one message."""
        self._complete = True

    async def finish(self, final_text: str, feedback: int | None = None) -> None:
        self._final, self._feedback = final_text, feedback
        if self._fallback is None:
            self._wake.set()
            if self._pump is not None:
                await self._pump
            elif not self._closing:
                # No pump under way (a fast answer, whole before one started): what it would do now, done here.
                with contextlib.suppress(_FellBack):
                    await self._flush(final_text, final=True)
        if self._fallback is not None:
            await self._fallback.finish(self._unsent(final_text), feedback)

    async def cancel(self) -> None:
        # The pump is told to stop rather than cancelled: cut off inside chat.startStream, it would never learn
        # the ts of a stream Slack has opened, and could not close it.
        self._closing = True
        self._wake.set()
        if self._pump is not None:
            await asyncio.gather(self._pump, return_exceptions=True)
        if self._fallback is not None:
            await self._fallback.cancel()
        await self._close_open_stream()

    def _start_soon(self) -> None:
        """Start the pump at the loop's next turn, as ``adapters.streaming.StreamingReply`` does: an answer whole by
        then (:meth:`complete`, an instant model's stream read at once) and not yet shown needs no pump, since
        :meth:`finish` posts it; the task and its wake-ups are saved for most answers in a burst."""
        self._starting = True
        asyncio.get_running_loop().call_soon(self._start_pump)

    def _start_pump(self) -> None:
        self._starting = False
        if self._pump is not None or self._closing or self._final is not None:
            return  # started meanwhile (a task card), or finish/cancel came first and does the rest
        if self._complete and self._ts is None and not self._sent and not self._chunks:
            return  # whole and nothing shown: finish posts it at once
        self._ensure_pump()

    def _ensure_pump(self) -> asyncio.Task[None]:
        if self._pump is None:
            self._pump = asyncio.create_task(self._run(), name="slack-native-stream")
        return self._pump

    def _unsent(self, final_text: str) -> str:
        shown = self._text[: self._sent]
        if final_text.startswith(shown):
            return final_text[self._sent :]
        # The reply is not what streamed (a failure after some text): show all of it rather than lose any.
        log.warning("the final reply in %s differs from the streamed text; posting it whole", self._channel)
        return final_text

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._closing:
                    return
                if self._final is not None:
                    await self._flush(self._final, final=True)
                    return
                if self._complete and self._ts is None and not self._sent:
                    continue  # the whole answer is here: wait the moment for finish, then post it at once
                wait = self._last_send + self._interval - time.monotonic()
                if self._ts is not None and wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                        self._wake.set()  # new text or the end came early: look again, the wait shrinks
                        continue
                await self._flush(self._text, final=False)
        except _FellBack:
            return

    async def _flush(self, text: str, *, final: bool) -> None:
        if final:
            self._end_task()
        if final and not text.startswith(self._text[: self._sent]):
            await self._fall_back(None)
        # Nothing shown yet and the whole reply fits one message: one post, not a stream opened and closed at once.
        whole = final and self._ts is None and not self._sent and not self._chunks
        if whole and text.strip() and len(text) <= MESSAGE_LIMIT:
            await self._post_whole(text)
            return
        await self._send_chunks()
        end = len(text) if final else _safe_end(text, self._sent)
        pending = text[self._sent : end]
        if self._ts is None and not pending.strip():
            return  # nothing to show yet; Slack would show an empty message
        await self._send(pending, final=final)
        self._last_send = time.monotonic()

    async def _send(self, pending: str, *, final: bool) -> None:
        while True:
            room = MESSAGE_LIMIT - len(self._reopen if self._ts is None else self._message)
            if len(pending) <= room:
                await self._write(pending, stop=final, last=final)
                return
            cut = cut_point(pending, max(room - len(FENCE_CLOSE), 0))
            piece = pending[:cut]
            fence = open_fence_after((self._reopen if self._ts is None else self._message) + piece, None)
            await self._write(piece, stop=True, closing=FENCE_CLOSE if fence else "")
            rest = pending[cut:]
            if not fence:
                skipped = len(rest) - len(rest.lstrip("\n"))
                self._sent += skipped  # a paragraph break between two messages needs no characters
                rest = rest[skipped:]
            self._reopen = f"{fence}\n" if fence else ""
            pending = rest

    async def _post_whole(self, text: str) -> None:
        """The whole reply, nothing of it shown yet, in one ``chat.postMessage``: a ``markdown`` block (the same
        Markdown a stream renders, mentions broken up), with the feedback buttons under it, instead of
        ``chat.startStream`` and ``chat.stopStream``. One Web API call where a stream takes two; the person sees
        the same message, at once."""
        markdown = neutralise_mentions(text)
        blocks: list[dict[str, Any]] = [{"type": "markdown", "text": markdown}]
        if self._feedback is not None:
            blocks += context_actions(self._feedback)
        try:
            await self._client.chat_postMessage(
                channel=self._channel,
                thread_ts=self._thread_ts,
                # Slack shows a message's blocks; ``text`` is what notifications read.
                text=markdown,
                blocks=blocks,
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as exc:
            # Not a refusal of streaming: the post-then-edit path tries once more, in mrkdwn section blocks.
            await self._fall_back(error_code(exc))
        self._sent = len(text)
        await self._answer_shown(text)

    async def _send_chunks(self) -> None:
        """The task cards waiting, in one call: they start the stream when no text has yet."""
        if not self._chunks:
            return
        chunks, self._chunks = self._chunks, []
        try:
            if self._ts is None:
                args: dict[str, Any] = {"channel": self._channel, "chunks": chunks, **self._recipient}
                if self._thread_ts is not None:
                    args["thread_ts"] = self._thread_ts
                if self._reopen:
                    args["markdown_text"] = self._reopen
                response = await self._client.api_call("chat.startStream", json=args)
                self._ts = str(response["ts"])
                self._message, self._reopen = args.get("markdown_text", ""), ""
                self._before = ""
            else:
                await self._client.chat_appendStream(channel=self._channel, ts=self._ts, chunks=chunks)
        except SlackApiError as exc:
            error = error_code(exc)
            if self._ts is None:
                self._on_refused(error)
            await self._fall_back(error)
        self._last_send = time.monotonic()

    async def _write(self, piece: str, *, stop: bool, closing: str = "", last: bool = False) -> None:
        """Send ``piece``; ``stop`` closes the message, ``last`` says it ends the reply (its feedback buttons go
        under it)."""
        if self._ts is None:
            self._before = ""
        markdown = _neutralise_after(self._before, piece) + closing
        self._before = (self._before + piece)[-1:]
        if self._ts is None:
            markdown = self._reopen + markdown
            try:
                # Without thread_ts Slack streams a top-level message (in channels only; DMs need a thread). The
                # SDK's chat_startStream still insists on thread_ts, so the call is made by name.
                args = {"channel": self._channel, "markdown_text": markdown, **self._recipient}
                if self._thread_ts is not None:
                    args["thread_ts"] = self._thread_ts
                response = await self._client.api_call("chat.startStream", json=args)
            except SlackApiError as exc:
                error = error_code(exc)
                self._on_refused(error)
                await self._fall_back(error)
            self._ts = str(response["ts"])
            self._message, self._reopen = markdown, ""
            self._sent += len(piece)
            await self._answer_shown(piece)
            if stop:
                await self._stop(None, last=last)
            return
        try:
            if stop:
                await self._stop(markdown or None, last=last)
            elif markdown:
                await self._client.chat_appendStream(channel=self._channel, ts=self._ts, markdown_text=markdown)
                self._message += markdown
        except SlackApiError as exc:
            await self._fall_back(error_code(exc))
        self._sent += len(piece)
        await self._answer_shown(piece)

    async def _answer_shown(self, piece: str) -> None:
        # The first words of the answer, not a task card: what ends the "is thinking..." status.
        if not self._posted and piece.strip():
            self._posted = True
            if self._on_first_post is not None:
                await self._on_first_post()

    async def _stop(self, markdown: str | None, *, last: bool = False) -> None:
        assert self._ts is not None
        # Slack renders these blocks at the bottom of the finished message: the feedback buttons.
        blocks = context_actions(self._feedback) if last and self._feedback is not None else None
        await self._client.chat_stopStream(channel=self._channel, ts=self._ts, markdown_text=markdown, blocks=blocks)
        self._ts, self._message = None, ""

    async def _close_open_stream(self) -> None:
        # An open stream shows as still being written until Slack times it out.
        if self._ts is None:
            return
        ts, self._ts = self._ts, None
        try:
            await self._client.chat_stopStream(channel=self._channel, ts=ts)
        except (SlackApiError, aiohttp.ClientError, TimeoutError):
            log.warning("could not stop the stream %s in %s", ts, self._channel, exc_info=True)

    async def _fall_back(self, error: str | None) -> NoReturn:
        """Hand what Slack has not shown to the post-then-edit stream, and stop here."""
        log.info("native streaming in %s gave way to post-and-edit (%s)", self._channel, error or "text changed")
        await self._close_open_stream()
        fallback = self._make_fallback()
        self._fallback = fallback
        unsent = self._text[self._sent :]
        if unsent.strip() and self._final is None:
            await fallback.feed(unsent)
        if self._task is not None and self._final is None:
            await fallback.status(self._task[1])
        raise _FellBack


def _task_update(task_id: str, title: str, status: str) -> dict[str, Any]:
    """A ``task_update`` chunk of chat.startStream / appendStream: one step as a card (Slack's timeline)."""
    return {
        "type": "task_update",
        "id": task_id,
        "title": neutralise_mentions(title[:TASK_TITLE_LIMIT]),
        "status": status,
    }


#: Kept short: a task card's title is one line.
TASK_TITLE_LIMIT = 256


class _FellBack(Exception):
    """Raised inside the pump once the fallback stream has taken over."""
