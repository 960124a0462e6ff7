"""Backfill: the messages around a mention that the store does not hold yet, stored before its question.

The adapter hands them over two ways (see bot.messages): ``IncomingMessage.context``, messages it already has (a
Discord replied-to message), and ``IncomingMessage.source``, where more can be read (a Slack thread). The turn runs
this under its conversation's locks (the process's own, and across replicas the database's advisory lock), so one
turn at a time reads the source: from the conversation's cursor, storing what it read together with the new cursor
in one transaction. A thread is read once, whatever turns, restarts or replicas come after; each message is
claimed by id as it is stored, so none is stored twice.

Who said what: people are stored as user messages under their name, as questions are; another bot's messages
likewise, its name marked with :data:`BOT_MARK`; this bot's own messages (those the adapter found missing from the
store) as assistant messages.

Files on those messages (a screenshot earlier in the thread, a log on the replied-to message) are read as the
question's are (:class:`bot.context.Files`), newest message first: their text and image marks stored with the
message, the images kept linked to its row, so later turns show them without fetching again. Only for messages not
stored yet (asked of the store before any download), so a thread's files are fetched once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from bot import texts
from bot.context.files import ReadFiles, classify, safe_name
from bot.context.prompt import Files
from bot.llm import PER_MESSAGE_OVERHEAD, TokenCounter
from bot.messages import Attachment, ContextMessage, ContextRead, ContextSource, IncomingMessage
from bot.store import ContextEntry, ImageBlob, Store
from bot.text_clean import clean, storable

log = logging.getLogger(__name__)

#: How long a turn waits for its context source before answering without it: its conversation stays locked
#: meanwhile, and a platform that stopped answering must not hold the conversation up.
READ_TIMEOUT_S = 20.0
#: After another bot's name in the history: the model tells a bot's report from a person's words, and from its own.
BOT_MARK = " (bot)"


class Backfill:
    """Stores what surrounds a mention before its question; see the module's doc."""

    def __init__(self, store: Store, counter: TokenCounter, budget_tokens: int, files: Files | None = None) -> None:
        self._store = store
        self._counter = counter
        #: Reads the files on context messages; None: they are left out (their messages' text is stored alone).
        self._files = files
        #: What the source may return: the whole history budget, as nothing beyond it reaches a prompt.
        self.budget_tokens = budget_tokens
        # One message may take at most half the budget, as a question may (bot.conversation), so that one pasted
        # log leaves room for the rest of the thread.
        self._single_cap = max(16, budget_tokens // 2 - PER_MESSAGE_OVERHEAD)

    @staticmethod
    def wanted(msg: IncomingMessage) -> bool:
        """Whether ``msg`` brings anything to backfill: without it the turn must not pay a query or an await."""
        return bool(msg.context) or msg.source is not None

    async def run(self, msg: IncomingMessage) -> int:
        """Store what surrounds ``msg`` that the store does not hold; returns how many messages were stored.

        Never fails because of the source: a refusal (429, a missing scope), a timeout or a partial read is logged
        in one line, and the turn answers from what is stored.
        """
        cursor: str | None = None
        read: ContextRead | None = None
        if msg.source is not None:
            cursor = await self._store.context_cursor(msg.key)
            read = await self._read(msg, msg.source, cursor)
        entries = await self._entries(msg, msg.context, read.messages if read is not None else ())
        new_cursor = read.cursor if read is not None and read.cursor != cursor else None
        if not entries and new_cursor is None:
            return 0
        cap = self._files.settings.image_store_bytes if self._files is not None else None
        stored = await self._store.add_context(msg.key, entries, new_cursor, cap_bytes=cap)
        log.info(
            "conversation %s: %d earlier messages stored before %s (%d offered)",
            msg.key,
            stored,
            msg.message_id,
            len(entries),
        )
        return stored

    async def _read(self, msg: IncomingMessage, source: ContextSource, cursor: str | None) -> ContextRead | None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                read = await source.read(cursor, self.budget_tokens)
        except TimeoutError:
            log.warning(
                "conversation %s: reading its earlier messages took over %.0f s; answering from what is stored",
                msg.key,
                READ_TIMEOUT_S,
            )
            return None
        if read.problem is not None:
            log.warning(
                "conversation %s: its earlier messages could not be read in full (%s); answering from what is stored",
                msg.key,
                read.problem,
            )
        if read.truncated:
            log.info(
                "conversation %s: the oldest earlier messages were left out to keep within %d tokens",
                msg.key,
                self.budget_tokens,
            )
        return read

    async def _entries(
        self, msg: IncomingMessage, given: Sequence[ContextMessage], read: Sequence[ContextMessage]
    ) -> list[ContextEntry]:
        """The messages to store, in order: those the adapter gave that the source did not read (they come from
        before it, as a replied-to message older than the cursor does), then what the source read, in its order.
        The mention itself is its turn's to store."""
        in_read = {m.message_id for m in read}
        seen = {msg.message_id}
        messages = []
        for message in [*(m for m in given if m.message_id not in in_read), *read]:
            if message.message_id not in seen:
                seen.add(message.message_id)
                messages.append(message)
        files = await self._read_files(messages)
        entries = []
        for message in messages:
            entry = self._entry(message, files.get(message.message_id))
            if entry is not None:
                entries.append(entry)
        return entries

    async def _read_files(self, messages: Sequence[ContextMessage]) -> dict[str, ReadFiles]:
        """The files of the messages that have some and are not stored yet, newest message first: the history budget
        shared among them (each message's files within what its text leaves of the single-message cap), at most
        TEAMBOT_MAX_IMAGES images fetched in all."""
        with_files = [m for m in messages if m.attachments and not m.own]
        if self._files is None or not with_files:
            return {}
        # Before any download: a message stored already (by an earlier turn, a replica) is not stored again, so its
        # files are not fetched again either.
        stored = await self._store.handled([m.message_id for m in with_files])
        room = self.budget_tokens
        images_left = self._files.settings.max_images
        found: dict[str, ReadFiles] = {}
        for message in reversed(with_files):
            if message.message_id in stored:
                continue
            wanted: list[Attachment] = []
            over: list[Attachment] = []
            for attachment in message.attachments:
                if classify(attachment.name, attachment.mimetype) == "image":
                    if images_left <= 0:
                        over.append(attachment)
                        continue
                    images_left -= 1
                wanted.append(attachment)
            text_tokens = self._counter.count(message.text)
            budget = max(0, min(room, self._single_cap - text_tokens))
            files = await self._files.read(wanted, budget) if wanted else ReadFiles()
            for attachment in over:
                name = safe_name(attachment.name)
                why = texts.FILE_TOO_MANY_IMAGES.format(count=self._files.settings.max_images)
                files.problems.append((name, why))
                files.sections.append(texts.FILE_NOT_READ_MARK.format(name=name, why=why))
            room -= sum(self._counter.count(s) for s in files.sections) + files.image_tokens
            found[message.message_id] = files
        return found

    def _entry(self, message: ContextMessage, files: ReadFiles | None = None) -> ContextEntry | None:
        text = clean(message.text).strip()
        if not text and not (files is not None and files.sections):
            return None
        if message.own:
            text, tokens = self._fitted("", text)
            return ContextEntry(message.message_id, "assistant", None, None, text, tokens)
        name = storable(message.author_name or message.author_id or "someone")
        if message.from_bot and not name.endswith(BOT_MARK):
            name += BOT_MARK
        text, tokens = self._fitted(f"{name}: ", text) if text else ("", 0)
        if files is None or not files.sections:
            return ContextEntry(message.message_id, "user", storable(message.author_id), name, text, tokens)
        # The files follow the text (already within their budget), as a question's do; the images' tokens counted
        # with the message, as a question's are.
        content = files.question(text) if text else "\n\n".join(files.sections)
        tokens = self._counter.count_message(f"{name}: {content}") + files.image_tokens
        images = tuple(ImageBlob(p.sha256, p.mimetype, p.data) for p in files.pictures)
        return ContextEntry(message.message_id, "user", storable(message.author_id), name, content, tokens, images)

    def _fitted(self, prefix: str, text: str) -> tuple[str, int]:
        """``text`` cut to the single-message cap, and its tokens as the model sees it (after ``prefix``). Counted
        once where it fits, as nearly all do: a thread of hundreds of messages is counted on the turn's time."""
        tokens = self._counter.count_message(prefix + text)
        if tokens - PER_MESSAGE_OVERHEAD <= self._single_cap:
            return text, tokens
        text = self._counter.truncate(text, self._single_cap)
        return text, self._counter.count_message(prefix + text)
