"""Slack message shortcuts: "Ask teambot about this" and "Summarize this thread" on any message.

Slack posts a ``message_action`` payload (interactivity: ``POST /slack/events`` in HTTP mode, an envelope in Socket
Mode) with the message clicked on, the channel and the person who clicked; it must be acknowledged within 3 s, so
the listener acks before anything slow. The turn then runs like a mention by the person who clicked (see
adapters.actions): "Ask" gives the model the message as context and asks a fixed question about it (bot.texts);
"Summarize" reads the message's whole thread with the adapter's :class:`adapters.slack.thread.ThreadReader`. The
answer goes in the message's thread, whose conversation it is; a refusal (access, rate limit, budget) is shown
to the person who clicked alone (the ``response_url``).

The callback ids are declared under ``features.shortcuts`` in deploy/slack-manifest-*.yml.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond

from adapters.actions import Noted, WholeThread, excerpt, oldest_left_out
from adapters.slack.format import markdown_to_mrkdwn
from adapters.slack.thread import Identity, ThreadReader
from adapters.streaming import MessageSink, StreamingReply, deliver, track
from bot import logcontext, texts
from bot.config import Settings
from bot.conversation import ConversationCore
from bot.messages import Attachment, ContextMessage, ConversationKey, IncomingMessage

log = logging.getLogger(__name__)

#: The callback ids of the two shortcuts (deploy/slack-manifest-*.yml declares them).
ASK = "teambot_ask"
SUMMARIZE = "teambot_summarize"

Names = Callable[[str], Awaitable[str]]
TextIn = Callable[[str, str | None], Awaitable[str]]
Files = Callable[[dict[str, Any]], tuple[Attachment, ...]]
Sinks = Callable[[str, str | None], MessageSink[str]]


class SlackActions:
    """The two message shortcuts of one Slack adapter; :meth:`register` adds their listeners to its Bolt app."""

    def __init__(
        self,
        core: ConversationCore,
        settings: Settings,
        threads: ThreadReader,
        *,
        names: Names,
        text_in: TextIn,
        files: Files,
        sinks: Sinks,
        inflight: set[asyncio.Task[Any]],
        limit: int,
    ) -> None:
        self._core = core
        self._settings = settings
        self._threads = threads
        self._names = names
        self._text_in = text_in
        self._files = files
        self._sinks = sinks
        #: The adapter's turns under way, which its stop() drains.
        self._inflight = inflight
        self._limit = limit

    def register(self, app: AsyncApp) -> None:
        app.shortcut({"type": "message_action", "callback_id": ASK})(self._on_ask)
        app.shortcut({"type": "message_action", "callback_id": SUMMARIZE})(self._on_summarize)

    async def _on_ask(
        self, ack: AsyncAck, body: dict[str, Any], context: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await ack()  # first: Slack shows the person an error if the ack takes over 3 s
        await self._run(body, context, respond, summarize=False)

    async def _on_summarize(
        self, ack: AsyncAck, body: dict[str, Any], context: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await ack()
        await self._run(body, context, respond, summarize=True)

    async def _run(
        self, body: dict[str, Any], context: dict[str, Any], respond: AsyncRespond, *, summarize: bool
    ) -> None:
        track(self._inflight)
        team = str((body.get("team") or {}).get("id") or context.get("team_id") or "-")
        channel = str((body.get("channel") or {}).get("id") or "")
        user = str((body.get("user") or {}).get("id") or "")
        message = body.get("message") or {}
        ts = str(message.get("ts") or body.get("message_ts") or "")
        if not channel or not user or not ts:
            log.info("a message action without a channel, person or message was ignored")
            return
        thread_ts = str(message.get("thread_ts") or ts)
        key = ConversationKey("slack", team, channel, thread_ts)
        # The click's own id: each click is a question of its own, and a click delivered twice is answered once.
        click = body.get("trigger_id") or body.get("action_ts") or "-"
        message_id = f"slack:{team}:{channel}:action:{click}"
        with logcontext.turn(str(key), message_id):
            # The one top-level handler for a click: a bug is logged, and the person hears a short apology.
            try:
                await self._turn(body, context, respond, key, message_id, message, summarize)
            except Exception:
                log.exception("the message action %s could not be answered", message_id)
                await _tell(respond, texts.APOLOGY)

    async def _turn(
        self,
        body: dict[str, Any],
        context: dict[str, Any],
        respond: AsyncRespond,
        key: ConversationKey,
        message_id: str,
        message: dict[str, Any],
        summarize: bool,
    ) -> None:
        team, channel, thread_ts = key.workspace, key.channel, key.thread
        user = str((body.get("user") or {}).get("id") or "")
        me = Identity(context.get("bot_user_id"), context.get("bot_id"))
        given: tuple[ContextMessage, ...] = ()
        source: WholeThread | None = None
        if summarize:
            assert thread_ts is not None
            # Up to the click: every message of the thread, the one clicked on and any after it included.
            now = str(body.get("action_ts") or f"{time.time():.6f}")
            source = WholeThread(self._threads.thread(team, channel, thread_ts, now, me, own_root=True))
            question = texts.ACTION_SUMMARIZE
        else:
            clicked = await self._clicked(team, channel, message, me)
            if clicked is None:
                await _tell(respond, texts.ACTION_NOTHING_TO_READ)
                return
            given = (clicked,)
            author = clicked.author_name if not clicked.own else "you"
            question = texts.ACTION_ASK.format(author=author, excerpt=excerpt(clicked.text))
        msg = IncomingMessage(
            key,
            message_id,
            user,
            await self._names(user),
            question,
            context=given,
            source=source,
            in_dm=channel.startswith("D"),
        )
        sink = self._sinks(channel, thread_ts)
        interval = self._settings.stream_edit_interval
        stream = StreamingReply(sink, interval=interval, limit=self._limit, render=markdown_to_mrkdwn)

        async def refuse(text: str) -> None:
            await _tell(respond, text)

        await deliver(
            self._core,
            msg,
            sink,
            interval=interval,
            limit=self._limit,
            render=markdown_to_mrkdwn,
            reply_stream=Noted(stream, oldest_left_out(source)),
            feedback=self._settings.feedback,
            refuse=refuse,
        )

    async def _clicked(self, team: str, channel: str, message: dict[str, Any], me: Identity) -> ContextMessage | None:
        """The message clicked on as context, under its author's name; None when it has nothing to read."""
        text = await self._text_in(str(message.get("text") or ""), me.user_id)
        files = self._files(message)
        if not text and not files:
            return None
        message_id = f"slack:{team}:{channel}:{message.get('ts')}"
        user = str(message.get("user") or "")
        bot_id = message.get("bot_id")
        if me.wrote(message):
            return ContextMessage(message_id, user or str(bot_id), "", text, attachments=files, own=True)
        if bot_id or message.get("subtype") == "bot_message":
            profile = message.get("bot_profile") or {}
            name = str(profile.get("name") or message.get("username") or bot_id or "a bot")
            return ContextMessage(message_id, user or str(bot_id), name, text, from_bot=True, attachments=files)
        return ContextMessage(message_id, user, await self._names(user), text, attachments=files)


async def _tell(respond: AsyncRespond, text: str) -> None:
    """A line for the person who clicked alone (the shortcut's ``response_url``)."""
    try:
        await respond(text=markdown_to_mrkdwn(text), response_type="ephemeral", replace_original=False)
    except Exception as exc:  # a response URL that expired or failed: the log is all that is left
        log.info("the private answer to a message action could not be sent: %s", type(exc).__name__)
