"""Connecting to a platform: one log line per failed attempt, a growing pause between attempts, and an end to
them when the platform refuses the token.

Shared by the adapters so that every platform fails the same way: a WARNING naming the platform, what failed
and what to check, and when the next attempt comes; the traceback only when DEBUG is on (it says nothing a
person can act on, and forty lines of it every few seconds hide everything else). A token the platform refuses
is a :class:`bot.errors.ConfigError`: no attempt will fix it, and its one line says which setting to correct.
"""

from __future__ import annotations

import logging

import aiohttp

#: The pause after the first failed attempt; each further failure doubles it, up to :data:`MAX_RETRY_S`.
FIRST_RETRY_S = 1.0
#: A platform that is away for long is tried once a minute: soon back once it is, and a short log meanwhile.
MAX_RETRY_S = 60.0


class Backoff:
    """The pauses between attempts: 1, 2, 4, ... seconds, never more than ``cap``; :meth:`reset` once connected."""

    def __init__(self, first: float = FIRST_RETRY_S, cap: float = MAX_RETRY_S) -> None:
        self._first = first
        self._cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._cap)
        return delay

    def reset(self) -> None:
        self._next = self._first


def failed_attempt(log: logging.Logger, platform: str, what: str, exc: BaseException, check: str, delay: float) -> None:
    """Log one failed attempt in one line: ``Slack: opening the Socket Mode connection failed (...); check ...``."""
    log.warning(
        "%s: %s failed (%s); check %s; retrying in %.0f s",
        platform,
        what,
        describe(exc),
        check,
        delay,
        exc_info=log.isEnabledFor(logging.DEBUG),
    )


def describe(exc: BaseException) -> str:
    """What went wrong, in a few words that carry no secret: tokens travel in headers, never in these texts."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        # "Cannot connect to host slack.com:443 ssl:default [Name or service not known]": the host and the cause.
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


#: What to look at when a platform cannot be reached at all.
CHECK_NETWORK = "the network, DNS and any proxy (HTTPS_PROXY) between this machine and {where}"
