"""Discord adapter: translates mentions, DMs, replies to the bot and ``/reset`` into core calls.

Mentions and DMs carry their text without the privileged Message Content intent, so the bot asks for none by
default; what it then cannot read around a mention (the message replied to, a thread's earlier messages: see
adapters.discord.context) is said once per channel in a reply, and in ``teambot check``.

``AllowedMentions.none()`` on the client (discord.py merges it into every send and edit, interaction
responses and followups included) means no model output can ping @everyone, @here, a role or a person; the sink
passes it again on each of its own sends and edits, so the answers stay safe even on a client built without it.

Conversation keys: a guild channel is ``discord:<guild>:<channel>``; a thread is keyed under its parent channel,
``discord:<guild>:<parent>:<thread>``, as Slack keys a thread under its channel, so the parent's access lists,
system prompt, model, budget and rate limit govern it while its history stays its own. A person's DMs are a
workspace of their own, ``discord:dm-<user id>:<channel>``, so budgets and rate limits follow the person.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Sequence
from typing import Any

import aiohttp
import discord
import httpx
from aiohttp import web
from discord import app_commands

from adapters.approvals import Approvals, Click, Outcome, outcome_line, shown_arguments
from adapters.connection import CHECK_NETWORK, Backoff, describe, failed_attempt
from adapters.discord.actions import DiscordActions
from adapters.discord.context import Seen, ThreadSource, message_files, message_text, reply_chain
from adapters.discord.sdk import NO_MENTIONS, send_message
from adapters.downloads import FileHosts, download
from adapters.streaming import ReplyStream, StreamingReply, deliver, drain, track
from bot import logcontext, texts
from bot.check import CheckResult
from bot.commands import CommandContext
from bot.config import Settings
from bot.conversation import ConversationCore
from bot.errors import ConfigError
from bot.messages import Attachment, ContextMessage, ConversationKey, IncomingMessage, ToolRequest, dm_workspace
from bot.runtime import commands

log = logging.getLogger(__name__)

TEXT_LIMIT = 2000
#: How many channels the adapter remembers having told about the missing Message Content intent.
_TOLD_HIDDEN_MAX = 10_000
#: What the bot needs in a channel: see it, read what was said before (replies), answer there and in its threads.
PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, send_messages_in_threads=True, read_message_history=True
)


#: Where Discord serves attachments: only there is an attachment's URL fetched.
DISCORD_FILE_HOSTS = ("https://cdn.discordapp.com/", "https://media.discordapp.net/")
DEFAULT_API_BASE = "https://discord.com/api/v10"


def file_hosts() -> FileHosts:
    """Discord's CDN hosts, and the host of an overridden API base (a proxy, the test fake)."""
    base = discord.http.Route.BASE
    return FileHosts.of(DISCORD_FILE_HOSTS if base == DEFAULT_API_BASE else (*DISCORD_FILE_HOSTS, base))


def invite_url(application_id: int | str) -> str:
    """The link that adds the bot to a server with its slash commands and the permissions it needs."""
    return discord.utils.oauth_url(application_id, permissions=PERMISSIONS, scopes=("bot", "applications.commands"))


class DiscordSink:
    """The first message answers the trigger as a reply; longer answers continue in the channel.

    While a reasoning model thinks, a status line (``-# Thinking…``) answers the trigger; the answer's first post
    takes its place, or, with TEAMBOT_SHOW_REASONING=full, the line becomes the thinking, in subtext, and the
    answer follows in a message of its own.
    """

    def __init__(self, trigger: discord.Message, typing: Typing | None = None) -> None:
        self._trigger = trigger
        self._typing = typing
        self._status: discord.Message | None = None

    async def thinking(self) -> None:
        if self._status is None:
            self._status = await self._trigger.reply(
                f"-# {texts.REASONING_STATUS}", mention_author=False, allowed_mentions=discord.AllowedMentions.none()
            )

    async def reasoning(self, text: str) -> None:
        status, self._status = self._status, None
        content = subtext(text, TEXT_LIMIT)
        if status is not None:
            await status.edit(content=content, allowed_mentions=discord.AllowedMentions.none())
        else:
            await self._trigger.reply(content, mention_author=False, allowed_mentions=discord.AllowedMentions.none())

    async def post(self, text: str, feedback: int | None = None) -> discord.PartialMessage:
        # Only the last message of a finished answer carries the buttons; the others are sent as before.
        view = feedback_view(feedback) if feedback is not None else None
        status, self._status = self._status, None
        if status is not None:
            # The status line was the reply to the trigger: the answer takes its place.
            self.stop_typing()
            self._typing = None
            extra: dict[str, Any] = {"view": view} if view is not None else {}
            await status.edit(content=text, allowed_mentions=NO_MENTIONS, **extra)
            return status
        # The answer's first message replies to the trigger; those after it continue in the channel. Sent as
        # discord.py's reply and send send them, without the Message it would build from Discord's answer (sdk.py).
        typing, self._typing = self._typing, None
        if typing is not None:
            typing.stop(posting=True)
        return await send_message(self._trigger, text, reply=typing is not None, view=view)

    async def edit(self, handle: discord.PartialMessage, text: str, feedback: int | None = None) -> None:
        extra: dict[str, Any] = {"view": feedback_view(feedback)} if feedback is not None else {}
        await handle.edit(content=text, allowed_mentions=NO_MENTIONS, **extra)

    def stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.stop()


#: How long an answer may take before the typing indicator starts. An answer out by then needs none (Discord takes
#: the indicator away when the bot posts anyway), and not starting it saves a REST call and two tasks per mention;
#: a person waiting longer sees the bot typing from then on, until the answer's first words.
TYPING_DELAY = 0.5


class ChannelTypers:
    """The typing indicators of one client: one per channel, however many answers are prepared there.

    Discord shows one "teambot is typing…" per channel, so a second indicator in a channel is a REST call (and
    again every few seconds) that changes nothing anyone sees: in a busy channel, most of them. A post of the bot
    takes the indicator away (Discord does that); an answer that starts waiting in the channel after it shows it
    again at once, and those still waiting bring it back with discord.py's next refresh (within 5 s), as before.
    """

    def __init__(self) -> None:
        #: channel id -> the indicator's task and how many answers are waiting for it
        self._typers: dict[int, tuple[asyncio.Task[None], int]] = {}
        #: channels with an indicator where the bot has posted since it was last started
        self._posted: set[int] = set()

    def join(self, channel: discord.abc.Messageable, channel_id: int) -> None:
        found = self._typers.get(channel_id)
        # A typer that ended (a failed typing call) is started again, not shared: it would show nothing.
        if found is not None and channel_id not in self._posted and not found[0].done():
            self._typers[channel_id] = (found[0], found[1] + 1)
            return
        waiting = 0
        if found is not None:
            found[0].cancel()  # shown again at once: a post took it away
            waiting = found[1]
        self._posted.discard(channel_id)
        self._typers[channel_id] = (asyncio.create_task(keep_typing(channel), name="discord-typing"), waiting + 1)

    def leave(self, channel_id: int, *, posting: bool) -> None:
        task, waiting = self._typers[channel_id]
        if waiting > 1:
            self._typers[channel_id] = (task, waiting - 1)
            if posting:
                self._posted.add(channel_id)
            return
        task.cancel()
        del self._typers[channel_id]
        self._posted.discard(channel_id)


class Typing:
    """The typing indicator while one answer is prepared: started only if the answer is not out within
    :data:`TYPING_DELAY` (a timer until then, no task), then kept up (shared with the channel's other waiting
    answers, :class:`ChannelTypers`) until :meth:`stop`."""

    def __init__(self, channel: discord.abc.Messageable, channel_id: int, typers: ChannelTypers) -> None:
        self._channel = channel
        self._channel_id = channel_id
        self._typers = typers
        self._joined = False
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(TYPING_DELAY, self._start)

    def _start(self) -> None:
        self._timer = None
        self._joined = True
        self._typers.join(self._channel, self._channel_id)

    def stop(self, *, posting: bool = False) -> None:
        """No more typing for this answer; ``posting``: because its first message goes out now. Called any
        number of times."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._joined:
            self._joined = False
            self._typers.leave(self._channel_id, posting=posting)


async def keep_typing(channel: discord.abc.Messageable) -> None:
    """Show the bot typing in ``channel`` until cancelled (discord.py sends it again every few seconds)."""
    try:
        async with channel.typing():
            await asyncio.Event().wait()
    except discord.HTTPException as exc:
        log.debug("typing indicator failed: %s", exc)


def subtext(thinking: str, limit: int) -> str:
    """The model's thinking as Discord subtext (``-#`` on every line: small and grey, apart from the answer),
    headed and cut to fit one message."""
    lines = [f"-# {texts.REASONING_HEADER}"]
    size = len(lines[0])
    for line in thinking.splitlines():
        if not line.strip():
            continue  # a blank line would end the subtext
        line = f"-# {line.strip()}"
        if size + 1 + len(line) > limit:
            room = limit - size - 1 - len(texts.REASONING_CUT)
            if room > len("-# "):
                lines.append(line[:room] + texts.REASONING_CUT)
            break
        lines.append(line)
        size += 1 + len(line)
    return "\n".join(lines)


class FeedbackButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"teambot:feedback:(?P<verdict>up|down):(?P<reply>[0-9]{1,18})",
):
    """A 👍 or 👎 under an answer. Its custom id names the verdict and the stored reply, so a click is understood
    by any replica, after any restart, without keeping a view per message in memory."""

    def __init__(self, verdict: str, reply_id: int) -> None:
        emoji, label = ("👍", texts.FEEDBACK_UP) if verdict == "up" else ("👎", texts.FEEDBACK_DOWN)
        button: discord.ui.Button[discord.ui.View] = discord.ui.Button(
            style=discord.ButtonStyle.secondary,
            emoji=emoji,
            custom_id=f"teambot:feedback:{verdict}:{reply_id}",
        )
        super().__init__(button)
        self.verdict, self.reply_id, self.label = verdict, reply_id, label

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> FeedbackButton:
        return cls(match["verdict"], int(match["reply"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        adapter = getattr(interaction.client, "adapter", None)
        if isinstance(adapter, DiscordAdapter):
            await adapter.on_feedback(interaction, self.verdict, self.reply_id)


_VERDICTS = ("up", "down")


@functools.cache
def _feedback_row() -> dict[str, Any]:
    """The buttons' action row as discord.py renders a view of the two :class:`FeedbackButton`, for reply 0."""
    view = discord.ui.View(timeout=None)
    for verdict in _VERDICTS:
        view.add_item(FeedbackButton(verdict, 0))
    [row] = view.to_components()
    return row


def feedback_components(reply_id: int) -> list[dict[str, Any]]:
    """The 👍/👎 under reply ``reply_id``: discord.py's own rendering of the two :class:`FeedbackButton` (see
    :func:`_feedback_row`), with this reply's custom ids."""
    row = _feedback_row()
    buttons = [
        {**button, "custom_id": f"teambot:feedback:{verdict}:{reply_id}"}
        for verdict, button in zip(_VERDICTS, row["components"], strict=True)
    ]
    return [{**row, "components": buttons}]


class FeedbackButtons(discord.ui.View):
    """The feedback buttons of one answer, as a view without items: it only renders their components.

    A view of item objects (each pointing back at its view) left about 18 cyclic objects per answer for the
    collector, and discord.py walked it to register its dynamic items again on every send. Clicks never needed
    it: :class:`FeedbackButton` is registered once (``add_dynamic_items``) and matched by custom id.

    ``View.__init__`` is not run: all it would add is what discord.py needs for a view it listens to (a stop
    future, a timeout, and a random id from ``os.urandom``, a system call: 10-15 µs of CPU per answer in a burst
    on the benchmark's machine). Sending or editing with a view asks it only what the four methods below answer,
    and a view that is not dispatchable is never stored, so discord.py keeps nothing of it after the call.
    """

    def __init__(self, reply_id: int) -> None:  # no super().__init__(): see the class's docstring
        self._components = feedback_components(reply_id)

    def to_components(self) -> list[dict[str, Any]]:
        return self._components

    def has_components_v2(self) -> bool:
        return False

    def is_dispatchable(self) -> bool:
        return False

    def is_finished(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"<FeedbackButtons {self._components!r}>"


def feedback_view(reply_id: int) -> discord.ui.View:
    return FeedbackButtons(reply_id)


class ApprovalButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"teambot:approval:(?P<verdict>approve|deny):(?P<id>[A-Za-z0-9_-]{1,40})",
):
    """Approve or Deny under a tool approval request. Its custom id carries the request's id (see
    :mod:`adapters.approvals`), so a click on a request from before a restart still finds this handler, which
    tells the person it expired."""

    def __init__(self, verdict: str, approval_id: str) -> None:
        approve = verdict == "approve"
        button: discord.ui.Button[discord.ui.View] = discord.ui.Button(
            style=discord.ButtonStyle.success if approve else discord.ButtonStyle.danger,
            label=texts.APPROVAL_APPROVE if approve else texts.APPROVAL_DENY,
            custom_id=f"teambot:approval:{verdict}:{approval_id}",
        )
        super().__init__(button)
        self.approve, self.approval_id = approve, approval_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ApprovalButton:
        return cls(match["verdict"], match["id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        adapter = getattr(interaction.client, "adapter", None)
        if isinstance(adapter, DiscordAdapter):
            await adapter.on_approval(interaction, self.approve, self.approval_id)


#: The arguments shown in an approval request; the rest of the message's 2,000 characters is the ask around them.
ARGUMENTS_LIMIT = 1400
_NAME_LIMIT = 100


def _plain(text: str) -> str:
    """Text shown as written: no Markdown, no mentions."""
    return discord.utils.escape_markdown(discord.utils.escape_mentions(text))


def approval_content(request: ToolRequest, asker: str, footer: str) -> str:
    """An approval request as a message: the ask with the tool's name in code, the arguments in a code block
    (a fence inside them broken so they cannot leave it), and ``footer`` as subtext."""
    tool = request.tool[:_NAME_LIMIT].replace("`", "'")
    ask = _plain(texts.APPROVAL_REQUEST.format(asker=asker, tool="\x00")).replace("\x00", f"`{tool}`")
    arguments = shown_arguments(request.arguments, ARGUMENTS_LIMIT).replace("```", "``\u200b`")
    return f"{ask}\n```json\n{arguments}\n```\n-# {_plain(footer)}"


class DiscordApprovalPrompt:
    """Posts approval requests as replies to the question, and edits them once they have ended."""

    def __init__(self, trigger: discord.Message, asker_name: str) -> None:
        self._trigger = trigger
        self._asker = asker_name
        self._within = 0.0

    async def ask(self, approval_id: str, request: ToolRequest, within: float) -> discord.Message:
        self._within = within
        view = discord.ui.View(timeout=None)
        view.add_item(ApprovalButton("approve", approval_id))
        view.add_item(ApprovalButton("deny", approval_id))
        footer = texts.APPROVAL_FOOTER.format(asker=self._asker, seconds=round(within))
        return await self._trigger.reply(
            approval_content(request, self._asker, footer),
            view=view,
            mention_author=False,
            allowed_mentions=discord.AllowedMentions.none(),
        )

    async def settle(self, handle: discord.Message, request: ToolRequest, outcome: Outcome) -> None:
        line = outcome_line(outcome, self._asker, self._within)
        await handle.edit(
            content=approval_content(request, self._asker, line),
            view=None,  # the buttons go
            allowed_mentions=discord.AllowedMentions.none(),
        )


class DiscordTurnView:
    """One turn's :class:`bot.messages.TurnView` on Discord: progress as a status line in the reply (the answer
    replaces it), approvals as a reply with buttons."""

    def __init__(
        self, approvals: Approvals, prompt: DiscordApprovalPrompt, reply: ReplyStream, asker_id: str, asker_name: str
    ) -> None:
        self._approvals = approvals
        self._prompt = prompt
        self._reply = reply
        self._asker_id = asker_id
        self._asker_name = asker_name

    async def status(self, text: str | None) -> None:
        await self._reply.status(text)

    async def approve(self, request: ToolRequest, asker_id: str, within: float) -> bool:
        name = self._asker_name if asker_id == self._asker_id else asker_id
        return await self._approvals.ask(self._prompt, request, asker_id, name, within)


def status_line(text: str) -> str:
    """A progress line in a reply: subtext, shown as written."""
    return f"-# {_plain(text)}"


class _SyncsCommands:
    """What both client kinds add: the adapter, and the command sync once per start."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self.adapter = adapter

    async def setup_hook(self) -> None:
        # Runs once per start, unlike on_ready, which fires again after every reconnect.
        await self.adapter.sync_commands()


class _Client(_SyncsCommands, discord.Client):
    """One gateway connection."""


class _ShardedClient(_SyncsCommands, discord.AutoShardedClient):
    """Several gateway connections in one process: the shards this replica runs (DMs come on shard 0)."""


def _client(
    adapter: DiscordAdapter, settings: Settings, intents: discord.Intents, ready_timeout: float
) -> discord.Client:
    options: dict[str, Any] = {
        "intents": intents,
        "allowed_mentions": discord.AllowedMentions.none(),
        "guild_ready_timeout": ready_timeout,
    }
    if settings.discord_shards is None:
        return _Client(adapter, **options)
    shard_ids = list(settings.discord_shard_ids) or None
    return _ShardedClient(adapter, shard_count=settings.discord_shards, shard_ids=shard_ids, **options)


#: The gateway's close code for a token it does not accept.
_AUTHENTICATION_FAILED = 4004
#: What discord.py raises when the network or Discord fails, as opposed to a bug.
_NETWORK_ERRORS = (
    OSError,
    TimeoutError,
    aiohttp.ClientError,
    discord.ConnectionClosed,
    discord.GatewayNotFound,
    discord.DiscordServerError,
)


def _network_failure(exc: BaseException | None) -> BaseException | None:
    """The network failure behind ``exc``, if that is what it is.

    discord.py's first connection attempt, when it fails, ends in an AttributeError raised while handling the
    real failure (its retry reads the session of a WebSocket it never had): the failure is that one's context.
    """
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, _NETWORK_ERRORS):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


class _ReconnectLine(logging.Filter):
    """discord.py logs each failed reconnect as an ERROR with a traceback ("Attempting a reconnect in 1.23s"),
    forty lines every few seconds while Discord is away. Made here into the one WARNING line every platform gives
    (:func:`adapters.connection.failed_attempt`); the traceback stays for DEBUG. Before the first connection
    the adapter's own attempts say it, so discord.py's line is dropped then.

    A filter on discord.py's own logger, not on the handlers: it changes these records only, wherever they go.
    """

    def __init__(self) -> None:
        super().__init__()
        self.adapters: set[DiscordAdapter] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != "Attempting a reconnect in %.2fs" or not self.adapters:
            return True
        if not any(adapter._ready_once for adapter in self.adapters):
            return False
        failure = record.exc_info[1] if record.exc_info else None
        delay = record.args[0] if isinstance(record.args, tuple) and record.args else 0.0
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "%s: %s failed (%s); check %s; retrying in %.0f s"
        where = CHECK_NETWORK.format(where="Discord")
        cause = describe(failure) if failure is not None else "no cause given"
        record.args = ("Discord", "the gateway connection", cause, where, delay)
        if not logging.getLogger("discord.client").isEnabledFor(logging.DEBUG):
            record.exc_info, record.exc_text = None, None
        return True


_RECONNECT_LINE = _ReconnectLine()


class DiscordAdapter:
    """A discord.py client wired to the core."""

    name = "discord"

    def __init__(self, core: ConversationCore, settings: Settings, *, guild_ready_timeout: float = 2.0) -> None:
        self._core = core
        self._settings = settings
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.dm_messages = True
        intents.message_content = settings.discord_message_content
        self.client = _client(self, settings, intents, guild_ready_timeout)
        self.tree = app_commands.CommandTree(self.client)
        self._commands = commands(settings, core)
        for command in self._app_commands(settings.command_names()):
            self.tree.add_command(command)
        self._inflight: set[asyncio.Task[object]] = set()
        self._typers = ChannelTypers()
        # The message commands (adapters.discord.actions), synced with the slash commands.
        actions = DiscordActions(
            core,
            settings,
            self.client,
            keys=self._key,
            sinks=lambda message: DiscordSink(message, Typing(message.channel, message.channel.id, self._typers)),
            inflight=self._inflight,
            limit=TEXT_LIMIT,
        )
        for menu in actions.commands():
            self.tree.add_command(menu)
        self.client.event(self.on_message)
        if settings.feedback:
            # Registered once: clicks on any answer's buttons (whatever process posted it) find their handler.
            self.client.add_dynamic_items(FeedbackButton)
        # Always: a click on an approval request from before a restart is told it expired.
        self.client.add_dynamic_items(ApprovalButton)
        self._approvals = Approvals()
        #: For attachments, opened at the first one: discord.py's own session is private to it.
        self._files: aiohttp.ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        #: The gateway has been ready once: from then on discord.py's own reconnect loop is at work.
        self._ready_once = False
        #: The channels (by id) already told, in a reply, that other people's messages arrive empty.
        self._told_hidden: set[str] = set()

    def mount(self, app: web.Application) -> None:
        """Discord needs no HTTP route: everything arrives over the gateway."""

    @property
    def connected(self) -> bool:
        return self.client.is_ready() and not self.client.is_closed()

    async def start(self) -> None:
        """Log in and connect; returns once the gateway is ready, raises ConfigError (one line) when Discord
        refuses the token or an intent.

        While Discord cannot be reached it keeps trying, one log line per attempt and a growing pause between
        them; a stop (cancelling this) ends it at any point.
        """
        assert self._settings.discord_token is not None
        self._stopping = False
        token = self._settings.discord_token.get_secret_value()
        backoff = Backoff()
        while True:
            try:
                await self.client.login(token)
                break
            except discord.LoginFailure:
                raise ConfigError(texts.DISCORD_TOKEN_REFUSED) from None
            except (aiohttp.ClientError, OSError, TimeoutError, discord.DiscordServerError) as exc:
                where = CHECK_NETWORK.format(where="Discord")
                failed_attempt(log, "Discord", "logging in (REST API)", exc, where, delay := backoff.next())
            await asyncio.sleep(delay)
        _RECONNECT_LINE.adapters.add(self)
        logging.getLogger("discord.client").addFilter(_RECONNECT_LINE)  # once: the same filter is not added twice
        while True:
            self._runner = asyncio.create_task(self.client.connect(reconnect=True))
            ready = asyncio.create_task(self.client.wait_until_ready())
            try:
                await asyncio.wait({self._runner, ready}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
            if not self._runner.done():
                break
            failure = self._runner.exception()
            if isinstance(failure, discord.PrivilegedIntentsRequired):
                # The only privileged intent the bot can ask for is Message Content.
                raise ConfigError(
                    "Discord refused the Message Content intent: switch it on in the Developer Portal "
                    "(Bot, Privileged Gateway Intents) or unset TEAMBOT_DISCORD_MESSAGE_CONTENT"
                ) from None
            if isinstance(failure, discord.ConnectionClosed) and failure.code == _AUTHENTICATION_FAILED:
                raise ConfigError(texts.DISCORD_TOKEN_REFUSED) from None
            cause = _network_failure(failure)
            if cause is None or self.client.is_closed():
                raise RuntimeError("the Discord client stopped while connecting") from failure
            where = CHECK_NETWORK.format(where="Discord")
            failed_attempt(log, "Discord", "connecting to the gateway", cause, where, delay := backoff.next())
            await asyncio.sleep(delay)
        self._ready_once = True
        log.info("Discord adapter connected as %s", self.client.user)

    async def stop(self, drain_seconds: float = 10.0) -> None:
        """Stop taking messages, let the turns under way finish (up to ``drain_seconds``), then disconnect.

        The client stays open while they drain: closing it closes its HTTP session too, and the replies could
        neither finish nor be marked cut off.
        """
        self._stopping = True
        # Nobody could answer a waiting approval request after the restart: denied now, the turns end at once.
        self._approvals.stop()
        await drain(self._inflight, drain_seconds)
        await self.client.close()
        if self._files is not None:
            await self._files.close()
            self._files = None
        if self._runner is not None:
            # discord.py may be sleeping before its next attempt: closed, it has nothing left to wait for.
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        _RECONNECT_LINE.adapters.discard(self)
        if not _RECONNECT_LINE.adapters:
            logging.getLogger("discord.client").removeFilter(_RECONNECT_LINE)

    async def sync_commands(self) -> None:
        if self.client.application_id is not None:
            log.info("Discord: add the bot to a server with %s", invite_url(self.client.application_id))
        if self._settings.discord_guild is not None:
            await self._warn_other_guilds(self._settings.discord_guild)
            guild = discord.Object(id=self._settings.discord_guild)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            # Global commands left by an earlier start without a guild would show twice in that guild.
            self.tree.clear_commands(guild=None)
            await self.tree.sync()
        else:
            synced = await self.tree.sync()
        log.info("Discord application commands synced: %s", ", ".join(c.name for c in synced))

    async def _warn_other_guilds(self, guild_id: int) -> None:
        """Registering the commands in one server clears the global ones: say so if the bot is in other servers."""
        try:
            others = [g.id async for g in self.client.fetch_guilds(limit=None) if g.id != guild_id]
        except discord.HTTPException as exc:
            log.debug("could not list the bot's servers: %s", exc)
            return
        if others:
            names = [f"/{name}" for name in self._settings.command_names().values()]
            warning = texts.DISCORD_GUILD_CLEARS_GLOBAL.format(
                guild=guild_id, count=len(others), s=texts.plural(len(others)), commands=", ".join(names)
            )
            log.warning("%s", warning)

    def _addressed(self, message: discord.Message) -> bool:
        me = self.client.user
        if me is None:
            return False
        if message.guild is None or me in message.mentions:
            return True
        resolved = message.reference.resolved if message.reference else None
        return isinstance(resolved, discord.Message) and resolved.author.id == me.id

    async def on_message(self, message: discord.Message) -> None:
        me = self.client.user
        if me is None or message.author.id == me.id or self._stopping:
            return
        if message.author.bot and self._settings.ignore_bots:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        addressed = self._addressed(message)
        # Not addressed: a question all the same where the channel's speak mode says so (bot.speak); decided
        # in memory for a message outside a thread, which is most of them.
        if not addressed and not isinstance(message.channel, discord.Thread) and not self._speaks_everywhere(message):
            return
        # discord.py runs each event handler as a detached task; remembering them lets stop() drain them.
        track(self._inflight)
        message_id = f"discord:{message.id}"
        guild_id = message.guild.id if message.guild else None
        try:
            key = await self._key(message.channel, message.channel.id, guild_id, message.author.id)
        except discord.HTTPException as exc:
            # Not knowing whether this is a thread, nor of which channel, the bot cannot tell which access lists,
            # prompt and limits apply: it stays silent rather than answer under the wrong ones.
            log.warning(
                "message %s in channel %s not answered: Discord did not say what the channel is (HTTP %s, code %s)",
                message_id,
                message.channel.id,
                exc.status,
                exc.code,
            )
            return
        if not addressed and not await self._core.speaking.wants(key, str(message.author.id)):
            return
        with logcontext.turn(str(key), message_id):
            await self._answer(message, key, message_id)

    def _speaks_everywhere(self, message: discord.Message) -> bool:
        """The message's channel (not a thread) is one where every message is a question (``/speak all``)."""
        guild = message.guild
        if guild is None:
            return False
        return self._core.speaking.speak(ConversationKey("discord", str(guild.id), str(message.channel.id))) == "all"

    async def _key(self, channel: object, channel_id: int, guild_id: int | None, user_id: int) -> ConversationKey:
        """The conversation a message or command belongs to.

        A thread is keyed under its parent channel (the thread as the thread part), so the parent's settings and
        limits govern it; a person's DMs are a workspace of their own, so budgets and rate limits follow them.
        """
        if guild_id is None:
            return ConversationKey("discord", dm_workspace(str(user_id)), str(channel_id))
        if channel is None or isinstance(channel, discord.PartialMessageable):
            # discord.py keeps the active threads it was told about; one it missed arrives as a bare id. Ask Discord
            # what it is: rare, and the only way to learn a thread's parent.
            channel = await self.client.fetch_channel(channel_id)
        if isinstance(channel, discord.Thread):
            return ConversationKey("discord", str(guild_id), str(channel.parent_id), str(channel.id))
        return ConversationKey("discord", str(guild_id), str(channel_id))

    async def _answer(self, message: discord.Message, key: ConversationKey, message_id: str) -> None:
        text = self._text_in(message)
        attachments = self._attachments(message_files(message))
        if not text and not attachments:
            if message.guild is not None and self.client.user not in message.mentions and not message.content:
                # A reply that does not ping the bot arrives blank without the Message Content intent: the
                # person did write something, so a hint to "mention me with a question" would be wrong.
                log.debug("reply to the bot without readable content: not answered")
                return
            await message.reply(texts.EMPTY_MENTION, mention_author=False)
            return
        sink = DiscordSink(message, Typing(message.channel, message.channel.id, self._typers))
        interval = self._settings.stream_edit_interval
        reply = StreamingReply(sink, interval=interval, limit=TEXT_LIMIT, status_line=status_line)
        author_id, author_name = str(message.author.id), message.author.display_name
        prompt = DiscordApprovalPrompt(message, author_name)
        view = DiscordTurnView(self._approvals, prompt, reply, author_id, author_name)
        try:
            seen = Seen()
            # The plain mention (no reply, not in a thread) awaits nothing more than before.
            chain = await self._reply_chain(message, seen) if message.reference is not None else ()
            source = self._thread_source(message, key) if key.thread is not None else None
            msg = IncomingMessage(
                key,
                message_id,
                author_id,
                author_name,
                text,
                attachments,
                context=chain,
                source=source,
                in_dm=message.guild is None,
            )
            stream = await deliver(
                self._core,
                msg,
                sink,
                interval=interval,
                limit=TEXT_LIMIT,
                reply_stream=reply,
                show_reasoning=self._settings.show_reasoning,
                reasoning_sink=sink,
                feedback=self._settings.feedback,
                view=view,
                # With buttons to show, a fast answer (whole before its first post) goes out once, buttons and all.
                on_complete=reply.text_complete if self._settings.feedback else None,
            )
            hidden = seen.hidden + (source.seen.hidden if source is not None else 0)
            if hidden and isinstance(stream, StreamingReply) and stream.handles:
                await self._say_content_hidden(key, sink, hidden)
        finally:
            sink.stop_typing()

    async def _reply_chain(self, message: discord.Message, seen: Seen) -> tuple[ContextMessage, ...]:
        me = self.client.user
        if me is None:
            return ()
        return await reply_chain(
            message, self.client, me.id, self._settings.discord_reply_chain, seen, self._attachments
        )

    def _thread_source(self, message: discord.Message, key: ConversationKey) -> ThreadSource | None:
        me = self.client.user
        if me is None or key.thread is None:
            return None
        thread = message.channel
        # A private thread has no message it was started from; a forum post keeps its own in the thread.
        no_starter = isinstance(thread, discord.Thread) and (
            thread.type is discord.ChannelType.private_thread or isinstance(thread.parent, discord.ForumChannel)
        )
        guild_id = message.guild.id if message.guild else None
        parent = None if no_starter else self.client.get_partial_messageable(int(key.channel), guild_id=guild_id)
        return ThreadSource(thread, parent, int(key.thread), message, me.id, files_in=self._attachments)

    async def _say_content_hidden(self, key: ConversationKey, sink: DiscordSink, hidden: int) -> None:
        """Once per channel (its threads included) while the bot runs: what it could not read, and why."""
        if self._settings.discord_message_content or key.channel in self._told_hidden:
            return
        if len(self._told_hidden) >= _TOLD_HIDDEN_MAX:
            self._told_hidden.clear()  # bounded: at worst a channel hears it a second time
        self._told_hidden.add(key.channel)
        log.info(
            "%d message%s around the mention arrived empty: no Message Content intent", hidden, texts.plural(hidden)
        )
        try:
            await sink.post(texts.DISCORD_CONTENT_HIDDEN)
        except discord.HTTPException as exc:
            log.info("the note on the Message Content intent could not be sent: HTTP %s, code %s", exc.status, exc.code)

    def _attachments(self, found: Sequence[discord.Attachment]) -> tuple[Attachment, ...]:
        """discord.py's attachments, each fetched only when the core decides to read it."""
        return tuple(
            Attachment(
                f"discord:{a.id}",
                a.filename,
                a.content_type or "",
                a.size,
                fetch=functools.partial(self._download, a.url),
            )
            for a in found
        )

    async def _download(self, url: str) -> bytes:
        """An attachment, from Discord's CDN only; its URL is signed, so no token goes with it."""
        if self._files is None or self._files.closed:
            self._files = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        data, _ = await download(self._files, url, hosts=file_hosts(), max_bytes=self._settings.max_attachment_bytes)
        return data

    def _text_in(self, message: discord.Message) -> str:
        me = self.client.user
        return message_text(message, me.id if me is not None else None)

    def _app_commands(self, names: dict[str, str]) -> list[app_commands.Command[Any, Any, None]]:
        async def reset(interaction: discord.Interaction) -> None:
            await self._answer_command(interaction, "reset", "")

        async def usage(interaction: discord.Interaction) -> None:
            await self._answer_command(interaction, "usage", "")

        @app_commands.describe(prompt="the new system prompt, or 'reset'; empty shows the current one")
        async def system(interaction: discord.Interaction, prompt: str = "") -> None:
            await self._answer_command(interaction, "system", prompt)

        @app_commands.describe(
            name="a model from the allowed list, or 'reset'; empty shows the current one",
            effort="reasoning effort for that model (none, minimal, low, medium, high, xhigh); empty: the default",
        )
        async def model(interaction: discord.Interaction, name: str = "", effort: str = "") -> None:
            await self._answer_command(interaction, "model", f"{name} {effort}".strip())

        async def summary(interaction: discord.Interaction) -> None:
            await self._answer_command(interaction, "summary", "")

        @app_commands.describe(mode="thread, mention or all; empty shows the current one")
        async def speak(interaction: discord.Interaction, mode: str = "") -> None:
            await self._answer_command(interaction, "speak", mode)

        @app_commands.describe(scope="channel or person; empty shows the current one")
        async def scope(interaction: discord.Interaction, scope: str = "") -> None:
            await self._answer_command(interaction, "scope", scope)

        return [
            app_commands.Command(
                name=names["reset"], description="Forget this channel's or thread's conversation", callback=reset
            ),
            app_commands.Command(
                name=names["usage"], description="Tokens and cost, and what is left of the budgets", callback=usage
            ),
            app_commands.Command(
                name=names["system"], description="Show or set this channel's system prompt", callback=system
            ),
            app_commands.Command(name=names["model"], description="Show or pick this channel's model", callback=model),
            app_commands.Command(
                name=names["speak"], description="Where I answer here, mentioned or not", callback=speak
            ),
            app_commands.Command(
                name=names["scope"], description="One conversation for the channel, or one per person", callback=scope
            ),
            app_commands.Command(
                name="summary", description="What I remember of this conversation's older messages", callback=summary
            ),
        ]

    async def on_feedback(self, interaction: discord.Interaction, verdict: str, reply_id: int) -> None:
        """A click on an answer's 👍/👎: kept with the reply, and thanked privately."""
        channel = str(interaction.channel_id or "")
        with logcontext.turn(f"discord:-:{channel}", f"discord:feedback:{interaction.id}"):
            # The one top-level handler for a click: a bug is logged; the person sees a short apology.
            try:
                kept = await self._core.feedback("discord", channel, reply_id, str(interaction.user.id), verdict)
                answer = texts.FEEDBACK_THANKS if kept else texts.FEEDBACK_GONE
            except Exception:
                log.exception("the feedback on reply %d could not be kept", reply_id)
                answer = texts.APOLOGY
            try:
                await interaction.response.send_message(answer, ephemeral=True)
            except discord.HTTPException as exc:
                log.info("the thanks for feedback could not be sent: HTTP %s, code %s", exc.status, exc.code)

    async def on_approval(self, interaction: discord.Interaction, approve: bool, approval_id: str) -> None:
        """A click on an approval request's Approve or Deny button.

        The asker's click goes to the turn that waits for it, which edits the request (the click itself is only
        acknowledged); anyone else, and a click on a request this process does not wait for (it ended, or is from
        before a restart), gets a line only they see, and nothing changes.
        """
        result = self._approvals.click(approval_id, str(interaction.user.id), approve)
        log.info("a click on an approval request by %s: %s", interaction.user.id, result.click.value)
        try:
            if result.click is Click.DECIDED:
                await interaction.response.defer()
            elif result.click is Click.NOT_ASKER:
                answer = texts.APPROVAL_NOT_ASKER.format(asker=_plain(result.asker_name))
                await interaction.response.send_message(answer, ephemeral=True)
            else:
                await interaction.response.send_message(texts.APPROVAL_UNKNOWN, ephemeral=True)
        except discord.HTTPException as exc:
            log.info("a click on an approval request could not be answered: HTTP %s, code %s", exc.status, exc.code)

    async def _answer_command(self, interaction: discord.Interaction, name: str, arg: str) -> None:
        # Discord drops an interaction not answered within 3 s (10062), and a command can wait for the
        # conversation's lock behind a slow answer: acknowledge first, answer as a followup (15 min allowed).
        await interaction.response.defer(ephemeral=True, thinking=True)
        member = interaction.user
        command_id = f"discord:command:{interaction.id}"
        key: ConversationKey | None = None
        # The one top-level handler for a command: a bug is logged with its traceback, and the person who typed it
        # gets a short apology as the followup instead of "thinking..." until Discord gives up on the interaction.
        try:
            # Typed in a thread, /reset forgets that thread, while /system, /model and the channel's line of /usage
            # are the parent channel's: the key a mention there gets.
            key = await self._key(interaction.channel, interaction.channel_id or 0, interaction.guild_id, member.id)
            with logcontext.turn(str(key), command_id):
                admin = isinstance(member, discord.Member) and member.guild_permissions.manage_guild
                ctx = CommandContext(
                    key,
                    str(member.id),
                    platform_admin=admin,
                    admins=texts.ADMINS_DISCORD,
                    in_dm=interaction.guild_id is None,
                )
                answer = await self._commands.run(name, ctx, arg)
        except Exception:
            with logcontext.turn(str(key or f"discord:-:{interaction.channel_id}"), command_id):
                log.exception("the command /%s failed", name)
            answer = texts.APOLOGY
        await interaction.followup.send(answer[:TEXT_LIMIT], ephemeral=True)


async def check_discord(settings: Settings) -> list[CheckResult]:
    """``teambot check``: is the bot token accepted? The link that invites the bot to a server, and whether it
    may read other people's messages (the Message Content intent)."""
    assert settings.discord_token is not None
    headers = {"Authorization": f"Bot {settings.discord_token.get_secret_value()}"}
    try:
        async with httpx.AsyncClient(timeout=20) as http:
            response = await http.get(f"{discord.http.Route.BASE}/users/@me", headers=headers)
            if response.status_code != 200:
                return [CheckResult("discord token", False, f"DISCORD_TOKEN rejected (HTTP {response.status_code})")]
            token = CheckResult("discord token", True, f"accepted: {response.json().get('username')}")
            response = await http.get(f"{discord.http.Route.BASE}/oauth2/applications/@me", headers=headers)
    except httpx.HTTPError as exc:
        return [CheckResult("discord token", False, f"cannot reach Discord: {type(exc).__name__}")]
    try:
        application = response.json() if response.status_code == 200 else None
    except ValueError:
        application = None
    if not isinstance(application, dict) or "id" not in application:
        invite = CheckResult("discord invite", False, f"cannot read the application (HTTP {response.status_code})")
        return [token, invite]
    return [
        token,
        CheckResult("discord invite", True, invite_url(application["id"])),
        _check_content_intent(settings, application.get("flags")),
    ]


#: The application flags that say Message Content Intent is switched on in the Developer Portal (the second for
#: bots in 100 servers or more, verified or waiting for it).
_GATEWAY_MESSAGE_CONTENT = (1 << 18) | (1 << 19)


def _check_content_intent(settings: Settings, flags: object) -> CheckResult:
    name = "discord message content"
    granted = isinstance(flags, int) and bool(flags & _GATEWAY_MESSAGE_CONTENT)
    if settings.discord_message_content:
        if granted:
            return CheckResult(name, True, texts.CHECK_DISCORD_CONTENT_ON)
        return CheckResult(name, False, texts.CHECK_DISCORD_CONTENT_REFUSED)
    if granted:
        return CheckResult(name, True, texts.CHECK_DISCORD_CONTENT_NOT_ASKED, warning=True)
    return CheckResult(name, True, texts.CHECK_DISCORD_CONTENT_OFF, warning=True)
