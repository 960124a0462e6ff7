"""Which turn a log line belongs to, added to every record logged while the turn runs (tasks inherit it)."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

_turn: contextvars.ContextVar[str] = contextvars.ContextVar("teambot_turn", default="-")


@contextlib.contextmanager
def turn(key: str, message_id: str) -> Iterator[None]:
    """Within this block every log line carries the conversation key (platform first) and the message id."""
    token = _turn.set(f"{key} {message_id}")
    try:
        yield
    finally:
        _turn.reset(token)


class TurnFilter(logging.Filter):
    """Sets ``record.turn`` for the formatter's ``%(turn)s``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.turn = _turn.get()
        return True
