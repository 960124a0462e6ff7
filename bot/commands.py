"""The slash commands every platform offers, answered privately: /reset, /usage, /system, /model.

Adapters say who asks and whether the platform counts them as an admin; this module decides the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot import texts
from bot.conversation import ConversationCore
from bot.llm import REASONING_EFFORTS, model_choice
from bot.messages import ConversationKey
from bot.store import ChannelSettings

log = logging.getLogger(__name__)

COMMANDS = ("reset", "usage", "system", "model")


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
            if self._core.guards.accounting is None:
                return texts.USAGE_NO_BUDGETS
            return await self._core.guards.accounting.report(ctx.key, ctx.user_id)
        if name == "system":
            return await self._system(ctx, arg)
        if name == "model":
            return await self._model(ctx, arg)
        return texts.UNKNOWN_COMMAND.format(command=f"/{name}")

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
        """``/model``, ``/model <name> [effort]``, ``/model reset``: the effort is a second word, kept with the
        model it was chosen for."""
        store = self._core.store
        current = await store.channel_settings(ctx.key)
        default = self._core.default_model
        allowed = sorted(self._policy.models | {default})
        if not arg:
            model, effort = model_choice(current.model)
            effort = effort or self._core.default_effort
            return texts.MODEL_SHOW.format(model=f"{model or default}{_effort(effort)}", allowed=", ".join(allowed))
        if not self._admin(ctx):
            return texts.ADMIN_ONLY.format(admins=ctx.admins)
        if arg == "reset":
            await store.set_channel_settings(ctx.key, ChannelSettings(current.system_prompt, None))
            return texts.MODEL_RESET.format(model=default)
        name, _, rest = arg.partition(" ")
        effort = rest.strip().lower() or None
        if name not in allowed:
            return texts.MODEL_NOT_ALLOWED.format(model=name, allowed=", ".join(allowed))
        if effort is not None and effort not in REASONING_EFFORTS:
            return texts.EFFORT_NOT_KNOWN.format(effort=rest.strip(), efforts=", ".join(REASONING_EFFORTS))
        await store.set_channel_settings(
            ctx.key, ChannelSettings(current.system_prompt, f"{name} {effort or ''}".strip())
        )
        log.info("model of %s set to %s (effort %s) by %s", ctx.key, name, effort or "default", ctx.user_id)
        return texts.MODEL_SET.format(model=f"{name}{_effort(effort)}")


def _effort(effort: str | None) -> str:
    return texts.MODEL_EFFORT.format(effort=effort) if effort else ""
