"""The turn: admit the message (access, dedup, rate, the conversation's turn, budget, a call slot), record it,
build the prompt, call the model, store the reply."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from bot import errors, logcontext, texts
from bot.context import Backfill, Files, FileSettings, ReadFiles, content_tokens
from bot.guards import Busy, ConversationBusy, Guards
from bot.llm import PER_MESSAGE_OVERHEAD, ChatClient, ChatMessage, Completion, TokenCounter, model_choice
from bot.memory import Memory, MemorySettings
from bot.messages import ConversationKey, IncomingMessage, Reply, ReplyKind, TurnView, Usage
from bot.metrics import Metrics
from bot.speak import Speaking
from bot.store import FEEDBACK_VALUES, Store, StoredMessage, UsageRecord
from bot.text_clean import clean, storable
from bot.tools import ToolLoop, ToolOutcome, TurnTools, with_traces

log = logging.getLogger(__name__)

T = TypeVar("T")

OnText = Callable[[str], Awaitable[None]]

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

    def hold(self, key: str, *, max_waiting: int | None = None) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold ``key``'s lock; with ``max_waiting``, raise ConversationBusy at once when that many already wait."""
        return _Hold(self, key, max_waiting)

    def _leave(self, key: str) -> None:
        lock, users = self._entries[key]
        if users == 1:
            del self._entries[key]
        else:
            self._entries[key] = (lock, users - 1)


class _Hold:
    """The block of :meth:`KeyedLocks.hold`: a plain async context manager, not a generator's (every turn takes
    one; a third of the cost)."""

    __slots__ = ("_key", "_lock", "_locks", "_max_waiting")

    def __init__(self, locks: KeyedLocks, key: str, max_waiting: int | None) -> None:
        self._locks, self._key, self._max_waiting = locks, key, max_waiting

    async def __aenter__(self) -> None:
        locks, key = self._locks, self._key
        lock, users = locks._entries.get(key) or (asyncio.Lock(), 0)
        # Every user but the holder (if any: a released lock may not have woken its next waiter yet) is waiting.
        waiting = users - 1 if lock.locked() else users
        if self._max_waiting is not None and waiting >= self._max_waiting and users > 0:
            raise ConversationBusy(f"{waiting} turns already wait for {key}")
        locks._entries[key] = (lock, users + 1)
        try:
            locks.waiting += 1
            try:
                await lock.acquire()
            finally:
                locks.waiting -= 1
        except BaseException:
            locks._leave(key)
            raise
        self._lock = lock

    async def __aexit__(self, *exc: object) -> None:
        try:
            self._lock.release()
        finally:
            self._locks._leave(self._key)


#: A stored message cut to fewer tokens than this says too little to be worth sending: it is left out instead.
MIN_CUT_TOKENS = 16

#: How long a turn cut off by the shutdown may take to release its message in the store.
ABANDON_SECONDS = 2.0


@dataclass(slots=True)
class _Progress:
    """How far a turn got: its stored question, the prompt of the request under way, and the text it streamed."""

    row: int | None = None
    #: The stored question's tokens, where it was stored with its claim in one write (see ConversationCore._handle).
    tokens: int = 0
    #: Whether this turn claimed the message's id: a cut-off releases only its own claim, never another turn's.
    claimed: bool = True
    model: str | None = None
    prompt: list[ChatMessage] | None = None
    settled: bool = False
    text: list[str] = dataclasses.field(default_factory=list)
    #: The prompt's history had to cut its newest message to fit, so it holds nothing said before that message.
    history_cut: bool = False
    #: The id of the oldest stored message in the prompt's history (None: it had none), for the summary.
    window_start: int | None = None
    #: Tool rounds already run (and charged): such a turn is not asked again from the start.
    tool_rounds: int = 0
    #: What the question's files gave (bot.context); None for a question without files.
    files: ReadFiles | None = None
    #: Told when the model's answer is whole, before it is stored (see ``handle``).
    on_complete: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class _Question:
    """A question as the model will see it: its channel's system message and model, its text cleaned and cut to
    ``single_cap`` tokens if it had to be."""

    system: ChatMessage
    model: str | None
    effort: str | None
    cleaned: str
    text: str
    single_cap: int


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
        tools: ToolLoop | None = None,
        files: Files | None = None,
        speaking: Speaking | None = None,
    ) -> None:
        self.store = store
        #: Where the bot speaks per channel, and whose conversation a message joins (bot.speak).
        self.speaking = speaking or Speaking(store)
        #: Files and images on messages (bot.context): used only by turns whose messages have some.
        self.files = files or Files(FileSettings(), counter)
        self._llm = llm
        self._counter = counter
        self.settings = settings
        self.guards = guards or Guards()
        self.metrics = metrics or Metrics()
        #: None when no tool provider is configured: then no turn offers tools, nor pays anything for them.
        self.tools = tools
        if tools is not None:
            tools.metrics = self.metrics  # one registry for /metrics
        self._locks = KeyedLocks()
        #: Per conversation (SQLite only), the last turn to arrive that is not yet past its claim and rate check
        #: (see _admitted): the next one takes its rate tokens and its place in the queue after it, and a turn
        #: takes the one-write path only where there is none.
        self._admission: dict[str, asyncio.Event] = {}
        self.backfill = Backfill(store, counter, settings.history_tokens, self.files)
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
        on_complete: Callable[[], None] | None = None,
    ) -> Reply:
        """Answer ``msg``; ``on_text`` receives pieces of the reply as they stream in, ``on_reasoning`` pieces of the
        model's thinking (never part of the reply, nor of the history), for the adapter to show apart or not at all;
        ``view`` shows progress while tools run and asks for approvals (none: no status, approvals denied).
        ``on_complete`` is called once the model's answer is whole, before it is stored: the reply this returns
        follows in moments, so an adapter that has shown nothing yet can wait and show it in one message.

        Known failures come back as a ``Reply`` of kind ERROR with a message for people; only bugs raise.
        """
        # In a ``person`` channel the asker's own conversation (in memory: nothing to await).
        msg = self.speaking.scoped_message(msg)
        with logcontext.turn(str(msg.key), msg.message_id):
            self.metrics.child(self.metrics.mentions, msg.key.platform).inc()
            reply = await self._handle(msg, on_text, on_reasoning, view, on_complete)
            self.metrics.child(self.metrics.replies, msg.key.platform, reply.kind.value).inc()
            return reply

    async def _handle(
        self,
        msg: IncomingMessage,
        on_text: OnText | None,
        on_reasoning: OnText | None,
        view: TurnView | None = None,
        on_complete: Callable[[], None] | None = None,
    ) -> Reply:
        """Admission, cheapest and most certain refusal first; a refused question costs nothing and leaves no trace
        in the history (its id stays handled)."""
        if not self.guards.access.allows(msg):
            log.info("message %s in %s refused by the access lists", msg.message_id, msg.key)
            if self.guards.access.refuse_silently:
                return Reply(ReplyKind.IGNORED, "")
            return Reply(ReplyKind.REFUSED, texts.NOT_ALLOWED)
        key = str(msg.key)
        # The plain case: a text mention (nothing to store before its question: no thread to backfill, no files)
        # in a conversation nobody here is answering, waiting for or being admitted to, in a database no other
        # process uses. No turn can come between, so once the conversation is held the message is claimed and
        # stored in one write, and the rate check follows (a refusal deletes the question again, its id stays
        # handled). One write less per mention, 10-15 % of a turn's CPU (BENCHMARKS.md). A backfill or files are
        # read after the rate check and stored before the question, so such a turn claims first, as on PostgreSQL.
        one_write, ahead, admitted = False, None, None
        if self.store.single_process:
            ahead = self._admission.get(key)
            one_write = ahead is None and not msg.attachments and not Backfill.wanted(msg) and self._locks.idle(key)
            self._admission[key] = admitted = asyncio.Event()
        progress = _Progress(claimed=False, on_complete=on_complete)
        if not one_write:
            try:
                # A redelivery is silent, and neither waits for the conversation nor spends the person's rate tokens.
                claim = asyncio.ensure_future(self.store.claim_message(msg.message_id))
                try:
                    claimed = await asyncio.shield(claim)
                    progress.claimed = claimed
                    # Rate tokens and places in the conversation's queue go in the order the turns came, whichever
                    # path the turn ahead took (its write may come after this one's claim).
                    if ahead is not None:
                        await ahead.wait()
                except asyncio.CancelledError:
                    # Cut off (the process stops) while claiming or waiting: the store commits a claim whatever
                    # happens to this turn, so one that went in is released, and the message is answered if the
                    # platform delivers it again.
                    progress.claimed = await _outcome(claim) is True
                    await self._abandon(msg, progress)
                    raise
                if not claimed:
                    return _duplicate(msg)
                # Before queueing for the conversation: a flood in one channel is slowed down at once.
                if (slow_down := await self._rate_refusal(msg)) is not None:
                    return slow_down
            finally:
                # The turn behind runs once this one is in the conversation's queue: no await from here to there.
                self._admitted(key, admitted)
        try:
            # An idle lock is taken without suspending: nothing comes between the check above and holding it.
            async with (
                self._locks.hold(key, max_waiting=self.guards.max_queued_per_conversation),
                self.store.conversation_lock(msg.key),
            ):
                stored: _Question | None = None
                if one_write:
                    try:
                        stored = await self._question(msg)
                        progress.tokens = self._counter.count_message(f"{msg.author_name}: {stored.text}")
                        # A future already done where the store wrote inline (SQLite): neither ensure_future nor
                        # shield makes a task of it, and awaiting it gives up no turn of the loop (three before).
                        write = asyncio.ensure_future(
                            self.store.begin_turn(_with_text(msg, stored.text), progress.tokens)
                        )
                        try:
                            progress.row = await asyncio.shield(write)
                        except asyncio.CancelledError:
                            # The store commits the write whatever happens to this turn: what it claimed and
                            # stored is known before the cut-off below releases it (_abandon).
                            progress.row = await _outcome(write)
                            progress.claimed = progress.row is not None
                            raise
                        if progress.row is None:
                            return _duplicate(msg)
                        progress.claimed = True
                        if (slow_down := await self._rate_refusal(msg)) is not None:
                            return await self._forget(msg, progress, slow_down)
                    finally:
                        self._admitted(key, admitted)
                refusal = await self._budget_refusal(msg)
                if refusal is not None:
                    return await self._forget(msg, progress, Reply(ReplyKind.REFUSED, refusal))
                # The thread's earlier messages, before the question and under both locks, so that one turn at a
                # time (of any replica) reads them; not in the way of the plain path, which brings none.
                if Backfill.wanted(msg):
                    await self.backfill.run(msg)
                try:
                    # The slot is held until the call is charged, so every call that passed the budget check and is
                    # not yet charged holds a slot: a cap is passed by at most the calls running when it runs out.
                    async with self.guards.gate.slot() as waited:
                        # Calls charged while this one queued may have used the budget up: look again.
                        if waited and (refusal := await self._budget_refusal(msg)) is not None:
                            return await self._forget(msg, progress, Reply(ReplyKind.REFUSED, refusal))
                        # The channel's settings and summary as they are now, after any wait for a slot; a question
                        # stored already keeps the form it was stored in.
                        question = stored if stored is not None and not waited else await self._question(msg, stored)
                        reply = await self._turn(msg, question, on_text, progress, on_reasoning, view)
                        if reply.kind in (ReplyKind.ANSWER, ReplyKind.PARTIAL):
                            # Its later messages need no mention in a ``thread`` channel.
                            self.speaking.answered(msg.key)
                        return reply
                except Busy as exc:
                    if progress.row is None or progress.prompt is not None or progress.settled:
                        raise
                    # No call slot (the gate's queue is full) for a question stored already: refused while the
                    # conversation is still held, so no turn after it sees the question in its history.
                    log.warning("conversation %s: %s", msg.key, exc)
                    return await self._forget(msg, progress, Reply(ReplyKind.REFUSED, exc.user_message))
        except Busy as exc:
            log.warning("conversation %s: %s", msg.key, exc)
            return Reply(ReplyKind.REFUSED, exc.user_message)
        except asyncio.CancelledError:
            # Cut off (the process stops past its drain deadline), whether still queued or mid-call.
            await self._abandon(msg, progress)
            raise

    def _admitted(self, key: str, admitted: asyncio.Event | None) -> None:
        """The turn is past its admission (claim and rate check): the one behind it in ``key`` may go on."""
        if admitted is None:
            return
        admitted.set()
        if self._admission.get(key) is admitted:
            del self._admission[key]

    async def _rate_refusal(self, msg: IncomingMessage) -> Reply | None:
        if not self.guards.limits_rates:
            return None
        wait = await self.guards.rate_wait(msg)
        if wait <= 0:
            return None
        log.info("message %s in %s rate-limited for %d s", msg.message_id, msg.key, wait)
        return Reply(ReplyKind.REFUSED, texts.SLOW_DOWN.format(seconds=wait))

    async def _forget(self, msg: IncomingMessage, progress: _Progress, refusal: Reply) -> Reply:
        """A question stored before its refusal (the one-write path) leaves no trace in the history; its id stays
        handled. Nothing else was done for it: no call went out, nothing was charged."""
        if progress.row is not None:
            try:
                await self.store.forget_message(progress.row)
            except errors.StoreError as exc:
                # The refusal is said all the same; the question stays in the history, unanswered.
                log.error(
                    "conversation %s: the refused question %d could not be deleted: %s", msg.key, progress.row, exc
                )
            progress.row = None
            # Refused for good: a cut-off from here on must not release the id.
            progress.settled = True
        return refusal

    async def reset(self, key: ConversationKey) -> int:
        async with self._locks.hold(str(key)), self.store.conversation_lock(key):
            count = await self.store.reset(key)
            self.memory.forget(key)
        log.info("conversation %s reset: %d messages deleted", key, count)
        return count

    async def _question(self, msg: IncomingMessage, stored: _Question | None = None) -> _Question:
        """``msg``'s question as the model will see it, with its channel's system message and model as they are now;
        a question ``stored`` already keeps the text it was stored with."""
        channel = await self.store.channel_settings(msg.key)
        model, effort = model_choice(channel.model)
        system = self._system_message(channel.system_prompt)
        system = self.memory.system_with_summary(system, await self.memory.summary(msg.key))
        if stored is not None:
            return dataclasses.replace(stored, system=system, model=model, effort=effort)
        # A single message may take at most half of what the system prompt leaves, so that the turns around it
        # still fit next time; a longer one is cut, and stored as the model saw it.
        room = self.settings.history_tokens - self._count_system(system["content"])
        single_cap = max(16, room // 2 - PER_MESSAGE_OVERHEAD)
        cleaned = clean(msg.text)
        return _Question(system, model, effort, cleaned, self._counter.truncate(cleaned, single_cap), single_cap)

    async def _turn(
        self,
        msg: IncomingMessage,
        asked: _Question,
        on_text: OnText | None,
        progress: _Progress,
        on_reasoning: OnText | None,
        view: TurnView | None = None,
    ) -> Reply:
        text, single_cap = asked.text, asked.single_cap
        question = text
        if msg.attachments:
            # Files (bot.context) follow the question within the same cap; what they gave rides in progress.
            progress.files = await self.files.read(msg.attachments, single_cap - self._counter.count(text))
            question = progress.files.question(text)
        reply = await self._answer(
            _with_text(msg, question), asked.system, asked.model, on_text, progress, asked.effort, on_reasoning, view
        )
        if progress.files is not None and reply.kind in (ReplyKind.ANSWER, ReplyKind.PARTIAL):
            reply = dataclasses.replace(reply, notice=_join(progress.files.notice(), reply.notice))
        if text == asked.cleaned or reply.kind not in (ReplyKind.ANSWER, ReplyKind.PARTIAL):
            return reply
        # A cut question would otherwise be answered as if it had been read whole: say so, beside any budget notice.
        cut = texts.MESSAGE_CUT.format(tokens=single_cap)
        return dataclasses.replace(reply, notice=f"{cut}\n\n{reply.notice}" if reply.notice else cut)

    async def _answer(
        self,
        msg: IncomingMessage,
        system: ChatMessage,
        model: str | None,
        on_text: OnText | None,
        progress: _Progress,
        effort: str | None = None,
        on_reasoning: OnText | None = None,
        view: TurnView | None = None,
    ) -> Reply:
        """The reply to ``msg``, whose text is already as the model will see it."""
        content = f"{msg.author_name}: {msg.text}"
        if progress.row is not None:
            # Stored already, with its claim in one write (see _handle).
            row, new_tokens = progress.row, progress.tokens
        else:
            new_tokens = self._counter.count_message(content)
            if progress.files is not None:
                new_tokens += progress.files.image_tokens
            row = await self.store.add_question(msg, new_tokens)
        progress.row, progress.model = row, model
        if progress.files is not None:
            await self.files.keep(self.store, msg.key, row, progress.files)
        # Tools are offered only where a provider is configured; the policy may leave none for this message.
        tools = self.tools.offer(msg) if self.tools is not None else None
        result = await self._call_model(
            msg, row, system, model, content, new_tokens, on_text, progress, effort, on_reasoning, tools, view
        )
        # From here the turn ends as an answer or an error: a cut-off no longer releases its message.
        progress.settled = True
        if isinstance(result, Reply):
            return result
        completion, prompt, outcome = result
        if outcome is not None and outcome.refusal is not None:
            # A budget ran out between tool rounds: every round so far is charged already; no answer follows.
            return Reply(ReplyKind.REFUSED, outcome.refusal)

        usage = completion.usage or self._estimate_usage(prompt, completion.text)
        ledger = self._charge(msg, completion.model, usage)
        if not completion.text.strip():
            # The provider bills an empty answer like any other: it goes in the ledger even with no reply to keep.
            log.warning("conversation %s: the model returned an empty completion", msg.key)
            if ledger is not None:
                await self._record_cost(ledger)
            return Reply(ReplyKind.ERROR, texts.EMPTY_COMPLETION)
        shown, trace = completion.text, None
        if outcome is not None and self.tools is not None:
            shown = outcome.reply_text(self.tools.settings.show_used)
            trace = outcome.trace_record(self._counter)
        if progress.on_complete is not None:
            progress.on_complete()
        reply_id, unsaved = await self._store_reply(
            msg, completion.text, self._reply_tokens(completion), row, usage, completion.model, True, ledger, trace
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
        return Reply(ReplyKind.ANSWER, shown, usage, completion.model, notice, reply_id)

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
        tools: TurnTools | None = None,
        view: TurnView | None = None,
    ) -> tuple[Completion, list[ChatMessage], ToolOutcome | None] | Reply:
        """The model's completion, the prompt it answered and, with ``tools``, how the tool rounds went; or the
        Reply that explains why there is none.

        ``progress`` follows the request under way, for a turn cut off in the middle of it.
        """
        system_tokens = self._count_system(system["content"])
        budget = self.settings.history_tokens
        streaming = on_text is not None and self.settings.stream
        started = time.monotonic()
        first_text: list[float] = []

        def timed(piece: str) -> Awaitable[None]:
            # Not a coroutine itself: it hands back the sink's, so a streamed token makes one coroutine, not two.
            if not first_text:
                first_text.append(time.monotonic())
                self.metrics.first_token.observe(first_text[0] - started)
            assert on_text is not None
            progress.text.append(piece)
            return on_text(piece)

        halved = False
        # At most three calls: one may go again without images (once per model), one with half the history.
        while True:
            history_budget = max(0, budget - system_tokens - new_tokens)
            # The block width depends on nothing that changes per turn (not on this question's length).
            step = max(1, int((budget - system_tokens) * self.settings.trim_block))
            history, progress.history_cut, progress.window_start = await self._history(
                msg.key, history_budget, row, step
            )
            prompt = [system, *history, {"role": "user", "content": content}]
            if progress.files is not None or self.files.marked(history):
                prompt = await self.files.prompt(prompt, self.store, model or self.default_model, progress.files)
            log.debug("prompt for %s: %s", msg.key, prompt)
            progress.prompt, progress.text = prompt, []
            try:
                if tools is not None:
                    outcome = await self._with_tools(
                        msg,
                        row,
                        prompt,
                        tools,
                        model,
                        effort,
                        timed if streaming else None,
                        on_reasoning,
                        progress,
                        view,
                    )
                    self.metrics.model_latency.observe(time.monotonic() - started)
                    return outcome.completion, outcome.prompt, outcome
                if streaming:
                    completion = await self._llm.stream(
                        prompt, timed, model=model, effort=effort, on_reasoning=on_reasoning
                    )
                else:
                    completion = await self._llm.complete(prompt, model=model, effort=effort, on_reasoning=on_reasoning)
                self.metrics.model_latency.observe(time.monotonic() - started)
                return completion, prompt, None
            except errors.LLMError as exc:
                self.metrics.errors.labels(type(exc).__name__).inc()
                if isinstance(exc, errors.StreamInterrupted):
                    log.warning("stream interrupted after %d chars: %s", len(exc.partial), exc)
                    partial = await self._keep_partial(msg, row, exc, prompt, model)
                    return dataclasses.replace(partial, notice=_join(_history_notice(progress), partial.notice))
                if self.files.refused(exc, prompt, model or self.default_model):
                    continue  # asked again at once, without the images the model cannot see
                if not isinstance(exc, errors.ContextTooLong):
                    log.warning("conversation %s message %s: model call failed: %s", msg.key, msg.message_id, exc)
                    return Reply(ReplyKind.ERROR, exc.user_message)
                if halved or progress.tool_rounds:
                    # After tool rounds, asking again from the start would run the tools again: not for a tool
                    # that acts (creates a ticket, posts a message).
                    log.warning("conversation %s: context too long even at %d tokens", msg.key, budget)
                    return Reply(ReplyKind.ERROR, texts.CONTEXT_TOO_LONG)
                # Our count is only an estimate for non-OpenAI models: trust the server and halve the budget.
                budget //= 2
                halved = True
                log.info("conversation %s: context too long; retrying with %d tokens", msg.key, budget)

    async def _with_tools(
        self,
        msg: IncomingMessage,
        row: int,
        prompt: list[ChatMessage],
        tools: TurnTools,
        model: str | None,
        effort: str | None,
        on_text: OnText | None,
        on_reasoning: OnText | None,
        progress: _Progress,
        view: TurnView | None,
    ) -> ToolOutcome:
        """The turn's model calls with ``tools`` offered (bot.tools.ToolLoop): each round charged as it returns, the
        budget checked again before the next."""
        assert self.tools is not None

        async def call(
            messages: list[ChatMessage], on_piece: OnText | None, wire: list[dict[str, object]], choice: str | None
        ) -> Completion:
            progress.prompt = messages
            if on_piece is not None:
                return await self._llm.stream(
                    messages,
                    on_piece,
                    model=model,
                    effort=effort,
                    on_reasoning=on_reasoning,
                    tools=wire,
                    tool_choice=choice,
                )
            return await self._llm.complete(
                messages, model=model, effort=effort, on_reasoning=on_reasoning, tools=wire, tool_choice=choice
            )

        async def charge(completion: Completion, messages: list[ChatMessage]) -> None:
            progress.tool_rounds += 1
            # Charged now: a turn cut off later must not charge this call a second time as an estimate.
            progress.prompt = None
            usage = completion.usage or self._estimate_usage(messages, completion.text)
            ledger = self._charge(msg, completion.model, usage)
            if ledger is not None:
                await self._record_cost(ledger)

        async def recheck() -> str | None:
            return await self._budget_refusal(msg)

        return await self.tools.run(call, charge, recheck, prompt, tools, msg, row, view, on_text)

    async def _history(
        self, key: ConversationKey, budget: int, row: int, step: int
    ) -> tuple[list[ChatMessage], bool, int | None]:
        """The stored turns before ``row`` that fit ``budget`` tokens, starting on a block boundary ``step`` tokens
        wide, as chat messages; True when one was cut; the id of the oldest (None: no history), for the summary.

        The store hands back the newest message alone when even it exceeds the budget (one very long answer):
        it is cut to fit, as an incoming message is, instead of leaving the prompt with no history at all.
        """
        history = await self.store.load_history(key, budget, before=row, step=step)
        if not history and budget > 0:
            # Empty with a positive budget only when the conversation holds nothing before ``row`` (the Store's
            # promise): a later turn's window starts at this question, with nothing for the summary to fold in.
            self.memory.nothing_before(key, row)
        if len(history) != 1 or history[0].tokens <= budget:
            chat = [_to_chat(m) for m in history]
            if self.tools is not None:
                # Only a bot with tools sends earlier tool calls back; they fill what the budget leaves.
                chat = with_traces(history, chat, budget)
            return chat, False, history[0].id if history else None
        newest = _to_chat(history[0])
        room = budget - PER_MESSAGE_OVERHEAD
        if room < MIN_CUT_TOKENS:
            log.info("conversation %s: no room for the newest stored message (%d tokens)", key, history[0].tokens)
            return [], True, history[0].id
        log.info("conversation %s: the newest stored message (%d tokens) is cut to %d", key, history[0].tokens, room)
        cut = {"role": newest["role"], "content": self._counter.truncate(newest["content"], room)}
        return [cut], True, history[0].id

    def _charge(self, msg: IncomingMessage, model: str | None, usage: Usage) -> UsageRecord | None:
        tokens = self.metrics.tokens
        self.metrics.child(tokens, "prompt").inc(usage.prompt_tokens)
        self.metrics.child(tokens, "completion").inc(usage.completion_tokens)
        if usage.cached_tokens is not None:
            self.metrics.child(tokens, "cached").inc(usage.cached_tokens)
            self.metrics.cache_reported_prompt_tokens.inc(usage.prompt_tokens)
        if usage.reasoning_tokens is not None:
            self.metrics.child(tokens, "reasoning").inc(usage.reasoning_tokens)
        if self.guards.accounting is None:
            return None
        record = self.guards.accounting.charge(msg.key, msg.author_id, model or self.default_model, usage)
        self.metrics.cost.inc(record.cost)
        return record

    async def _notice(self, ledger: UsageRecord | None) -> str | None:
        """The budget's notice for this reply, if any. Best effort: the answer is whole by now (an adapter may be
        holding it to post it at once), and a database that fails here must not cost it."""
        if ledger is None or self.guards.accounting is None:
            return None
        try:
            return await self.guards.accounting.notice(ledger)
        except Exception:
            log.warning(
                "the budget notice for this reply could not be read; the reply goes out without it", exc_info=True
            )
            return None

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
        tool_trace: str | None = None,
    ) -> tuple[int | None, str | None]:
        """Keep the reply and its ledger entry: its row id and None, or None and a notice for people when the reply
        could not be kept.

        The person has the answer already (it streamed, or is about to be posted): a database that refuses to keep
        it (a full disk, a read-only file, a lost server) costs the bot its memory of it, never the answer itself,
        and never the ledger entry the provider's bill matches.
        """
        text = storable(text)
        try:
            reply_id = await self.store.add_reply(
                msg.key,
                text,
                tokens,
                reply_to=row,
                usage=usage,
                model=model,
                complete=complete,
                ledger=ledger,
                tool_trace=tool_trace,
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
        # An assistant message that only calls tools has no content.
        prompt_tokens = sum(content_tokens(self._counter, m["content"] or "") for m in prompt)
        return Usage(prompt_tokens, self._counter.count(text), exact=False)

    def _reply_tokens(self, completion: Completion) -> int:
        if completion.usage is not None and completion.usage.completion_tokens > 0:
            return completion.usage.completion_tokens + PER_MESSAGE_OVERHEAD
        return self._counter.count_message(completion.text)


def _to_chat(message: StoredMessage) -> ChatMessage:
    if message.role == "user":
        return {"role": "user", "content": f"{message.author_name or 'someone'}: {message.content}"}
    return {"role": "assistant", "content": message.content}


async def _outcome(write: asyncio.Future[T]) -> T | None:
    """What a store write did, for a turn cut off while it ran: the store runs it to its end anyway. None if it
    failed, or is not done within :data:`ABANDON_SECONDS` (the process is going away)."""
    try:
        async with asyncio.timeout(ABANDON_SECONDS):
            return await asyncio.shield(write)
    except Exception:
        return None


def _history_notice(progress: _Progress) -> str | None:
    # Said only when the window lost its older turns at one stroke (a cut message), not as turns age out one by one.
    return texts.HISTORY_CUT if progress.history_cut else None


def _join(*notices: str | None) -> str | None:
    return "\n\n".join(n for n in notices if n) or None


def _duplicate(msg: IncomingMessage) -> Reply:
    log.info("message %s in %s was already handled; not answering again", msg.message_id, msg.key)
    return Reply(ReplyKind.DUPLICATE, "")


def _with_text(msg: IncomingMessage, text: str) -> IncomingMessage:
    if text == msg.text:
        return msg
    # Everything else stays: the files, the context, and the flags the turn and the tool policy look at.
    return dataclasses.replace(msg, text=text)
