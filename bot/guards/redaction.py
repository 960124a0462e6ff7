"""Masks anything that looks like a secret before it reaches a log line or a person."""

from __future__ import annotations

import logging
import re
import threading

MASK = "[REDACTED]"

_SECRET_PATTERNS = re.compile(
    r"""
    \bsk-[A-Za-z0-9_\-]{8,}                 # OpenAI and most OpenAI-compatible keys
    | \bxox[abposr]-[A-Za-z0-9\-]{8,}       # Slack bot/user tokens
    | \bxapp-[A-Za-z0-9\-]{8,}              # Slack app-level tokens
    | \b[MNO][A-Za-z\d_\-]{23,25}\.[A-Za-z\d_\-]{6}\.[A-Za-z\d_\-]{27,}  # Discord bot tokens
    | (?<=Bearer\s)[A-Za-z0-9._~+/=\-]{8,}   # any bearer credential
    """,
    re.VERBOSE,
)

#: Every match of _SECRET_PATTERNS holds one of these literals, or (a Discord token) a dot, six token characters and a
#: dot. Most log lines hold none, and looking costs a tenth of the whole pattern, which tries its five alternatives
#: at every position of the text (15-18 us for a 100-character line, on every record the bot logs).
_DISCORD_MIDDLE = re.compile(r"\.[A-Za-z\d_\-]{6}\.")


def _may_hold_token(text: str) -> bool:
    return (
        "sk-" in text
        or "xox" in text
        or "xapp-" in text
        or "Bearer" in text
        or ("." in text and _DISCORD_MIDDLE.search(text) is not None)
    )


#: Secrets learned while running (a key read from OPENAI_API_KEY_FILE, and each rotation of it): every redaction
#: masks them too, since the filter was installed before the file was read.
_learned: set[str] = set()
#: Per tuple of secrets a caller passes (the filter's configured ones, an endpoint's key), those and the learned ones,
#: longest first: sorted again when one is learned, not on every record. Callers pass a handful of tuples.
_ordered: dict[tuple[str | None, ...], tuple[str, ...]] = {}
_ORDERED_SIZE = 64
#: remember() runs on the loop's thread, redact() on every thread that logs: an order computed from the learned
#: secrets while another was being learned must not be kept, or it would leave that secret out for good. Taken only
#: when a secret is learned and when an order is computed (a cache miss), never per record.
_learning = threading.Lock()


def remember(secret: str | None) -> None:
    """Mask ``secret`` from now on, wherever :func:`redact` or a :class:`RedactingFilter` runs."""
    if secret and len(secret) >= 4 and secret not in _learned:
        with _learning:
            _learned.add(secret)
            _ordered.clear()


def redact(text: str, *secrets: str | None) -> str:
    ordered = _ordered.get(secrets)
    if ordered is None:
        with _learning:
            if len(_ordered) >= _ORDERED_SIZE:
                _ordered.clear()
            # Longest first, so a secret that contains another is masked whole.
            known = {s for s in (*secrets, *_learned) if s and len(s) >= 4}
            ordered = _ordered[secrets] = tuple(sorted(known, key=len, reverse=True))
    for secret in ordered:
        text = text.replace(secret, MASK)
    return _SECRET_PATTERNS.sub(MASK, text) if _may_hold_token(text) else text


class RedactingFilter(logging.Filter):
    """Rewrites every record's message so a key that slipped into a log call is masked.

    ``secrets`` are the configured values (any shape: a local server's key need not look like one).
    """

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, *self._secrets)
        if record.exc_info and record.exc_info[1] is not None:
            # Exception text is rendered later by the formatter; render it now so it can be masked too.
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted, *self._secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
