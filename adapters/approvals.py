"""Tool approvals in a shared channel, platform-agnostic: who may answer, for how long, and what a click means.

The core asks a :class:`bot.messages.TurnView` to approve a tool call; each adapter's view posts the request with
Approve / Deny buttons through an :class:`ApprovalPrompt` (its platform's message and buttons) and waits here.
Each request gets a random id that only this process knows and that the buttons carry: a click on buttons from
before a restart (or from another replica) names an id nobody waits for, and is told the request expired; nothing
runs. Only the person who asked may answer; a click by anyone else changes nothing. No answer within ``within``
seconds is a denial. Stopping the adapter denies every request still waiting, so the turns end at once.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Protocol, TypeVar

from bot import texts
from bot.messages import ToolRequest

log = logging.getLogger(__name__)

H = TypeVar("H")


class Outcome(enum.Enum):
    """How a request ended; only APPROVED lets the tool run."""

    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    #: The bot stopped (a restart, a deploy) while the request waited.
    STOPPED = "stopped"


class Click(enum.Enum):
    """What a click on an approval button did."""

    #: The asker answered: the waiting turn goes on.
    DECIDED = "decided"
    #: Someone else clicked: nothing changed.
    NOT_ASKER = "not_asker"
    #: No request with this id waits here (it expired, was answered, or is from before a restart).
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ClickResult:
    click: Click
    #: The asker's name, for "only <asker> can approve this".
    asker_name: str = ""


class ApprovalPrompt(Protocol[H]):
    """How one platform shows an approval request: a message with Approve / Deny buttons whose ids carry
    ``approval_id``, later edited to say how it ended, the buttons gone."""

    async def ask(self, approval_id: str, request: ToolRequest, within: float) -> H: ...

    async def settle(self, handle: H, request: ToolRequest, outcome: Outcome) -> None: ...


@dataclass(slots=True)
class _Waiting:
    asker_id: str
    asker_name: str
    answer: asyncio.Future[Outcome]


class Approvals:
    """The approval requests this process waits for, by id; one per adapter."""

    def __init__(self) -> None:
        self._waiting: dict[str, _Waiting] = {}
        self._stopping = False

    def __len__(self) -> int:
        return len(self._waiting)

    async def ask(
        self, prompt: ApprovalPrompt[H], request: ToolRequest, asker_id: str, asker_name: str, within: float
    ) -> bool:
        """Post ``request`` through ``prompt`` and wait for the asker's click, ``within`` seconds at most; then
        edit the request to say how it ended. True only when the asker approved."""
        if self._stopping:
            return False
        # Unguessable and never reused: a click can only answer the request it was shown with.
        approval_id = secrets.token_urlsafe(12)
        answer: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting[approval_id] = _Waiting(asker_id, asker_name, answer)
        try:
            try:
                handle = await prompt.ask(approval_id, request, within)
            except Exception:
                # The platform's refusal or a network failure (the question deleted, a missing permission): with
                # nowhere to ask, the call is denied, and the answer goes on without it.
                log.warning("the approval request for %s could not be posted; denied", request.tool, exc_info=True)
                return False
            try:
                outcome = await asyncio.wait_for(asyncio.shield(answer), within)
            except TimeoutError:
                outcome = Outcome.EXPIRED
        finally:
            del self._waiting[approval_id]
        log.info("approval %s of tool %s: %s", approval_id, request.tool, outcome.value)
        try:
            await prompt.settle(handle, request, outcome)
        except Exception:
            # The decision stands; only its display failed (the buttons stay, and answer "expired" from now on).
            log.warning("the approval request for %s could not be updated", request.tool, exc_info=True)
        return outcome is Outcome.APPROVED

    def click(self, approval_id: str, user_id: str, approve: bool) -> ClickResult:
        """A click by ``user_id`` on the Approve (``approve``) or Deny button of request ``approval_id``."""
        waiting = self._waiting.get(approval_id)
        if waiting is None or waiting.answer.done():
            return ClickResult(Click.UNKNOWN)
        # The approval check: only the person whose question led to the call may let it run (or stop it).
        if user_id != waiting.asker_id:
            return ClickResult(Click.NOT_ASKER, waiting.asker_name)
        waiting.answer.set_result(Outcome.APPROVED if approve else Outcome.DENIED)
        return ClickResult(Click.DECIDED, waiting.asker_name)

    def stop(self) -> None:
        """Deny every request still waiting (the bot is stopping), and any asked from now on."""
        self._stopping = True
        for waiting in self._waiting.values():
            if not waiting.answer.done():
                waiting.answer.set_result(Outcome.STOPPED)


def shown_arguments(arguments: str, limit: int) -> str:
    """A tool call's JSON arguments for people: indented when they parse, cut to ``limit`` characters."""
    try:
        shown = json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
    except ValueError:
        shown = arguments
    if len(shown) > limit:
        rest = len(shown) - limit
        shown = shown[:limit] + texts.APPROVAL_ARGUMENTS_CUT.format(count=rest)
    return shown


def outcome_line(outcome: Outcome, asker_name: str, within: float) -> str:
    """The line that replaces the buttons once a request has ended."""
    return {
        Outcome.APPROVED: texts.APPROVAL_APPROVED,
        Outcome.DENIED: texts.APPROVAL_DENIED,
        Outcome.EXPIRED: texts.APPROVAL_EXPIRED,
        Outcome.STOPPED: texts.APPROVAL_STOPPED,
    }[outcome].format(asker=asker_name, seconds=round(within))
