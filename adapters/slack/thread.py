"""A Slack thread as the core's context source: its earlier messages, read with ``conversations.replies``.

The core reads a conversation's thread once (bot.context): from the cursor it keeps (the ``ts`` read up to), under
the conversation's lock, storing what comes back. This module only reads: the messages after the cursor up to the
mention (``oldest``/``latest``), page by page (``cursor``/``limit``; Slack gives the oldest first, so every page is
read and the newest kept until the budget is full), with each author's name (people by the adapter's names,
bots by their profile's name). Left out: the mention itself (its turn stores it) and this bot's own replies (the
conversation stored them), except a thread's root written by this bot (a thread started under one of its channel
answers, which the thread's conversation never stored). A message's ``files`` become its attachments,
made by the adapter as the question's are (fetched only if the core reads them, from Slack's file host only).

Slack's limits: ``conversations.replies`` is Tier 3 (50+ a minute) for internal apps, and about one a minute with at
most 15 messages a page for commercially distributed apps outside the Marketplace (since 2025-05-29). A 429 with a
short ``Retry-After`` is waited out once; a longer one ends the read with a problem for the log, and the workspace is
not asked again until it has passed. What was read before is kept, and the next turn goes on from there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.stream import error_code
from bot.llm import PER_MESSAGE_OVERHEAD
from bot.messages import Attachment, ContextMessage, ContextRead

log = logging.getLogger(__name__)

#: The scopes ``conversations.replies`` needs, by where the thread is.
HISTORY_SCOPES = {
    "channels:history": "threads in public channels",
    "groups:history": "threads in private channels",
    "im:history": "threads in direct messages and the assistant pane",
    "mpim:history": "threads in group DMs",
}
#: Messages a page: Slack suggests no more than 200 (and gives at most 15 to non-Marketplace apps whatever is asked).
PAGE_SIZE = 200
#: Pages a read may take: 2,000 messages at 200 a page, far more than any budget holds.
MAX_PAGES = 10
#: A ``Retry-After`` this short is waited out, once per read; a longer one ends the read.
SHORT_WAIT_S = 3.0
#: Refusals that stand until someone changes the app (its scopes, its channels): after one, that workspace's
#: channels of the kind are not asked again for REFUSAL_PAUSE_S, so a missing scope costs a call every few minutes,
#: not one on every mention.
_NOT_SOON = frozenset({"missing_scope", "not_allowed_token_type", "no_permission", "ekm_access_denied"})
REFUSAL_PAUSE_S = 300.0
#: Messages with these subtypes are things people said; the rest (joins, topic changes, tombstones) are not.
_SAID = frozenset({None, "bot_message", "thread_broadcast", "file_share", "me_message"})

Names = Callable[[str], Awaitable[str]]
TextIn = Callable[[str, str | None], Awaitable[str]]
#: A message's (or event's) ``files`` as attachments; the adapter's, with its allow-listed download.
FilesIn = Callable[[dict[str, Any]], tuple[Attachment, ...]]


def _no_files(message: dict[str, Any]) -> tuple[Attachment, ...]:
    return ()


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this bot is in a workspace (from Bolt's context): its messages are told apart by either id."""

    user_id: str | None
    bot_id: str | None

    def wrote(self, message: dict[str, Any]) -> bool:
        return bool(
            (self.user_id and message.get("user") == self.user_id)
            or (self.bot_id and message.get("bot_id") == self.bot_id)
        )


class ThreadReader:
    """What every thread read of one adapter shares: the Web API client (one that leaves 429s to us), the name
    lookups, and per workspace the time before which Slack asked not to be called again."""

    def __init__(self, client: AsyncWebClient, names: Names, text_in: TextIn, files_in: FilesIn = _no_files) -> None:
        self.client = client
        #: The adapter's own: people's names (loaded at start, else ``users.info`` once), Slack's markup turned into
        #: plain text, and files made into attachments.
        self.names = names
        self.text_in = text_in
        self.files_in = files_in
        #: Per workspace (a rate limit) or per workspace and kind of channel (a missing scope): until when Slack is
        #: not asked, and why.
        self._paused: dict[str, tuple[float, str]] = {}

    def thread(
        self, team: str, channel: str, thread_ts: str, mention_ts: str, me: Identity, *, own_root: bool = True
    ) -> SlackThread:
        """The thread ``thread_ts`` in ``channel`` as seen from the mention ``mention_ts``; ``own_root``: a root
        written by this bot is read (False in the assistant pane, whose thread roots Slack makes for the app)."""
        return SlackThread(self, team, channel, thread_ts, mention_ts, me, own_root)

    def paused(self, *keys: str) -> str | None:
        """Why Slack is not to be asked now for any of ``keys``, or None."""
        now = time.monotonic()
        for key in keys:
            until, why = self._paused.get(key, (0.0, ""))
            if until > now:
                return f"{why}; not asked again for {until - now:.0f} s"
        return None

    def pause(self, key: str, seconds: float, why: str) -> None:
        until, _ = self._paused.get(key, (0.0, ""))
        self._paused[key] = (max(until, time.monotonic() + seconds), why)


class SlackThread:
    """One thread, read for one mention: the :class:`bot.messages.ContextSource` the adapter hands the core."""

    def __init__(
        self,
        reader: ThreadReader,
        team: str,
        channel: str,
        thread_ts: str,
        mention_ts: str,
        me: Identity,
        own_root: bool = True,
    ) -> None:
        self._reader = reader
        self._team = team
        self._channel = channel
        self._thread_ts = thread_ts
        self._mention_ts = mention_ts
        self._me = me
        self._own_root = own_root
        #: The workspace and the kind of channel (C, G, D): a scope missing for one kind is missing for all of them.
        self._kind = f"{team}:{channel[:1]}"

    async def read(self, after: str | None, budget_tokens: int) -> ContextRead:
        start, end = _ts(after), _ts(self._mention_ts)
        if end is None or (start is not None and start >= end):
            return ContextRead((), None)  # nothing can lie between the cursor and the mention
        paused = self._reader.paused(self._team, self._kind)
        if paused is not None:
            return ContextRead((), None, problem=paused)
        raw, problem = await self._pages(after)
        fresh = [m for m in raw if (ts := _ts(m.get("ts"))) is not None and (start is None or ts > start) and ts <= end]
        newest = max((str(m["ts"]) for m in fresh), key=Decimal, default=None)
        kept, truncated = await self._within(fresh, budget_tokens)
        return ContextRead(kept, newest, truncated, problem)

    async def _pages(self, after: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """The thread's messages from ``after`` to the mention, oldest first, and why the read stopped short."""
        args: dict[str, Any] = {
            "channel": self._channel,
            "ts": self._thread_ts,
            "latest": self._mention_ts,
            "inclusive": True,
            "limit": PAGE_SIZE,
        }
        if after is not None:
            args["oldest"] = after
        messages: list[dict[str, Any]] = []
        waited = False
        for _ in range(MAX_PAGES):
            try:
                response = await self._reader.client.conversations_replies(**args)
            except SlackApiError as exc:
                retry_after = _retry_after(exc)
                if retry_after is None:
                    refusal = _refusal(exc)
                    if error_code(exc) in _NOT_SOON:
                        # Asking again cannot help until someone changes the app: not on every mention meanwhile.
                        self._reader.pause(self._kind, REFUSAL_PAUSE_S, refusal)
                    return messages, refusal
                if not waited and retry_after <= SHORT_WAIT_S:
                    waited = True
                    await asyncio.sleep(retry_after)
                    continue
                limited = f"conversations.replies rate limited by Slack (Retry-After {retry_after:.0f} s)"
                self._reader.pause(self._team, retry_after, limited)
                return messages, limited
            except (aiohttp.ClientError, TimeoutError) as exc:
                return messages, f"conversations.replies failed: {type(exc).__name__}"
            messages.extend(m for m in response.get("messages") or [] if isinstance(m, dict))
            next_cursor = (response.get("response_metadata") or {}).get("next_cursor")
            if not next_cursor:
                return messages, None
            args["cursor"] = next_cursor
        return messages, f"the thread has more than {MAX_PAGES} pages; read the first {len(messages)} messages"

    async def _within(self, raw: list[dict[str, Any]], budget_tokens: int) -> tuple[list[ContextMessage], bool]:
        """The newest messages that fit ``budget_tokens`` (about four characters a token), oldest first; True when
        older ones were left out. Names are looked up only for the messages kept."""
        kept: list[ContextMessage] = []
        used = 0
        for message in reversed(raw):
            found = await self._message(message)
            if found is None:
                continue
            used += (len(found.author_name) + len(found.text) + 2) // 4 + PER_MESSAGE_OVERHEAD
            if used > budget_tokens and kept:
                return kept[::-1], True
            kept.append(found)
        return kept[::-1], False

    async def _message(self, message: dict[str, Any]) -> ContextMessage | None:
        ts = str(message["ts"])
        if ts == self._mention_ts or message.get("subtype") not in _SAID:
            return None
        own = self._me.wrote(message)
        if own and (ts != self._thread_ts or not self._own_root):
            return None  # one of this conversation's replies (stored already), or the pane's own root
        text = await self._reader.text_in(_said(message), self._me.user_id)
        files = () if own else self._reader.files_in(message)
        if not text and not files:
            return None
        message_id = f"slack:{self._team}:{self._channel}:{ts}"
        bot_id = message.get("bot_id")
        if own:
            return ContextMessage(message_id, str(message.get("user") or bot_id), "", text, own=True)
        user = str(message.get("user") or "")
        if bot_id or message.get("subtype") == "bot_message":
            profile = message.get("bot_profile") or {}
            name = str(profile.get("name") or message.get("username") or bot_id or "a bot")
            return ContextMessage(message_id, user or str(bot_id), name, text, from_bot=True, attachments=files)
        return ContextMessage(message_id, user, await self._reader.names(user), text, attachments=files)


def _said(message: dict[str, Any]) -> str:
    """A message's text; for one with none (bots often post only legacy attachments), its attachments' text or
    fallback, which Slack itself shows in notifications."""
    text = str(message.get("text") or "")
    if text.strip():
        return text
    parts = [a.get("text") or a.get("fallback") for a in message.get("attachments") or [] if isinstance(a, dict)]
    return "\n".join(str(p) for p in parts if p)


def _ts(value: object) -> Decimal | None:
    """A Slack ``ts`` as a number (they are compared as such, never as text); None when it is none."""
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _retry_after(exc: SlackApiError) -> float | None:
    """The seconds Slack asked to wait, when it refused for the rate limit; None for any other refusal."""
    response = exc.response
    if getattr(response, "status_code", None) != 429 and error_code(exc) != "ratelimited":
        return None
    headers = getattr(response, "headers", None) or {}
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        return float(value) if value is not None else 60.0
    except (TypeError, ValueError):
        return 60.0


def _refusal(exc: SlackApiError) -> str:
    error = error_code(exc)
    if error == "missing_scope":
        data = getattr(exc.response, "data", None)
        needed = data.get("needed") if isinstance(data, dict) else None
        scopes = str(needed or ", ".join(HISTORY_SCOPES))
        return f"conversations.replies: missing_scope (the app needs {scopes}; add it and reinstall the app)"
    return f"conversations.replies: {error}"
