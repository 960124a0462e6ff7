"""The storage seam: what the core needs from a database, whichever engine holds it.

SQLite (``bot.store.sqlite``) is the embedded default; PostgreSQL (``bot.store.postgres``) serves several replicas
sharing one database. Both implement the :class:`Store` protocol and pass the same contract tests
(``tests/store/test_store.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlsplit

from bot.messages import ConversationKey, IncomingMessage, Usage

Role = Literal["user", "assistant"]

#: No stored message counts fewer tokens than the chat format's own overhead plus one.
MIN_MESSAGE_TOKENS = 5

#: Where in a channel a person last wrote (the thread, or NULL for the channel itself): newest kept message first.
LAST_THREAD_QUERY = (
    "SELECT c.thread FROM messages m JOIN conversations c ON c.id = m.conversation_id "
    "WHERE c.platform = {platform} AND c.workspace = {workspace} AND c.channel = {channel} "
    "AND m.author_id = {author} ORDER BY m.id DESC LIMIT 1"
)

#: The newest messages before ``{before}`` that fit ``{budget}`` tokens together, oldest first, without a hole.
#: Every message costs at least MIN_MESSAGE_TOKENS, so only the newest ``{rows}`` (budget / MIN) can fit: the walk
#: down the (conversation_id, id, tokens) index stops there however long the conversation is, and reads the index
#: alone. The running sum over it finds the oldest message that still fits; only the rows from there on are read
#: whole. Placeholders are filled with each engine's parameter markers.
HISTORY_QUERY = (
    "SELECT id, role, author_name, content, tokens, created_at FROM messages "
    "WHERE conversation_id = {conversation} AND id < {before} AND id >= ("
    "  SELECT coalesce(min(id), {before}) FROM ("
    "    SELECT id, sum(tokens) OVER (ORDER BY id DESC ROWS UNBOUNDED PRECEDING) AS running FROM ("
    "      SELECT id, tokens FROM messages WHERE conversation_id = {conversation} AND id < {before}"
    "      ORDER BY id DESC LIMIT {rows}"
    "    ) newest"
    "  ) fitted WHERE running <= {budget}"
    ") ORDER BY id"
)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    role: Role
    author_name: str | None
    content: str
    tokens: int
    created_at: float


@dataclass(frozen=True, slots=True)
class Summary:
    """The running summary of a conversation's turns that fell out of its history window."""

    text: str
    tokens: int
    #: The id of the newest message the summary covers; the messages after it are not in it yet.
    covered_to: int


#: What a person can say about an answer with its buttons.
FEEDBACK_VALUES = ("up", "down")


@dataclass(frozen=True, slots=True)
class FeedbackTotal:
    up: int = 0
    down: int = 0


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One model call, for the ledger."""

    at: float
    key: ConversationKey
    user_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    exact: bool
    cost: float
    priced: bool

    def values(self) -> tuple[object, ...]:
        """The record in the order of :data:`USAGE_COLUMNS`."""
        key = self.key
        return (
            self.at,
            key.platform,
            key.workspace,
            key.channel,
            self.user_id,
            self.model,
            self.prompt_tokens,
            self.completion_tokens,
            self.exact,
            self.cost,
            self.priced,
        )


#: The ledger's columns, in the order of :meth:`UsageRecord.values`.
USAGE_COLUMNS = (
    "at",
    "platform",
    "workspace",
    "channel",
    "user_id",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "exact",
    "cost",
    "priced",
)


@dataclass(frozen=True, slots=True)
class UsageScope:
    """Whose usage: a workspace/guild, narrowed to a channel and/or a user."""

    platform: str
    workspace: str
    channel: str | None = None
    user_id: str | None = None

    def conditions(self, since: float) -> list[tuple[str, object]]:
        """``(column and operator, value)`` pairs that select this scope's ledger rows since ``since``."""
        found: list[tuple[str, object]] = [("platform =", self.platform), ("workspace =", self.workspace)]
        found.append(("at >=", since))
        if self.channel is not None:
            found.append(("channel =", self.channel))
        if self.user_id is not None:
            found.append(("user_id =", self.user_id))
        return found


@dataclass(frozen=True, slots=True)
class UsageTotal:
    calls: int = 0
    tokens: int = 0
    cost: float = 0.0
    #: False when some calls used a model missing from the price table (counted at cost 0).
    all_priced: bool = True


@dataclass(frozen=True, slots=True)
class RateBucket:
    """A token bucket: up to ``capacity`` requests in a burst, refilled at ``per_second``."""

    key: str
    capacity: float
    per_second: float


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """What an admin changed for one channel (and its threads); None means the configured default."""

    system_prompt: str | None = None
    model: str | None = None


class Store(Protocol):
    """Conversation history and the record of which platform messages were already handled."""

    async def begin_turn(self, msg: IncomingMessage, tokens: int) -> int | None:
        """Store the user's message and claim its ``message_id``, atomically.

        Returns the new message's row id, or None when that ``message_id`` was handled before (a platform
        redelivery): then nothing is written and the caller must not answer.
        """
        ...

    async def claim_message(self, message_id: str) -> bool:
        """Mark a platform message id as handled: True for its first delivery, False for a redelivery.

        The turn claims its message before it queues for the conversation, so a redelivery neither waits nor
        spends a rate-limit token; it stores the message with :meth:`add_question` once it is its turn.
        """
        ...

    async def add_question(self, msg: IncomingMessage, tokens: int) -> int:
        """Store the person's message, whose id :meth:`claim_message` already claimed; returns its row id."""
        ...

    async def add_reply(
        self,
        key: ConversationKey,
        text: str,
        tokens: int,
        *,
        reply_to: int,
        usage: Usage | None,
        model: str | None,
        complete: bool,
        ledger: UsageRecord | None = None,
    ) -> int:
        """Store the assistant's reply to the message ``reply_to``, and its ``ledger`` entry in the same transaction;
        ``complete`` is False for a cut-off one.

        Raises :class:`bot.errors.StoreError` when the database refuses the write; then neither is stored.
        """
        ...

    async def load_history(self, key: ConversationKey, token_budget: int, *, before: int) -> list[StoredMessage]:
        """The newest messages older than row ``before`` whose tokens fit ``token_budget``, oldest first.

        Reads only what the budget can hold: the cost does not grow with the conversation's length.
        """
        ...

    async def reset(self, key: ConversationKey) -> int:
        """Delete the conversation's history (and its summary) from disk; returns how many messages were deleted.

        A key without a thread covers the channel and every thread in it.
        """
        ...

    async def count_messages(self, key: ConversationKey) -> int: ...

    async def summary(self, key: ConversationKey) -> Summary | None:
        """The conversation's running summary (see :meth:`set_summary`), or None when it has none."""
        ...

    async def messages_after(self, key: ConversationKey, after: int, before: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` of the conversation's messages with ``after < id < before``, oldest first."""
        ...

    async def set_summary(self, key: ConversationKey, summary: Summary) -> bool:
        """Keep ``summary`` as the conversation's, unless the one kept covers as much already, or the message it
        covers up to is gone (a ``/reset`` ran meanwhile: a summary of forgotten turns must not come back).
        True when it was kept."""
        ...

    async def add_feedback(
        self, platform: str, channel: str, reply: int, user_id: str, value: str, *, at: float
    ) -> bool:
        """Record ``user_id``'s verdict (one of :data:`FEEDBACK_VALUES`) on the reply stored as row ``reply``,
        replacing their earlier one. Only a reply (an assistant message) of a conversation on ``platform`` whose
        channel or thread is ``channel`` takes it: False, with nothing stored, for any other row."""
        ...

    async def feedback_since(self, scope: UsageScope, since: float) -> FeedbackTotal:
        """How many verdicts of each kind the replies in ``scope`` got since ``since``."""
        ...

    async def last_thread(self, key: ConversationKey, author_id: str) -> str | None:
        """The thread of ``key``'s channel where ``author_id`` last wrote (a kept message); None when that was
        the channel itself, or nowhere."""
        ...

    async def forget_message(self, row: int) -> None:
        """Delete one stored message (a refused question), keeping its id marked as handled."""
        ...

    async def add_usage(self, ledger: UsageRecord) -> None:
        """Record a model call that left no reply stored with it (an empty completion the provider bills, a reply
        the database refused). Raises :class:`bot.errors.StoreError` when the database refuses it too."""
        ...

    async def abandon_turn(self, row: int | None, message_id: str, ledger: UsageRecord | None = None) -> None:
        """Undo a turn cut off before its reply was stored (the process is stopping): delete its message ``row``
        (None: still queued, nothing stored yet) and release ``message_id``, so the message is answered if it comes
        again, and record ``ledger`` (what the cut-off call cost), in one transaction. Raises
        :class:`bot.errors.StoreError`."""
        ...

    async def purge_expired(self) -> int:
        """Forget handled message ids older than the retention (and, where rate buckets are stored, buckets idle
        long enough to be full again); returns how many ids were forgotten. Run at start and periodically."""
        ...

    async def usage_since(self, scope: UsageScope, since: float) -> UsageTotal: ...

    async def claim_warning(self, scope: str, period_start: float) -> bool:
        """True for the first caller per scope and period: the one that posts the soft-cap warning."""
        ...

    async def claim_request(self, request_id: str, expires_at: float) -> bool:
        """Claim a signed platform request, so that the same bytes sent again are not acted on twice.

        True the first time ``request_id`` (e.g. a request signature) is seen, False while it is remembered, which is
        until ``expires_at`` (epoch seconds), after which the platform refuses the request as stale anyway. Claims
        past their time are deleted as new ones come. Replicas sharing a database share the claims.
        """
        ...

    async def channel_settings(self, key: ConversationKey) -> ChannelSettings: ...

    async def set_channel_settings(self, key: ConversationKey, settings: ChannelSettings) -> None: ...

    async def take_tokens(self, buckets: Sequence[RateBucket]) -> float:
        """Spend one token of each of ``buckets`` (distinct keys), atomically: all of them, or none.

        Returns 0 when every bucket had a token (then each gave one), else the seconds until all of them have
        one (then none gave any: a question refused by one limit does not use up another).
        """
        ...

    def conversation_lock(self, key: ConversationKey) -> AbstractAsyncContextManager[None]:
        """A lock that serialises turns of one conversation across processes sharing this database.

        The core already serialises turns within one process; an embedded database has no other process.
        """
        ...

    async def schema_version(self) -> int:
        """How far the database's schema has been migrated."""
        ...

    async def ping(self) -> bool:
        """True while the database answers and takes writes (for ``/readyz``): a write rolled back, never kept."""
        ...

    async def close(self) -> None: ...


def is_postgres(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url


#: Why ``TEAMBOT_DB=:memory:`` is refused rather than opened: a shared-cache memory database would need
#: table-level locks that fail at once (SQLITE_LOCKED) instead of waiting, and a throwaway file does the same job.
IN_MEMORY_REFUSED = (
    "an in-memory SQLite database is not supported: teambot writes and reads through two connections, which "
    "would each get their own empty database; use a file path (a temporary one for a throwaway run)"
)


def sqlite_in_memory(url: str) -> bool:
    """Whether ``url`` names a SQLite database private to one connection: ``:memory:``, or ``""``, which SQLite
    takes as a temporary file of that connection's own."""
    return not is_postgres(url) and sqlite_path(url) in (":memory:", "")


def describe_db(url: str) -> str:
    """Where the database is, for messages: a file path, or host, port and name, never a password."""
    if not is_postgres(url):
        return sqlite_path(url)
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.hostname or 'localhost'}{port}{parts.path}"
