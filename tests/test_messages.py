"""The seam types' own behaviour: a conversation key's text form, which the store and the log lines use."""

from __future__ import annotations

import pytest

from bot.messages import ConversationKey


@pytest.mark.parametrize(
    ("key", "text"),
    [
        (ConversationKey("slack", "T1", "C1"), "slack:T1:C1"),
        (ConversationKey("slack", "T1", "C1", "1700000000.000100"), "slack:T1:C1:1700000000.000100"),
        (ConversationKey("discord", "dm-U1", "D1", None), "discord:dm-U1:D1"),
        # The console has no channel; an empty part is left out, as is an empty thread.
        (ConversationKey("console", "local", ""), "console:local"),
        (ConversationKey("slack", "T1", "C1", ""), "slack:T1:C1"),
        (ConversationKey("slack", "", "C1", "t"), "slack:C1:t"),
    ],
)
def test_a_key_reads_as_its_parts_joined_and_parses_back(key: ConversationKey, text: str) -> None:
    assert str(key) == text
    assert str(ConversationKey.parse(text)) == text
