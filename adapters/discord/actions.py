"""Discord message context-menu commands: "Ask teambot" and "Summarize" (Apps → on any message).

Discord sends an ``INTERACTION_CREATE`` of type 2 whose data is of type 3 (a message command), the message clicked
on in ``resolved.messages``; it must be answered within 3 s, so the interaction is deferred first (privately:
"thinking…" for the person who clicked alone). The turn then runs like a mention by that person (see
adapters.actions): "Ask teambot" gives the model the message as context and asks a fixed question about it
(bot.texts); "Summarize" reads the newest messages of the message's channel or thread, before the click, within
the budget. The answer is a reply to the message, in the conversation of its channel or thread; the person who
clicked gets a private line saying so, or the refusal (access, rate limit, budget) privately instead.

The commands are registered in the adapter's command tree beside the slash commands, and synced with them
(globally, or to TEAMBOT_DISCORD_GUILD).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import discord
from discord import app_commands

from adapters.actions import Noted, WholeThread, excerpt, oldest_left_out
from adapters.discord.context import READ_ERRORS, THREAD_MAX_MESSAGES, THREAD_SECONDS, Seen, take_newest, to_context
from adapters.streaming import MessageSink, StreamingReply, deliver, track
from bot import logcontext, texts
from bot.config import Settings
from bot.conversation import ConversationCore
from bot.messages import ContextMessage, ContextRead, ConversationKey, IncomingMessage

log = logging.getLogger(__name__)


Keys = Callable[[object, int, int | None, int], Awaitable[ConversationKey]]


class ActionSink(MessageSink[discord.PartialMessage], Protocol):
    """Where the answer goes: a reply to the message clicked on (the adapter's DiscordSink, typing meanwhile)."""

    def stop_typing(self) -> None: ...


class ChannelHistory:
    """A channel's or thread's newest messages before the click, within the budget, oldest first: the
    :class:`bot.messages.ContextSource` of a summary. The bot's own messages are left out (the conversation holds
    its answers); the core's cursor is neither used nor moved (a summary reads everything it can each time)."""

    def __init__(
        self, channel: discord.abc.Messageable, before: int, me_id: int, *, max_messages: int = THREAD_MAX_MESSAGES
    ) -> None:
        self._channel = channel
        self._before = before
        self._me_id = me_id
        self._max_messages = max_messages
        self.seen = Seen()

    async def read(self, after: str | None, budget_tokens: int) -> ContextRead:
        picked: list[ContextMessage] = []
        truncated = False
        problem: str | None = None
        try:
            async with asyncio.timeout(THREAD_SECONDS):
                history = self._channel.history(
                    limit=self._max_messages, before=discord.Object(self._before), oldest_first=False
                )
                full, count = await take_newest(history, picked, budget_tokens, self._me_id, self.seen)
                truncated = full or count >= self._max_messages
        except READ_ERRORS as exc:
            problem = f"the channel's history could not be read: {type(exc).__name__}"
            truncated = bool(picked)
        return ContextRead(picked[::-1], None, truncated=truncated, problem=problem)


class DiscordActions:
    """The two message commands of one Discord adapter; :meth:`commands` gives them for its command tree."""

    def __init__(
        self,
        core: ConversationCore,
        settings: Settings,
        client: discord.Client,
        *,
        keys: Keys,
        sinks: Callable[[discord.Message], ActionSink],
        inflight: set[asyncio.Task[object]],
        limit: int,
    ) -> None:
        self._core = core
        self._settings = settings
        self._client = client
        self._keys = keys
        self._sinks = sinks
        #: The adapter's turns under way, which its stop() drains.
        self._inflight = inflight
        self._limit = limit

    def commands(self) -> list[app_commands.ContextMenu]:
        async def ask(interaction: discord.Interaction, message: discord.Message) -> None:
            await self._run(interaction, message, summarize=False)

        async def summarize(interaction: discord.Interaction, message: discord.Message) -> None:
            await self._run(interaction, message, summarize=True)

        return [
            app_commands.ContextMenu(name=texts.DISCORD_ACTION_ASK, callback=ask),
            app_commands.ContextMenu(name=texts.DISCORD_ACTION_SUMMARIZE, callback=summarize),
        ]

    async def _run(self, interaction: discord.Interaction, message: discord.Message, *, summarize: bool) -> None:
        # First: Discord drops an interaction not answered within 3 s. One delivered twice is answered once: the
        # second deferral is refused (already acknowledged), and the core would answer its id once anyway.
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
        except (discord.HTTPException, discord.InteractionResponded) as exc:
            log.info("message command %s not answered: it could not be acknowledged (%s)", interaction.id, exc)
            return
        track(self._inflight)
        # The click's own id: each click is a question of its own.
        message_id = f"discord:interaction:{interaction.id}"
        with logcontext.turn(f"discord:-:{interaction.channel_id}", message_id):
            # The one top-level handler for a click: a bug is logged, and the person hears a short apology.
            try:
                await self._turn(interaction, message, message_id, summarize)
            except Exception:
                log.exception("the message command %s could not be answered", message_id)
                await _tell(interaction, texts.APOLOGY)

    async def _turn(
        self, interaction: discord.Interaction, message: discord.Message, message_id: str, summarize: bool
    ) -> None:
        me = self._client.user
        if me is None:
            return
        member = interaction.user
        channel_id = interaction.channel_id or message.channel.id
        key = await self._keys(interaction.channel or message.channel, channel_id, interaction.guild_id, member.id)
        given: tuple[ContextMessage, ...] = ()
        source: WholeThread | None = None
        if summarize:
            source = WholeThread(ChannelHistory(message.channel, interaction.id, me.id))
            question = texts.ACTION_SUMMARIZE
        else:
            clicked = to_context(message, me.id, Seen())
            if clicked is None:
                await _tell(interaction, texts.ACTION_NOTHING_TO_READ)
                return
            if message.author.id == me.id:
                clicked = dataclasses.replace(clicked, own=True, from_bot=False)
            given = (clicked,)
            author = "you" if clicked.own else clicked.author_name
            question = texts.ACTION_ASK.format(author=author, excerpt=excerpt(clicked.text))
        msg = IncomingMessage(
            key,
            message_id,
            str(member.id),
            member.display_name,
            question,
            context=given,
            source=source,
            in_dm=interaction.guild_id is None,
        )
        refused = False

        async def refuse(text: str) -> None:
            nonlocal refused
            refused = True
            await _tell(interaction, text)

        sink = self._sinks(message)
        interval = self._settings.stream_edit_interval
        stream = StreamingReply(sink, interval=interval, limit=self._limit)
        try:
            await deliver(
                self._core,
                msg,
                sink,
                interval=interval,
                limit=self._limit,
                reply_stream=Noted(stream, oldest_left_out(source)),
                feedback=self._settings.feedback,
                refuse=refuse,
            )
        finally:
            sink.stop_typing()
        if not refused:
            await _tell(interaction, texts.ACTION_ANSWERED)


async def _tell(interaction: discord.Interaction, text: str) -> None:
    """A line for the person who clicked alone: the followup to the private deferral."""
    try:
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=discord.AllowedMentions.none())
    except discord.HTTPException as exc:
        log.info("the private line for message command %s could not be sent: HTTP %s", interaction.id, exc.status)
