"""Which turn a log line belongs to, added to every record logged while the turn runs (tasks inherit it)."""

from __future__ import annotations

import contextlib
import contextvars
import logging

_turn: contextvars.ContextVar[str] = contextvars.ContextVar("teambot_turn", default="-")


class _Turn:
    """The block of :func:`turn`: a plain context manager, not a generator's (a quarter of the cost, every turn)."""

    __slots__ = ("_text", "_token")

    def __init__(self, text: str) -> None:
        self._text = text

    def __enter__(self) -> None:
        self._token = _turn.set(self._text)

    def __exit__(self, *exc: object) -> None:
        _turn.reset(self._token)


def turn(key: str, message_id: str) -> contextlib.AbstractContextManager[None]:
    """Within this block every log line carries the conversation key (platform first) and the message id."""
    return _Turn(f"{key} {message_id}")


class TurnFilter(logging.Filter):
    """Sets ``record.turn`` for the formatter's ``%(turn)s``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.turn = _turn.get()
        return True
