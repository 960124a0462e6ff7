"""The data that crosses the seam between the adapters and the core."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """Where a conversation lives: ``slack:T1:C1``, ``slack:T1:C1:1700000000.000100``, ``discord:G1:C1``.

    The console has no channel: its one conversation is ``console:local``.
    """

    platform: str
    workspace: str
    channel: str
    thread: str | None = None

    def __str__(self) -> str:
        # Asked for about ten times a turn (the store's caches, the summaries, the log context): the usual key, every
        # part there, is one f-string, a third of the generator's join.
        platform, workspace, channel, thread = self.platform, self.workspace, self.channel, self.thread
        if platform and workspace and channel:
            return f"{platform}:{workspace}:{channel}:{thread}" if thread else f"{platform}:{workspace}:{channel}"
        return ":".join(p for p in (platform, workspace, channel, thread) if p)

    @classmethod
    def parse(cls, text: str) -> ConversationKey:
        parts = text.split(":", 3)
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"not a conversation key: {text!r}")
        platform, workspace, *rest = parts
        return cls(platform, workspace, rest[0] if rest else "", rest[1] if len(rest) > 1 else None)


#: Where direct messages belong to no workspace (Discord), each person's DMs are a workspace of their own,
#: ``dm-<user id>`` (see :func:`dm_workspace`), so that budgets and rate limits follow the person; in the access
#: lists ``dm`` names all of them at once.
DM_WORKSPACES = "dm"


def dm_workspace(user_id: str) -> str:
    """The workspace of one person's direct messages on a platform whose DMs belong to no workspace."""
    return f"{DM_WORKSPACES}-{user_id}"


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file on a message, not downloaded yet: ``fetch`` reads it, from the platform's own file host only.

    The adapter builds ``fetch`` (it holds the token and knows the allowed hosts); the core decides whether the
    file is worth reading (type, size, how many) and what the model gets of it (bot.context).
    """

    #: The platform's id of the file (unique there), prefixed like message ids.
    file_id: str
    name: str
    #: As the platform reports it; may be empty or wrong, so the core also looks at the bytes.
    mimetype: str
    #: As the platform reports it, in bytes; None when it does not say.
    size: int | None
    #: The file's bytes; raises ``bot.errors.AttachmentError`` with a message for people when it cannot.
    fetch: Callable[[], Awaitable[bytes]] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ContextMessage:
    """A message around the mention that the store does not hold yet: an earlier message of the thread, the
    message replied to, a forwarded one. The core stores it in the conversation before the question."""

    #: Unique across platforms (prefixed), like :attr:`IncomingMessage.message_id`.
    message_id: str
    author_id: str
    author_name: str
    text: str
    #: Written by another bot (a CI bot, an integration): stored as a user message under the bot's name, marked as
    #: a bot's, so the model never takes it for its own words.
    from_bot: bool = False
    attachments: tuple[Attachment, ...] = ()
    #: Written by this bot, and not in this conversation's store (the root of a thread started under one of its
    #: channel answers, a reply the store lost): stored as an assistant message. Adapters leave out the replies the
    #: conversation stored itself.
    own: bool = False


@dataclass(frozen=True, slots=True)
class ContextRead:
    """What a :class:`ContextSource` read: the messages after the cursor, oldest first, and the new cursor."""

    messages: Sequence[ContextMessage]
    #: Where the next read starts (opaque to the core: a Slack ``ts``, a Discord message id); None: unchanged.
    cursor: str | None
    #: The oldest part was left out to keep within the budget.
    truncated: bool = False
    #: Why the source could not read (or read only part): logged, never a failed turn.
    problem: str | None = None


class ContextSource(Protocol):
    """Where the core reads the messages around a mention that it does not hold yet (a Slack thread, a Discord
    thread or reply chain). The core keeps the cursor per conversation, so a thread is read once, by one replica."""

    async def read(self, after: str | None, budget_tokens: int) -> ContextRead:
        """The messages after ``after`` (None: from the start), newest kept first when they pass
        ``budget_tokens``; never raises for the platform's refusals (429, missing scope): ``problem`` says why."""
        ...


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message addressed to the bot, already stripped of the bot's mention by the adapter.

    ``message_id`` must be unique across platforms (the adapter prefixes it); a redelivered message
    carries the same id and is answered once.
    """

    key: ConversationKey
    message_id: str
    author_id: str
    author_name: str
    text: str
    #: Files on the message itself (images, text files, PDFs).
    attachments: tuple[Attachment, ...] = ()
    #: Messages the adapter already has that belong before this one (a replied-to message from the gateway
    #: payload, a forward's content), oldest first.
    context: tuple[ContextMessage, ...] = ()
    #: Where the core reads more of what surrounds the message (a thread), or None.
    source: ContextSource | None = field(default=None, compare=False, repr=False)
    #: A direct message (Slack im/mpim, Discord DM): tool policies may allow a tool there only.
    in_dm: bool = False
    #: The platform counts the author as an admin (workspace admin, Manage Server), for tool policies.
    author_is_admin: bool = False


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """A tool call the model asked for that needs the asker's approval before it runs."""

    call_id: str
    #: The name the model knows the tool by (``server__tool`` for an MCP tool).
    tool: str
    #: The arguments as JSON text, shown to the person who approves.
    arguments: str


class TurnView(Protocol):
    """What an adapter shows of a turn besides its text: progress while tools run, and approvals.

    Optional for :meth:`bot.conversation.ConversationCore.handle`: without one, no status is shown and a tool that
    needs approval is denied.
    """

    async def status(self, text: str | None) -> None:
        """Show a short progress line (``Looking up the time…``); None takes it away."""
        ...

    async def approve(self, request: ToolRequest, asker_id: str, within: float) -> bool:
        """Ask ``asker_id`` (only they may answer) to approve ``request``; False when denied or not answered
        within ``within`` seconds (the buttons then say it was denied)."""
        ...


class ReplyKind(enum.Enum):
    ANSWER = "answer"  # the model's reply
    PARTIAL = "partial"  # the stream broke; text holds what arrived plus a marker
    ERROR = "error"  # text is a message for people explaining what failed
    REFUSED = "refused"  # not answered on purpose (access, rate limit, budget, busy); text says why
    DUPLICATE = "duplicate"  # already handled: the adapter posts nothing
    IGNORED = "ignored"  # refused silently, as configured: the adapter posts nothing


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    #: False when the server sent no usage (an interrupted stream) and these are our own estimate.
    exact: bool = True
    #: Of ``prompt_tokens``, those the server read from its prompt cache (``prompt_tokens_details.cached_tokens``);
    #: None when it did not say, which is unknown, not zero.
    cached_tokens: int | None = None
    #: Of ``completion_tokens``, those spent thinking (``completion_tokens_details.reasoning_tokens``); None when
    #: the server did not say.
    reasoning_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Reply:
    kind: ReplyKind
    text: str
    usage: Usage | None = None
    model: str | None = None
    #: A separate message to post after the reply (a budget's soft-cap warning).
    notice: str | None = None
    #: The row the reply is stored as (None: not stored), for the feedback buttons that name it.
    reply_id: int | None = None

    @property
    def should_post(self) -> bool:
        return self.kind not in (ReplyKind.DUPLICATE, ReplyKind.IGNORED)
