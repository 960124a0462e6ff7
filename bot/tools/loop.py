"""The tool loop: offer the tools the policy allows, run the calls the model makes (in parallel, each with a timeout,
approved first where the policy says so), send the results back, and repeat up to a number of rounds.

No platform in here: progress and approvals go through the :class:`bot.messages.TurnView` the adapter gave the turn,
and the core (bot.conversation) makes each model call, charges it and checks the budget between rounds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bot import texts
from bot.llm import ChatMessage, Completion, TokenCounter, ToolCall
from bot.messages import IncomingMessage, ToolRequest, TurnView
from bot.metrics import Metrics
from bot.tools.base import ToolCallContext, ToolError, ToolProvider, ToolSpec
from bot.tools.policy import ToolPolicy
from bot.tools.registry import ToolRegistry

log = logging.getLogger(__name__)

OnText = Callable[[str], Awaitable[None]]
#: One model call of the loop: the messages so far, where streamed text goes (None: not streamed), the ``tools`` to
#: offer and the ``tool_choice`` ("none" for the last call, which must answer in words).
ModelCall = Callable[[list[ChatMessage], OnText | None, list[dict[str, Any]], str | None], Awaitable[Completion]]
#: Charge a round's completion (the messages it answered): it is billed whatever follows.
Charge = Callable[[Completion, list[ChatMessage]], Awaitable[None]]
#: Before each further round: None to go on, or the budget's refusal for people.
Recheck = Callable[[], Awaitable[str | None]]

#: How much longer than its own deadline an approval may take before the loop stops waiting for the view.
APPROVAL_GRACE_SECONDS = 5.0
#: The metric label for a name the model made up: its own string would let the model grow the label set.
UNKNOWN_TOOL = "(unknown)"


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """TEAMBOT_MAX_TOOL_ROUNDS, TEAMBOT_TOOL_TIMEOUT, TEAMBOT_TOOL_OUTPUT_TOKENS, TEAMBOT_APPROVAL_SECONDS and
    TEAMBOT_SHOW_TOOLS_USED."""

    max_rounds: int = 6
    timeout: float = 30.0
    output_tokens: int = 4000
    approval_seconds: float = 120.0
    show_used: bool = True


@dataclass(frozen=True, slots=True)
class TurnTools:
    """The tools one turn offers: those available now that the policy allows for this message."""

    by_name: dict[str, tuple[ToolSpec, ToolProvider]]
    #: The request's ``tools``, in OpenAI's function format.
    wire: list[dict[str, Any]]


@dataclass(slots=True)
class ToolOutcome:
    """How a turn with tools ended."""

    #: The last model call's completion: its text is the answer (what is stored as the reply).
    completion: Completion
    #: The messages the last call answered.
    prompt: list[ChatMessage]
    #: The text of every round, joined as it was shown.
    shown: str = ""
    #: The assistant messages that made calls and the tool results, in the API's form, for the history.
    trace: list[ChatMessage] = field(default_factory=list)
    #: The tools called, each once, in the order first called.
    used: list[str] = field(default_factory=list)
    rounds: int = 0
    #: The cap on rounds was reached: the last call offered no more calls.
    stopped: bool = False
    #: A budget ran out between rounds: the refusal for people (then there is no answer).
    refusal: str | None = None

    def reply_text(self, show_used: bool) -> str:
        """What people see: every round's text, a note when the cap stopped the loop, the tools used."""
        parts = [self.shown]
        if self.stopped:
            parts.append(texts.TOOLS_STOPPED.format(rounds=self.rounds))
        if show_used and self.used:
            parts.append(texts.TOOLS_USED.format(tools=", ".join(self.used)))
        return "\n\n".join(p for p in parts if p)

    def trace_record(self, counter: TokenCounter) -> str | None:
        """The trace as stored with the reply (bot.store.StoredMessage.tool_trace), with its token count."""
        if not self.trace:
            return None
        return json.dumps({"tokens": trace_tokens(self.trace, counter), "messages": self.trace})


def trace_tokens(trace: list[ChatMessage], counter: TokenCounter) -> int:
    total = 0
    for message in trace:
        total += counter.count_message(message.get("content") or "")
        for call in message.get("tool_calls") or ():
            function = call["function"]
            total += counter.count(function["name"]) + counter.count(function["arguments"])
    return total


class _Joiner:
    """Streams every round's text as one reply: a blank line between the text of one round and the next."""

    def __init__(self, on_text: OnText) -> None:
        self._on_text = on_text
        self._shown = False
        self._pending = False

    def next_round(self) -> None:
        self._pending = self._shown

    async def piece(self, text: str) -> None:
        if self._pending:
            self._pending = False
            await self._on_text("\n\n")
        self._shown = True
        await self._on_text(text)


class ToolLoop:
    """Runs a turn's tool rounds; built once by the runtime from the registry, the policy and the settings."""

    def __init__(
        self,
        registry: ToolRegistry,
        policy: ToolPolicy,
        counter: TokenCounter,
        settings: LoopSettings | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.registry = registry
        self.policy = policy
        self._counter = counter
        self.settings = settings or LoopSettings()
        self.metrics = metrics or Metrics()

    def offer(self, msg: IncomingMessage) -> TurnTools | None:
        """The tools ``msg`` may have the model call (None: none at all, so the request carries no ``tools``)."""
        admin = self.policy.is_admin(msg)
        allowed = {
            name: entry
            for name, entry in self.registry.available().items()
            if self.policy.rule(name).allows(msg, admin)
        }
        if not allowed:
            return None
        wire = [
            {
                "type": "function",
                "function": {"name": spec.name, "description": spec.description, "parameters": spec.parameters},
            }
            for spec, _ in allowed.values()
        ]
        return TurnTools(allowed, wire)

    async def run(
        self,
        call: ModelCall,
        charge: Charge,
        recheck: Recheck,
        prompt: list[ChatMessage],
        tools: TurnTools,
        msg: IncomingMessage,
        row: int | None,
        view: TurnView | None,
        on_text: OnText | None,
    ) -> ToolOutcome:
        """Call the model with ``tools`` until it answers without calling any, or the rounds run out; then one last
        call that may not call tools. Model errors propagate (the core maps them); tool errors become results."""
        joiner = _Joiner(on_text) if on_text is not None else None
        messages = list(prompt)
        shown: list[str] = []
        outcome_trace: list[ChatMessage] = []
        used: list[str] = []
        rounds = 0
        context = ToolCallContext(msg.key, msg.author_id, row)
        while True:
            last = rounds >= self.settings.max_rounds
            completion = await call(messages, joiner.piece if joiner else None, tools.wire, "none" if last else None)
            if completion.text:
                shown.append(completion.text)
            if last or not completion.tool_calls:
                outcome = ToolOutcome(completion, messages, "\n\n".join(shown), outcome_trace, used, rounds, last)
                if last and completion.tool_calls:
                    log.info("conversation %s: the model called tools after the last round; ignored", msg.key)
                return outcome
            # Billed whatever happens next: charged before the tools run.
            await charge(completion, messages)
            rounds += 1
            calls = completion.tool_calls
            assistant: ChatMessage = {
                "role": "assistant",
                "content": completion.text or None,
                "tool_calls": [c.wire() for c in calls],
            }
            results = await self._run_calls(calls, tools, msg, context, view)
            answered = [
                {"role": "tool", "tool_call_id": c.id, "content": result}
                for c, result in zip(calls, results, strict=True)
            ]
            messages = [*messages, assistant, *answered]
            outcome_trace += [assistant, *answered]
            for c in calls:
                if c.name in tools.by_name and c.name not in used:
                    used.append(c.name)
            refusal = await recheck()
            if refusal is not None:
                log.info("conversation %s: a budget ran out after %d tool rounds", msg.key, rounds)
                return ToolOutcome(
                    completion, messages, "\n\n".join(shown), outcome_trace, used, rounds, refusal=refusal
                )
            if joiner is not None:
                joiner.next_round()

    async def _run_calls(
        self,
        calls: tuple[ToolCall, ...],
        tools: TurnTools,
        msg: IncomingMessage,
        context: ToolCallContext,
        view: TurnView | None,
    ) -> list[str]:
        if view is not None:
            names = dict.fromkeys(c.name for c in calls if c.name in tools.by_name)
            if names:
                await view.status(texts.TOOL_STATUS.format(tools=", ".join(names)))
        try:
            if len(calls) == 1:
                return [await self._one(calls[0], tools, msg, context, view)]
            # The model asked for several at once: they run side by side (approvals too), each with its own timeout.
            return list(await asyncio.gather(*(self._one(c, tools, msg, context, view) for c in calls)))
        finally:
            if view is not None:
                await view.status(None)

    async def _one(
        self,
        call: ToolCall,
        tools: TurnTools,
        msg: IncomingMessage,
        context: ToolCallContext,
        view: TurnView | None,
    ) -> str:
        entry = tools.by_name.get(call.name)
        if entry is None:
            # Not available, or not allowed here: the model hears of no such tool either way.
            return self._done(UNKNOWN_TOOL, msg, "unknown", texts.TOOL_UNKNOWN.format(tool=call.name[:64]))
        _, provider = entry
        log.debug("tool %s in %s: arguments %s", call.name, msg.key, call.arguments)
        try:
            arguments = json.loads(call.arguments) if call.arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return self._done(call.name, msg, "bad_arguments", texts.TOOL_BAD_ARGUMENTS.format(why=exc.msg))
        if not isinstance(arguments, dict):
            why = f"a JSON {type(arguments).__name__}, not an object"
            return self._done(call.name, msg, "bad_arguments", texts.TOOL_BAD_ARGUMENTS.format(why=why))
        if self.policy.rule(call.name).approval and not await self._approved(call, msg, view):
            return self._done(call.name, msg, "denied", texts.TOOL_DENIED.format(tool=call.name))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(self.settings.timeout):
                output = await provider.call(call.name, arguments, context)
        except ToolError as exc:
            result, outcome = texts.TOOL_FAILED.format(tool=call.name, why=str(exc) or type(exc).__name__), "error"
        except TimeoutError:
            result = texts.TOOL_TIMED_OUT.format(tool=call.name, seconds=self.settings.timeout)
            outcome = "timeout"
        except Exception:
            # The boundary of a provider's code: its bug must cost this one call, not the turn. The traceback goes
            # to the log; the model reads that the tool failed.
            log.exception("tool %s in %s raised", call.name, msg.key)
            result, outcome = texts.TOOL_CRASHED.format(tool=call.name), "crashed"
        else:
            result, outcome = self._cut(output), "ok"
        self.metrics.tool_seconds.labels(call.name).observe(loop.time() - started)
        return self._done(call.name, msg, outcome, result, loop.time() - started)

    def _done(self, tool: str, msg: IncomingMessage, outcome: str, result: str, seconds: float = 0.0) -> str:
        self.metrics.tool_calls.labels(tool, outcome).inc()
        # The name and the outcome only: arguments and results may hold private data (DEBUG has the arguments).
        log.info("tool %s in %s: %s (%.2f s)", tool, msg.key, outcome, seconds)
        return result

    def _cut(self, output: str) -> str:
        if not output:
            return texts.TOOL_NO_OUTPUT
        limit = self.settings.output_tokens
        # No token is shorter than a character: a short output needs no counting.
        if len(output) <= limit:
            return output
        cut = self._counter.truncate(output, limit)
        return output if cut == output else cut + texts.TOOL_OUTPUT_CUT.format(tokens=limit)

    async def _approved(self, call: ToolCall, msg: IncomingMessage, view: TurnView | None) -> bool:
        """Whether the person who asked approved the call; no view (nowhere to ask) and no answer are a no."""
        if view is None:
            return False
        within = self.settings.approval_seconds
        try:
            async with asyncio.timeout(within + APPROVAL_GRACE_SECONDS):
                return await view.approve(ToolRequest(call.id, call.name, call.arguments), msg.author_id, within)
        except TimeoutError:
            log.warning("tool %s in %s: the approval did not end in time; denied", call.name, msg.key)
            return False
