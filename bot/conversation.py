"""The turn: admit the message (access, dedup, rate, the conversation's turn, budget, a call slot), record it,
build the prompt, call the model, store the reply."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from bot import errors, logcontext, texts
from bot.guards import Busy, ConversationBusy, Guards
from bot.llm import PER_MESSAGE_OVERHEAD, ChatClient, ChatMessage, Completion, TokenCounter, model_choice
from bot.memory import Memory, MemorySettings
from bot.messages import ConversationKey, IncomingMessage, Reply, ReplyKind, TurnView, Usage
from bot.metrics import Metrics
from bot.store import FEEDBACK_VALUES, Store, StoredMessage, UsageRecord

log = logging.getLogger(__name__)

OnText = Callable[[str], Awaitable[None]]

#: C0 control characters other than tab and newlines: models and some servers choke on them (NUL above all).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
SPEAKER_NOTE = "Each message from a person starts with their name and a colon."


class KeyedLocks:
    """One asyncio.Lock per key, kept only while someone holds or waits for it, so the table stays bounded."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[asyncio.Lock, int]] = {}
        #: how many are waiting for a lock (not holding one), over all keys
        self.waiting = 0

    def __len__(self) -> int:
        return len(self._entries)

    def idle(self, key: str) -> bool:
        """Nobody holds or waits for ``key``: :meth:`hold` takes it without suspending."""
        return key not in self._entries

    @contextlib.asynccontextmanager
    async def hold(self, key: str, *, max_waiting: int | None = None) -> AsyncIterator[None]:
        """Hold ``key``'s lock; with ``max_waiting``, raise ConversationBusy at once when that many already wait."""
        lock, users = self._entries.get(key) or (asyncio.Lock(), 0)
        # Every user but the holder (if any: a released lock may not have woken its next waiter yet) is waiting.
        waiting = users - 1 if lock.locked() else users
        if max_waiting is not None and waiting >= max_waiting and users > 0:
            raise ConversationBusy(f"{waiting} turns already wait for {key}")
        self._entries[key] = (lock, users + 1)
        try:
            self.waiting += 1
            try:
                await lock.acquire()
            finally:
                self.waiting -= 1
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._entries[key]
            if users == 1:
                del self._entries[key]
            else:
                self._entries[key] = (lock, users - 1)


#: A stored message cut to fewer tokens than this says too little to be worth sending: it is left out instead.
MIN_CUT_TOKENS = 16

#: How long a turn cut off by the shutdown may take to release its message in the store.
ABANDON_SECONDS = 2.0


@dataclass(slots=True)
class _Progress:
    """How far a turn got: its stored question, the prompt of the request under way, and the text it streamed."""

    row: int | None = None
    #: Whether the message's id is claimed: a cut-off releases only its own claim, never a handled message's.
    claimed: bool = True
    model: str | None = None
    prompt: list[ChatMessage] | None = None
    settled: bool = False
    text: list[str] = dataclasses.field(default_factory=list)
    #: The prompt's history had to cut its newest message to fit, so it holds nothing said before that message.
    history_cut: bool = False
    #: The id of the oldest stored message in the prompt's history (None: it had none), for the summary.
    window_start: int | None = None


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A question as the model will see it: cut to fit if it had to be (``cut_to`` tokens), with its system message."""

    msg: IncomingMessage
    system: ChatMessage
    model: str | None
    effort: str | None
    #: The question as a chat message's content ("Name: text") and its tokens.
    content: str
    tokens: int
    cut_to: int | None


@dataclass(frozen=True, slots=True)
class TurnSettings:
    system_prompt: str
    history_tokens: int
    stream: bool = True
    #: When the history is full, the oldest turns go in blocks of this share of the budget, not one by one, so the
    #: prompt's beginning stays byte-identical for several turns and the provider's prompt cache serves it (see
    #: bot.store.HISTORY_QUERY). 0 trims one message at a time. Half the budget: with a turn a tenth of the budget,
    #: the prefix holds for five turns (a quarter held it for two or three: 56 % cached against 74 %, see
    #: BENCHMARKS.md), and the model still sees at least half the budget of history.
    trim_block: float = 0.5
    #: TEAMBOT_SUMMARIES and TEAMBOT_SUMMARY_MODEL (see bot.memory); off unless the runtime switches it on.
    summaries: bool = False
    summary_model: str | None = None


class ConversationCore:
    """What every adapter talks to: :meth:`handle` a message, :meth:`reset` a conversation."""

    def __init__(
        self,
        store: Store,
        llm: ChatClient,
        counter: TokenCounter,
        settings: TurnSettings,
        guards: Guards | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self._llm = llm
        self._counter = counter
        self.settings = settings
        self.guards = guards or Guards()
        self.metrics = metrics or Metrics()
        self._locks = KeyedLocks()
        #: Conversations whose turn took the one-write path and has not taken its rate tokens yet (see _handle).
        self._admitting: dict[str, asyncio.Event] = {}
        # Turns waiting for their conversation are queued as much as those waiting for a call slot.
        self.metrics.watch_queue(lambda: self.guards.gate.waiting + self._locks.waiting)
        # A handful of system prompts (the default and those set per channel) are counted on every turn.
        self._count_system = functools.lru_cache(maxsize=256)(counter.count_message)
        self.memory = Memory(
            store,
            llm,
            counter,
            self.guards,
            self.metrics,
            MemorySettings(settings.summaries, settings.summary_model, settings.history_tokens),
            charge=self._charge,
            record_cost=self._record_cost,
        )

    @property
    def default_model(self) -> str:
        return self._llm.primary.model

    @property
    def default_effort(self) -> str | None:
        return self._llm.reasoning_effort

    async def handle(
        self,
        msg: IncomingMessage,
        on_text: OnText | None = None,
        on_reasoning: OnText | None = None,
        view: TurnView | None = None,
    ) -> Reply:
        """Answer ``msg``; ``on_text`` receives pieces of the reply as they stream in, ``on_reasoning`` pieces of the
        model's thinking (never part of the reply, nor of the history), for the adapter to show apart or not at all;
        ``view`` shows progress while tools run and asks for approvals (none: no status, approvals denied).

        Known failures come back as a ``Reply`` of kind ERROR with a message for people; only bugs raise.
        """
        with logcontext.turn(str(msg.key), msg.message_id):
            self.metrics.mentions.labels(msg.key.platform).inc()
            del view  # the tool loop (bot.tools) is its first user
            reply = await self._handle(msg, on_text, on_reasoning)
            self.metrics.replies.labels(msg.key.platform, reply.kind.value).inc()
            return reply

    async def _handle(self, msg: IncomingMessage, on_text: OnText | None, on_reasoning: OnText | None) -> Reply:
        """Admission, cheapest and most certain refusal first; a refused question costs nothing and leaves no trace
        in the history (its id stays handled)."""
        if not self.guards.access.allows(msg):
            log.info("message %s in %s refused by the access lists", msg.message_id, msg.key)
            if self.guards.access.refuse_silently:
                return Reply(ReplyKind.IGNORED, "")
            return Reply(ReplyKind.REFUSED, texts.NOT_ALLOWED)
        key = str(msg.key)
        # The plain case: a conversation nobody here is answering or waiting for, in a database no other process
        # uses. There is no queue to keep a redelivery or a flood out of, so the message is claimed and stored in
        # one write once the conversation is held, and the rate check follows (a refusal deletes the question
        # again). One write less per mention, about 15 % of the core's CPU per turn (BENCHMARKS.md).
        idle = self.store.single_process and self._locks.idle(key)
        if not idle:
            # A redelivery is silent, and neither waits nor spends the person's rate tokens.
            if not await self.store.claim_message(msg.message_id):
                return _duplicate(msg)
            # A turn that took the one-write path ahead of this one takes its rate tokens first, as it came first.
            if (ahead := self._admitting.get(key)) is not None:
                await ahead.wait()
            # Before queueing for the conversation: a flood in one channel is slowed down at once, not minutes later.
            if (slow_down := await self._rate_refusal(msg)) is not None:
                return slow_down
        progress = _Progress(claimed=not idle)
        try:
            # No await between the idle check and holding the lock: an idle lock is taken without suspending.
            async with (
                self._locks.hold(key, max_waiting=self.guards.max_queued_per_conversation),
                self.store.conversation_lock(msg.key),
            ):
                stored: _Prepared | None = None
                if idle:
                    self._admitting[key] = admitted = asyncio.Event()
                    try:
                        stored = prepared = await self._prepare(msg)
                        progress.row = await self.store.begin_turn(prepared.msg, prepared.tokens)
                        if progress.row is None:
                            return _duplicate(msg)
                        progress.claimed = True
                        if (slow_down := await self._rate_refusal(msg)) is not None:
                            return await self._forget(progress, slow_down)
                    finally:
                        del self._admitting[key]
                        admitted.set()
                refusal = await self._budget_refusal(msg)
                if refusal is not None:
                    return await self._forget(progress, Reply(ReplyKind.REFUSED, refusal))
                # The slot is held until the call is charged, so every call that passed the budget check and is
                # not yet charged holds a slot: a cap is passed by at most the calls running when it runs out.
                try:
                    async with self.guards.gate.slot() as waited:
                        # Calls charged while this one queued may have used the budget up: look again.
                        if waited and (refusal := await self._budget_refusal(msg)) is not None:
                            return await self._forget(progress, Reply(ReplyKind.REFUSED, refusal))
                        if stored is None or waited:
                            # The channel's settings and summary as they are now, after any wait for a slot;
                            # a question already stored keeps the form it was stored in.
                            prepared = _stored_as(await self._prepare(msg), stored)
                        return await self._turn(prepared, on_text, progress, on_reasoning)
                except Busy as exc:
                    if progress.prompt is not None or progress.settled:
                        raise
                    # No slot (the gate's queue is full): refused while the conversation is still held, so no
                    # turn after it sees the question in its history.
                    log.warning("conversation %s: %s", msg.key, exc)
                    return await self._forget(progress, Reply(ReplyKind.REFUSED, exc.user_message))
        except Busy as exc:
            log.warning("conversation %s: %s", msg.key, exc)
            return Reply(ReplyKind.REFUSED, exc.user_message)
        except asyncio.CancelledError:
            # Cut off (the process stops past its drain deadline), whether still queued or mid-call.
            await self._abandon(msg, progress)
            raise

    async def _rate_refusal(self, msg: IncomingMessage) -> Reply | None:
        wait = await self.guards.rate_wait(msg)
        if wait <= 0:
            return None
        log.info("message %s in %s rate-limited for %d s", msg.message_id, msg.key, wait)
        return Reply(ReplyKind.REFUSED, texts.SLOW_DOWN.format(seconds=wait))

    async def _forget(self, progress: _Progress, refusal: Reply) -> Reply:
        """A question stored before a refusal (the one-write path) leaves no trace in the history; its id stays
        handled. A refusal is only a refusal: the question was never answered, so nothing else is undone."""
        if progress.row is not None:
            row, progress.row = progress.row, None
            await self.store.forget_message(row)
        return refusal

    async def reset(self, key: ConversationKey) -> int:
        async with self._locks.hold(str(key)), self.store.conversation_lock(key):
            count = await self.store.reset(key)
            self.memory.forget(key)
        log.info("conversation %s reset: %d messages deleted", key, count)
        return count

    async def _prepare(self, msg: IncomingMessage) -> _Prepared:
        """The question as the model will see it, and the system message and model it goes with."""
        channel = await self.store.channel_settings(msg.key)
        model, effort = model_choice(channel.model)
        system = self._system_message(channel.system_prompt)
        system = self.memory.system_with_summary(system, await self.memory.summary(msg.key))
        # A single message may take at most half of what the system prompt leaves, so that the turns around it
        # still fit next time; a longer one is cut, and stored as the model saw it.
        room = self.settings.history_tokens - self._count_system(system["content"])
        single_cap = max(16, room // 2 - PER_MESSAGE_OVERHEAD)
        cleaned = _writable(_CONTROL.sub("", msg.text))
        text = self._counter.truncate(cleaned, single_cap)
        cut = text != cleaned
        msg = _with_text(msg, text)
        content = f"{msg.author_name}: {msg.text}"
        tokens = self._counter.count_message(content)
        return _Prepared(msg, system, model, effort, content, tokens, single_cap if cut else None)

    async def _turn(
        self, prepared: _Prepared, on_text: OnText | None, progress: _Progress, on_reasoning: OnText | None
    ) -> Reply:
        reply = await self._answer(prepared, on_text, progress, on_reasoning)
        if prepared.cut_to is None or reply.kind not in (ReplyKind.ANSWER, ReplyKind.PARTIAL):
            return reply
        # A cut question would otherwise be answered as if it had been read whole: say so, beside any budget notice.
        cut = texts.MESSAGE_CUT.format(tokens=prepared.cut_to)
        return dataclasses.replace(reply, notice=f"{cut}\n\n{reply.notice}" if reply.notice else cut)

    async def _answer(
        self, prepared: _Prepared, on_text: OnText | None, progress: _Progress, on_reasoning: OnText | None = None
    ) -> Reply:
        """The reply to the prepared question."""
        msg, system, model, effort = prepared.msg, prepared.system, prepared.model, prepared.effort
        content, new_tokens = prepared.content, prepared.tokens
        # Stored already where the turn claimed its message and stored it in one write.
        row = progress.row if progress.row is not None else await self.store.add_question(msg, new_tokens)
        progress.row, progress.model = row, model
        result = await self._call_model(
            msg, row, system, model, content, new_tokens, on_text, progress, effort, on_reasoning
        )
        # From here the turn ends as an answer or an error: a cut-off no longer releases its message.
        progress.settled = True
        if isinstance(result, Reply):
            return result
        completion, prompt = result

        usage = completion.usage or self._estimate_usage(prompt, completion.text)
        ledger = self._charge(msg, completion.model, usage)
        if not completion.text.strip():
            # The provider bills an empty answer like any other: it goes in the ledger even with no reply to keep.
            log.warning("conversation %s: the model returned an empty completion", msg.key)
            if ledger is not None:
                await self._record_cost(ledger)
            return Reply(ReplyKind.ERROR, texts.EMPTY_COMPLETION)
        reply_id, unsaved = await self._store_reply(
            msg, completion.text, self._reply_tokens(completion), row, usage, completion.model, True, ledger
        )
        # In the background, after this reply: the turns that fell out of the window go into the summary.
        self.memory.after_turn(msg, model, progress.window_start)
        notice = _join(_history_notice(progress), unsaved, await self._notice(ledger))
        log.info(
            "answered %s in %s via %s (%d+%d tokens)",
            msg.message_id,
            msg.key,
            completion.endpoint,
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        return Reply(ReplyKind.ANSWER, completion.text, usage, completion.model, notice, reply_id)

    async def _budget_refusal(self, msg: IncomingMessage) -> str | None:
        if self.guards.accounting is None:
            return None
        refusal = await self.guards.accounting.refusal(msg.key, msg.author_id)
        if refusal is not None:
            log.info("message %s in %s refused: a budget is used up", msg.message_id, msg.key)
        return refusal

    async def _call_model(
        self,
        msg: IncomingMessage,
        row: int,
        system: ChatMessage,
        model: str | None,
        content: str,
        new_tokens: int,
        on_text: OnText | None,
        progress: _Progress,
        effort: str | None = None,
        on_reasoning: OnText | None = None,
    ) -> tuple[Completion, list[ChatMessage]] | Reply:
        """The model's completion and the prompt it answered, or the Reply that explains why there is none.

        ``progress`` follows the request under way, for a turn cut off in the middle of it.
        """
        system_tokens = self._count_system(system["content"])
        budget = self.settings.history_tokens
        streaming = on_text is not None and self.settings.stream
        started = time.monotonic()
        first_text: list[float] = []

        async def timed(piece: str) -> None:
            if not first_text:
                first_text.append(time.monotonic())
                self.metrics.first_token.observe(first_text[0] - started)
            assert on_text is not None
            progress.text.append(piece)
            await on_text(piece)

        for attempt in (1, 2):
            history_budget = max(0, budget - system_tokens - new_tokens)
            # The block width depends on nothing that changes per turn (not on this question's length).
            step = max(1, int((budget - system_tokens) * self.settings.trim_block))
            history, progress.history_cut, progress.window_start = await self._history(
                msg.key, history_budget, row, step
            )
            prompt = [system, *history, {"role": "user", "content": content}]
            log.debug("prompt for %s: %s", msg.key, prompt)
            progress.prompt, progress.text = prompt, []
            try:
                if streaming:
                    completion = await self._llm.stream(
                        prompt, timed, model=model, effort=effort, on_reasoning=on_reasoning
                    )
                else:
                    completion = await self._llm.complete(prompt, model=model, effort=effort, on_reasoning=on_reasoning)
                self.metrics.model_latency.observe(time.monotonic() - started)
                return completion, prompt
            except errors.LLMError as exc:
                self.metrics.errors.labels(type(exc).__name__).inc()
                if isinstance(exc, errors.StreamInterrupted):
                    log.warning("stream interrupted after %d chars: %s", len(exc.partial), exc)
                    partial = await self._keep_partial(msg, row, exc, prompt, model)
                    return dataclasses.replace(partial, notice=_join(_history_notice(progress), partial.notice))
                if not isinstance(exc, errors.ContextTooLong):
                    log.warning("conversation %s message %s: model call failed: %s", msg.key, msg.message_id, exc)
                    return Reply(ReplyKind.ERROR, exc.user_message)
                if attempt == 2:
                    log.warning("conversation %s: context too long even at %d tokens", msg.key, budget)
                    return Reply(ReplyKind.ERROR, texts.CONTEXT_TOO_LONG)
                # Our count is only an estimate for non-OpenAI models: trust the server and halve the budget.
                budget //= 2
                log.info("conversation %s: context too long; retrying with %d tokens", msg.key, budget)
        raise AssertionError("unreachable: the second attempt returns")

    async def _history(
        self, key: ConversationKey, budget: int, row: int, step: int
    ) -> tuple[list[ChatMessage], bool, int | None]:
        """The stored turns before ``row`` that fit ``budget`` tokens, starting on a block boundary ``step`` tokens
        wide, as chat messages; True when one was cut; the id of the oldest (None: no history), for the summary.

        The store hands back the newest message alone when even it exceeds the budget (one very long answer):
        it is cut to fit, as an incoming message is, instead of leaving the prompt with no history at all.
        """
        history = await self.store.load_history(key, budget, before=row, step=step)
        if len(history) != 1 or history[0].tokens <= budget:
            return [_to_chat(m) for m in history], False, history[0].id if history else None
        newest = _to_chat(history[0])
        room = budget - PER_MESSAGE_OVERHEAD
        if room < MIN_CUT_TOKENS:
            log.info("conversation %s: no room for the newest stored message (%d tokens)", key, history[0].tokens)
            return [], True, history[0].id
        log.info("conversation %s: the newest stored message (%d tokens) is cut to %d", key, history[0].tokens, room)
        cut = {"role": newest["role"], "content": self._counter.truncate(newest["content"], room)}
        return [cut], True, history[0].id

    def _charge(self, msg: IncomingMessage, model: str | None, usage: Usage) -> UsageRecord | None:
        self.metrics.tokens.labels("prompt").inc(usage.prompt_tokens)
        self.metrics.tokens.labels("completion").inc(usage.completion_tokens)
        if usage.cached_tokens is not None:
            self.metrics.tokens.labels("cached").inc(usage.cached_tokens)
            self.metrics.cache_reported_prompt_tokens.inc(usage.prompt_tokens)
        if usage.reasoning_tokens is not None:
            self.metrics.tokens.labels("reasoning").inc(usage.reasoning_tokens)
        if self.guards.accounting is None:
            return None
        record = self.guards.accounting.charge(msg.key, msg.author_id, model or self.default_model, usage)
        self.metrics.cost.inc(record.cost)
        return record

    async def _notice(self, ledger: UsageRecord | None) -> str | None:
        if ledger is None or self.guards.accounting is None:
            return None
        return await self.guards.accounting.notice(ledger)

    async def _keep_partial(
        self,
        msg: IncomingMessage,
        row: int,
        exc: errors.StreamInterrupted,
        prompt: list[ChatMessage],
        model: str | None,
    ) -> Reply:
        reason = exc.cause.user_message if exc.cause else texts.UNAVAILABLE
        text = exc.partial + texts.INTERRUPTED_MARK.format(reason=reason.rstrip("."))
        usage = self._estimate_usage(prompt, exc.partial)
        ledger = self._charge(msg, model, usage)
        reply_id, unsaved = await self._store_reply(
            msg, text, self._counter.count_message(text), row, usage, None, False, ledger
        )
        notice = _join(unsaved, await self._notice(ledger))
        return Reply(ReplyKind.PARTIAL, text, usage, notice=notice, reply_id=reply_id)

    async def _abandon(self, msg: IncomingMessage, progress: _Progress) -> None:
        """The turn is being cancelled (the process stops past its drain deadline) before its reply was stored.

        Its message (if already stored) is deleted and its id released, so the message is answered if the platform
        delivers it again, and asking again starts from a history without a question left hanging; the adapter
        marks the text already shown as cut off. A request that went out is charged (an estimate): the provider
        bills what it generated. Bounded by a short timeout: the process is going away.
        """
        if progress.settled or not progress.claimed:
            return
        ledger = None
        if progress.prompt is not None:
            ledger = self._charge(msg, progress.model, self._estimate_usage(progress.prompt, "".join(progress.text)))
        try:
            async with asyncio.timeout(ABANDON_SECONDS):
                await self.store.abandon_turn(progress.row, msg.message_id, ledger)
        except (TimeoutError, errors.StoreError) as exc:
            log.warning("the cut-off turn %s in %s could not be released: %s", msg.message_id, msg.key, exc)
            return
        log.info(
            "the turn %s in %s was cut off (stopped, or the bot is stopping); answered if it comes again",
            msg.message_id,
            msg.key,
        )

    async def _store_reply(
        self,
        msg: IncomingMessage,
        text: str,
        tokens: int,
        row: int,
        usage: Usage,
        model: str | None,
        complete: bool,
        ledger: UsageRecord | None,
    ) -> tuple[int | None, str | None]:
        """Keep the reply and its ledger entry: its row id and None, or None and a notice for people when the reply
        could not be kept.

        The person has the answer already (it streamed, or is about to be posted): a database that refuses to keep
        it (a full disk, a read-only file, a lost server) costs the bot its memory of it, never the answer itself,
        and never the ledger entry the provider's bill matches.
        """
        text = _writable(text)
        try:
            reply_id = await self.store.add_reply(
                msg.key, text, tokens, reply_to=row, usage=usage, model=model, complete=complete, ledger=ledger
            )
            return reply_id, None
        except errors.StoreError as exc:
            log.error("conversation %s: the reply to %s could not be stored: %s", msg.key, msg.message_id, exc)
        if ledger is not None:
            await self._record_cost(ledger)
        return None, texts.REPLY_NOT_SAVED

    async def _record_cost(self, ledger: UsageRecord) -> None:
        """The ledger entry in a transaction of its own: a row this small fits where a long reply did not."""
        try:
            await self.store.add_usage(ledger)
        except errors.StoreError as exc:
            # The last place the cost can go: the log, for whoever reconciles the provider's bill.
            log.error("the ledger entry could not be stored either (%s): %s", exc, ledger)

    async def feedback(self, platform: str, channel: str, reply_id: int, user_id: str, value: str) -> bool:
        """Record a click on an answer's feedback buttons: ``user_id`` found the reply stored as ``reply_id`` good
        (``up``) or bad (``down``). ``channel`` is where the button was clicked (a channel, or a Discord thread):
        only a reply given there takes the verdict. False when none does (reset since, or not a reply of ours)."""
        if value not in FEEDBACK_VALUES:
            raise ValueError(f"not a feedback value: {value!r}")
        kept = await self.store.add_feedback(platform, channel, reply_id, user_id, value, at=time.time())
        if kept:
            self.metrics.feedback.labels(platform, value).inc()
            log.info("feedback %s on reply %d by %s", value, reply_id, user_id)
        else:
            log.info(
                "feedback %s on reply %d in %s %s not kept: no such reply there", value, reply_id, platform, channel
            )
        return kept

    async def aclose(self, drain_seconds: float) -> None:
        """Stop the background work (summaries): let it finish up to ``drain_seconds``, cancel the rest."""
        await self.memory.aclose(drain_seconds)

    def _system_message(self, override: str | None = None) -> ChatMessage:
        return {"role": "system", "content": f"{override or self.settings.system_prompt}\n\n{SPEAKER_NOTE}"}

    def _estimate_usage(self, prompt: list[ChatMessage], text: str) -> Usage:
        prompt_tokens = sum(self._counter.count_message(m["content"]) for m in prompt)
        return Usage(prompt_tokens, self._counter.count(text), exact=False)

    def _reply_tokens(self, completion: Completion) -> int:
        if completion.usage is not None and completion.usage.completion_tokens > 0:
            return completion.usage.completion_tokens + PER_MESSAGE_OVERHEAD
        return self._counter.count_message(completion.text)


def _to_chat(message: StoredMessage) -> ChatMessage:
    if message.role == "user":
        return {"role": "user", "content": f"{message.author_name or 'someone'}: {message.content}"}
    return {"role": "assistant", "content": message.content}


def _writable(text: str) -> str:
    """``text`` as a database can store it: a lone surrogate (valid JSON, ``"\\ud800"``, from a model or a platform)
    is a ``str`` that no encoding writes, so the store would refuse the whole message; it becomes ``?``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _history_notice(progress: _Progress) -> str | None:
    # Said only when the window lost its older turns at one stroke (a cut message), not as turns age out one by one.
    return texts.HISTORY_CUT if progress.history_cut else None


def _join(*notices: str | None) -> str | None:
    return "\n\n".join(n for n in notices if n) or None


def _stored_as(fresh: _Prepared, stored: _Prepared | None) -> _Prepared:
    if stored is None:
        return fresh
    return dataclasses.replace(
        fresh, msg=stored.msg, content=stored.content, tokens=stored.tokens, cut_to=stored.cut_to
    )


def _duplicate(msg: IncomingMessage) -> Reply:
    log.info("message %s in %s was already handled; not answering again", msg.message_id, msg.key)
    return Reply(ReplyKind.DUPLICATE, "")


def _with_text(msg: IncomingMessage, text: str) -> IncomingMessage:
    if text == msg.text:
        return msg
    return IncomingMessage(msg.key, msg.message_id, msg.author_id, msg.author_name, text)
