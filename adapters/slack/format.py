"""Slack text: the model's Markdown as Slack mrkdwn, and the escaping that keeps model output from pinging anyone.

After :func:`markdown_to_mrkdwn`, the only ``<`` in the text open links this module made itself from http(s) or
mailto URLs, so ``<!here>``, ``<!channel>``, ``<!everyone>``, ``<@U123>`` and ``<!subteam^...>`` cannot form.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^(\s*)(```+|~~~+)(.*)$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"\[([^\]\n]+)\]\(\s*([^)\s]+)\s*\)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+")
_BOLD_ITALIC = re.compile(r"\*\*\*(?=\S)(.+?)(?<=\S)\*\*\*")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__")
_ITALIC = re.compile(r"(?<![*\w])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![*\w])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_RULE = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_SAFE_URL = re.compile(r"^(https?://|mailto:)", re.IGNORECASE)
_BOLD_MARK = "\x01"  # stands for Slack's bold asterisk while single-asterisk italics are converted


def escape_mrkdwn(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescape_slack(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _link(match: re.Match[str]) -> str:
    label, url = match.group(1), match.group(2)
    if not _SAFE_URL.match(url):
        return f"{label} ({url})"
    # A "|" would end the URL early; "<", ">" and "&" are escaped with the rest of the run afterwards.
    return f"\x02{url.replace('|', '%7C')}\x03{label}\x04"


def _inline(text: str) -> str:
    """Converts one run of text outside code: links, emphasis, strike; escapes everything else."""
    text = _LINK.sub(_link, text)
    text = escape_mrkdwn(text)
    text = _BOLD_ITALIC.sub(rf"{_BOLD_MARK}_\1_{_BOLD_MARK}", text)
    text = _BOLD.sub(lambda m: f"{_BOLD_MARK}{m.group(1) or m.group(2)}{_BOLD_MARK}", text)
    text = _ITALIC.sub(r"_\1_", text)
    text = _STRIKE.sub(r"~\1~", text)
    # The link placeholders were chosen so that escaping left them alone; only now do they become real "<".
    return text.replace(_BOLD_MARK, "*").replace("\x02", "<").replace("\x03", "|").replace("\x04", ">")


def _line(line: str) -> str:
    if _RULE.match(line):
        return "───"
    heading = _HEADING.match(line)
    if heading:
        title = _BOLD.sub(lambda m: m.group(1) or m.group(2), heading.group(1))
        return f"*{_inline_with_code(title)}*"
    bullet = _BULLET.match(line)
    if bullet:
        return f"{bullet.group(1)}• {_inline_with_code(line[bullet.end() :])}"
    return _inline_with_code(line)


def _inline_with_code(text: str) -> str:
    out: list[str] = []
    last = 0
    for match in _INLINE_CODE.finditer(text):
        out.append(_inline(text[last : match.start()]))
        out.append(f"`{escape_mrkdwn(match.group(2))}`")
        last = match.end()
    out.append(_inline(text[last:]))
    return "".join(out)


def markdown_to_mrkdwn(text: str) -> str:
    """The model's Markdown as Slack mrkdwn; code blocks and spans keep their content (escaped)."""
    for control in ("\x01", "\x02", "\x03", "\x04"):
        text = text.replace(control, "")
    out: list[str] = []
    in_fence = False
    for line in text.split("\n"):
        fence = _FENCE.match(line)
        if fence:
            if in_fence and not fence.group(3).strip():
                in_fence = False
                out.append("```")
            elif not in_fence:
                in_fence = True
                out.append("```")  # Slack shows a language tag as code text, so it is dropped
            else:
                out.append(escape_mrkdwn(line))
            continue
        out.append(escape_mrkdwn(line) if in_fence else _line(line))
    return "\n".join(out)
