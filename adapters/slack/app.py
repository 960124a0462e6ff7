"""Slack adapter: translates mentions, DMs and slash commands into core calls, and replies back.

Socket Mode when ``SLACK_APP_TOKEN`` is set, otherwise HTTP mode (``POST /slack/events``, signature-checked by
Bolt). Bolt acknowledges each event before our listener runs, so Slack's 3-second limit never waits on the
model; a redelivered event carries the same message ``ts`` and the core answers it once.

Replies use Slack's AI-app surface (see :mod:`adapters.slack.stream`): in a thread the "is thinking..." status
until the first words; native streaming in threads and at the top of channels; at the top of a DM, and where
Slack refuses, a message is posted and edited. Bolt's ``AsyncAssistant`` middleware brings the assistant pane:
each of its threads is a conversation.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp
import orjson
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp, AsyncBoltRequest
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.context.set_suggested_prompts.async_set_suggested_prompts import AsyncSetSuggestedPrompts
from slack_bolt.context.set_title.async_set_title import AsyncSetTitle
from slack_bolt.middleware.assistant.async_assistant import AsyncAssistant
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.payload_utils import is_assistant_event, is_other_message_sub_event_in_assistant_thread
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

from adapters.approvals import Approvals, Click
from adapters.connection import CHECK_NETWORK, Backoff, failed_attempt
from adapters.downloads import FileHosts, download
from adapters.slack.actions import SlackActions
from adapters.slack.approvals import ACTIONS as APPROVAL_ACTIONS
from adapters.slack.approvals import APPROVE, SlackApprovalPrompt, SlackTurnView
from adapters.slack.feedback import ACTIONS, parse, with_buttons
from adapters.slack.format import escape_mrkdwn, markdown_to_mrkdwn, unescape_slack
from adapters.slack.names import SlackNames
from adapters.slack.sdk import BoltApp, SdkLogger, web_client
from adapters.slack.stream import STATUS, STREAM, NativeReply, Refusals, SlackReasoning, ThinkingStatus, error_code
from adapters.slack.thread import HISTORY_SCOPES, Identity, SlackThread, ThreadReader
from adapters.streaming import ReplyStream, StreamingReply, deliver, drain, track
from bot import logcontext, texts
from bot.check import CheckResult
from bot.commands import CommandContext
from bot.config import Settings
from bot.conversation import ConversationCore
from bot.errors import AttachmentError, ConfigError
from bot.messages import Attachment, ConversationKey, IncomingMessage
from bot.runtime import commands

log = logging.getLogger(__name__)

#: Slack accepts 40,000 characters of text, but long messages are collapsed and hard to read; 3,900 keeps each
#: message whole on screen and within the section-block limit should we move to blocks.
TEXT_LIMIT = 3900
#: How long Slack's signature on a request is accepted: slack_sdk refuses a timestamp more than 5 minutes off.
SIGNATURE_LIFETIME_S = 5 * 60
#: A claimed request is remembered this much longer, for replicas whose clocks run apart.
_CLOCK_SKEW_S = 60
_THREAD_CACHE_SIZE = 10_000

_USER_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^>]*))?>")
_CHANNEL_MENTION = re.compile(r"<#([CG][A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL_MENTION = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")
_GROUP_MENTION = re.compile(r"<!subteam\^[A-Z0-9]+(?:\|([^>]*))?>")
_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")


#: Slack's answers to a token it will not take: trying again cannot help (the rest, ``ratelimited``, an error page,
#: ``internal_error``, may pass).
_REFUSED = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "not_allowed_token_type",
        "missing_scope",
        "no_permission",
        "team_access_not_granted",
        "ekm_access_denied",
    }
)


#: Where Slack serves files (``url_private``, ``url_private_download``): only there does the bot token go.
SLACK_FILE_HOST = "https://files.slack.com/"
DEFAULT_API_URL = "https://slack.com/api/"
#: The scopes the bot token needs (the manifests grant them; ``teambot check`` compares).
#: Every scope the bot uses, and what it is for (``teambot check`` names the missing ones with it).
SCOPE_USES = {
    "app_mentions:read": "mentions in channels",
    "chat:write": "posting answers",
    "commands": "slash commands",
    "files:read": "files and images people attach",
    "users:read": "people's names",
    # Also what the message events without a mention need (bot.speak): thread follow-ups, help channels, group DMs.
    **HISTORY_SCOPES,
}
REQUIRED_SCOPES = tuple(SCOPE_USES)
#: Conversations whose every message is for the bot: direct messages and group DMs.
_DM_TYPES = frozenset({"im", "mpim"})
#: The commands whose argument changes the channel for everyone: for admins only.
_ADMIN_COMMANDS = frozenset({"system", "model", "speak", "scope"})
#: Message subtypes that are questions all the same: a message with a file (in a DM) comes as ``file_share``.
_QUESTION_SUBTYPES = frozenset({"file_share"})


@functools.lru_cache(maxsize=16)
def _bot_mention(bot_user_id: str) -> re.Pattern[str]:
    """The bot's own mention (``<@UBOT>``, ``<@UBOT|teambot>``), compiled once per bot user id."""
    return re.compile(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>")


def file_hosts(api_url: str) -> FileHosts:
    """files.slack.com, and the host of SLACK_API_URL where it is set to something else (a proxy, a test fake)."""
    return FileHosts.of([SLACK_FILE_HOST] if api_url == DEFAULT_API_URL else [SLACK_FILE_HOST, api_url])


def _looks_like_html(data: bytes) -> bool:
    head = data[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


#: What to look at when Slack answers, but with an error that may pass.
_STATUS_PAGE = "Slack's status page (https://slack-status.com)"


def _refused(setting: str, error: str) -> ConfigError:
    what = texts.SLACK_APP_TOKEN_HINT if setting == "SLACK_APP_TOKEN" else texts.SLACK_BOT_TOKEN_HINT
    return ConfigError(texts.SLACK_TOKEN_REFUSED.format(setting=setting, error=error, hint=what))


class _SocketModeClient(SocketModeClient):
    """slack_sdk's Socket Mode client, connecting our way.

    Its own loop retries every few seconds forever, logging a traceback each time, and takes no notice of a
    refused token; it is also what ``connect`` awaited, so a bot that could not reach Slack did not stop when
    told. Here each attempt that fails is one line and a growing pause, a refused token ends the attempts, and
    :meth:`close` ends them at any point (they run in the caller's task, or in the SDK's session monitor when a
    connection was lost, both cancelled by a stop).
    """

    def __init__(self, app_token: str, web_client: AsyncWebClient) -> None:
        super().__init__(
            app_token=app_token,
            # Bolt builds a debug line per ack when its client logger's own level reads NOTSET (see SdkLogger).
            logger=cast(logging.Logger, SdkLogger("slack_sdk.socket_mode")),
            web_client=web_client,
            ping_interval=10,
        )
        #: Set when Slack refused the app token while reconnecting: the adapter is down for good.
        self.refused: ConfigError | None = None
        self._backoff = Backoff()

    async def enqueue_message(self, message: str) -> None:
        """slack_sdk puts each message in a queue, which one task of its own empties only to start a task per
        message (``process_message``); here that task starts at once, in the same order, without the queue's hop and
        the wake-up of a task per event. A message that is not JSON is logged and dropped, as there."""
        try:
            parsed: dict[str, Any] = json.loads(message) if message.startswith("{") else {}
        except ValueError as exc:
            self.logger.exception(f"Failed to process a message: {exc}")
            return
        # Unreferenced, as slack_sdk leaves it: the listeners' turns are tracked (``track``) once they start.
        asyncio.ensure_future(self.run_message_listeners(parsed, message))  # noqa: RUF006 (as slack_sdk starts it)

    async def issue_new_wss_url(self) -> str:
        # The SDK's version logs an error of its own and sleeps through a rate limit it cannot be stopped from.
        response = await self.web_client.apps_connections_open(app_token=self.app_token)
        return str(response["url"])

    async def connect_to_new_endpoint(self, force: bool = False) -> None:
        """Called by the SDK when a connection was lost, went stale, or Slack asked for a new one."""
        async with self.connect_operation_lock:
            if force or not await self.is_connected():
                self.wss_uri = None
                try:
                    await self.connect()
                except ConfigError as exc:
                    self.refused = exc
                    log.error("%s", exc)
                    self.closed = True  # ends the SDK's loops: nothing is left to do on this connection

    async def connect(self) -> None:
        """Connect, trying again after each failure until connected; raises ConfigError if Slack refuses the token."""
        while not self.closed:
            try:
                if self.wss_uri is None:
                    self.wss_uri = await self.issue_new_wss_url()
                await self._connect_once()
                self._backoff.reset()
                return
            except SlackApiError as exc:
                error = error_code(exc)
                if error in _REFUSED:
                    raise _refused("SLACK_APP_TOKEN", error) from None
                delay = self._backoff.next()
                if error == "ratelimited":
                    delay = max(delay, float(exc.response.headers.get("Retry-After", 30)))
                failed_attempt(log, "Slack", "opening the Socket Mode connection", exc, _STATUS_PAGE, delay)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                delay = self._backoff.next()
                where = CHECK_NETWORK.format(where="Slack")
                failed_attempt(log, "Slack", f"connecting to {self._where()}", exc, where, delay)
            self.wss_uri = None
            await asyncio.sleep(delay)

    def _where(self) -> str:
        return str(self.wss_uri or self.web_client.base_url)

    async def _connect_once(self) -> None:
        # slack_sdk's connect() without its retry loop: open the WebSocket, then (re)start the session monitor and
        # the receiver on it. Nothing is awaited after the monitor is cancelled: this may run inside it.
        old_session = self.current_session
        if old_session is not None and not old_session.closed:
            await old_session.close()
        if self.aiohttp_client_session.closed:
            self.aiohttp_client_session = aiohttp.ClientSession()
        assert self.wss_uri is not None
        self.current_session = await self.aiohttp_client_session.ws_connect(
            self.wss_uri,
            autoping=False,
            heartbeat=self.ping_interval,
            proxy=self.proxy,
            ssl=self.web_client.ssl if self.web_client.ssl is not None else True,
        )
        self.auto_reconnect_enabled = self.default_auto_reconnect_enabled
        self.stale = False
        self.last_ping_pong_time = None
        await self.current_session.ping(f"sdk-ping-pong:{time.time()}".encode())
        if self.current_session_monitor is not None:
            self.current_session_monitor.cancel()
        self.current_session_monitor = asyncio.ensure_future(self.monitor_current_session())
        if self.message_receiver is not None:
            self.message_receiver.cancel()
        self.message_receiver = asyncio.ensure_future(self.receive_messages())


#: What Bolt's ack of an event carries: ``BoltResponse(status=200, body="")``'s own headers (slack-bolt 1.30).
_PLAIN_ACK_HEADERS = {"content-type": ["text/plain;charset=utf-8"]}
#: The event types Bolt's assistant middleware can take (``is_assistant_event``,
#: ``is_other_message_sub_event_in_assistant_thread``, slack-bolt 1.30); ``test_assistant_event_types`` holds it.
_ASSISTANT_EVENT_TYPES = frozenset({"assistant_thread_started", "assistant_thread_context_changed", "message"})


class _Assistant(AsyncAssistant):
    """Bolt's assistant middleware, passing by what is not the pane's at once.

    Bolt's own asks each of its four listeners whether a request is theirs, each with a kwargs injection (a dict
    of some thirty entries built per question), for every request: a channel mention costs about 0.1 ms of CPU
    that way. The listeners take only the events :func:`is_assistant_event` names, and the middleware itself acks
    only :func:`is_other_message_sub_event_in_assistant_thread`; anything else goes on unchanged, as it would.
    """

    async def async_process(
        self, *, req: AsyncBoltRequest, resp: BoltResponse, next: Callable[[], Awaitable[BoltResponse]]
    ) -> BoltResponse | None:
        body = req.body
        event = body.get("event")
        # Both of Bolt's checks take only these event types: anything else (a mention, a command, a click) goes on
        # without them.
        if (
            isinstance(event, dict)
            and event.get("type") in _ASSISTANT_EVENT_TYPES
            and (is_assistant_event(body) or is_other_message_sub_event_in_assistant_thread(body))
        ):
            return await super().async_process(req=req, resp=resp, next=next)
        await next()
        return None


class _RefuseReplays(AsyncMiddleware):
    """Runs :meth:`SlackAdapter._refuse_replays` as a middleware object: Bolt calls it as it is, without
    building the kwargs of a function middleware for every request."""

    def __init__(
        self,
        check: Callable[
            [AsyncBoltRequest, BoltResponse, dict[str, Any], Callable[[], Awaitable[Any]]], Awaitable[BoltResponse]
        ],
    ) -> None:
        self._check = check

    async def async_process(
        self, *, req: AsyncBoltRequest, resp: BoltResponse, next: Callable[[], Awaitable[BoltResponse]]
    ) -> BoltResponse | None:
        return await self._check(req, resp, req.body, next)


class _SocketModeHandler(AsyncSocketModeHandler):
    """Bolt's Socket Mode handler (it turns each envelope into a Bolt request and acks it) on our client."""

    def __init__(self, app: AsyncApp, app_token: str, web_client: AsyncWebClient) -> None:
        # Not the parent's __init__: it would start a client (and its aiohttp session) of its own.
        self.app = app
        self.app_token = app_token
        self.client = _SocketModeClient(app_token, web_client)
        self.client.socket_mode_request_listeners.append(self.handle)  # type: ignore[arg-type]


class SlackSink:
    """Posts and edits one reply's messages in a channel or thread."""

    def __init__(self, client: AsyncWebClient, channel: str, thread_ts: str | None) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts

    async def post(self, text: str, feedback: int | None = None) -> str:
        blocks = with_buttons(text, feedback) if feedback is not None else None
        response = await self._client.chat_postMessage(
            channel=self._channel,
            thread_ts=self._thread_ts,
            text=text,
            blocks=blocks,
            unfurl_links=False,
            unfurl_media=False,
        )
        return str(response["ts"])

    async def edit(self, handle: str, text: str, feedback: int | None = None) -> None:
        blocks = with_buttons(text, feedback) if feedback is not None else None
        await self._client.chat_update(channel=self._channel, ts=handle, text=text, blocks=blocks)


class SlackAdapter:
    """One Bolt app wired to the core; :meth:`start` connects it, :meth:`stop` disconnects it."""

    name = "slack"

    def __init__(self, core: ConversationCore, settings: Settings) -> None:
        if settings.slack_bot_token is None:
            raise ValueError("SLACK_BOT_TOKEN is required for the Slack adapter")
        self._core = core
        self._settings = settings
        # One HTTP session for every Web API call: slack_sdk otherwise opens a new one (and a new TCP and TLS
        # connection) per request. Created on start, inside the running loop.
        self._session: aiohttp.ClientSession | None = None
        self.client = web_client(
            settings.slack_bot_token.get_secret_value(),
            settings.slack_api_url,
            [AsyncConnectionErrorRetryHandler(), AsyncRateLimitErrorRetryHandler(max_retry_count=5)],
        )
        #: People's names: the workspace's loaded at start (users.list), kept fresh by user_change and team_join,
        #: anyone else looked up once (users.info).
        self.names = SlackNames(self.client)
        self._name = self.names.name
        #: Reads threads for the core (adapters.slack.thread). With a client of its own that leaves 429s to the
        #: reader: the one above would sleep through a Retry-After of a minute (conversations.replies' limit for
        #: apps outside the Marketplace) while the turn, and its conversation, wait.
        self.threads = ThreadReader(
            web_client(
                settings.slack_bot_token.get_secret_value(),
                settings.slack_api_url,
                [AsyncConnectionErrorRetryHandler()],
            ),
            self._name,
            self._text_in,
            self._attachments,
        )
        socket_mode = settings.slack_app_token is not None
        signing = settings.slack_signing_secret
        self.app = BoltApp(
            client=self.client,
            signing_secret=signing.get_secret_value() if signing else None,
            request_verification_enabled=not socket_mode,
            process_before_response=False,
            logger=logging.getLogger("slack_bolt"),
            # Bolt would run a middleware before each event listener to put an assistant's say/set_status/
            # set_title into the context; ours read none of them (the pane's listeners, under _Assistant, get
            # theirs from Bolt's assistant middleware as before).
            attaching_conversation_kwargs_enabled=False,
        )
        # First of our middleware (after Bolt's own, which checks the signature): a replay goes no further.
        self.app.middleware(_RefuseReplays(self._refuse_replays))
        self.app.assistant(self._assistant())
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        # Where the app subscribes to them (deploy/slack-manifest-*.yml): a renamed person, a newcomer.
        self.app.event("user_change")(self._on_user_change)
        self.app.event("team_join")(self._on_user_change)
        self._commands = commands(settings, core)
        self._command_names = {f"/{slash}": name for name, slash in settings.command_names().items()}
        for slash in self._command_names:
            self.app.command(slash)(self._on_command)
        if settings.feedback:
            self.app.action(ACTIONS)(self._on_feedback)
        self._inflight: set[asyncio.Task[Any]] = set()
        # The message shortcuts (adapters.slack.actions): a click is a question by whoever clicked.
        SlackActions(
            core,
            settings,
            self.threads,
            names=self._name,
            text_in=self._text_in,
            files=self._attachments,
            sinks=lambda channel, thread_ts: SlackSink(self.client, channel, thread_ts),
            inflight=self._inflight,
            limit=TEXT_LIMIT,
        ).register(self.app)
        # Always registered: a click on an approval request from before a restart is told it expired.
        self.app.action(APPROVAL_ACTIONS)(self._on_approval)
        self._approvals = Approvals()
        self._file_hosts = file_hosts(settings.slack_api_url)
        self._refusals = Refusals()
        # The assistant thread each person last used, per DM: slash commands there carry no thread.
        self._assistant_threads: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._socket: _SocketModeHandler | None = None
        #: Slack accepted the bot token (auth.test): until then, and for good once it refused it, not ready.
        self._authenticated = False
        self._runner: web.AppRunner | None = None
        self._mounted = False
        self._started = False
        self.http_port: int | None = None

    # --- transports -------------------------------------------------------------------------------------

    def mount(self, app: web.Application) -> None:
        """In HTTP mode, serve ``POST /slack/events`` on the shared HTTP server."""
        if self._settings.slack_app_token is None:
            app.router.add_post("/slack/events", self._on_http)
            self._mounted = True

    @property
    def connected(self) -> bool:
        if not (self._started and self._authenticated):
            return False
        if self._socket is None:
            return True  # HTTP mode: Slack calls us, there is no connection to watch
        # Socket Mode: ready only while the socket is really open (slack_sdk reconnects a dropped one).
        client = self._socket.client
        session = client.current_session
        return not client.closed and session is not None and not session.closed

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/slack/events", self._on_http)
        app.router.add_get("/healthz", _healthz)
        return app

    async def start(self) -> None:
        """Check the bot token, then connect (Socket Mode) or serve the events endpoint (HTTP mode).

        Returns once connected; while Slack cannot be reached it keeps trying (one line per attempt) and a stop
        (cancelling this) ends it at any point. Raises ConfigError, in one line, when Slack refuses a token.
        """
        self._started = True
        # The SDK's own timeout (30 s) is the session's: slack_sdk sends its per-request timeout only with the
        # sessions it makes itself.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.client.timeout), json_serialize=_json_dumps
        )
        self.client.session = self._session
        self.threads.client.session = self._session
        if self._settings.slack_app_token is not None:
            # Made before anything is awaited, so that a stop during the token check finds it to close.
            self._socket = _SocketModeHandler(self.app, self._settings.slack_app_token.get_secret_value(), self.client)
        await self._authenticate()
        # Beside the adapter, once Slack took the token: a mention never waits for it.
        self.names.start()
        if self._socket is not None:
            await self._socket.client.connect()
            log.info("Slack adapter connected in Socket Mode")
            return
        if self._mounted:
            return
        # Not mounted on a shared server (as in tests): serve the events endpoint on its own.
        self._runner = web.AppRunner(self.web_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.http_host, self._settings.http_port)
        await site.start()
        self.http_port = self._runner.addresses[0][1]
        log.info("Slack adapter serving POST /slack/events on %s:%s", self._settings.http_host, self.http_port)

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Stop taking events, then let the turns under way finish (up to ``drain_seconds``).

        Approval requests still waiting are denied at once: nobody could answer them after the restart.
        """
        self._started = False
        self._approvals.stop()
        if self._socket is not None:
            await self._socket.client.close()
            self._socket = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.names.stop()
        await drain(self._inflight, drain_seconds)
        if self._session is not None:
            self.client.session = None
            self.threads.client.session = None
            await self._session.close()
            self._session = None

    async def _authenticate(self) -> None:
        """``auth.test`` until Slack answers: readiness then reflects whether the bot token is really accepted."""
        backoff = Backoff()
        what = "checking the bot token (auth.test)"
        while True:
            try:
                me = await self.client.auth_test()
            except SlackApiError as exc:
                error = error_code(exc)
                if error in _REFUSED:
                    raise _refused("SLACK_BOT_TOKEN", error) from None
                failed_attempt(log, "Slack", what, exc, _STATUS_PAGE, delay := backoff.next())
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                where = f"{self._settings.slack_api_url}: " + CHECK_NETWORK.format(where="Slack")
                failed_attempt(log, "Slack", what, exc, where, delay := backoff.next())
            else:
                self._authenticated = True
                # Bolt's authorization would ask the same on the first event, and that event would wait for it.
                self.app.authenticated(me)
                log.info("Slack accepted the bot token: @%s in %s", me.get("user"), me.get("team"))
                return
            await asyncio.sleep(delay)

    async def _on_http(self, request: web.Request) -> web.Response:
        bolt_request = await to_bolt_request(request)
        return await _aiohttp_response(await self.app.async_dispatch(bolt_request))

    async def _refuse_replays(
        self, req: AsyncBoltRequest, resp: BoltResponse, body: dict[str, Any], next: Callable[[], Awaitable[Any]]
    ) -> BoltResponse:
        """Refuse a signed request already acted on.

        Slack's signature covers the timestamp and the body, and stays valid for five minutes: whoever captures a
        request (a proxy's log, a leaked trace) could send the same bytes again, and a ``/reset`` would run twice.
        The signature is claimed in the database, so a replay is refused by every replica, and after a restart.

        Events are left to the message-id check, which answers each message once already (a replayed mention
        gets nothing): claiming them too would cost a database write per mention. Socket Mode requests carry no
        signature (the socket itself is authenticated). Slack does not retry slash commands or interactions, so
        a repeat of one is never Slack's own: it gets 401, like a bad signature.
        """
        signature = _header(req, "x-slack-signature")
        timestamp = _header(req, "x-slack-request-timestamp")
        if signature is None or timestamp is None or body.get("type") == "event_callback":
            await next()
            return resp
        # Bolt's check, before this middleware, accepted the timestamp: it is a number within five minutes of now.
        expires_at = float(timestamp) + SIGNATURE_LIFETIME_S + _CLOCK_SKEW_S
        if await self._core.store.claim_request(f"slack:{signature}", expires_at):
            await next()
            return resp
        log.warning("refused a replayed Slack request (signed at %s)", timestamp)
        return BoltResponse(status=401, body='{"error": "replayed request"}', headers={"x-slack-no-retry": "1"})

    # --- events -----------------------------------------------------------------------------------------

    async def _on_mention(self, body: dict[str, Any], event: dict[str, Any], context: dict[str, Any]) -> None:
        if self._ignored(event):
            return
        thread_ts = event.get("thread_ts")
        if thread_ts is None and self._settings.slack_reply_in_thread:
            thread_ts = event["ts"]
        await self._answer(body, event, context, thread_ts)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any], context: dict[str, Any]) -> None:
        # Direct messages and group DMs are for the bot without a mention (those inside a DM thread are the
        # assistant middleware's, see _on_assistant_message); in channels, where the speak mode says (bot.speak).
        if self._ignored(event):
            return
        if event.get("channel_type") in _DM_TYPES:
            await self._answer(body, event, context, event.get("thread_ts"))
            return
        # A mention comes as app_mention too, and is answered there: one event per message to start a turn, else
        # both would set and clear the thinking status.
        me = context.get("bot_user_id")
        if me and f"<@{me}" in str(event.get("text") or ""):
            return
        thread_ts = event.get("thread_ts")
        key = ConversationKey("slack", _team(body, event, context), str(event["channel"]), thread_ts)
        if not await self._core.speaking.wants(key, str(event.get("user") or "")):
            return
        if thread_ts is None and self._settings.slack_reply_in_thread:
            thread_ts = event["ts"]
        await self._answer(body, event, context, thread_ts)

    async def _on_user_change(self, event: dict[str, Any]) -> None:
        """``user_change`` (a person's name or profile changed) and ``team_join`` (a newcomer)."""
        self.names.changed(event.get("user"))

    async def names_ready(self) -> None:
        """Until the workspace's people loaded at start are in (or their load failed, or stopped at the cache's
        bound): for the benchmark, whose burst is by members of the workspace, as in a company."""
        await self.names.loaded()

    # --- the assistant pane -------------------------------------------------------------------------------

    def _assistant(self) -> AsyncAssistant:
        assistant = _Assistant(logger=logging.getLogger("slack_bolt"))
        assistant.thread_started(self._on_assistant_thread_started)
        assistant.thread_context_changed(self._on_assistant_context_changed)
        assistant.user_message(self._on_assistant_message)
        return assistant

    async def _on_assistant_thread_started(
        self, body: dict[str, Any], event: dict[str, Any], set_suggested_prompts: AsyncSetSuggestedPrompts
    ) -> None:
        thread = event["assistant_thread"]
        channel, thread_ts = str(thread["channel_id"]), str(thread["thread_ts"])
        self._remember_thread(_team(body, event, {}), channel, str(thread.get("user_id") or ""), thread_ts)
        await SlackSink(self.client, channel, thread_ts).post(markdown_to_mrkdwn(texts.ASSISTANT_GREETING))
        prompts = list(self._settings.slack_suggested_prompts)
        if not prompts:
            return
        try:
            await set_suggested_prompts(prompts=prompts, title=texts.ASSISTANT_PROMPTS_TITLE)
        except SlackApiError as exc:
            log.warning("setting suggested prompts in %s failed: %s", channel, error_code(exc))

    async def _on_assistant_context_changed(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        # The person moved to another channel with the pane open. The conversation stays the thread's own; Bolt's
        # default handler would store the context by re-reading the thread, a call Slack rate-limits hard.
        thread = event["assistant_thread"]
        team = _team(body, event, {})
        channel, user = str(thread["channel_id"]), str(thread.get("user_id") or "")
        self._remember_thread(team, channel, user, str(thread["thread_ts"]))

    async def _on_assistant_message(
        self, body: dict[str, Any], event: dict[str, Any], context: dict[str, Any], set_title: AsyncSetTitle
    ) -> None:
        if self._ignored(event):
            return
        thread_ts = str(event["thread_ts"])
        self._remember_thread(_team(body, event, context), str(event["channel"]), str(event.get("user")), thread_ts)
        await self._answer(body, event, context, thread_ts, set_title=set_title)

    def _remember_thread(self, team: str, channel: str, user: str, thread_ts: str) -> None:
        self._assistant_threads[(team, channel, user)] = thread_ts
        self._assistant_threads.move_to_end((team, channel, user))
        if len(self._assistant_threads) > _THREAD_CACHE_SIZE:
            self._assistant_threads.popitem(last=False)

    async def _title(self, key: ConversationKey, set_title: AsyncSetTitle, question: str) -> None:
        """The thread list shows the first question as the thread's title."""
        if await self._core.store.count_messages(key):
            return
        title = question.split("\n", 1)[0].strip()
        if len(title) > texts.TITLE_LENGTH:
            title = title[: texts.TITLE_LENGTH - 1].rsplit(" ", 1)[0].rstrip(",.;:") + "…"
        try:
            await set_title(title)
        except _SLACK_ERRORS as exc:
            # Only the thread list's label: the answer goes out without it.
            log.info("setting the title of %s failed: %s", key, _reason(exc))

    def _ignored(self, event: dict[str, Any]) -> bool:
        # Edits, deletions, joins and the like carry a subtype; they are not questions. A file shared is one.
        if event.get("subtype") is not None and event.get("subtype") not in _QUESTION_SUBTYPES:
            return True
        return bool(event.get("bot_id")) and self._settings.ignore_bots

    async def _answer(
        self,
        body: dict[str, Any],
        event: dict[str, Any],
        context: dict[str, Any],
        thread_ts: str | None,
        *,
        set_title: AsyncSetTitle | None = None,
    ) -> None:
        # Bolt runs listeners as detached tasks after the ack; remembering them lets stop() drain them.
        track(self._inflight)
        team = _team(body, event, context)
        channel = str(event["channel"])
        key = ConversationKey("slack", team, channel, thread_ts)
        message_id = f"slack:{team}:{channel}:{event['ts']}"
        # From here on every log line names the turn: the name lookups and the thinking status included, not
        # only what the core logs.
        with logcontext.turn(str(key), message_id):
            try:
                await self._turn(event, context, key, message_id, set_title)
            except Exception:
                # The one top-level handler for an event. Bolt acked it before this listener ran, so Slack will not
                # send it again: a failure before the core took the message (deliver answers its own) would lose
                # the question in silence. Log it, and tell the person.
                log.exception("the message %s could not be answered", message_id)
                await self._apologise(SlackSink(self.client, channel, thread_ts))

    async def _apologise(self, sink: SlackSink) -> None:
        try:
            await sink.post(markdown_to_mrkdwn(texts.APOLOGY))
        except _SLACK_ERRORS as exc:
            log.warning("the apology could not be posted either: %s", _reason(exc))

    async def _turn(
        self,
        event: dict[str, Any],
        context: dict[str, Any],
        key: ConversationKey,
        message_id: str,
        set_title: AsyncSetTitle | None,
    ) -> None:
        team, channel, thread_ts = key.workspace, key.channel, key.thread
        sink = SlackSink(self.client, channel, thread_ts)
        text = await self._text_in(str(event.get("text") or ""), context.get("bot_user_id"))
        attachments = self._attachments(event)
        if not text.strip() and not attachments:
            await sink.post(texts.EMPTY_MENTION)
            return
        user = str(event.get("user") or "")
        msg = IncomingMessage(
            key,
            message_id,
            user,
            await self._name(user),
            text,
            attachments,
            source=self._thread(event, context, key, in_pane=set_title is not None),
            in_dm=_is_dm(event) or event.get("channel_type") == "mpim",
        )
        status = None
        if thread_ts is not None and self._refusals.allows(team, STATUS):
            status = ThinkingStatus(self.client, channel, thread_ts, lambda error: self._refused(team, STATUS, error))
            status.start()
        try:
            await self._reply(event, key, msg, sink, status, set_title)
        finally:
            if status is not None:
                await status.clear()

    async def _reply(
        self,
        event: dict[str, Any],
        key: ConversationKey,
        msg: IncomingMessage,
        sink: SlackSink,
        status: ThinkingStatus | None,
        set_title: AsyncSetTitle | None,
    ) -> None:
        team, channel, thread_ts, user = key.workspace, key.channel, key.thread, msg.author_id
        if set_title is not None:
            await self._title(key, set_title, msg.text)
        on_first_post = status.clear if status is not None else None

        def post_and_edit() -> StreamingReply[str]:
            return StreamingReply(
                sink,
                interval=self._settings.stream_edit_interval,
                limit=TEXT_LIMIT,
                render=markdown_to_mrkdwn,
                on_first_post=on_first_post,
                status_line=_status_line,
            )

        reply_stream: ReplyStream = post_and_edit()
        on_complete = None
        # Slack streams replies in threads, and top-level messages in channels, but not top-level in a DM.
        streamable = thread_ts is not None or not _is_dm(event)
        if streamable and self._settings.slack_native_streaming and self._refusals.allows(team, STREAM):
            reply_stream = NativeReply(
                self.client,
                channel=channel,
                thread_ts=thread_ts,
                recipient_team=str(event.get("user_team") or team),
                recipient_user=user,
                interval=self._settings.stream_edit_interval,
                fallback=post_and_edit,
                on_refused=lambda error: self._refused(team, STREAM, error),
                on_first_post=on_first_post,
            )
            on_complete = reply_stream.complete
        prompt = SlackApprovalPrompt(self.client, channel, thread_ts, msg.author_name)
        view = SlackTurnView(self._approvals, prompt, reply_stream, status, user, msg.author_name)
        # Outside a DM (the assistant pane) Slack shows no "is thinking..." status: the reply shows "Thinking…"
        # (TEAMBOT_SHOW_REASONING=status; with ``full`` the thinking itself goes first, in a message of its own).
        in_reply = self._settings.show_reasoning == "status" and not _is_dm(event)
        thinking_in_reply = reply_stream if in_reply else None
        await deliver(
            self._core,
            msg,
            sink,
            interval=self._settings.stream_edit_interval,
            limit=TEXT_LIMIT,
            render=markdown_to_mrkdwn,
            reply_stream=reply_stream,
            show_reasoning=self._settings.show_reasoning,
            reasoning_sink=SlackReasoning(self.client, channel, thread_ts, thinking_in_reply),
            feedback=self._settings.feedback,
            view=view,
            on_complete=on_complete,
        )

    def _thread(
        self, event: dict[str, Any], context: dict[str, Any], key: ConversationKey, *, in_pane: bool
    ) -> SlackThread | None:
        """Where the core reads the thread's earlier messages: for a message inside a thread (a mention in a
        thread, a message in an assistant thread or in a DM thread), not for one that starts a thread."""
        thread_ts = event.get("thread_ts")
        if not thread_ts or thread_ts == event.get("ts"):
            return None
        me = Identity(context.get("bot_user_id"), context.get("bot_id"))
        return self.threads.thread(
            key.workspace, key.channel, str(thread_ts), str(event["ts"]), me, own_root=not in_pane
        )

    def _refused(self, team: str, feature: str, error: str) -> None:
        self._refusals.refused(team, feature, error)

    async def _on_command(self, ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        team = str(command.get("team_id") or "-")
        user = str(command.get("user_id") or "")
        name = self._command_names.get(str(command.get("command")), "")
        channel = str(command["channel_id"])
        needs_admin = name in _ADMIN_COMMANDS and bool(str(command.get("text") or "").strip())
        command_id = f"slack:{team}:{channel}:command:{command.get('trigger_id') or '-'}"
        key = ConversationKey("slack", team, channel)  # until its thread is known
        with logcontext.turn(str(key), command_id):
            # The one top-level handler for a command: a bug is logged with its traceback, and the person who
            # typed it hears a short apology instead of Slack's "failed with the error operation_timeout".
            try:
                key = await self._command_key(command, team, channel, user)
                with logcontext.turn(str(key), command_id):
                    admin = needs_admin and await self._is_admin(user, team)
                    in_dm = channel.startswith("D") or str(command.get("channel_name") or "").startswith("mpdm-")
                    ctx = CommandContext(key, user, platform_admin=admin, admins=texts.ADMINS_SLACK, in_dm=in_dm)
                    answer = await self._commands.run(name, ctx, str(command.get("text") or ""))
            except Exception:
                log.exception("the command %s in %s failed", command.get("command"), key)
                answer = texts.APOLOGY
            await respond(text=markdown_to_mrkdwn(answer), response_type="ephemeral")

    async def _on_feedback(self, ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        """A click on an answer's feedback buttons (Slack's own or the plain pair): kept with the reply."""
        await ack()
        action = (body.get("actions") or [{}])[0]
        parsed = parse(action.get("value"))
        user = str((body.get("user") or {}).get("id") or "")
        channel = str((body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id") or "")
        if parsed is None or not user or not channel:
            log.info("a feedback click without a verdict, person or channel was ignored")
            return
        verdict, reply_id = parsed
        with logcontext.turn(f"slack:-:{channel}", f"slack:feedback:{reply_id}"):
            # The one top-level handler for a click: a bug is logged; the person sees no traceback.
            try:
                kept = await self._core.feedback("slack", channel, reply_id, user, verdict)
                answer = texts.FEEDBACK_THANKS if kept else texts.FEEDBACK_GONE
            except Exception:
                log.exception("the feedback on reply %d could not be kept", reply_id)
                answer = texts.APOLOGY
            try:
                await respond(text=answer, response_type="ephemeral", replace_original=False)
            except _SLACK_ERRORS as exc:
                log.info("the thanks for feedback could not be sent: %s", _reason(exc))

    async def _on_approval(self, ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        """A click on an approval request's Approve or Deny button.

        The asker's click goes to the turn that waits for it, which edits the request; anyone else, and a click
        on a request this process does not wait for (it ended, or is from before a restart), gets a line only
        they see, and nothing changes.
        """
        await ack()
        action = (body.get("actions") or [{}])[0]
        user = str((body.get("user") or {}).get("id") or "")
        approve = action.get("action_id") == APPROVE
        result = self._approvals.click(str(action.get("value") or ""), user, approve)
        log.info("a click on an approval request by %s: %s", user, result.click.value)
        if result.click is Click.DECIDED:
            return
        if result.click is Click.NOT_ASKER:
            answer = texts.APPROVAL_NOT_ASKER.format(asker=result.asker_name)
        else:
            answer = texts.APPROVAL_UNKNOWN
        try:
            await respond(text=escape_mrkdwn(answer), response_type="ephemeral", replace_original=False)
        except _SLACK_ERRORS as exc:
            log.info("the answer to a click on an approval request could not be sent: %s", _reason(exc))

    async def _command_key(self, command: dict[str, Any], team: str, channel: str, user: str) -> ConversationKey:
        # In the assistant pane a command is about the thread in view, the one the person last used there: known
        # here since they wrote, else (after a restart, on another replica) the one the history says.
        thread = command.get("thread_ts") or self._assistant_threads.get((team, channel, user))
        if thread is None and channel.startswith("D"):
            thread = await self._core.store.last_thread(ConversationKey("slack", team, channel), user)
        return ConversationKey("slack", team, channel, str(thread) if thread else None)

    async def _is_admin(self, user_id: str, team: str) -> bool:
        """Is ``user_id`` an admin or owner of the workspace ``team`` the command was typed in?"""
        try:
            user = (await self.client.users_info(user=user_id))["user"] or {}
        except _SLACK_ERRORS as exc:
            log.warning("users.info for %s failed: %s", user_id, _reason(exc))
            return False
        # In a Slack Connect channel people of other workspaces type commands too, and users.info gives their own
        # workspace's admin and owner flags: those give no say over this one.
        if str(user.get("team_id") or "") != team:
            log.info("%s is of the workspace %s, not %s: not an admin here", user_id, user.get("team_id"), team)
            return False
        return bool(user.get("is_admin") or user.get("is_owner"))

    # --- files in ---------------------------------------------------------------------------------------

    def _attachments(self, event: dict[str, Any]) -> tuple[Attachment, ...]:
        """The event's files, each fetched only when the core decides to read it."""
        found = []
        for file in event.get("files") or []:
            if not isinstance(file, dict):
                continue
            url = str(file.get("url_private_download") or file.get("url_private") or "")
            mimetype = str(file.get("mimetype") or "")
            size = file.get("size")
            found.append(
                Attachment(
                    f"slack:{file.get('id') or '-'}",
                    str(file.get("name") or file.get("title") or "file"),
                    mimetype,
                    size if isinstance(size, int) else None,
                    fetch=functools.partial(self._download, url, mimetype),
                )
            )
        return tuple(found)

    async def _download(self, url: str, mimetype: str) -> bytes:
        """A Slack file, with the bot token, from Slack's file host only."""
        if not url or self._session is None:
            raise AttachmentError("no URL for the file", user_message=texts.FILE_UNAVAILABLE)
        assert self._settings.slack_bot_token is not None
        data, content_type = await download(
            self._session,
            url,
            hosts=self._file_hosts,
            max_bytes=self._settings.max_attachment_bytes,
            headers={"Authorization": f"Bearer {self._settings.slack_bot_token.get_secret_value()}"},
        )
        # Without files:read (or without the token) Slack answers 200 with its login page, not an error.
        if content_type.startswith("text/html") and not mimetype.startswith("text/html") and _looks_like_html(data):
            log.warning("Slack sent an HTML page instead of a file: the app lacks the files:read scope")
            raise AttachmentError("HTML page instead of the file", user_message=texts.SLACK_FILES_SCOPE)
        return data

    # --- text in ----------------------------------------------------------------------------------------

    async def _text_in(self, text: str, bot_user_id: str | None) -> str:
        if bot_user_id:
            text = _bot_mention(bot_user_id).sub("", text)
        # Every markup below starts with "<": a question without one (most, once the bot's mention is gone) skips
        # five regex passes.
        if "<" in text:
            names = {uid: await self._name(uid) for uid, _ in _USER_MENTION.findall(text)}
            text = _USER_MENTION.sub(lambda m: "@" + names.get(m.group(1), m.group(2) or m.group(1)), text)
            text = _CHANNEL_MENTION.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
            text = _SPECIAL_MENTION.sub(lambda m: "@" + m.group(1), text)
            text = _GROUP_MENTION.sub(lambda m: "@" + (m.group(1) or "group").lstrip("@"), text)
            text = _LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(2) else m.group(1), text)
        return unescape_slack(text).strip()


async def _aiohttp_response(bolt_response: BoltResponse) -> web.Response:
    """Bolt's response as aiohttp's (``to_aiohttp_response``). An event's ack, every mention's answer to Slack, is
    made here as the same bytes on the wire as Bolt's conversion (``test_the_plain_ack``), without its header
    copies, regex and cookie parsing, and without a body: aiohttp then writes ``Content-Length: 0`` as it does for
    Bolt's empty one, but makes and writes no payload object for it."""
    if bolt_response.status == 200 and not bolt_response.body and bolt_response.headers == _PLAIN_ACK_HEADERS:
        return web.Response(content_type="text/plain")
    return await to_aiohttp_response(bolt_response)


def _json_dumps(value: Any) -> str:
    """The body of a Web API call sent as JSON (chat.postMessage and the stream methods: slack_sdk hands aiohttp
    the arguments), through orjson: a reply's blocks are encoded several times faster than by ``json``. Where
    orjson refuses (a lone surrogate, an int past 64 bits), ``json`` encodes it as before."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


#: What a Web API call can raise: Slack's refusal or an error page (SlackApiError), a dropped connection, a timeout.
_SLACK_ERRORS = (SlackApiError, aiohttp.ClientError, TimeoutError)


def _reason(exc: BaseException) -> str:
    """Slack's error code, or the kind of network failure (never the exception's text, which may hold a URL)."""
    if isinstance(exc, SlackApiError):
        return error_code(exc)
    return type(exc).__name__


def _header(req: AsyncBoltRequest, name: str) -> str | None:
    values = req.headers.get(name)
    return str(values[0]) if values else None


def _status_line(text: str) -> str:
    """A progress line under a posted reply: small italics, escaped."""
    return f"_{escape_mrkdwn(text)}_"


def _is_dm(event: dict[str, Any]) -> bool:
    return event.get("channel_type") == "im" or str(event.get("channel", "")).startswith("D")


def _team(body: dict[str, Any], event: dict[str, Any], context: dict[str, Any]) -> str:
    return str(body.get("team_id") or event.get("team") or context.get("team_id") or "-")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def _scopes(headers: dict[str, Any]) -> CheckResult:
    """``teambot check``: does the bot token carry every scope the bot uses (reading threads and files included)?
    Slack lists a token's scopes in the ``x-oauth-scopes`` header of every Web API answer."""
    listed = next((str(v) for k, v in headers.items() if k.lower() == "x-oauth-scopes"), None)
    if listed is None:
        return CheckResult("slack scopes", True, texts.CHECK_SLACK_SCOPES_UNLISTED)
    granted = {scope.strip() for scope in listed.split(",")}
    missing = [f"{scope} ({why})" for scope, why in SCOPE_USES.items() if scope not in granted]
    if missing:
        return CheckResult("slack scopes", False, texts.CHECK_SLACK_SCOPES_MISSING.format(missing="; ".join(missing)))
    return CheckResult("slack scopes", True, texts.CHECK_SLACK_SCOPES_OK.format(scopes=", ".join(REQUIRED_SCOPES)))


async def check_slack(settings: Settings) -> list[CheckResult]:
    """``teambot check``: is the bot token accepted, and the app token where Socket Mode is used?"""
    assert settings.slack_bot_token is not None
    results = []
    client = AsyncWebClient(token=settings.slack_bot_token.get_secret_value(), base_url=settings.slack_api_url)
    try:
        me = await client.auth_test()
        results.append(CheckResult("slack bot token", True, f"accepted: @{me.get('user')} in {me.get('team')}"))
        results.append(_scopes(me.headers))
    except SlackApiError as exc:
        results.append(CheckResult("slack bot token", False, f"SLACK_BOT_TOKEN rejected ({error_code(exc)})"))
    except (aiohttp.ClientError, TimeoutError) as exc:
        detail = f"cannot reach {settings.slack_api_url}: {type(exc).__name__}"
        results.append(CheckResult("slack bot token", False, detail))
    if settings.slack_app_token is not None:
        app = AsyncWebClient(token=settings.slack_app_token.get_secret_value(), base_url=settings.slack_api_url)
        try:
            await app.apps_connections_open(app_token=settings.slack_app_token.get_secret_value())
            results.append(CheckResult("slack app token", True, "accepted: Socket Mode can connect"))
        except SlackApiError as exc:
            error = error_code(exc)
            results.append(CheckResult("slack app token", False, f"SLACK_APP_TOKEN rejected ({error})"))
    elif settings.slack_signing_secret is not None:
        results.append(CheckResult("slack signing secret", True, "set (Slack checks it when you save the URL)"))
    return results
