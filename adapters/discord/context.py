"""What a Discord mention sees besides its own text: the reply chain behind it, its thread, forwarded messages.

Only translation: discord.py's messages become :class:`bot.messages.ContextMessage` (oldest first, with the
author's display name), a thread becomes a :class:`bot.messages.ContextSource`; the core decides what is stored
and what reaches the model. A message's attachments (and those of the messages it forwards) become its
attachments through the adapter's ``files_in``, fetched only if the core reads them, from Discord's CDN only.

Without the privileged Message Content intent Discord sends other people's messages empty (except those that
mention the bot), over the gateway and over REST alike. Such a message is left out, and counted as *hidden*, so
the adapter can say once what is missing instead of answering as if nothing had been said.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import discord

from bot import texts
from bot.llm import TokenCounter
from bot.messages import Attachment, ContextMessage, ContextRead

log = logging.getLogger(__name__)

#: How long reading the older links of a reply chain may take (REST calls, 429 waits included): past that the
#: turn goes on with the links it has, rather than keep the person waiting.
CHAIN_SECONDS = 5.0
#: How long one read of a thread's history may take, for the same reason.
THREAD_SECONDS = 10.0
#: At most this many of a thread's messages are read at once (two REST pages); older ones count as left out.
THREAD_MAX_MESSAGES = 200
#: Discord's network and HTTP failures: logged in one line, never a failed turn.
READ_ERRORS = (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError)
#: The kinds of message a person writes; system messages (pins, joins, a thread's starter stub) say nothing.
_SPOKEN = (discord.MessageType.default, discord.MessageType.reply)

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_CHANNEL_MENTION = re.compile(r"<#(\d+)>")

#: The budget of a thread read is counted with the cheap estimate (four bytes a token): the core counts again.
_ESTIMATE = TokenCounter(None)

#: discord.py's attachments as the core's: the adapter's, with its allow-listed download.
FilesIn = Callable[[Sequence[discord.Attachment]], tuple[Attachment, ...]]


def _no_files(attachments: Sequence[discord.Attachment]) -> tuple[Attachment, ...]:
    return ()


def message_files(message: discord.Message) -> list[discord.Attachment]:
    """A message's attachments, then those of the messages it forwards (``message_snapshots``)."""
    found = list(message.attachments)
    for snapshot in message.message_snapshots or ():
        found.extend(snapshot.attachments)
    return found


def readable(text: str, message: discord.Message, strip_id: int | None = None) -> str:
    """``text`` (from ``message``) as people read it: mentions as names, ``strip_id``'s mentions removed."""
    if strip_id is not None:
        text = re.sub(rf"<@!?{strip_id}>", "", text)
    users = {str(u.id): u.display_name for u in message.mentions}
    roles = {str(r.id): r.name for r in message.role_mentions}
    text = _USER_MENTION.sub(lambda m: "@" + users.get(m.group(1), "someone"), text)
    text = _ROLE_MENTION.sub(lambda m: "@" + roles.get(m.group(1), "role"), text)
    return _CHANNEL_MENTION.sub(lambda m: "#" + _channel_name(message, int(m.group(1))), text).strip()


def _channel_name(message: discord.Message, channel_id: int) -> str:
    channel = message.guild.get_channel_or_thread(channel_id) if message.guild else None
    return channel.name if channel is not None else "channel"


def message_text(message: discord.Message, strip_id: int | None = None) -> str:
    """What a message says: its content, then the content of any message it forwards (``message_snapshots``),
    each under a line naming its author when the bot has the original in its cache."""
    parts = [readable(message.content, message, strip_id)]
    snapshots = message.message_snapshots
    if snapshots:
        original = message.reference.cached_message if message.reference is not None else None
        for snapshot in snapshots:
            # A snapshot's mentions are not resolved by discord.py: its ids are left as they are written.
            forwarded = snapshot.content.strip()
            if not forwarded:
                continue
            if original is not None:
                header = texts.DISCORD_FORWARDED_FROM.format(author=_name(original))
            else:
                header = texts.DISCORD_FORWARDED
            parts.append(f"{header}\n{forwarded}")
    return "\n\n".join(p for p in parts if p)


def _name(message: discord.Message) -> str:
    author = message.author
    if message.guild is not None and not isinstance(author, discord.Member):
        # REST messages carry no member: the guild's cache may know the person's server nickname.
        member = message.guild.get_member(author.id)
        if member is not None:
            return member.display_name
    return author.display_name


@dataclass(slots=True)
class Seen:
    """How many messages around a turn were left out because Discord sent them empty (no Message Content intent)."""

    hidden: int = 0


def to_context(
    message: discord.Message, me_id: int, seen: Seen, files_in: FilesIn = _no_files
) -> ContextMessage | None:
    """The message as context, or None when there is nothing to read (counted in ``seen`` when Discord hid it)."""
    text = message_text(message)
    # The bot's own messages carry no files of people's: nothing to read there.
    attachments = files_in(message_files(message)) if message.author.id != me_id else ()
    if not text and not attachments:
        if _hidden(message, me_id):
            seen.hidden += 1
        return None
    return ContextMessage(
        message_id=f"discord:{message.id}",
        author_id=str(message.author.id),
        author_name=_name(message),
        text=text,
        from_bot=message.author.bot,
        attachments=attachments,
    )


def _hidden(message: discord.Message, me_id: int) -> bool:
    """Discord sent this message empty for want of the Message Content intent: a guild message of someone else
    that does not mention the bot, with no text, nothing attached and nothing embedded."""
    return (
        message.guild is not None
        and message.author.id != me_id
        and all(user.id != me_id for user in message.mentions)
        and not message.attachments
        and not message.embeds
        and not message.stickers
    )


async def reply_chain(
    message: discord.Message,
    client: discord.Client,
    me_id: int,
    limit: int,
    seen: Seen,
    files_in: FilesIn = _no_files,
) -> tuple[ContextMessage, ...]:
    """The messages ``message`` replies to, the one it answers first, up to ``limit`` links, oldest first.

    Each link comes from the gateway payload (``referenced_message``) or discord.py's cache when it can, from
    ``GET channels/{id}/messages/{id}`` only when neither has it (a REST message carries its own
    ``referenced_message``, so each call brings the next link too). The chain stops at the bot's own message:
    what came before that was the context of the turn it answered, already in the conversation. A failed call
    (403, 404, a 429 discord.py could not wait out, or :data:`CHAIN_SECONDS` spent) ends the chain with one log
    line; the turn goes on with the links read so far.
    """
    links: list[ContextMessage] = []
    current = message
    try:
        async with asyncio.timeout(CHAIN_SECONDS):
            while len(links) < limit:
                linked = await _linked(current, client)
                if linked is None or linked.author.id == me_id:
                    break
                if linked.type in _SPOKEN:
                    entry = to_context(linked, me_id, seen, files_in)
                    if entry is not None:
                        links.append(entry)
                current = linked
    except READ_ERRORS as exc:
        log.warning(
            "reply chain of %s: read %d of up to %d messages, then stopped: %s",
            message.id,
            len(links),
            limit,
            _failure(exc),
        )
    return tuple(reversed(links))


async def _linked(message: discord.Message, client: discord.Client) -> discord.Message | None:
    """The message ``message`` replies to: from the payload, the cache, or else one REST call; None if none."""
    ref = message.reference
    if ref is None or ref.message_id is None or ref.type is not discord.MessageReferenceType.reply:
        return None
    if isinstance(ref.resolved, discord.Message):
        return ref.resolved
    if isinstance(ref.resolved, discord.DeletedReferencedMessage):
        return None
    cached = ref.cached_message
    if cached is not None:
        return cached
    channel = (
        message.channel
        if ref.channel_id == message.channel.id
        else client.get_partial_messageable(ref.channel_id, guild_id=ref.guild_id)
    )
    try:
        return await channel.fetch_message(ref.message_id)
    except discord.NotFound:
        return None  # deleted since: the chain ends there


def _failure(exc: BaseException) -> str:
    if isinstance(exc, discord.HTTPException):
        return f"Discord answered HTTP {exc.status} (code {exc.code})"
    if isinstance(exc, TimeoutError):
        return "it took too long"
    return type(exc).__name__


class ThreadSource:
    """A Discord thread as the core reads it: the messages after the core's cursor (a message id) and before the
    mention, newest first until the budget is full, handed back oldest first; on the first read (no cursor) also
    the message the thread was started from, counted first so it is never the part left out.

    The bot's own messages are skipped (the conversation holds its answers), and so are the mention and what came
    after it; the new cursor is the mention's id. Refusals and network failures end the read with ``problem``.
    """

    def __init__(
        self,
        thread: discord.abc.Messageable,
        parent: discord.abc.Messageable | None,
        thread_id: int,
        mention: discord.Message,
        me_id: int,
        *,
        max_messages: int = THREAD_MAX_MESSAGES,
        files_in: FilesIn = _no_files,
    ) -> None:
        self._thread = thread
        self._files_in = files_in
        #: Where a thread started from a message keeps that message (its id is the thread's); None: nowhere.
        self._parent = parent
        self._thread_id = thread_id
        self._mention = mention
        self._me_id = me_id
        self._max_messages = max_messages
        self.seen = Seen()

    async def read(self, after: str | None, budget_tokens: int) -> ContextRead:
        picked: list[ContextMessage] = []
        used = 0
        truncated = False
        problem: str | None = None
        starter: ContextMessage | None = None
        try:
            async with asyncio.timeout(THREAD_SECONDS):
                starter = await self._starter() if after is None else None
                if starter is not None:
                    used = _cost(starter)
                    if used > budget_tokens:
                        starter, used, truncated = None, 0, True
                after_id = discord.Object(int(after)) if after and after.isdigit() else None
                history = self._thread.history(
                    limit=self._max_messages, before=self._mention, after=after_id, oldest_first=False
                )
                # A forum post's starter is in the thread itself.
                skip = self._thread_id if starter is not None else None
                full, count = await take_newest(
                    history, picked, budget_tokens - used, self._me_id, self.seen, self._files_in, skip=skip
                )
                truncated = truncated or full or count >= self._max_messages
        except READ_ERRORS as exc:
            problem = f"the thread's history could not be read: {_failure(exc)}"
            if not picked and starter is None:
                return ContextRead((), None, problem=problem)
            truncated = True
        ordered: list[ContextMessage] = [starter] if starter is not None else []
        ordered.extend(reversed(picked))
        return ContextRead(ordered, str(self._mention.id), truncated=truncated, problem=problem)

    async def _starter(self) -> ContextMessage | None:
        """The message the thread was started from, if it has one the bot can read."""
        if self._parent is None:
            return None
        try:
            message = await self._parent.fetch_message(self._thread_id)
        except discord.NotFound:
            return None  # a thread started on its own, or its message deleted
        entry = to_context(message, self._me_id, self.seen, self._files_in)
        if entry is not None and message.author.id == self._me_id:
            # A thread started under one of the bot's answers: the answer is the parent channel's, not this
            # conversation's, so it is stored here as what the bot said.
            return dataclasses.replace(entry, own=True, from_bot=False)
        return entry


async def take_newest(
    history: AsyncIterator[discord.Message],
    picked: list[ContextMessage],
    budget_tokens: int,
    me_id: int,
    seen: Seen,
    files_in: FilesIn = _no_files,
    *,
    skip: int | None = None,
) -> tuple[bool, int]:
    """Take what people wrote in ``history`` (newest first) into ``picked`` until ``budget_tokens`` is full; the bot's
    own messages, joins and the like, and message ``skip`` are passed over. Returns whether a message did not fit,
    and how many messages were looked at. ``picked`` holds what was taken even when the read fails part way."""
    used = 0
    count = 0
    async for message in history:
        count += 1
        if message.author.id == me_id or message.type not in _SPOKEN or message.id == skip:
            continue
        entry = to_context(message, me_id, seen, files_in)
        if entry is None:
            continue
        cost = _cost(entry)
        if used + cost > budget_tokens:
            return True, count
        picked.append(entry)
        used += cost
    return False, count


def _cost(message: ContextMessage) -> int:
    return _ESTIMATE.count_message(f"{message.author_name}: {message.text}")
