"""Masks anything that looks like a secret before it reaches a log line or a person."""

from __future__ import annotations

import logging
import re

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


#: Secrets learned while running (a key read from OPENAI_API_KEY_FILE, and each rotation of it): every redaction
#: masks them too, since the filter was installed before the file was read.
_learned: set[str] = set()


def remember(secret: str | None) -> None:
    """Mask ``secret`` from now on, wherever :func:`redact` or a :class:`RedactingFilter` runs."""
    if secret and len(secret) >= 4:
        _learned.add(secret)


def redact(text: str, *secrets: str | None) -> str:
    # Longest first, so a secret that contains another is masked whole.
    known = {s for s in (*secrets, *_learned) if s and len(s) >= 4}
    for secret in sorted(known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _SECRET_PATTERNS.sub(MASK, text)


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
