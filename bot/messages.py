"""The data that crosses the seam between the adapters and the core."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
        return ":".join(p for p in (self.platform, self.workspace, self.channel, self.thread) if p)

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
