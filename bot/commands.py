"""The slash commands every platform offers, answered privately: /reset, /usage, /system, /model, /summary.

Adapters say who asks and whether the platform counts them as an admin; this module decides the rest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from bot import texts
from bot.conversation import ConversationCore
from bot.guards import Period
from bot.messages import ConversationKey
from bot.store import ChannelSettings, UsageScope

log = logging.getLogger(__name__)

COMMANDS = ("reset", "usage", "system", "model", "summary")


@dataclass(frozen=True, slots=True)
class CommandContext:
    """Where and by whom a command was given; ``platform_admin`` is the platform's own verdict, and ``admins``
    says who counts as an admin there, in the platform's words, for a refusal."""

    key: ConversationKey
    user_id: str
    platform_admin: bool = False
    admins: str = texts.ADMINS_SLACK


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
        if name == "reset":
            count = await self._core.reset(ctx.key)
            return texts.RESET_DONE.format(count=count, s=texts.plural(count))
        if name == "usage":
            return await self._usage(ctx)
        if name == "summary":
            return await self._summary(ctx)
        if name == "system":
            return await self._system(ctx, arg)
        if name == "model":
            return await self._model(ctx, arg)
        return texts.UNKNOWN_COMMAND.format(command=f"/{name}")

    async def _usage(self, ctx: CommandContext) -> str:
        if self._core.guards.accounting is None:
            report = texts.USAGE_NO_BUDGETS
        else:
            report = await self._core.guards.accounting.report(ctx.key, ctx.user_id)
        if not self._policy.feedback:
            return report
        key = ctx.key
        month = Period.MONTH.start(time.time()).timestamp()
        votes = await self._core.store.feedback_since(UsageScope(key.platform, key.workspace, key.channel), month)
        return f"{report}\n{texts.USAGE_FEEDBACK_LINE.format(up=votes.up, down=votes.down)}"

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
            await store.set_channel_settings(ctx.key, ChannelSettings(None, current.model))
            log.info("system prompt of %s reset by %s", ctx.key, ctx.user_id)
            return texts.SYSTEM_RESET
        await store.set_channel_settings(ctx.key, ChannelSettings(arg, current.model))
        log.info("system prompt of %s changed by %s", ctx.key, ctx.user_id)
        return texts.SYSTEM_SET

    async def _model(self, ctx: CommandContext, arg: str) -> str:
        store = self._core.store
        current = await store.channel_settings(ctx.key)
        default = self._core.default_model
        allowed = sorted(self._policy.models | {default})
        if not arg:
            return texts.MODEL_SHOW.format(model=current.model or default, allowed=", ".join(allowed))
        if not self._admin(ctx):
            return texts.ADMIN_ONLY.format(admins=ctx.admins)
        if arg == "reset":
            await store.set_channel_settings(ctx.key, ChannelSettings(current.system_prompt, None))
            return texts.MODEL_RESET.format(model=default)
        if arg not in allowed:
            return texts.MODEL_NOT_ALLOWED.format(model=arg, allowed=", ".join(allowed))
        await store.set_channel_settings(ctx.key, ChannelSettings(current.system_prompt, arg))
        log.info("model of %s set to %s by %s", ctx.key, arg, ctx.user_id)
        return texts.MODEL_SET.format(model=arg)
