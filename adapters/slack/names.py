"""People's names by Slack user id, for the prompt: loaded for the whole workspace at start, kept fresh by events.

At start a background task reads the workspace's people with ``users.list`` (pages of 200, Slack's advice; Tier 2,
about 20 calls a minute: the adapter's client waits out a 429 and tries again, up to its retry count) into the same
bounded cache a per-person ``users.info`` fills, so a mention by a member costs no Web API call, even the first one.
It stops at the cache's bound (the rest are looked up when they write). ``user_change`` events (Slack's advice for
keeping a local copy of members; ``user_profile_changed`` comes at the same time with the same payload) and
``team_join`` keep it fresh, where the app subscribes to them; an app that does not gets the names at start and asks
``users.info`` for anyone else, as before.

Deleted people are left out of the load (they write no more; their slots go to people who do) and dropped on the
``user_change`` that deletes them; a thread that shows their old messages still gets their name from ``users.info``.
Nothing here delays a mention: the load runs beside the adapter, and a name it has not reached yet is looked up as
before. A refused or failed load is one warning line, and names come from ``users.info`` per person.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.stream import error_code

log = logging.getLogger(__name__)

#: Names kept: about 1 MB. A workspace larger than this has its first CACHE_SIZE members loaded at start, and the
#: others looked up when they write (the least recently used then make room).
CACHE_SIZE = 10_000
#: People a ``users.list`` page: Slack recommends no more than 200.
PAGE_SIZE = 200


def display_name(user: dict[str, Any], user_id: str) -> str:
    """What the prompt calls a person: their display name, else their full name, else their handle, else the id."""
    profile = user.get("profile") or {}
    return str(profile.get("display_name") or profile.get("real_name") or user.get("name") or user_id)


class SlackNames:
    """The adapter's cache of people's names, its start-up load and its updates from events.

    :meth:`name` is what a mention and a thread read ask: a dict lookup for anyone known, ``users.info`` (once,
    then cached) for anyone else. :meth:`start` begins the load, :meth:`stop` cancels it, :meth:`loaded` waits for
    it to end however it ends.
    """

    def __init__(self, client: AsyncWebClient, size: int = CACHE_SIZE) -> None:
        self._client = client
        self._size = size
        self._names: OrderedDict[str, str] = OrderedDict()
        self._load: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._names

    # --- lookups ---------------------------------------------------------------------------------------------

    async def name(self, user_id: str) -> str:
        if not user_id:
            return "someone"
        names = self._names
        if user_id in names:
            names.move_to_end(user_id)
            return names[user_id]
        try:
            response = await self._client.users_info(user=user_id)
            name = display_name(response["user"] or {}, user_id)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The network or a proxy failed, or Slack did not answer in time. The event is acked already and Slack
            # will not resend it: the id stands in for the name, and the next message asks again.
            log.warning("users.info for %s failed: %s", user_id, type(exc).__name__)
            return user_id
        except SlackApiError as exc:
            error = error_code(exc)
            log.warning("users.info for %s failed: %s", user_id, error)
            if error.startswith("http_"):
                return user_id  # Slack or a proxy in between had trouble: ask again next time
            # Slack's own answer (an unknown id) is remembered like a name, so it does not cost a call every time.
            name = user_id
        names[user_id] = name
        if len(names) > self._size:
            names.popitem(last=False)
        return name

    # --- events ----------------------------------------------------------------------------------------------

    def changed(self, user: object) -> None:
        """A ``user_change`` or ``team_join`` event's ``user``: the new name of someone known, or a newcomer while
        there is room. Someone not known when the cache is full stays out: every status change of every member
        comes as a ``user_change``, and in a large workspace they would push out the people who write."""
        if not isinstance(user, dict) or not user.get("id"):
            return
        user_id = str(user["id"])
        if user.get("deleted"):
            self._names.pop(user_id, None)
        elif user_id in self._names or len(self._names) < self._size:
            self._names[user_id] = display_name(user, user_id)

    # --- the load at start -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading the workspace's people, beside the adapter (nothing waits for it)."""
        if self._load is None:
            self._load = asyncio.create_task(self._preload(), name="slack users.list")

    async def stop(self) -> None:
        """Cancel the load if it is still under way."""
        load, self._load = self._load, None
        if load is not None:
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)

    async def loaded(self) -> None:
        """Until the load has ended (done, stopped at the bound, failed or cancelled); at once if never started."""
        if self._load is not None:
            await asyncio.wait([self._load])

    async def _preload(self) -> None:
        names = self._names
        loaded = 0
        cursor = ""
        try:
            while True:
                response = await self._client.users_list(limit=PAGE_SIZE, cursor=cursor or None)
                for user in response.get("members") or ():
                    if not isinstance(user, dict) or not user.get("id") or user.get("deleted"):
                        continue
                    if len(names) >= self._size:
                        log.info(
                            "the workspace has more people than the %d names kept: the rest are looked up "
                            "(users.info) when they first write",
                            self._size,
                        )
                        return
                    user_id = str(user["id"])
                    # Someone already here was looked up or changed while the pages came: as new as this page.
                    if user_id not in names:
                        names[user_id] = display_name(user, user_id)
                        loaded += 1
                cursor = str((response.get("response_metadata") or {}).get("next_cursor") or "")
                if not cursor:
                    break
        except SlackApiError as exc:
            self._failed(error_code(exc), loaded)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._failed(type(exc).__name__, loaded)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug or an answer of an unexpected shape: names come from users.info as before, whatever it was.
            self._failed(type(exc).__name__, loaded)
        else:
            # Not INFO: it comes whenever the list is in, in the middle of the first turns' lines.
            log.debug("loaded the names of %d people of the workspace (users.list)", loaded)

    @staticmethod
    def _failed(reason: str, loaded: int) -> None:
        log.warning(
            "could not load the workspace's people (users.list: %s) after %d names: the others are looked up "
            "(users.info) when they first write%s",
            reason,
            loaded,
            "; the app needs the users:read scope" if reason == "missing_scope" else "",
        )
