"""A loopback fake Discord: REST under ``/api/v10`` and a gateway WebSocket at ``/gw``, for the real discord.py.

Point the client at it with ``fake.patch_discord()`` (sets ``discord.http.Route.BASE`` and
``DiscordWebSocket.DEFAULT_GATEWAY``, restored on exit), or with ``point_discord_at(url)`` when the fake runs in
another process. The gateway says HELLO, answers IDENTIFY with READY and a
GUILD_CREATE per guild, acknowledges heartbeats, and replays missed events on RESUME. With ``shards=N`` it accepts
one connection per shard, as Discord does: each IDENTIFY names its shard, gets the guilds whose
``(guild_id >> 22) % N`` is that shard, and an event goes only to the connection of its guild's shard (DMs: 0).
``dispatch`` sends an event; ``message_create`` and ``interaction_create`` build payloads discord.py parses. REST
calls are recorded (``rest_calls``); messages keep their latest content (``channel_messages``), and ``watchers``
are called with each message the bot sends or edits; ``rate_limit`` answers 429 on demand. ``GET channels/{id}``
describes a channel or thread (``channel_payload``), the thread ``UNCACHED_THREAD_ID`` included, which no gateway
event ever announced.

Like Discord, it holds the client to the gateway's rules: IDENTIFY's intents are recorded (``intents``) and a
privileged intent the app was not granted (``privileged_intents``) closes the socket with 4014; without the
Message Content intent a guild message's content, embeds and attachments arrive empty unless it mentions the bot
or is the bot's own. ``invalidate_session`` sends op 9 (not resumable), so the client must IDENTIFY again;
``disconnect(queued=...)`` dispatches events while the client is away, replayed on RESUME (``replayed``).
Interactions must be answered within ``interaction_deadline`` seconds of their dispatch (else 10062) and only
once (else 40060); followups (``followups``) go to ``POST webhooks/{application_id}/{token}`` once acknowledged.

Attachments: ``add_attachment`` keeps bytes and returns the attachment object for ``message_create(attachments=...)``,
its ``url`` served by the fake at ``/attachments/...`` (the host of the overridden API base, as a CDN stand-in);
``attachment_requests`` records the paths asked.

Tested against discord.py 2.7.1 (pinned in pyproject.toml: these are internals).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import discord
import discord.gateway
import discord.http
import yarl
from aiohttp import WSMsgType, web

from tests.fakes.loopback import LoopbackServer

BOT_ID = "1000"
APP_ID = "1000"
GUILD_ID = "2000"
CHANNEL_ID = "3000"
#: A second guild, there only when the fake runs several shards: its id puts it on shard 1 of 2.
SECOND_GUILD_ID = str(1 << 22)
SECOND_CHANNEL_ID = str((1 << 22) + 1)
OTHER_CHANNEL_ID = "3001"
THREAD_ID = "3500"
#: A thread of CHANNEL_ID that the gateway never told the client about (not in GUILD_CREATE): only
#: ``GET channels/{id}`` says what it is, as for a thread discord.py missed or dropped from its cache.
UNCACHED_THREAD_ID = "3501"
ADMIN_ROLE_ID = "2100"
MANAGE_GUILD = 1 << 5
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DM_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT
EPHEMERAL = 1 << 6
EVERYONE_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 16)  # view channel, send messages, read history


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses JSON only when the content type is exactly application/json.
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def user_payload(user_id: str, username: str, *, bot: bool = False, global_name: str | None = None) -> dict[str, Any]:
    return {
        "id": user_id,
        "username": username,
        "discriminator": "0",
        "global_name": global_name,
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
    }


BOT_USER = user_payload(BOT_ID, "teambot", bot=True)
ADA = user_payload("4001", "ada", global_name="Ada")
GRACE = user_payload("4002", "grace", global_name="Grace")
OTHER_BOT = user_payload("4009", "otherbot", bot=True)


@dataclass
class StoredMessage:
    id: str
    channel_id: str
    content: str
    payload: dict[str, Any]
    edits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def components(self) -> list[dict[str, Any]]:
        """The message's components as last sent: an edit that names none keeps the earlier ones."""
        for body in reversed([self.payload, *self.edits]):
            if "components" in body:
                return list(body["components"] or [])
        return []


@dataclass
class Interaction:
    """An interaction the fake dispatched: when, and whether it has had its one initial response."""

    id: str
    token: str
    dispatched_at: float
    acknowledged: bool = False


class FakeDiscord(LoopbackServer):
    """The fake; ``async with FakeDiscord() as fake, fake.patch_discord(): ...``."""

    def __init__(
        self,
        *,
        token: str | None = None,
        shards: int = 1,
        privileged_intents: int = 0,
        extra_channels: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.token = token
        #: Text channels of the first guild besides "general" and "random", announced in its GUILD_CREATE.
        self.extra_channels = extra_channels
        self.shards = shards
        #: The privileged intents switched on for the app in the Developer Portal.
        self.privileged_intents = privileged_intents
        #: Per shard, the intents its last IDENTIFY asked for.
        self.intents: dict[int, int] = {}
        self.interaction_deadline = 3.0
        self.followups: list[dict[str, Any]] = []
        self.replayed: list[dict[str, Any]] = []
        self.invalidated_sessions = 0
        self._interactions: dict[str, Interaction] = {}
        self.identified_shards: list[int] = []
        self.rest_calls: list[tuple[str, str, Any]] = []
        self.limited: list[tuple[str, str]] = []
        self.messages: dict[str, StoredMessage] = {}
        #: What people wrote, as Discord keeps it (full payloads by id): every MESSAGE_CREATE dispatched, and what
        #: ``post`` adds unannounced; served by ``GET channels/{id}/messages[/{id}]`` with the bot's own messages.
        self.posted: dict[str, dict[str, Any]] = {}
        #: Called with a message each time the bot sends or edits it, once its content is stored.
        self.watchers: list[Callable[[StoredMessage], None]] = []
        self.interaction_responses: list[dict[str, Any]] = []
        self.command_syncs: list[tuple[str, list[dict[str, Any]]]] = []
        self.typing_calls: list[str] = []
        #: How many typing calls to come are refused (403 Missing Permissions): a channel the bot may not type in.
        self.typing_refusals = 0
        self.identify_count = 0
        self.resume_count = 0
        self.identify_payloads: list[dict[str, Any]] = []
        self._authorization = ""
        self._ids = itertools.count(900_000)
        # Per shard: its connection, its sequence numbers and what it was sent (for replay on RESUME).
        self._sockets: dict[int, web.WebSocketResponse] = {}
        self._sequence: dict[int, int] = {}
        self._sent: dict[int, list[dict[str, Any]]] = {}
        self._ready_shards: set[int] = set()
        self._session_shards: dict[str, int] = {}
        self._limits: list[tuple[str, re.Pattern[str], float]] = []
        self.attachments: dict[str, tuple[bytes, str]] = {}
        self.attachment_requests: list[str] = []
        self._forbidden: list[tuple[str, re.Pattern[str]]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/gw", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        app.router.add_get("/attachments/{path:.*}", self._attachment)

    def patch_discord(self) -> contextlib.AbstractContextManager[None]:
        return point_discord_at(self.url)

    # --- what tests read and do ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every shard has had its READY (or RESUMED) since it last lost its connection or session."""
        return len(self._ready_shards) == self.shards

    async def wait_ready(self, within: float = 10.0) -> None:
        await self.wait_for(lambda: self.ready, within)

    def shard_of(self, guild_id: str | None) -> int:
        return 0 if guild_id is None else (int(guild_id) >> 22) % self.shards

    def guild_ids(self) -> list[str]:
        return [GUILD_ID, SECOND_GUILD_ID] if self.shards > 1 else [GUILD_ID]

    def channel_messages(self, channel_id: str) -> list[StoredMessage]:
        return [m for m in self.messages.values() if m.channel_id == channel_id]

    def calls(self, method: str, pattern: str) -> list[Any]:
        return [body for m, path, body in self.rest_calls if m == method and re.fullmatch(pattern, path)]

    def forbid(self, method: str, pattern: str) -> None:
        """Matching requests get 403 Missing Access (code 50001) from now on."""
        self._forbidden.append((method, re.compile(pattern)))

    def rate_limit(self, method: str, pattern: str, times: int = 1, retry_after: float = 0.2) -> None:
        """The next ``times`` matching requests get 429 and change nothing."""
        self._limits.extend([(method, re.compile(pattern), retry_after)] * times)

    async def dispatch(self, event: str, data: dict[str, Any], *, shard: int | None = None) -> None:
        """Send an event on its shard's connection: the one its ``guild_id`` falls on, unless ``shard`` says."""
        shard = self.shard_of(data.get("guild_id")) if shard is None else shard
        if event in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
            self.posted[data["id"]] = data
            data = self._as_seen(data, self.intents.get(shard, 0))
        elif event == "INTERACTION_CREATE":
            now = asyncio.get_running_loop().time()
            self._interactions[data["id"]] = Interaction(data["id"], data["token"], now)
        self._sequence[shard] = self._sequence.get(shard, 0) + 1
        frame = {"op": 0, "t": event, "s": self._sequence[shard], "d": data}
        self._sent.setdefault(shard, []).append(frame)
        socket = self._sockets.get(shard)
        if socket is not None and not socket.closed:
            await socket.send_str(json.dumps(frame))

    async def disconnect(
        self, code: int = 4000, *, shard: int = 0, queued: tuple[tuple[str, dict[str, Any]], ...] = ()
    ) -> None:
        """Drop the connection as Discord does on a hiccup; the client should come back with RESUME.

        ``queued`` events are dispatched after the connection is gone and before the client can be back, so they
        reach it only as a replay on RESUME.
        """
        socket = self._sockets.pop(shard, None)
        self._ready_shards.discard(shard)
        for event, data in queued:
            await self.dispatch(event, data, shard=shard)
        if socket is not None:
            await socket.close(code=code)

    async def invalidate_session(self, *, shard: int = 0) -> None:
        """Op 9 with ``d: false``: the session is gone, so the client must IDENTIFY afresh (and gets a new READY)."""
        socket = self._sockets.get(shard)
        for session in [s for s, on in self._session_shards.items() if on == shard]:
            del self._session_shards[session]
        self._ready_shards.discard(shard)
        self.invalidated_sessions += 1
        if socket is not None and not socket.closed:
            await socket.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))

    async def stop(self) -> None:
        for socket in list(self._sockets.values()):
            if not socket.closed:
                await socket.close()
        await super().stop()

    def _stored(self, message: StoredMessage) -> None:
        for watcher in self.watchers:
            watcher(message)

    def new_id(self) -> str:
        return str(next(self._ids))

    def post(self, *payloads: dict[str, Any]) -> None:
        """Messages that exist on Discord without the bot having been told (sent before it listened, or in a
        channel it does not watch): only REST reads them."""
        for payload in payloads:
            self.posted[payload["id"]] = payload

    def message_create(
        self,
        content: str,
        *,
        author: dict[str, Any] = ADA,
        channel_id: str = CHANNEL_ID,
        guild_id: str | None = GUILD_ID,
        mentions: tuple[dict[str, Any], ...] = (),
        mention_roles: tuple[str, ...] = (),
        referenced: dict[str, Any] | None = None,
        message_id: str | None = None,
        forwarded: dict[str, Any] | None = None,
        attachments: tuple[dict[str, Any], ...] = (),
    ) -> dict[str, Any]:
        """A message's payload as the gateway sends it. ``referenced`` makes it a reply (with that message as
        ``referenced_message``, whose own ``referenced_message`` Discord never nests); ``forwarded`` makes it a
        forward of that message: no content of its own, the original's in ``message_snapshots``."""
        payload = self._message(content, author, channel_id, guild_id, message_id or self.new_id())
        payload["attachments"] = list(attachments)
        payload["mentions"] = list(mentions)
        payload["mention_roles"] = list(mention_roles)
        if guild_id is not None:
            payload["member"] = {"roles": [], "joined_at": _now(), "deaf": False, "mute": False, "flags": 0}
        if referenced is not None:
            payload["type"] = 19
            payload["referenced_message"] = {k: v for k, v in referenced.items() if k != "referenced_message"}
            payload["message_reference"] = {
                "message_id": referenced["id"],
                "channel_id": channel_id,
                "guild_id": guild_id,
                "type": 0,
            }
        if forwarded is not None:
            payload["message_reference"] = {
                "message_id": forwarded["id"],
                "channel_id": forwarded["channel_id"],
                "guild_id": forwarded.get("guild_id"),
                "type": 1,
            }
            snapshot = {k: forwarded[k] for k in ("type", "content", "embeds", "attachments", "timestamp", "flags")}
            snapshot |= {"edited_timestamp": None, "mentions": [], "mention_roles": []}
            payload["message_snapshots"] = [{"message": snapshot}]
        return payload

    def add_attachment(
        self, filename: str, data: bytes, content_type: str, *, size: int | None = None, channel_id: str = CHANNEL_ID
    ) -> dict[str, Any]:
        """Keep ``data`` and return the attachment object Discord puts in a message (``size`` may lie)."""
        attachment_id = self.new_id()
        path = f"{channel_id}/{attachment_id}/{filename}"
        self.attachments[path] = (data, content_type)
        url = f"{self.url}/attachments/{path}?ex=0&is=0&hm=signature"
        return {
            "id": attachment_id,
            "filename": filename,
            "content_type": content_type,
            "size": len(data) if size is None else size,
            "url": url,
            "proxy_url": url,
        }

    async def _attachment(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        self.attachment_requests.append(path)
        await self._notify()
        if path not in self.attachments:
            return web.Response(status=404, text="not found")
        data, content_type = self.attachments[path]
        return web.Response(body=data, headers={"Content-Type": content_type or "application/octet-stream"})

    def interaction_create(
        self,
        name: str,
        *,
        user: dict[str, Any] = ADA,
        channel_id: str = CHANNEL_ID,
        guild_id: str | None = GUILD_ID,
        roles: tuple[str, ...] = (),
        options: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        interaction_id = self.new_id()
        data: dict[str, Any] = {
            "id": interaction_id,
            "application_id": APP_ID,
            "type": 2,
            "data": {"id": self.new_id(), "name": name, "type": 1, "options": options or []},
            "channel_id": channel_id,
            "channel": self.channel_payload(channel_id) or {"id": channel_id, "type": 1, "recipients": [user]},
            "token": f"itoken-{interaction_id}",
            "version": 1,
            "locale": "en-US",
            "guild_locale": "en-US",
            "app_permissions": str((1 << 11) | (1 << 10)),
            "entitlements": [],
            "authorizing_integration_owners": {"0": guild_id or "0"},
            "context": 0 if guild_id else 1,
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if guild_id is not None:
            data["guild_id"] = guild_id
            permissions = EVERYONE_PERMISSIONS | (MANAGE_GUILD if ADMIN_ROLE_ID in roles else 0)
            data["member"] = {
                "user": user,
                "roles": list(roles),
                "joined_at": _now(),
                "deaf": False,
                "mute": False,
                "flags": 0,
                "permissions": str(permissions),
            }
        else:
            data["user"] = user
        return data

    def message_command(
        self,
        name: str,
        target: dict[str, Any],
        *,
        user: dict[str, Any] = ADA,
        guild_id: str | None = GUILD_ID,
        roles: tuple[str, ...] = (),
        interaction_id: str | None = None,
    ) -> dict[str, Any]:
        """A message context-menu command (Apps → ``name``) picked on ``target`` (a message payload, as
        ``message_create`` builds it): an interaction of type 2 whose data is of type 3, the message in
        ``resolved.messages``, its content whole whatever the intents (Discord sends it to the app it is for)."""
        data = self.interaction_create(name, user=user, channel_id=target["channel_id"], guild_id=guild_id, roles=roles)
        if interaction_id is not None:
            data["id"], data["token"] = interaction_id, f"itoken-{interaction_id}"
        data["data"] = {
            "id": self.new_id(),
            "name": name,
            "type": 3,
            "target_id": target["id"],
            "resolved": {"messages": {target["id"]: target}},
        }
        return data

    def component_interaction(
        self,
        message: StoredMessage,
        custom_id: str,
        *,
        user: dict[str, Any] = ADA,
        guild_id: str | None = GUILD_ID,
        components: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A click on a button (component type 2) of one of the bot's messages: an interaction of type 3
        (MESSAGE_COMPONENT) carrying the message with its components, as Discord sends it. ``components`` are
        those the clicking client still shows, when not the message's latest (a client that missed an edit)."""
        data = self.interaction_create("", user=user, channel_id=message.channel_id, guild_id=guild_id)
        shown = self._message(message.content, BOT_USER, message.channel_id, guild_id, message.id)
        data["type"] = 3
        data["data"] = {"custom_id": custom_id, "component_type": 2}
        data["message"] = shown | {"components": message.components if components is None else components}
        return data

    # --- payloads ------------------------------------------------------------------------------------------

    @staticmethod
    def _as_seen(message: dict[str, Any], intents: int) -> dict[str, Any]:
        """What a connection with these intents receives: without Message Content, a guild message that neither
        mentions the bot nor is its own comes with empty content, embeds, attachments and components."""
        seen = dict(message)
        if seen.get("referenced_message"):
            seen["referenced_message"] = FakeDiscord._as_seen(seen["referenced_message"], intents)
        readable = (
            intents & INTENT_MESSAGE_CONTENT
            or seen.get("guild_id") is None
            or seen["author"]["id"] == BOT_ID
            or any(user["id"] == BOT_ID for user in seen.get("mentions", []))
        )
        if not readable:
            seen |= {"content": "", "embeds": [], "attachments": [], "components": []}
            if seen.get("message_snapshots"):
                empty = {"content": "", "embeds": [], "attachments": []}
                seen["message_snapshots"] = [{"message": s["message"] | empty} for s in seen["message_snapshots"]]
        return seen

    def _message(
        self, content: str, author: dict[str, Any], channel_id: str, guild_id: str | None, message_id: str
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": message_id,
            "channel_id": channel_id,
            "author": author,
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        if guild_id is not None:
            payload["guild_id"] = guild_id
        return payload

    def _guild(self, guild_id: str = GUILD_ID) -> dict[str, Any]:
        member = {"roles": [], "joined_at": _now(), "deaf": False, "mute": False, "flags": 0}
        guild: dict[str, Any] = {
            "id": GUILD_ID,
            "name": "Test Guild",
            "icon": None,
            "owner_id": "4099",  # nobody in the tests: an owner holds every permission
            "unavailable": False,
            "member_count": 3,
            "large": False,
            "features": [],
            "emojis": [],
            "stickers": [],
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "system_channel_flags": 0,
            "roles": [
                {
                    "id": GUILD_ID,
                    "name": "@everyone",
                    "permissions": str(EVERYONE_PERMISSIONS),
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                },
                {
                    "id": ADMIN_ROLE_ID,
                    "name": "Admins",
                    "permissions": str(EVERYONE_PERMISSIONS | MANAGE_GUILD),
                    "position": 1,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": True,
                    "flags": 0,
                },
            ],
            "channels": [
                _text_channel(CHANNEL_ID, guild_id, "general", 0),
                _text_channel(OTHER_CHANNEL_ID, guild_id, "random", 1),
                *(_text_channel(c, guild_id, f"extra-{c}", 2 + n) for n, c in enumerate(self.extra_channels)),
            ],
            "threads": [_thread(THREAD_ID, "a thread")],
            "members": [
                member | {"user": BOT_USER},
                member | {"user": ADA},
                member | {"user": GRACE, "roles": [ADMIN_ROLE_ID]},
            ],
            "voice_states": [],
            "presences": [],
        }
        if guild_id == GUILD_ID:
            return guild
        return guild | {
            "id": guild_id,
            "name": "Second Guild",
            "roles": [role | {"id": guild_id} for role in guild["roles"][:1]],
            "channels": [_text_channel(SECOND_CHANNEL_ID, guild_id, "general", 0)],
            "threads": [],
        }

    # --- the gateway ---------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}))
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            op = frame.get("op")
            if op == 1:
                await socket.send_str(json.dumps({"op": 11}))
            elif op == 2:
                await self._identify(socket, frame["d"])
            elif op == 6:
                await self._resume(socket, frame["d"])
        return socket

    async def _identify(self, socket: web.WebSocketResponse, data: dict[str, Any]) -> None:
        self.identify_count += 1
        self.identify_payloads.append(data)
        shard, count = data.get("shard") or (0, 1)
        if count != self.shards or not 0 <= shard < count:
            await socket.close(code=4010)  # Discord's "invalid shard"
            return
        intents = int(data.get("intents", 0))
        self.intents[shard] = intents
        if intents & PRIVILEGED_INTENTS & ~self.privileged_intents:
            await socket.close(code=4014)  # Discord's "disallowed intents"
            await self._notify()
            return
        self.identified_shards.append(shard)
        self._sockets[shard] = socket
        self._sent[shard] = []
        self._sequence[shard] = 0
        session = f"session-{self.identify_count}"
        self._session_shards[session] = shard
        guilds = [g for g in self.guild_ids() if self.shard_of(g) == shard]
        ready = {
            "v": 10,
            "user": BOT_USER,
            "guilds": [{"id": g, "unavailable": True} for g in guilds],
            "session_id": session,
            "shard": [shard, count],
            "resume_gateway_url": f"ws{self.url[4:]}/gw",
            "application": {"id": APP_ID, "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        await self.dispatch("READY", ready, shard=shard)
        for guild in guilds:
            await self.dispatch("GUILD_CREATE", self._guild(guild), shard=shard)
        self._ready_shards.add(shard)
        await self._notify()

    async def _resume(self, socket: web.WebSocketResponse, data: dict[str, Any]) -> None:
        self.resume_count += 1
        shard = self._session_shards.get(str(data.get("session_id")))
        if shard is None:
            # An unknown or invalidated session cannot be resumed: the client must IDENTIFY.
            await socket.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
            return
        self._sockets[shard] = socket
        missed = [f for f in self._sent.get(shard, []) if f["s"] > int(data.get("seq") or 0)]
        for frame in missed:
            await socket.send_str(json.dumps(frame))
        self.replayed.extend(missed)
        await self.dispatch("RESUMED", {}, shard=shard)
        self._ready_shards.add(shard)
        await self._notify()

    # --- REST ----------------------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        body: Any = None
        if request.can_read_body and request.content_type == "application/json":
            body = await request.json()
        for index, (method, pattern, retry_after) in enumerate(self._limits):
            if method == request.method and pattern.fullmatch(path):
                del self._limits[index]
                self.limited.append((request.method, path))
                await self._notify()
                return _json(
                    {"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
                    429,
                    {
                        "Retry-After": f"{retry_after:g}",
                        "X-RateLimit-Limit": "5",
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset-After": f"{retry_after:g}",
                        "X-RateLimit-Bucket": "fake-bucket",
                        "X-RateLimit-Scope": "user",
                        # discord.py treats a 429 without Discord's Via header as a Cloudflare ban and gives up.
                        "Via": "1.1 google",
                    },
                )
        if any(method == request.method and pattern.fullmatch(path) for method, pattern in self._forbidden):
            return _json({"message": "Missing Access", "code": 50001}, 403)
        self.rest_calls.append((request.method, path, body))
        self._authorization = request.headers.get("Authorization", "")
        try:
            return self._answer(request.method, path, body, request.query)
        finally:
            await self._notify()

    def channel_payload(self, channel_id: str) -> dict[str, Any] | None:
        """The guild channel or thread with this id, as Discord describes it; None for a DM or an unknown id."""
        if channel_id == UNCACHED_THREAD_ID:
            return _thread(UNCACHED_THREAD_ID, "a thread the client missed")
        for guild_id in self.guild_ids():
            guild = self._guild(guild_id)
            for channel in guild["channels"] + guild["threads"]:
                if channel["id"] == channel_id:
                    return dict(channel)
        return None

    def _channel_log(self, channel_id: str) -> list[dict[str, Any]]:
        """Every message in the channel, people's and the bot's, oldest first, as REST returns one."""
        people = [m for m in self.posted.values() if m["channel_id"] == channel_id]
        guild_id = self._guild_of(channel_id)
        bots = [
            self._message(m.content, BOT_USER, channel_id, guild_id, m.id) for m in self.channel_messages(channel_id)
        ]
        return sorted(people + bots, key=lambda m: int(m["id"]))

    def _kept(self, channel_id: str, message_id: str) -> dict[str, Any] | None:
        """One message as ``GET channels/{id}/messages/{id}`` returns it: a reply with its ``referenced_message``
        (None when deleted), one level deep."""
        found = next((m for m in self._channel_log(channel_id) if m["id"] == message_id), None)
        if found is None:
            return None
        found = {k: v for k, v in found.items() if k != "referenced_message"}
        reference = found.get("message_reference")
        if reference and reference.get("type", 0) == 0:
            log = self._channel_log(reference.get("channel_id", channel_id))
            target = next((m for m in log if m["id"] == reference["message_id"]), None)
            found["referenced_message"] = (
                {k: v for k, v in target.items() if k != "referenced_message"} if target else None
            )
        return found

    def _history(self, channel_id: str, query: Any) -> list[dict[str, Any]]:
        """``GET channels/{id}/messages``: up to ``limit`` messages before ``before``, or just after ``after``, or
        the newest; newest first, as Discord sends them."""
        messages = self._channel_log(channel_id)
        limit = min(int(query.get("limit", 50)), 100)
        if "before" in query:
            messages = [m for m in messages if int(m["id"]) < int(query["before"])][-limit:]
        elif "after" in query:
            messages = [m for m in messages if int(m["id"]) > int(query["after"])][:limit]
        else:
            messages = messages[-limit:]
        return [self._kept(channel_id, m["id"]) or m for m in reversed(messages)]

    @staticmethod
    def _guild_of(channel_id: str) -> str | None:
        if channel_id.startswith("7"):  # the fake's DM channels
            return None
        return SECOND_GUILD_ID if channel_id == SECOND_CHANNEL_ID else GUILD_ID

    def _answer(self, method: str, path: str, body: Any, query: Any = None) -> web.Response:
        route = (method, path)
        if route == ("GET", "users/@me"):
            if self.token is not None and self._authorization != f"Bot {self.token}":
                return _json({"message": "401: Unauthorized", "code": 0}, 401)
            return _json(BOT_USER)
        if route == ("GET", "oauth2/applications/@me"):
            return _json(
                {
                    "id": APP_ID,
                    "name": "teambot",
                    "icon": None,
                    "description": "",
                    "bot_public": True,
                    "bot_require_code_grant": False,
                    "owner": ADA,
                    "verify_key": "0" * 64,
                    # GATEWAY_MESSAGE_CONTENT: the intent is switched on in the Developer Portal.
                    "flags": (1 << 18) if self.privileged_intents & INTENT_MESSAGE_CONTENT else 0,
                    "team": None,
                    "summary": "",
                }
            )
        if route == ("GET", "users/@me/guilds"):
            # The bot's servers, as partial guilds (discord.py's fetch_guilds).
            partial: dict[str, Any] = {"icon": None, "owner": False, "permissions": "0", "features": []}
            return _json([{"id": g, "name": f"guild {g}", **partial} for g in self.guild_ids()])
        if route in (("GET", "gateway"), ("GET", "gateway/bot")):
            return _json(
                {
                    "url": f"ws{self.url[4:]}/gw",
                    "shards": self.shards,
                    "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1},
                }
            )
        if method == "GET" and (match := re.fullmatch(r"channels/(\d+)", path)):
            channel = self.channel_payload(match.group(1))
            if channel is None:
                return _json({"message": "Unknown Channel", "code": 10003}, 404)
            return _json(channel)
        if method == "GET" and (match := re.fullmatch(r"channels/(\d+)/messages/(\d+)", path)):
            found = self._kept(match.group(1), match.group(2))
            if found is None:
                return _json({"message": "Unknown Message", "code": 10008}, 404)
            return _json(self._as_seen(found, self.privileged_intents))
        if method == "GET" and (match := re.fullmatch(r"channels/(\d+)/messages", path)):
            return _json([self._as_seen(m, self.privileged_intents) for m in self._history(match.group(1), query)])
        if match := re.fullmatch(r"channels/(\d+)/typing", path):
            self.typing_calls.append(match.group(1))
            if self.typing_refusals > 0:
                self.typing_refusals -= 1
                return _json({"message": "Missing Permissions", "code": 50013}, 403)
            return web.Response(status=204)
        if method == "POST" and (match := re.fullmatch(r"channels/(\d+)/messages", path)):
            channel_id = match.group(1)
            guild_id = self._guild_of(channel_id)
            payload = self._message(body.get("content", ""), BOT_USER, channel_id, guild_id, self.new_id())
            if body.get("message_reference"):
                payload["message_reference"] = body["message_reference"]
            stored = StoredMessage(payload["id"], channel_id, payload["content"], body)
            self.messages[stored.id] = stored
            self._stored(stored)
            return _json(payload)
        if method == "PATCH" and (match := re.fullmatch(r"channels/(\d+)/messages/(\d+)", path)):
            stored = self.messages[match.group(2)]
            stored.edits.append(body)
            stored.content = body.get("content", stored.content)
            self._stored(stored)
            guild_id = self._guild_of(stored.channel_id)
            return _json(self._message(stored.content, BOT_USER, stored.channel_id, guild_id, stored.id))
        if method == "POST" and (match := re.fullmatch(r"interactions/(\d+)/([^/]+)/callback", path)):
            interaction = self._interactions.get(match.group(1))
            now = asyncio.get_running_loop().time()
            if interaction is None or now - interaction.dispatched_at > self.interaction_deadline:
                return _json({"message": "Unknown interaction", "code": 10062}, 404)
            if interaction.acknowledged:
                return _json({"message": "Interaction has already been acknowledged.", "code": 40060}, 400)
            interaction.acknowledged = True
            self.interaction_responses.append(body)
            message = body.get("data") or {}
            return _json(
                {
                    "interaction": {
                        "id": match.group(1),
                        "type": 2,
                        "response_message_id": self.new_id(),
                        "response_message_loading": body.get("type") == 5,
                        "response_message_ephemeral": bool(message.get("flags", 0) & 64),
                    },
                    "resource": {
                        "type": body.get("type", 4),
                        "message": self._message(
                            message.get("content", ""), BOT_USER, CHANNEL_ID, GUILD_ID, self.new_id()
                        )
                        | {"flags": message.get("flags", 0)},
                    },
                }
            )
        if method == "POST" and (match := re.fullmatch(rf"webhooks/{APP_ID}/([^/]+)", path)):
            token = match.group(1)
            if not any(i.token == token and i.acknowledged for i in self._interactions.values()):
                return _json({"message": "Unknown Webhook", "code": 10015}, 404)
            self.followups.append(body)
            flags = body.get("flags", 0)
            message = self._message(body.get("content", ""), BOT_USER, CHANNEL_ID, GUILD_ID, self.new_id())
            return _json(message | {"flags": flags, "webhook_id": APP_ID, "application_id": APP_ID})
        if method == "PUT" and (match := re.fullmatch(r"applications/(\d+)(?:/guilds/(\d+))?/commands", path)):
            scope = f"guild:{match.group(2)}" if match.group(2) else "global"
            self.command_syncs.append((scope, body))
            return _json(
                [
                    command
                    | {
                        # Discord gives message and user commands an empty description.
                        "description": command.get("description", ""),
                        "id": self.new_id(),
                        "application_id": APP_ID,
                        "version": "1",
                        "type": command.get("type", 1),
                        "guild_id": match.group(2),
                        "default_member_permissions": None,
                        "dm_permission": True,
                        "nsfw": False,
                    }
                    for command in body
                ]
            )
        if method == "GET" and re.fullmatch(r"applications/(\d+)(?:/guilds/(\d+))?/commands", path):
            return _json([])
        return _json({"message": f"fake Discord has no route {method} {path}", "code": 0}, 404)


@contextlib.contextmanager
def point_discord_at(url: str, *, gateway: str | None = None) -> Iterator[None]:
    """Send discord.py's REST calls and gateway connection to the fake Discord at ``url`` (``http://host:port``),
    in this process or another; restored on exit. ``gateway`` (a ``ws://`` URL) sends the gateway connection
    elsewhere: to a port nothing listens on, for a gateway that cannot be reached."""
    old_base, old_gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = f"{url}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway or f"ws{url[4:]}/gw")
    try:
        yield
    finally:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_base, old_gateway


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _text_channel(channel_id: str, guild_id: str, name: str, position: int) -> dict[str, Any]:
    return {
        "id": channel_id,
        "type": 0,
        "guild_id": guild_id,
        "name": name,
        "position": position,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": None,
        "topic": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
    }


def _thread(thread_id: str, name: str, parent_id: str = CHANNEL_ID) -> dict[str, Any]:
    """A public thread of the first guild (Discord's type 11): a channel with a ``parent_id``."""
    return {
        "id": thread_id,
        "type": 11,
        "guild_id": GUILD_ID,
        "parent_id": parent_id,
        "owner_id": "4001",
        "name": name,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "message_count": 0,
        "member_count": 1,
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": 1440,
            "archive_timestamp": _now(),
            "locked": False,
        },
    }
