"""Where the bot speaks in a channel, and whose conversation a message there joins.

Speak modes, per channel (``/speak``; ``TEAMBOT_SPEAK`` is the default):

- ``thread``: a mention is answered; once the bot has answered in a thread, the thread's later messages are for
  it too, without a mention (as in ChatGPT-in-Slack);
- ``mention``: only mentions (and direct messages) are answered;
- ``all``: every message in the channel is a question (a help channel).

Conversation scopes, per channel (``/scope``; ``TEAMBOT_CONVERSATION_SCOPE`` is the default): ``channel``, one
history for everybody there, or ``person``, each person their own. A thread stays one conversation in both: the
people in it read each other's messages, and so does the bot.

Adapters see every message of the channels the bot is in, most of them not for it; deciding must cost nothing for
those. The modes of the channels an admin changed are held in memory (read at start and every
:data:`REFRESH_S`, so that replicas learn each other's changes), and the threads the bot answered in are a bounded
set: only a message in a thread the set does not know costs one store lookup.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict

from bot.messages import ConversationKey, IncomingMessage
from bot.store import ChannelSettings, Store

log = logging.getLogger(__name__)

SPEAK_MODES = ("thread", "mention", "all")
SCOPES = ("channel", "person")
#: How often the channels' modes are read again, for the changes made on other replicas.
REFRESH_S = 60.0
#: Threads the bot answered in, remembered without asking the store; the oldest are forgotten first (and then
#: cost one lookup the next time someone writes there).
ANSWERED_SIZE = 10_000
#: The thread part of a person's own conversation in a channel: ``slack:T1:C1:person-U1``.
PERSON_PREFIX = "person-"

_Channel = tuple[str, str, str]


class Speaking:
    """The speak mode and conversation scope of each channel, and the threads the bot answered in."""

    def __init__(self, store: Store, speak: str = "thread", scope: str = "channel") -> None:
        self._store = store
        self.default_speak = speak
        self.default_scope = scope
        self._channels: dict[_Channel, ChannelSettings] = {}
        self._answered: OrderedDict[str, None] = OrderedDict()

    async def load(self) -> None:
        """Read the modes of the channels an admin changed (one query)."""
        self._channels = await self._store.speaking_channels()

    async def refresh_periodically(self, interval: float = REFRESH_S) -> None:
        """:meth:`load` every ``interval`` seconds, for as long as the bot runs."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.load()
            except Exception:
                # The database may be away for a while; the modes known stay in force until the next round.
                log.warning("reading the channels' speak modes failed; trying again in %.0f s", interval, exc_info=True)

    def changed(self, key: ConversationKey, settings: ChannelSettings) -> None:
        """An admin changed ``key``'s channel here: in force at once on this replica."""
        channel = (key.platform, key.workspace, key.channel)
        if settings.speak is None and settings.scope is None:
            self._channels.pop(channel, None)
        else:
            self._channels[channel] = settings

    def speak(self, key: ConversationKey) -> str:
        found = self._channels.get((key.platform, key.workspace, key.channel))
        return (found.speak if found else None) or self.default_speak

    def scope(self, key: ConversationKey) -> str:
        found = self._channels.get((key.platform, key.workspace, key.channel))
        return (found.scope if found else None) or self.default_scope

    def scoped(self, key: ConversationKey, user_id: str, *, in_dm: bool = False) -> ConversationKey:
        """The conversation ``user_id``'s message in ``key`` joins: in a ``person`` channel, outside threads, their
        own (the person as the thread part), so history, ``/reset``, budgets and limits per conversation are theirs.
        """
        # The console's one conversation has no channel to share.
        if in_dm or key.thread is not None or not key.channel or not user_id or self.scope(key) != "person":
            return key
        return dataclasses.replace(key, thread=f"{PERSON_PREFIX}{user_id}")

    def scoped_message(self, msg: IncomingMessage) -> IncomingMessage:
        key = self.scoped(msg.key, msg.author_id, in_dm=msg.in_dm)
        return msg if key is msg.key else dataclasses.replace(msg, key=key)

    def answered(self, key: ConversationKey) -> None:
        """The bot answered in ``key``: its later messages need no mention in ``thread`` mode."""
        if key.thread is None:
            return
        name = str(key)
        self._answered[name] = None
        self._answered.move_to_end(name)
        if len(self._answered) > ANSWERED_SIZE:
            self._answered.popitem(last=False)

    async def wants(self, key: ConversationKey, author_id: str) -> bool:
        """Is a message in ``key`` that does not mention the bot (nor is a DM) a question for it all the same?

        Costs no await for a message outside a thread, nor for one in a thread the bot is known to have answered
        in; one store lookup for a message in any other thread of a ``thread`` channel.
        """
        speak = self.speak(key)
        if speak == "all":
            return True
        if speak != "thread" or key.thread is None:
            return False
        name = str(key)
        if name in self._answered:
            self._answered.move_to_end(name)
            return True
        # Answered here before a restart, by another replica, or long ago: the store knows.
        if not await self._store.count_messages(key):
            return False
        self.answered(key)
        return True
