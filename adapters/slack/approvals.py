"""Tool approvals and progress in Slack: the request with Approve / Deny buttons, and the turn's view.

The request is a ``rich_text`` block: its text elements are shown literally (no mrkdwn, no mentions), so neither
the tool's name, the arguments the model wrote nor the asker's name can format the message or ping anyone; the
arguments go in a preformatted element. An ``actions`` block under it holds the two buttons; each button's value
is the request's id (see :mod:`adapters.approvals`). Once the request has ended it is edited to say how, and the
buttons are gone. The top-level ``text`` (notifications, old clients) is escaped mrkdwn.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from adapters.approvals import Approvals, Outcome, outcome_line, shown_arguments
from adapters.slack.format import escape_mrkdwn
from adapters.slack.stream import ThinkingStatus
from adapters.streaming import ReplyStream
from bot import texts
from bot.messages import ToolRequest

log = logging.getLogger(__name__)

ACTION_PREFIX = "teambot_approval"
APPROVE = f"{ACTION_PREFIX}_approve"
DENY = f"{ACTION_PREFIX}_deny"
ACTIONS = re.compile(rf"^{ACTION_PREFIX}_(?:approve|deny)$")
#: The arguments shown; longer ones are cut (a preformatted element stays readable well below Slack's limits).
ARGUMENTS_LIMIT = 1500
#: A tool's name as the model knows it is at most 64 characters; anything longer is not worth showing whole.
_NAME_LIMIT = 100


def _text(text: str, **style: bool) -> dict[str, Any]:
    element: dict[str, Any] = {"type": "text", "text": text}
    if style:
        element["style"] = style
    return element


def request_blocks(request: ToolRequest, asker: str, footer: str) -> list[dict[str, Any]]:
    """The request as literal rich text: the ask with the tool's name in code style, the arguments, ``footer``."""
    tool = request.tool[:_NAME_LIMIT]
    before, _, after = texts.APPROVAL_REQUEST.format(asker=asker, tool="\x00").partition("\x00")
    ask = [_text(part) for part in (before,) if part] + [_text(tool, code=True)] + [_text(after)] * bool(after)
    return [
        {
            "type": "rich_text",
            "elements": [
                {"type": "rich_text_section", "elements": ask},
                {
                    "type": "rich_text_preformatted",
                    "elements": [_text(shown_arguments(request.arguments, ARGUMENTS_LIMIT) or "{}")],
                },
                {"type": "rich_text_section", "elements": [_text(footer, italic=True)]},
            ],
        }
    ]


def buttons(approval_id: str) -> dict[str, Any]:
    return {
        "type": "actions",
        "block_id": ACTION_PREFIX,
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE,
                "text": {"type": "plain_text", "text": texts.APPROVAL_APPROVE},
                "style": "primary",
                "value": approval_id,
            },
            {
                "type": "button",
                "action_id": DENY,
                "text": {"type": "plain_text", "text": texts.APPROVAL_DENY},
                "style": "danger",
                "value": approval_id,
            },
        ],
    }


def fallback_text(request: ToolRequest, asker: str) -> str:
    """The message's ``text``: what notifications show, escaped so that it pings nobody."""
    return escape_mrkdwn(texts.APPROVAL_REQUEST.format(asker=asker, tool=request.tool[:_NAME_LIMIT]).rstrip(":"))


class SlackApprovalPrompt:
    """Posts approval requests in the turn's channel or thread, and edits them once they have ended."""

    def __init__(self, client: AsyncWebClient, channel: str, thread_ts: str | None, asker_name: str) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts
        self._asker = asker_name
        self._within = 0.0

    async def ask(self, approval_id: str, request: ToolRequest, within: float) -> str:
        self._within = within
        footer = texts.APPROVAL_FOOTER.format(asker=self._asker, seconds=round(within))
        response = await self._client.chat_postMessage(
            channel=self._channel,
            thread_ts=self._thread_ts,
            text=fallback_text(request, self._asker),
            blocks=[*request_blocks(request, self._asker, footer), buttons(approval_id)],
            unfurl_links=False,
            unfurl_media=False,
        )
        return str(response["ts"])

    async def settle(self, handle: str, request: ToolRequest, outcome: Outcome) -> None:
        line = outcome_line(outcome, self._asker, self._within)
        await self._client.chat_update(
            channel=self._channel,
            ts=handle,
            text=escape_mrkdwn(line),
            blocks=request_blocks(request, self._asker, line),  # no actions block: the buttons are gone
        )


class SlackTurnView:
    """One turn's :class:`bot.messages.TurnView` in Slack.

    Progress shows in the assistant status where the turn has one (a thread: "Looking up the time…" in place of
    "is thinking..."), and in the reply: a task card in a native stream, a status line in a posted and edited
    reply, which the answer replaces.
    """

    def __init__(
        self,
        approvals: Approvals,
        prompt: SlackApprovalPrompt,
        reply: ReplyStream,
        thread_status: ThinkingStatus | None,
        asker_id: str,
        asker_name: str,
    ) -> None:
        self._approvals = approvals
        self._prompt = prompt
        self._reply = reply
        self._thread_status = thread_status
        self._asker_id = asker_id
        self._asker_name = asker_name

    async def status(self, text: str | None) -> None:
        if self._thread_status is not None:
            await self._thread_status.show(text)
        await self._reply.status(text)

    async def approve(self, request: ToolRequest, asker_id: str, within: float) -> bool:
        name = self._asker_name if asker_id == self._asker_id else asker_id
        return await self._approvals.ask(self._prompt, request, asker_id, name, within)
