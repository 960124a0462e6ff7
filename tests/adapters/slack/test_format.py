"""Markdown to Slack mrkdwn, and the escaping that stops model output from pinging anyone."""

from __future__ import annotations

import re

import pytest

from adapters.slack.format import escape_mrkdwn, markdown_to_mrkdwn, unescape_slack


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and __also bold__", "*bold* and *also bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("***both***", "*_both_*"),
        ("~~gone~~", "~gone~"),
        ("[the docs](https://example.com/a?b=1&c=2)", "<https://example.com/a?b=1&amp;c=2|the docs>"),
        ("[mail](mailto:a@b.c)", "<mailto:a@b.c|mail>"),
        ("[evil](javascript:alert(1))", "evil (javascript:alert(1))"),
        ("# Title", "*Title*"),
        ("### **Bold** heading ###", "*Bold heading*"),
        ("- one\n* two\n  + nested", "• one\n• two\n  • nested"),
        ("1. first\n2. second", "1. first\n2. second"),
        ("a < b && c > d", "a &lt; b &amp;&amp; c &gt; d"),
        ("use `x**2` here", "use `x**2` here"),
        ("---", "───"),
        ("2 * 3 * 4", "2 * 3 * 4"),
        ("snake_case_name", "snake_case_name"),
    ],
)
def test_conversions(markdown: str, mrkdwn: str) -> None:
    assert markdown_to_mrkdwn(markdown) == mrkdwn


def test_code_blocks_are_kept_intact_but_escaped() -> None:
    text = "Look:\n```python\nif a < b and **kwargs:\n    print('# not a heading')\n```\nDone **now**."
    assert markdown_to_mrkdwn(text) == (
        "Look:\n```\nif a &lt; b and **kwargs:\n    print('# not a heading')\n```\nDone *now*."
    )


@pytest.mark.parametrize(
    "attack",
    [
        "<!channel> wake up",
        "<!here>",
        "<!everyone>",
        "<@U123ABC> you",
        "<!subteam^S1234|@team>",
        "[click](<!channel>)",
        "[x](https://a.b/<!here>)",
        "[<!channel>](https://a.b)",
        "`<!channel>`",
        "```\n<!channel>\n```",
        "<https://evil.example|<!channel>>",
        "\x02!channel\x04",
    ],
)
def test_model_output_can_never_form_a_mention(attack: str) -> None:
    out = markdown_to_mrkdwn(attack)
    assert not re.search(r"<[!@#]", out), out


def test_escape_and_unescape_round_trip() -> None:
    text = "a & b < c > d &amp; e"
    assert unescape_slack(escape_mrkdwn(text)) == text
    assert unescape_slack("&lt;@U1&gt; &amp;lt;") == "<@U1> &lt;"
