"""A loopback fake Slack: the Web API, a Socket Mode WebSocket and slash-command response URLs.

Started in the test's own loop on 127.0.0.1, port 0; the real ``AsyncWebClient`` talks to it through
``base_url=fake.api_url``. It records every call (``calls``), keeps posted and streamed messages with their latest
text (``message_text``), and fails on demand (``rate_limit``, ``refuse``, ``error_page``, and at the network
level ``drop`` and ``stall``). Threads (``threads``, filled with ``thread_message`` and by the bot's own replies)
are served by ``conversations.replies`` as Slack does: root first, ``oldest``/``latest``/``inclusive``, pages of
``limit`` (at most ``replies_page_cap``) with a ``next_cursor``, and ``missing_scope`` where the token lacks the
channel type's history scope (``scopes``, also listed in every answer's ``x-oauth-scopes`` header). It checks the
arguments Slack requires of the AI-app methods (``assistant.threads.*``, ``chat.startStream``/``appendStream``/
``stopStream``) and answers ``invalid_arguments`` without them. The people in ``users`` (copied: a test adds people to
its own fake) answer ``users.info``, and ``users.list`` lists those of the workspace in pages of ``limit`` with a
``next_cursor`` (``missing_scope`` without ``users:read``); ``member`` describes one as Slack does, also for the
``user_change`` and ``team_join`` events a test sends. Helpers build what Slack sends to an app: ``event_envelope``,
``assistant_thread_started``, ``slash_command_form``, signed with ``signed_headers``.
``watchers`` are called with each message whose text was just set, for callers that count replies as they come
rather than scanning ``posted`` (the benchmark).

Files: ``add_file`` keeps bytes and returns the file object Slack puts in an event's ``files``; its
``url_private(_download)`` answers only with ``Authorization: Bearer <bot token>`` and otherwise, like Slack, 200 with
an HTML login page. ``redirect`` serves a 302 to any URL. ``file_requests`` records each file request (path and
whether it carried the token), ``file_bytes_sent`` how many bytes of file bodies went out. With ``scopes``, every
Web API answer lists them in ``x-oauth-scopes``, as Slack does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSMsgType, web
from slack_sdk.signature import SignatureVerifier

from tests.fakes.loopback import LoopbackServer

#: Slack's limit on ``markdown_text`` in one call of the chat.*Stream methods.
MARKDOWN_LIMIT = 12_000


_ERROR_PAGE = "<html><head><title>500 Internal Server Error</title></head><body>Server Error</body></html>"
_LOGIN_PAGE = "<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to your workspace</body></html>"


#: The bot token's scopes, as deploy/slack-manifest-*.yml asks for them.
SCOPES = (
    "app_mentions:read",
    "assistant:write",
    "chat:write",
    "channels:history",
    "commands",
    "files:read",
    "groups:history",
    "im:history",
    "im:read",
    "im:write",
    "mpim:history",
    "users:read",
)
#: The scope conversations.replies needs, by the channel id's first letter.
_HISTORY_SCOPE = {"C": "channels:history", "G": "groups:history", "D": "im:history"}


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


@dataclass
class Posted:
    channel: str
    ts: str
    text: str
    thread_ts: str | None
    edits: list[str] = field(default_factory=list)
    #: Set for a message made by chat.startStream: each call's markdown_text, and whether it is still open.
    appends: list[str] = field(default_factory=list)
    streaming: bool = False
    #: The message's blocks as last set (chat.postMessage, chat.update, or chat.stopStream's closing blocks).
    blocks: list[dict[str, Any]] | None = None
    #: The task and plan chunks streamed into it (``task_update``, ``plan_update``), in order.
    chunks: list[dict[str, Any]] = field(default_factory=list)

    def tasks(self) -> dict[str, tuple[str, str]]:
        """Each task card's latest ``(title, status)``, by id, as Slack would show them at the end."""
        shown: dict[str, tuple[str, str]] = {}
        for chunk in self.chunks:
            if chunk["type"] == "task_update":
                shown[chunk["id"]] = (chunk["title"], chunk["status"])
        return shown

    @property
    def streamed(self) -> bool:
        return bool(self.appends)


class FakeSlack(LoopbackServer):
    """The fake Slack; ``async with FakeSlack() as slack``, then point clients at ``slack.api_url``."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-test-token",
        bot_user_id: str = "UBOT",
        team_id: str = "T1",
        users: dict[str, dict[str, Any]] | None = None,
        scopes: Sequence[str] = SCOPES,
    ) -> None:
        super().__init__()
        self.scopes = list(scopes)
        #: Threads by (channel, root ts): their messages in any order (served oldest first), the bot's replies among
        #: them as they are posted.
        self.threads: dict[tuple[str, str], list[dict[str, Any]]] = {}
        #: conversations.replies gives at most this many messages a page, whatever ``limit`` asks: 15 is what Slack
        #: gives commercially distributed apps outside the Marketplace.
        self.replies_page_cap: int | None = None
        self.bot_token = bot_token
        self.files: dict[str, tuple[bytes, str]] = {}
        self.redirects: dict[str, str] = {}
        self.file_requests: list[tuple[str, bool]] = []
        self.file_bytes_sent = 0
        #: True: files are sent chunked, without a Content-Length.
        self.chunked_files = False
        #: False: the app lacks files:read, and Slack sends its login page even to the bot token.
        self.files_read = True
        self.bot_user_id = bot_user_id
        self.team_id = team_id
        # A copy: a test that adds a person must not add them to the next test's fake through a shared dict.
        self.users = dict(users) if users is not None else {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.limited: list[tuple[str, dict[str, Any]]] = []
        self.responses: list[dict[str, Any]] = []
        self.posted: list[Posted] = []
        self.acks: dict[str, dict[str, Any]] = {}
        #: Called with a message each time its text is set: posted, updated, or streamed into.
        self.watchers: list[Callable[[Posted], None]] = []
        self.api_url = ""
        self._limits: dict[str, list[float]] = {}
        self._refusals: dict[str, list[str]] = {}
        self._pages: dict[str, list[tuple[int, str]]] = {}
        self._drops: dict[str, int] = {}
        self._stalls: dict[str, list[float]] = {}
        self._ts = itertools.count(1)

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link", self._link)
        app.router.add_post("/response/{rid}", self._response)
        app.router.add_get("/files-pri/{path:.*}", self._file)
        app.router.add_get("/redirect/{rid}", self._redirect)

    async def start(self) -> None:
        await super().start()
        self.api_url = f"{self.url}/api/"

    # --- what tests read ---------------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [args for name, args in self.calls if name == method]

    def message_text(self, channel: str, ts: str) -> str:
        for message in self.posted:
            if message.channel == channel and message.ts == ts:
                return message.text
        raise KeyError((channel, ts))

    def messages_in(self, channel: str, thread_ts: str | None = None) -> list[Posted]:
        return [m for m in self.posted if m.channel == channel and m.thread_ts == thread_ts]

    def thread_message(
        self,
        text: str,
        *,
        ts: str,
        thread_ts: str,
        channel: str = "C1",
        user: str | None = "U1",
        bot_id: str | None = None,
        bot_name: str | None = None,
        subtype: str | None = None,
    ) -> dict[str, Any]:
        """Put a message in a thread (its root when ``ts == thread_ts``), as someone writing it in Slack would;
        returns it as conversations.replies serves it."""
        message: dict[str, Any] = {"type": "message", "text": text, "ts": ts, "thread_ts": thread_ts}
        if user is not None:
            message["user"] = user
        if bot_id is not None:
            message["bot_id"] = bot_id
            message["bot_profile"] = {"id": bot_id, "name": bot_name or bot_id}
        if subtype is not None:
            message["subtype"] = subtype
        self.threads.setdefault((channel, thread_ts), []).append(message)
        return message

    def rate_limit(self, method: str, times: int = 1, retry_after: float = 1) -> None:
        """The next ``times`` calls of ``method`` get HTTP 429 with ``Retry-After`` and change nothing."""
        self._limits.setdefault(method, []).extend([retry_after] * times)

    def refuse(self, method: str, error: str, times: int = 1_000_000) -> None:
        """The next ``times`` calls of ``method`` (by default all) answer ``{"ok": false, "error": error}``."""
        self._refusals[method] = [error] * times

    def error_page(self, method: str, status: int = 500, content_type: str = "text/html", times: int = 1) -> None:
        """The next ``times`` calls of ``method`` get an HTML error page, as a load balancer in front of Slack
        sends when Slack is down: not JSON, whatever ``content_type`` says."""
        self._pages.setdefault(method, []).extend([(status, content_type)] * times)

    def drop(self, method: str, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` get no answer: the connection is closed under them, as when a
        proxy or the network between the bot and Slack fails (the client sees a disconnect, not an HTTP status)."""
        self._drops[method] = self._drops.get(method, 0) + times

    def stall(self, method: str, seconds: float, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` are answered only after ``seconds``: longer than the client's
        timeout, it gives up first."""
        self._stalls.setdefault(method, []).extend([seconds] * times)

    def _text_set(self, message: Posted) -> None:
        for watcher in self.watchers:
            watcher(message)

    def streamed(self) -> list[Posted]:
        return [m for m in self.posted if m.streamed]

    def response_url(self, rid: str = "r1") -> str:
        return f"{self.url}/response/{rid}"

    # --- files -------------------------------------------------------------------------------------------

    def add_file(self, name: str, data: bytes, mimetype: str, *, size: int | None = None) -> dict[str, Any]:
        """Keep ``data`` as a file and return the object Slack sends in an event's ``files`` (``size`` may lie)."""
        file_id = f"F{len(self.files) + 1:04d}"
        path = f"{self.team_id}-{file_id}/{name}"
        self.files[path] = (data, mimetype)
        self.files[f"{self.team_id}-{file_id}/download/{name}"] = (data, mimetype)
        return {
            "id": file_id,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1],
            "size": len(data) if size is None else size,
            "mode": "hosted",
            "url_private": f"{self.url}/files-pri/{path}",
            "url_private_download": f"{self.url}/files-pri/{self.team_id}-{file_id}/download/{name}",
        }

    def redirect(self, to: str) -> str:
        """A URL on this fake that answers 302 to ``to``."""
        rid = f"r{len(self.redirects) + 1}"
        self.redirects[rid] = to
        return f"{self.url}/redirect/{rid}"

    async def _file(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        authorized = request.headers.get("Authorization") == f"Bearer {self.bot_token}"
        self.file_requests.append((path, authorized))
        await self._notify()
        if not authorized or not self.files_read:
            # Slack's answer to a file URL without the token (or without files:read): its login page, status 200.
            return web.Response(text=_LOGIN_PAGE, content_type="text/html")
        if path not in self.files:
            return web.Response(status=404, text="not found")
        data, mimetype = self.files[path]
        response = web.StreamResponse(headers={"Content-Type": mimetype or "application/octet-stream"})
        if self.chunked_files:
            response.enable_chunked_encoding()  # no Content-Length: the client learns the size only as it reads
        else:
            response.content_length = len(data)
        await response.prepare(request)
        for start in range(0, len(data), 256 * 1024):
            chunk = data[start : start + 256 * 1024]
            try:
                await response.write(chunk)
            except (ConnectionResetError, RuntimeError):
                break  # the client hung up: it wanted no more
            self.file_bytes_sent += len(chunk)
        return response

    async def _redirect(self, request: web.Request) -> web.Response:
        self.file_requests.append((f"redirect/{request.match_info['rid']}", "Authorization" in request.headers))
        await self._notify()
        return web.Response(status=302, headers={"Location": self.redirects[request.match_info["rid"]]})

    # --- Socket Mode -------------------------------------------------------------------------------------

    async def wait_for_socket(self, within: float = 5.0) -> None:
        await self.wait_for(lambda: self._socket is not None and not self._socket.closed, within)

    async def drop_socket(self) -> None:
        """Close the Socket Mode connection from Slack's side, as a Slack restart or a network cut would."""
        assert self._socket is not None, "no Socket Mode client is connected"
        await self._socket.close()
        self._socket = None
        await self._notify()

    async def send_envelope(self, kind: str, payload: dict[str, Any], *, accepts_response_payload: bool = False) -> str:
        assert self._socket is not None, "no Socket Mode client is connected"
        envelope_id = str(uuid.uuid4())
        await self._socket.send_str(
            json.dumps(
                {
                    "envelope_id": envelope_id,
                    "type": kind,
                    "payload": payload,
                    "accepts_response_payload": accepts_response_payload,
                    "retry_attempt": 0,
                    "retry_reason": "",
                }
            )
        )
        return envelope_id

    async def wait_for_ack(self, envelope_id: str, within: float = 5.0) -> dict[str, Any]:
        await self.wait_for(lambda: envelope_id in self.acks, within)
        return self.acks[envelope_id]

    # --- the server --------------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                args.update(await request.json())
            else:
                args.update(dict(await request.post()))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ") or args.pop("token", "")
        pending = self._limits.get(method)
        if pending:
            retry_after = pending.pop(0)
            self.limited.append((method, args))
            await self._notify()
            # Slack sends whole seconds, and slack_sdk parses nothing else.
            return _json({"ok": False, "error": "ratelimited"}, 429, {"Retry-After": str(math.ceil(retry_after))})
        self.calls.append((method, args))
        if self._drops.get(method):
            self._drops[method] -= 1
            await self._notify()
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)  # never reaches the client: its connection is gone
        stalls = self._stalls.get(method)
        if stalls:
            await asyncio.sleep(stalls.pop(0))
        try:
            # The app-level token opens sockets and is checked by no other method; the bot token by all others.
            if method != "apps.connections.open" and token != self.bot_token:
                return _json({"ok": False, "error": "invalid_auth"})
            pages = self._pages.get(method)
            if pages:
                status, content_type = pages.pop(0)
                return web.Response(status=status, text=_ERROR_PAGE, content_type=content_type)
            refusals = self._refusals.get(method)
            if refusals:
                return _json({"ok": False, "error": refusals.pop(0)})
            if method == "apps.connections.open":
                return _json({"ok": True, "url": f"ws://127.0.0.1:{self.url.rsplit(':', 1)[1]}/link"})
            # Slack lists the token's scopes in every Web API answer.
            return _json(self._answer(method, args), headers={"x-oauth-scopes": ",".join(self.scopes)})
        finally:
            await self._notify()

    def _answer(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://test.slack.com/",
                "team": "Test Team",
                "user": "teambot",
                "team_id": self.team_id,
                "user_id": self.bot_user_id,
                "bot_id": "B1",
                "is_enterprise_install": False,
            }
        if method == "users.info":
            user = self.users.get(str(args.get("user")))
            if user is None:
                return {"ok": False, "error": "user_not_found"}
            return {"ok": True, "user": self.member(str(args["user"]))}
        if method == "users.list":
            return self._members(args)
        if method == "conversations.replies":
            return self._replies(args)
        if method == "chat.postMessage":
            ts = f"{1700000100 + next(self._ts)}.000100"
            message = Posted(str(args["channel"]), ts, str(args.get("text", "")), args.get("thread_ts"))
            message.blocks = _blocks(args)
            self.posted.append(message)
            self._in_thread(message)
            self._text_set(message)
            return {"ok": True, "channel": message.channel, "ts": ts, "message": {"text": message.text, "ts": ts}}
        if method == "chat.update":
            for message in self.posted:
                if message.channel == args.get("channel") and message.ts == args.get("ts"):
                    message.text = str(args.get("text", ""))
                    # As Slack does: an update with text and no blocks removes the blocks.
                    message.blocks = _blocks(args)
                    message.edits.append(message.text)
                    self._text_set(message)
                    return {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text}
            return {"ok": False, "error": "message_not_found"}
        if method.startswith("assistant.threads."):
            return self._assistant(method, args)
        if method in ("chat.startStream", "chat.appendStream", "chat.stopStream"):
            return self._stream(method, args)
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": f"{time.time():.6f}"}
        if method == "conversations.info":
            return {"ok": True, "channel": {"id": args.get("channel"), "name": "general", "is_im": False}}
        return {"ok": True}

    def member(self, user_id: str) -> dict[str, Any]:
        """The person ``user_id`` of ``users`` as Slack describes them (users.info, users.list, user_change)."""
        user = self.users[user_id]
        return {
            "id": user_id,
            # The person's own workspace: another one's for someone in a Slack Connect channel.
            "team_id": user.get("team_id", self.team_id),
            "name": user.get("name", user_id.lower()),
            "deleted": user.get("deleted", False),
            "is_bot": user.get("is_bot", False),
            "is_admin": user.get("is_admin", False),
            "is_owner": user.get("is_owner", False),
            "profile": {"display_name": user.get("display_name", ""), "real_name": user.get("real_name", "")},
        }

    def _members(self, args: dict[str, Any]) -> dict[str, Any]:
        """users.list: the people of ``users`` less those of other workspaces, as Slack lists a workspace's
        members, in pages of ``limit`` (Slack's default and most: 1,000 here) with a ``next_cursor``."""
        if "users:read" not in self.scopes:
            return {"ok": False, "error": "missing_scope", "needed": "users:read", "provided": ",".join(self.scopes)}
        ids = [uid for uid, user in self.users.items() if user.get("team_id", self.team_id) == self.team_id]
        limit = min(int(args.get("limit") or 1000), 1000)
        cursor = str(args.get("cursor") or "")
        if cursor and not cursor.startswith("people:"):
            return {"ok": False, "error": "invalid_cursor"}
        offset = int(cursor.removeprefix("people:") or 0)
        more = offset + limit < len(ids)
        return {
            "ok": True,
            "members": [self.member(uid) for uid in ids[offset : offset + limit]],
            "cache_ts": int(time.time()),
            "response_metadata": {"next_cursor": f"people:{offset + limit}" if more else ""},
        }

    def _in_thread(self, message: Posted) -> None:
        """The bot's reply in a thread is one of the thread's messages, its text as last set."""
        if message.thread_ts is not None:
            entry = {"type": "message", "ts": message.ts, "thread_ts": message.thread_ts, "posted": message}
            self.threads.setdefault((message.channel, message.thread_ts), []).append(entry)

    def _replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, root = str(args.get("channel") or ""), str(args.get("ts") or "")
        if not channel or not root:
            return {"ok": False, "error": "invalid_arguments"}
        needed = _HISTORY_SCOPE.get(channel[:1], "channels:history")
        if needed not in self.scopes:
            return {"ok": False, "error": "missing_scope", "needed": needed, "provided": ",".join(self.scopes)}
        thread = self.threads.get((channel, root))
        if thread is None:
            return {"ok": False, "error": "thread_not_found"}
        inclusive = str(args.get("inclusive", "")).lower() in ("1", "true")

        def within(ts: Decimal) -> bool:
            oldest, latest = args.get("oldest"), args.get("latest")
            if oldest is not None and (ts < Decimal(str(oldest)) or (ts == Decimal(str(oldest)) and not inclusive)):
                return False
            return latest is None or ts < Decimal(str(latest)) or (ts == Decimal(str(latest)) and inclusive)

        ordered = sorted(thread, key=lambda m: Decimal(m["ts"]))
        # As Slack does: the root first, whatever the range, then the replies within it.
        items = [m for m in ordered if m["ts"] == root] + [
            m for m in ordered if m["ts"] != root and within(Decimal(m["ts"]))
        ]
        limit = int(args.get("limit") or 1000)
        if self.replies_page_cap is not None:
            limit = min(limit, self.replies_page_cap)
        offset = int(str(args.get("cursor") or "page:0").removeprefix("page:"))
        page = items[offset : offset + limit]
        more = offset + limit < len(items)
        body: dict[str, Any] = {"ok": True, "messages": [self._served(m) for m in page], "has_more": more}
        body["response_metadata"] = {"next_cursor": f"page:{offset + limit}" if more else ""}
        return body

    def _served(self, message: dict[str, Any]) -> dict[str, Any]:
        posted = message.get("posted")
        if not isinstance(posted, Posted):
            return dict(message)
        served = {k: v for k, v in message.items() if k != "posted"}
        bot = {"id": "B1", "name": "teambot"}
        return served | {"user": self.bot_user_id, "bot_id": "B1", "bot_profile": bot, "text": posted.text}

    @staticmethod
    def _assistant(method: str, args: dict[str, Any]) -> dict[str, Any]:
        required = {
            "assistant.threads.setStatus": ("channel_id", "thread_ts"),
            "assistant.threads.setTitle": ("channel_id", "thread_ts", "title"),
            "assistant.threads.setSuggestedPrompts": ("channel_id", "prompts"),
        }.get(method)
        if required is None:
            return {"ok": False, "error": "unknown_method"}
        if any(not args.get(name) for name in required):
            return {"ok": False, "error": "invalid_arguments"}
        if method == "assistant.threads.setStatus" and "status" not in args:  # "" clears the status
            return {"ok": False, "error": "invalid_arguments"}
        if method == "assistant.threads.setSuggestedPrompts":
            prompts = args["prompts"]
            if not isinstance(prompts, list) or not 1 <= len(prompts) <= 4:
                return {"ok": False, "error": "invalid_arguments"}
            if not all(isinstance(p, dict) and p.get("title") and p.get("message") for p in prompts):
                return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True}

    def _stream(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        text = args.get("markdown_text")
        chunks = args.get("chunks") or []
        if not isinstance(chunks, list) or not all(_valid_chunk(c) for c in chunks):
            return {"ok": False, "error": "invalid_chunks"}
        if args.get("task_display_mode", "timeline") not in ("timeline", "plan"):
            return {"ok": False, "error": "invalid_arguments"}
        for chunk in chunks:
            if chunk.get("type") == "markdown_text":
                text = (text or "") + str(chunk.get("text", ""))
        tasks = [c for c in chunks if c["type"] != "markdown_text"]
        if text is not None and len(text) > MARKDOWN_LIMIT:
            return {"ok": False, "error": "msg_too_long"}
        channel = str(args.get("channel") or "")
        if method == "chat.startStream":
            # Streamed messages answer a person: in a DM Slack needs the thread; in a channel the recipient, and
            # without thread_ts the message is top-level.
            in_dm = channel.startswith("D")
            needed = ("channel", "thread_ts") if in_dm else ("channel", "recipient_team_id", "recipient_user_id")
            if any(not args.get(name) for name in needed):
                return {"ok": False, "error": "invalid_arguments"}
            ts = f"{1700000100 + next(self._ts)}.000100"
            thread = str(args["thread_ts"]) if args.get("thread_ts") else None
            message = Posted(channel, ts, text or "", thread, appends=[text or ""], streaming=True, chunks=tasks)
            self.posted.append(message)
            self._in_thread(message)
            self._text_set(message)
            return {"ok": True, "channel": channel, "ts": ts}
        if not channel or not args.get("ts") or (method == "chat.appendStream" and not text and not tasks):
            return {"ok": False, "error": "invalid_arguments"}
        for message in self.posted:
            if message.channel == channel and message.ts == args["ts"]:
                if not message.streaming:
                    return {"ok": False, "error": "message_not_in_streaming_state"}
                message.text += text or ""
                message.appends.append(text or "")
                message.chunks.extend(tasks)
                message.streaming = method == "chat.appendStream"
                if method == "chat.stopStream":
                    message.blocks = _blocks(args)
                self._text_set(message)
                return {"ok": True, "channel": channel, "ts": message.ts}
        return {"ok": False, "error": "message_not_found"}

    async def _response(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.responses.append({"rid": request.match_info["rid"], **body})
        await self._notify()
        return web.Response(text="ok")

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._socket = socket
        await socket.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": 1,
                    "debug_info": {"host": "fake", "approximate_connection_time": 18060},
                    "connection_info": {"app_id": "A1"},
                }
            )
        )
        await self._notify()
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                data = json.loads(message.data)
                if "envelope_id" in data:
                    self.acks[data["envelope_id"]] = data
                    await self._notify()
        return socket


#: What a ``task_update`` chunk's status may be (docs.slack.dev, chat.appendStream).
TASK_STATUSES = ("pending", "in_progress", "complete", "error")


def _valid_chunk(chunk: object) -> bool:
    """A chunk as Slack takes it: markdown text, a task card with an id, a title and a known status, or a plan
    title."""
    if not isinstance(chunk, dict):
        return False
    kind = chunk.get("type")
    if kind == "markdown_text":
        return isinstance(chunk.get("text"), str)
    if kind == "task_update":
        return bool(chunk.get("id")) and bool(chunk.get("title")) and chunk.get("status") in TASK_STATUSES
    if kind == "plan_update":
        return bool(chunk.get("title"))
    return False


def _blocks(args: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The blocks of a call: a JSON list, or a JSON string of one (form-encoded calls)."""
    blocks = args.get("blocks")
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    return blocks if isinstance(blocks, list) else None


def block_actions(
    action: dict[str, Any],
    *,
    channel: str = "C1",
    user: str = "U1",
    team_id: str = "T1",
    message_ts: str = "",
    response_url: str = "",
) -> dict[str, Any]:
    """The interaction payload Slack posts (form-encoded, as ``payload=<json>``) when someone clicks a button."""
    return {
        "type": "block_actions",
        "team": {"id": team_id, "domain": "test"},
        "user": {"id": user, "username": "ada", "name": "ada", "team_id": team_id},
        "api_app_id": "A1",
        "token": "legacy-verification-token",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
        "trigger_id": "1.2.3",
        "channel": {"id": channel, "name": "general"},
        "message": {"type": "message", "ts": message_ts, "text": ""},
        "response_url": response_url,
        "actions": [{"action_ts": f"{time.time():.6f}", **action}],
    }


_trigger_ids = itertools.count(1)


def message_action(
    callback_id: str,
    message: dict[str, Any],
    *,
    channel: str = "C1",
    user: str = "U1",
    team_id: str = "T1",
    response_url: str = "",
    trigger_id: str | None = None,
) -> dict[str, Any]:
    """The interaction payload Slack posts (form-encoded, as ``payload=<json>``) when someone picks a message
    shortcut on ``message`` (as conversations.replies serves it, or a posted one): each click has a trigger id of
    its own."""
    return {
        "type": "message_action",
        "token": "legacy-verification-token",
        "action_ts": f"{time.time():.6f}",
        "team": {"id": team_id, "domain": "test"},
        "user": {"id": user, "username": "ada", "name": "ada", "team_id": team_id},
        "channel": {"id": channel, "name": "general"},
        "is_enterprise_install": False,
        "enterprise": None,
        "callback_id": callback_id,
        "trigger_id": trigger_id or f"{next(_trigger_ids)}.1.abc",
        "response_url": response_url,
        "message_ts": message["ts"],
        "message": dict(message),
    }


def clicked(blocks: list[dict[str, Any]], verdict: str) -> dict[str, Any]:
    """The ``actions`` entry of a click on the ``up`` or ``down`` feedback button in ``blocks``, as Slack sends it:
    for Slack's own feedback buttons the element's action id with the clicked button's value, for a plain button
    that button."""
    for block in blocks:
        for element in block.get("elements") or []:
            if element.get("type") == "feedback_buttons":
                button = element["positive_button" if verdict == "up" else "negative_button"]
                return {
                    "type": "feedback_buttons",
                    "action_id": element["action_id"],
                    "block_id": block.get("block_id", ""),
                    "value": button["value"],
                }
            if element.get("type") == "button" and str(element.get("value", "")).startswith(f"{verdict}:"):
                return {
                    "type": "button",
                    "action_id": element["action_id"],
                    "block_id": block.get("block_id", ""),
                    "value": element["value"],
                    "text": element["text"],
                }
    raise KeyError(f"no {verdict} feedback button in {blocks}")


def approval_click(blocks: list[dict[str, Any]], approve: bool) -> dict[str, Any]:
    """The ``actions`` entry of a click on an approval request's Approve (``approve``) or Deny button, as Slack
    sends it: the button's action id, block id, value and text."""
    for block in blocks:
        if block.get("type") != "actions":
            continue
        for element in block.get("elements") or []:
            if element.get("type") == "button" and str(element["action_id"]).endswith(
                "_approve" if approve else "_deny"
            ):
                return {
                    "type": "button",
                    "action_id": element["action_id"],
                    "block_id": block.get("block_id", ""),
                    "value": element["value"],
                    "text": element["text"],
                    "style": element.get("style"),
                }
    raise KeyError(f"no approval button in {blocks}")


def signed_headers(signing_secret: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack signs a request with (``v0=`` HMAC-SHA256 of ``v0:ts:body``)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(signing_secret).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}


_event_ids = itertools.count(1)


def event_envelope(event: dict[str, Any], *, team_id: str = "T1", event_id: str | None = None) -> dict[str, Any]:
    """The Events API ``event_callback`` around one event, as Slack posts it."""
    return {
        "token": "legacy-verification-token",
        "team_id": team_id,
        "api_app_id": "A1",
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_event_ids):08d}",
        "event_time": int(time.time()),
        "authorizations": [{"team_id": team_id, "user_id": "UBOT", "is_bot": True}],
    }


def mention(
    text: str, *, channel: str = "C1", user: str = "U1", ts: str, thread_ts: str | None = None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "app_mention",
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def direct_message(text: str, *, channel: str = "D1", user: str = "U1", ts: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "message",
        "channel_type": "im",
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        "event_ts": ts,
        **extra,
    }


def assistant_thread_started(
    *, channel: str = "D1", thread_ts: str, user: str = "U1", team_id: str = "T1", context_channel: str = "C1"
) -> dict[str, Any]:
    """What Slack sends when someone opens a new thread in the assistant pane."""
    return {
        "type": "assistant_thread_started",
        "assistant_thread": {
            "user_id": user,
            "context": {"channel_id": context_channel, "team_id": team_id, "enterprise_id": None},
            "channel_id": channel,
            "thread_ts": thread_ts,
        },
        "event_ts": thread_ts,
    }


def assistant_message(text: str, *, thread_ts: str, ts: str, channel: str = "D1", user: str = "U1") -> dict[str, Any]:
    """A person's message in an assistant thread: a DM message inside the thread."""
    return direct_message(text, channel=channel, user=user, ts=ts, thread_ts=thread_ts, team="T1")


def slash_command_form(
    command: str = "/reset",
    text: str = "",
    *,
    channel_id: str = "C1",
    user_id: str = "U1",
    team_id: str = "T1",
    response_url: str = "",
) -> dict[str, str]:
    return {
        "token": "legacy-verification-token",
        "team_id": team_id,
        "team_domain": "test",
        "channel_id": channel_id,
        "channel_name": "general",
        "user_id": user_id,
        "user_name": "ada",
        "command": command,
        "text": text,
        "api_app_id": "A1",
        "response_url": response_url,
        "trigger_id": "1.2.3",
    }


def form_body(form: dict[str, str]) -> str:
    return urlencode(form)
