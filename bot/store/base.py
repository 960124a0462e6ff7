"""The storage seam: what the core needs from a database, whichever engine holds it.

SQLite (``bot.store.sqlite``) is the embedded default; PostgreSQL (``bot.store.postgres``) serves several replicas
sharing one database. Both implement the :class:`Store` protocol and pass the same contract tests
(``tests/store/test_store.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol
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

#: The newest messages before ``{before}`` that fit ``{budget}`` tokens together, oldest first, without a hole, and
#: starting on a block boundary ``{step}`` tokens wide, so that the prompt's beginning stays the same from turn to
#: turn and a provider's prompt cache can serve it.
#:
#: Every message costs at least MIN_MESSAGE_TOKENS, so only the newest ``{rows}`` (budget / MIN) can fit: the walk
#: down the (conversation_id, id, tokens, tokens_before) index stops there however long the conversation is, and
#: reads the index alone. The running sum over it finds the oldest message that still fits.
#:
#: Block trimming: ``tokens_before`` is the conversation's token count before each message, written with it, so it
#: places every message on a fixed line that never moves. The conversation so far (``reached``: the newest message's
#: end on that line) overflows the budget by ``reached - budget`` tokens; rounded up to a multiple of ``{step}``,
#: that is where the window starts. It stays put while the conversation grows by less than a step, then
#: jumps a whole step: the prefix (system prompt and history) changes once every few turns instead of every turn.
#: Both the budget and the block line must hold (the first message at or after the line, and within the budget),
#: so the budget is never passed even where ``tokens_before`` has gaps (deleted messages leave them; they only make
#: the line's count run ahead). ``{step}`` = 1 is one-by-one trimming. The question being answered (``{before}``)
#: is not in the window, so the budget left for history shrinks with a longer question; ``reached - budget`` still
#: never goes back from one turn to the next (the question joins the history), so neither does the window's start.
#:
#: When nothing qualifies (even the newest message alone is over the budget, or the block line passed it), the
#: newest message comes alone (the caller cuts it to fit: one long answer must not empty the window); coalesce
#: evaluates that lookup only then, one more index probe on that rare path.
#: Placeholders are filled with each engine's parameter markers.
HISTORY_QUERY = (
    "SELECT id, role, author_name, content, tokens, created_at, tool_trace FROM messages "
    "WHERE conversation_id = {conversation} AND id < {before} AND id >= ("
    "  SELECT coalesce(min(id), ("
    "    SELECT max(id) FROM messages WHERE conversation_id = {conversation} AND id < {before}"
    "  ), {before}) FROM ("
    "    SELECT id, tokens_before, sum(tokens) OVER (ORDER BY id DESC ROWS UNBOUNDED PRECEDING) AS running FROM ("
    "      SELECT id, tokens, tokens_before FROM messages WHERE conversation_id = {conversation} AND id < {before}"
    "      ORDER BY id DESC LIMIT {rows}"
    "    ) newest"
    "  ) fitted WHERE running <= {budget}"
    # Where the newest message ends on the line (one seek, evaluated once), less the budget, rounded up to a block.
    # Integer division rounds toward zero: a conversation still within the budget gets a line at or below 0.
    "  AND tokens_before >= (("
    "    SELECT tokens_before + tokens FROM messages WHERE conversation_id = {conversation} AND id < {before}"
    "    ORDER BY id DESC LIMIT 1"
    "  ) - {budget} + {step} - 1) / {step} * {step}"
    ") ORDER BY id"
)

#: A new message's place on the conversation's token line: where its newest message ends (0 for the first).
#: The (conversation_id, id, tokens, tokens_before) index answers it with one seek.
TOKENS_BEFORE_QUERY = (
    "coalesce((SELECT tokens_before + tokens FROM messages WHERE conversation_id = {conversation} "
    "ORDER BY id DESC LIMIT 1), 0)"
)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    role: Role
    author_name: str | None
    content: str
    tokens: int
    created_at: float
    #: On a reply that used tools: the tool calls and their results that came before it, as JSON
    #: ``{"tokens": N, "messages": [...]}`` (the chat messages in the API's form, N their tokens); None otherwise.
    #: Not counted in ``tokens``: the history takes it only where the budget has room left (see bot.tools).
    tool_trace: str | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """The running summary of a conversation's turns that fell out of its history window."""

    text: str
    tokens: int
    #: The id of the newest message the summary covers; the messages after it are not in it yet.
    covered_to: int


#: The prefix of a context message's claim in the record of handled message ids: a message stored as context
#: (an earlier message of a thread) is claimed apart from its claim as a question, so that it is never stored twice
#: as context, yet still answered if it later arrives as a mention.
CONTEXT_CLAIM = "context:"


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """A message around a mention, ready to store before the question: an earlier message of the thread."""

    #: The platform's message id (as :attr:`bot.messages.ContextMessage.message_id`): claimed as
    #: ``CONTEXT_CLAIM + message_id``, and skipped when already claimed that way or as a question.
    message_id: str
    role: Role
    author_id: str | None
    author_name: str | None
    content: str
    tokens: int
    #: The images of the message's files (their marks are in ``content``): kept linked to its row, as a question's.
    images: tuple[ImageBlob, ...] = ()


@dataclass(frozen=True, slots=True)
class ImageBlob:
    """An image as kept in the store: content-addressed (``sha256`` of ``data``), already downscaled."""

    sha256: str
    mimetype: str
    data: bytes


#: Drops the least recently used images past the store's cap ({cap} bytes, filled with each engine's marker): the
#: newest that fit stay. Both engines run it after adding images.
IMAGE_LRU_QUERY = (
    "DELETE FROM images WHERE hash IN (SELECT hash FROM ("
    "  SELECT hash, sum(size) OVER (ORDER BY used_at DESC, hash ROWS UNBOUNDED PRECEDING) AS running FROM images"
    ") kept WHERE running > {cap})"
)


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
    #: Parts of the two counts above as the server reported them; None where it did not say (unknown, not 0).
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None

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
            self.cached_tokens,
            self.reasoning_tokens,
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
    "cached_tokens",
    "reasoning_tokens",
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
    #: Prompt tokens served from the provider's cache, and the prompt tokens of the calls whose server said how many
    #: were (the denominator of the hit share); None when no call in the period said.
    cached_tokens: int | None = None
    cache_known_prompt_tokens: int | None = None
    #: Completion tokens spent thinking; None when no call in the period reported them.
    reasoning_tokens: int | None = None

    @property
    def cache_share(self) -> float | None:
        """The share of prompt tokens read from the cache, over the calls whose server reports it."""
        if self.cached_tokens is None or not self.cache_known_prompt_tokens:
            return None
        return self.cached_tokens / self.cache_known_prompt_tokens


#: The ledger's sums for :class:`UsageTotal`, in its field order; a sum over NULLs alone is NULL (unknown).
USAGE_TOTALS = (
    "count(*), coalesce(sum(prompt_tokens + completion_tokens), 0), coalesce(sum(cost), 0), {all_priced}, "
    "sum(cached_tokens), sum(CASE WHEN cached_tokens IS NOT NULL THEN prompt_tokens END), sum(reasoning_tokens)"
)


def usage_total(row: Sequence[Any]) -> UsageTotal:
    """The :class:`UsageTotal` of a row selected with :data:`USAGE_TOTALS` (PostgreSQL sums come as Decimal)."""

    def known(value: Any) -> int | None:
        return None if value is None else int(value)

    return UsageTotal(
        calls=int(row[0]),
        tokens=int(row[1]),
        cost=float(row[2]),
        all_priced=bool(row[3]),
        cached_tokens=known(row[4]),
        cache_known_prompt_tokens=known(row[5]),
        reasoning_tokens=known(row[6]),
    )


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
    #: Where the bot speaks: ``thread``, ``mention``, ``all`` (see bot.speak).
    speak: str | None = None
    #: Whose conversation a channel message joins: ``channel`` or ``person``.
    scope: str | None = None


class Store(Protocol):
    """Conversation history and the record of which platform messages were already handled."""

    #: True where this process is the database's only user (SQLite): a conversation idle here is idle everywhere,
    #: so the core may claim a message and store it in one write (:meth:`begin_turn`) once it holds the
    #: conversation. False where replicas share the database: the claim comes first, on its own.
    single_process: bool

    def begin_turn(self, msg: IncomingMessage, tokens: int) -> Awaitable[int | None]:
        """Store the user's message and claim its ``message_id``, atomically.

        Awaits to the new message's row id, or None when that ``message_id`` was handled before (a platform
        redelivery): then nothing is written and the caller must not answer. An ``async def`` does; SQLite begins
        the write when called and hands back a future, already done where it wrote on the event loop's thread, so
        that the plain turn awaits it without a task or a turn of the loop.
        """
        ...

    async def claim_message(self, message_id: str) -> bool:
        """Mark a platform message id as handled: True for its first delivery, False for a redelivery.

        The turn claims its message before it queues for the conversation, so a redelivery neither waits nor
        spends a rate-limit token; it stores the message with :meth:`add_question` once it is its turn. (A plain
        turn finding its conversation idle on a :attr:`single_process` store does both with :meth:`begin_turn`.)
        """
        ...

    async def add_question(self, msg: IncomingMessage, tokens: int) -> int:
        """Store the person's message, whose id :meth:`claim_message` already claimed; returns its row id."""
        ...

    async def forget_message(self, row: int) -> None:
        """Delete the question stored as ``row`` (refused after :meth:`begin_turn` stored it with its claim), keeping
        its id handled: a refused question leaves no trace in the history, and its redelivery is not answered."""
        ...

    async def handled(self, message_ids: Sequence[str]) -> set[str]:
        """Those of ``message_ids`` already claimed, as a question or as context: their files need no reading, as
        :meth:`add_context` would not store them."""
        ...

    async def context_cursor(self, key: ConversationKey) -> str | None:
        """Where the conversation's context source was last read up to (a Slack ``ts``), or None: never read."""
        ...

    async def add_context(
        self, key: ConversationKey, entries: Sequence[ContextEntry], cursor: str | None, *, cap_bytes: int | None = None
    ) -> int:
        """Store ``entries`` in the conversation, in order, each unless its id was claimed before (as context or as
        a question), claiming those stored; and keep ``cursor`` as the conversation's (None: unchanged), all in one
        transaction. Returns how many were stored.

        The images of an entry stored are kept linked to its row, as :meth:`add_images` keeps them (with
        ``cap_bytes`` as its cap; None: no cap), in the same transaction; those of an entry skipped are not.

        A ``/reset`` deletes the stored messages but keeps the cursor: what was forgotten is not read back.
        """
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
        tool_trace: str | None = None,
    ) -> int:
        """Store the assistant's reply to the message ``reply_to``, and its ``ledger`` entry in the same transaction;
        ``complete`` is False for a cut-off one; ``tool_trace`` is the turn's tool calls and results (see
        :attr:`StoredMessage.tool_trace`), loaded back with the reply by :meth:`load_history`.

        Raises :class:`bot.errors.StoreError` when the database refuses the write; then neither is stored.
        """
        ...

    async def load_history(
        self, key: ConversationKey, token_budget: int, *, before: int, step: int = 1
    ) -> list[StoredMessage]:
        """The newest messages older than row ``before`` whose tokens fit ``token_budget``, oldest first, starting on
        a block boundary ``step`` tokens wide (see :data:`HISTORY_QUERY`; 1 drops the oldest messages one by one).

        When even the newest message alone exceeds the budget, it is returned alone (more tokens than the budget):
        the caller cuts it to fit, rather than send a prompt that forgot the whole conversation. Empty only when
        there is no message before ``before`` or the budget is not positive.
        Reads only what the budget can hold: the cost does not grow with the conversation's length.
        """
        ...

    async def reset(self, key: ConversationKey) -> int:
        """Delete the conversation's history (its summary, and its images no other conversation uses) from disk;
        returns how many messages were deleted.

        A key without a thread covers the channel and every thread in it.
        """
        ...

    async def count_messages(self, key: ConversationKey) -> int: ...

    async def add_images(
        self, key: ConversationKey, message: int, images: Sequence[ImageBlob], *, cap_bytes: int
    ) -> None:
        """Keep ``images`` (each once, whoever else sent it) linked to the stored message ``message`` of ``key``;
        then drop the least recently used images until all of them together take at most ``cap_bytes``."""
        ...

    async def load_images(self, hashes: Sequence[str]) -> dict[str, ImageBlob]:
        """The kept images among ``hashes`` (one dropped by the cap is missing), now counted as just used."""
        ...

    async def summary(self, key: ConversationKey) -> Summary | None:
        """The conversation's running summary (see :meth:`set_summary`), or None when it has none."""
        ...

    async def messages_after(self, key: ConversationKey, after: int, before: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` of the conversation's messages with ``after < id < before``, oldest first."""
        ...

    async def search_messages(
        self, key: ConversationKey, query: str, *, before: int, limit: int
    ) -> list[StoredMessage]:
        """Up to ``limit`` of the conversation's messages older than row ``before`` that hold every word of ``query``,
        newest first (the ``search_history`` tool). Only ``key``'s own conversation is searched, never another.

        Words match whole, whatever their case; ``query`` is plain words, never search syntax: quotes, operators and
        punctuation in it cannot fail the search. Empty when ``query`` has no word.
        """
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

    async def speaking_channels(self) -> dict[tuple[str, str, str], ChannelSettings]:
        """The settings of every channel whose speak mode or conversation scope was set, by (platform, workspace,
        channel): few, read at start and now and then, so that no channel message waits on the database for them."""
        ...

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
