"""Slack: events and slash commands over Socket Mode or HTTP (``app``), native streaming and the thinking status
(``stream``), and Markdown turned into mrkdwn (``format``)."""

from __future__ import annotations

from adapters.slack.app import TEXT_LIMIT, SlackAdapter, SlackSink, check_slack

__all__ = ["TEXT_LIMIT", "SlackAdapter", "SlackSink", "check_slack"]
