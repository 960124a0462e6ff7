"""discord.py driven with less work per answer, with the same requests as its own.

``Messageable.send`` (and ``Message.reply``, which calls it) builds a whole :class:`discord.Message` from Discord's
answer (the author, the member, the reference, flags, components, ...: about 3 % of the instructions per mention,
callgrind, one mention at a time) and draws a nonce from the system's random source. An answer's message needs none
of it: the streaming only ever edits it, and an edit needs its id and channel, a :class:`discord.PartialMessage`.
:func:`send_message` sends the very request ``send`` sends (the same ``handle_message_parameters`` and
``HTTPClient.send_message``, so the rate limits, retries and errors are discord.py's), and hands back that partial
message.

These are discord.py internals (pinned in pyproject.toml): tests/adapters/discord/test_sdk.py compares the requests
with discord.py's own ``send`` and ``reply`` and fails when they differ.
"""

from __future__ import annotations

import random

import discord
from discord.http import handle_message_parameters
from discord.utils import MISSING

#: No mention of anyone in the bot's own sends (merged with the client's, which says the same).
NO_MENTIONS = discord.AllowedMentions.none()


async def send_message(
    trigger: discord.Message, text: str, *, reply: bool, view: discord.ui.View | None = None
) -> discord.PartialMessage:
    """``trigger.reply(text, mention_author=False, allowed_mentions=none, view=view)`` when ``reply``, else
    ``trigger.channel.send(text, allowed_mentions=none, view=view)``: the same request, and the new message as a
    :class:`discord.PartialMessage`."""
    state = trigger._state
    channel = trigger.channel
    with handle_message_parameters(
        content=text,
        # discord.py draws its nonce from the system's random source (a system call per send); a nonce only has to
        # tell the bot's sends apart, so the process's own generator does.
        nonce=random.getrandbits(64),
        view=view,  # None, as in send: no components
        allowed_mentions=NO_MENTIONS,
        message_reference=trigger.to_message_reference_dict() if reply else MISSING,
        previous_allowed_mentions=state.allowed_mentions,
        mention_author=False if reply else None,
    ) as params:
        data = await state.http.send_message(channel.id, params=params)
    try:
        return discord.PartialMessage(channel=channel, id=int(data["id"]))  # type: ignore[arg-type]
    except TypeError:
        # A channel kind discord.py keeps no partial messages for: the message as ``send`` would have built it.
        return state.create_message(channel=channel, data=data)
