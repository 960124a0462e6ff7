"""What a turn sees besides the mention: the thread's earlier messages, replied-to messages, attachments.

:class:`Backfill` stores the messages around a mention (``IncomingMessage.context`` and ``.source``) before its
question, reading each thread once.
"""

from __future__ import annotations

from bot.context.backfill import BOT_MARK, READ_TIMEOUT_S, Backfill

__all__ = ["BOT_MARK", "READ_TIMEOUT_S", "Backfill"]
