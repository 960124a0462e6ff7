"""Feedback buttons under the bot's answers in Slack, and reading a click on them.

A natively streamed answer (Slack's AI-app surface) ends with a ``context_actions`` block holding Slack's own
``feedback_buttons`` element, passed to ``chat.stopStream``. An answer posted and edited (at the top of a DM, or
where Slack refused to stream) carries a plain ``actions`` block with a 👍 and a 👎 button instead. Either way
each button's value names the verdict and the stored reply: ``up:<reply id>`` or ``down:<reply id>``.
"""

from __future__ import annotations

import re
from typing import Any

from adapters.text_split import split_message
from bot import texts

#: The action id of both kinds of buttons (the plain pair adds ``_up`` / ``_down``: ids are unique in a block).
ACTION_ID = "teambot_feedback"
ACTIONS = re.compile(rf"^{ACTION_ID}(?:_up|_down)?$")
#: Slack's limit on a section block's text.
SECTION_LIMIT = 3000
_VALUE = re.compile(r"^(up|down):([0-9]{1,18})$")


def _value(verdict: str, reply_id: int) -> str:
    return f"{verdict}:{reply_id}"


def context_actions(reply_id: int) -> list[dict[str, Any]]:
    """The blocks ``chat.stopStream`` renders under a streamed answer: Slack's feedback buttons."""
    return [
        {
            "type": "context_actions",
            "block_id": f"{ACTION_ID}:{reply_id}",
            "elements": [
                {
                    "type": "feedback_buttons",
                    "action_id": ACTION_ID,
                    "positive_button": {
                        "text": {"type": "plain_text", "text": "👍"},
                        "accessibility_label": texts.FEEDBACK_UP,
                        "value": _value("up", reply_id),
                    },
                    "negative_button": {
                        "text": {"type": "plain_text", "text": "👎"},
                        "accessibility_label": texts.FEEDBACK_DOWN,
                        "value": _value("down", reply_id),
                    },
                }
            ],
        }
    ]


def with_buttons(mrkdwn: str, reply_id: int) -> list[dict[str, Any]]:
    """The blocks of a posted answer: its text in section blocks (a message with blocks shows those, not its
    ``text``), then a plain 👍/👎 button pair."""
    sections = [
        {"type": "section", "text": {"type": "mrkdwn", "text": part}}
        for part in split_message(mrkdwn, SECTION_LIMIT) or [mrkdwn]
        if part.strip()
    ]
    buttons = [
        {
            "type": "button",
            "action_id": f"{ACTION_ID}_{verdict}",
            "text": {"type": "plain_text", "text": emoji, "emoji": True},
            "accessibility_label": label,
            "value": _value(verdict, reply_id),
        }
        for verdict, emoji, label in (("up", "👍", texts.FEEDBACK_UP), ("down", "👎", texts.FEEDBACK_DOWN))
    ]
    return [*sections, {"type": "actions", "block_id": f"{ACTION_ID}:{reply_id}", "elements": buttons}]


def parse(value: object) -> tuple[str, int] | None:
    """``(verdict, reply id)`` from a button's value; None for anything else."""
    match = _VALUE.match(value) if isinstance(value, str) else None
    return (match.group(1), int(match.group(2))) if match else None
