"""The slash commands every platform offers, answered privately: /reset, /usage, /system, /model, /summary,
/speak, /scope.

Adapters say who asks and whether the platform counts them as an admin, and may word the answers their own way
(:class:`Wording`); this module decides the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

from bot import texts
from bot.conversation import ConversationCore
from bot.guards import REPORT_SCOPES, Period, ScopeKind
from bot.llm import REASONING_EFFORTS, model_choice
from bot.messages import ConversationKey
from bot.speak import SCOPES, SPEAK_MODES
from bot.store import UsageScope

log = logging.getLogger(__name__)

COMMANDS = ("reset", "usage", "system", "model", "summary", "speak", "scope")
#: The commands about the people of a shared channel (bot.speak): nothing to say at a terminal.
CHANNEL_COMMANDS = ("speak", "scope")


@dataclass(frozen=True, slots=True)
class Wording:
    """The sentences of the command answers that depend on where they are read. The defaults are a chat
    platform's (a channel, people who mention the bot, Slack's mrkdwn); the console brings its own."""

    reset_done: str = texts.RESET_DONE
    usage_header: str = texts.USAGE_HEADER
    usage_scopes: tuple[tuple[ScopeKind, str], ...] = REPORT_SCOPES
    system_set: str = texts.SYSTEM_SET
    system_reset: str = texts.SYSTEM_RESET
    model_show: str = texts.MODEL_SHOW
    model_set: str = texts.MODEL_SET
    model_reset: str = texts.MODEL_RESET
    model_not_allowed: str = texts.MODEL_NOT_ALLOWED
    #: The /usage line counting the answers' 👍/👎; None where answers carry no feedback buttons (the console).
    usage_feedback: str | None = texts.USAGE_FEEDBACK_LINE


@dataclass(frozen=True, slots=True)
class CommandContext:
    """Where and by whom a command was given; ``platform_admin`` is the platform's own verdict, and ``admins``
    says who counts as an admin there, in the platform's words, for a refusal."""

    key: ConversationKey
    user_id: str
    platform_admin: bool = False
    admins: str = texts.ADMINS_SLACK
    wording: Wording = Wording()
    #: A direct message or group DM: one conversation whatever the channel's scope.
    in_dm: bool = False


@dataclass(frozen=True, slots=True)
class CommandPolicy:
    admin_users: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    #: TEAMBOT_FEEDBACK: /usage counts the verdicts on answers
    feedback: bool = False


class Commands:
    def __init__(self, core: ConversationCore, policy: CommandPolicy | None = None) -> None:
        self._core = core
        self._policy = policy or CommandPolicy()

    def _admin(self, ctx: CommandContext) -> bool:
        return ctx.platform_admin or ctx.user_id in self._policy.admin_users

    async def run(self, name: str, ctx: CommandContext, arg: str = "") -> str:
        """The private answer to ``/name arg``."""
        arg = arg.strip()
        # In a ``person`` channel /reset, /usage and /summary are about the asker's own conversation there.
        ctx = dataclasses.replace(ctx, key=self._core.speaking.scoped(ctx.key, ctx.user_id, in_dm=ctx.in_dm))
        if name == "reset":
            count = await self._core.reset(ctx.key)
            return ctx.wording.reset_done.format(count=count, s=texts.plural(count))
        if name == "usage":
            return await self._usage(ctx)
        if name == "summary":
            return await self._summary(ctx)
        if name == "system":
            return await self._system(ctx, arg)
        if name == "model":
            return await self._model(ctx, arg)
        if name == "speak":
            return await self._speak(ctx, arg.lower())
        if name == "scope":
            return await self._scope(ctx, arg.lower())
        return texts.UNKNOWN_COMMAND.format(command=f"/{name}")

    async def _usage(self, ctx: CommandContext) -> str:
        if self._core.guards.accounting is None:
            report = texts.USAGE_NO_BUDGETS
        else:
            report = await self._core.guards.accounting.report(
                ctx.key, ctx.user_id, header=ctx.wording.usage_header, scopes=ctx.wording.usage_scopes
            )
        if not self._policy.feedback or ctx.wording.usage_feedback is None:
            return report
        key = ctx.key
        month = Period.MONTH.start(time.time()).timestamp()
        votes = await self._core.store.feedback_since(UsageScope(key.platform, key.workspace, key.channel), month)
        return f"{report}\n{ctx.wording.usage_feedback.format(up=votes.up, down=votes.down)}"

    async def _summary(self, ctx: CommandContext) -> str:
        memory = self._core.memory
        if not memory.enabled:
            return texts.SUMMARY_OFF
        summary = await memory.summary(ctx.key)
        if summary is None:
            return texts.SUMMARY_NONE
        return texts.SUMMARY_SHOW.format(summary=summary.text)

    async def _system(self, ctx: CommandContext, arg: str) -> str:
        store = self._core.store
        current = await store.channel_settings(ctx.key)
        if not arg:
            return texts.SYSTEM_SHOW.format(prompt=current.system_prompt or self._core.settings.system_prompt)
        if not self._admin(ctx):
            return texts.ADMIN_ONLY.format(admins=ctx.admins)
        if arg == "reset":
            await store.set_channel_settings(ctx.key, dataclasses.replace(current, system_prompt=None))
            log.info("system prompt of %s reset by %s", ctx.key, ctx.user_id)
            return ctx.wording.system_reset
        await store.set_channel_settings(ctx.key, dataclasses.replace(current, system_prompt=arg))
        log.info("system prompt of %s changed by %s", ctx.key, ctx.user_id)
        return ctx.wording.system_set

    async def _model(self, ctx: CommandContext, arg: str) -> str:
        """``/model``, ``/model <name> [effort]``, ``/model reset``: the effort is a second word, kept with the
        model it was chosen for."""
        store = self._core.store
        current = await store.channel_settings(ctx.key)
        default = self._core.default_model
        allowed = sorted(self._policy.models | {default})
        if not arg:
            model, effort = model_choice(current.model)
            effort = effort or self._core.default_effort
            return ctx.wording.model_show.format(
                model=f"{model or default}{_effort(effort)}", allowed=", ".join(allowed)
            )
        if not self._admin(ctx):
            return texts.ADMIN_ONLY.format(admins=ctx.admins)
        if arg == "reset":
            await store.set_channel_settings(ctx.key, dataclasses.replace(current, model=None))
            return ctx.wording.model_reset.format(model=default)
        name, _, rest = arg.partition(" ")
        effort = rest.strip().lower() or None
        if name not in allowed:
            return ctx.wording.model_not_allowed.format(model=name, allowed=", ".join(allowed))
        if effort is not None and effort not in REASONING_EFFORTS:
            return texts.EFFORT_NOT_KNOWN.format(effort=rest.strip(), efforts=", ".join(REASONING_EFFORTS))
        await store.set_channel_settings(ctx.key, dataclasses.replace(current, model=f"{name} {effort or ''}".strip()))
        log.info("model of %s set to %s (effort %s) by %s", ctx.key, name, effort or "default", ctx.user_id)
        return ctx.wording.model_set.format(model=f"{name}{_effort(effort)}")

    async def _speak(self, ctx: CommandContext, arg: str) -> str:
        """``/speak``, ``/speak thread|mention|all``: where the bot answers in this channel (bot.speak)."""
        speaking = self._core.speaking
        if not arg:
            mode = speaking.speak(ctx.key)
            return texts.SPEAK_SHOW.format(what=texts.SPEAK_MODES[mode], mode=mode)
        if not self._admin(ctx):
            return texts.ADMIN_ONLY.format(admins=ctx.admins)
        if arg not in SPEAK_MODES:
            return texts.SPEAK_NOT_KNOWN.format(mode=arg)
        await self._change(ctx, speak=arg)
        log.info("speak mode of %s set to %s by %s", ctx.key, arg, ctx.user_id)
        return texts.SPEAK_SET.format(what=texts.SPEAK_MODES[arg], mode=arg)

    async def _scope(self, ctx: CommandContext, arg: str) -> str:
        """``/scope``, ``/scope channel|person``: whose conversation a message in this channel joins."""
        speaking = self._core.speaking
        if not arg:
            scope = speaking.scope(ctx.key)
            return texts.SCOPE_SHOW.format(what=texts.SCOPES[scope], scope=scope)
        if not self._admin(ctx):
            return texts.ADMIN_ONLY.format(admins=ctx.admins)
        if arg not in SCOPES:
            return texts.SCOPE_NOT_KNOWN.format(scope=arg)
        await self._change(ctx, scope=arg)
        log.info("conversation scope of %s set to %s by %s", ctx.key, arg, ctx.user_id)
        return texts.SCOPE_SET.format(what=texts.SCOPES[arg], scope=arg)

    async def _change(self, ctx: CommandContext, **changes: str) -> None:
        store = self._core.store
        settings = dataclasses.replace(await store.channel_settings(ctx.key), **changes)
        await store.set_channel_settings(ctx.key, settings)
        self._core.speaking.changed(ctx.key, settings)


def _effort(effort: str | None) -> str:
    return texts.MODEL_EFFORT.format(effort=effort) if effort else ""
