"""The console adapter: chat with the bot in a terminal, through the same core as Slack and Discord.

The terminal is read in the main thread, where Ctrl-C lands, and the event loop runs one step at a time in
between (an :class:`asyncio.Runner`: open the core, each answer or command, close). So Ctrl-C at the prompt is a
KeyboardInterrupt out of the read, while during an answer a loop signal handler cancels just that answer. Nothing
runs in the background while the console waits for a person: every step is awaited to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TextIO

from bot import texts
from bot.commands import CHANNEL_COMMANDS, COMMANDS, CommandContext, Commands, Wording
from bot.conversation import ConversationCore
from bot.guards import ScopeKind
from bot.messages import ConversationKey, IncomingMessage, ToolRequest

log = logging.getLogger(__name__)

CONSOLE_KEY = ConversationKey("console", "local", "")
PROMPT = "you> "
#: The prompt inside a ``\"\"\"`` block.
MORE = "...> "
BOT = "teambot> "
BLOCK = '"""'
#: How many lines the history file keeps.
HISTORY_LINES = 1000
#: Back to the start of the line and clear it: takes the "thinking…" indicator away again.
_CLEAR_LINE = "\r\x1b[K"

WORDING = Wording(
    reset_done=texts.CONSOLE_RESET_DONE,
    usage_header=texts.CONSOLE_USAGE_HEADER,
    # The console is one conversation of one person on one machine: its channel, user and workspace totals are
    # the same numbers, so the report shows them once.
    usage_scopes=((ScopeKind.CHANNEL, texts.CONSOLE_USAGE_SCOPE),),
    system_set=texts.CONSOLE_SYSTEM_SET,
    system_reset=texts.CONSOLE_SYSTEM_RESET,
    model_show=texts.CONSOLE_MODEL_SHOW,
    model_set=texts.CONSOLE_MODEL_SET,
    model_reset=texts.CONSOLE_MODEL_RESET,
    model_not_allowed=texts.CONSOLE_MODEL_NOT_ALLOWED,
    usage_feedback=None,  # answers in a terminal carry no feedback buttons
)


class LineReader(Protocol):
    """Where the console's input comes from; ``read`` raises EOFError at the end of the input and lets
    KeyboardInterrupt (Ctrl-C) through."""

    def read(self, prompt: str) -> str: ...


class TerminalReader:
    """A terminal, read with GNU readline: arrows and history (kept in ``history``), and readline's own
    non-canonical terminal mode, so a line is not cut at the kernel's 4,095-byte canonical line buffer. With
    bracketed paste on, the terminal marks a paste, and readline takes a pasted block of several lines as one."""

    def __init__(self, history: Path | None) -> None:
        import readline  # only for a terminal: importing it may write escape sequences to stdout

        self._readline = readline
        self._history = history
        # Python turns bracketed paste off (for its own REPL); GNU readline 8 does the rest. macOS's libedit has no
        # such setting: there a pasted block is one message only between """ lines.
        if "libedit" not in (readline.__doc__ or ""):
            readline.parse_and_bind("set enable-bracketed-paste on")
        # An invalid byte typed or pasted must not end the session with a UnicodeDecodeError out of input().
        if isinstance(sys.stdin, io.TextIOWrapper):
            sys.stdin.reconfigure(errors="replace")
        if history is not None:
            try:
                # The history holds the questions: private to the person, as a shell's history is.
                os.close(os.open(history, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
                readline.read_history_file(history)
                if readline.get_current_history_length() > HISTORY_LINES:
                    readline.set_history_length(HISTORY_LINES)
                    readline.write_history_file(history)
            except OSError as exc:
                log.warning("console history %s cannot be used: %s", history, exc)
                self._history = None

    def read(self, prompt: str) -> str:
        line = input(prompt)
        if self._history is not None and line.strip():
            try:
                # Appended line by line, so that what was typed survives a crash or a kill.
                self._readline.append_history_file(1, self._history)
            except OSError as exc:
                log.warning("console history %s cannot be written: %s", self._history, exc)
                self._history = None
        return line


class StreamReader:
    """A pipe or a file: bytes as they come, decoded the same way for both, an invalid byte becoming U+FFFD."""

    def __init__(self, stream: BinaryIO, out: TextIO) -> None:
        self._stream = stream
        self._out = out

    def read(self, prompt: str) -> str:
        self._out.write(prompt)
        self._out.flush()
        raw = self._stream.readline()
        if not raw:
            raise EOFError
        return raw.decode("utf-8", errors="replace").rstrip("\r\n")


class ConsoleView:
    """The console's :class:`bot.messages.TurnView`: progress on stderr (beside the answer, not in it), and an
    approval asked at the prompt, ``y`` to run the tool; anything else, an empty line or the end of the input, denies.

    The question is read in the turn itself, as every console read is: nothing else runs while the console waits for
    its one person, who is the one who asked, so the approval waits for them (``within`` is for shared channels).
    """

    def __init__(self, reader: LineReader, err: TextIO, before_prompt: Callable[[], None]) -> None:
        self._reader = reader
        self._err = err
        self._before_prompt = before_prompt

    async def status(self, text: str | None) -> None:
        if text is not None:
            self._err.write(texts.CONSOLE_TOOL_STATUS.format(status=text) + "\n")
            self._err.flush()

    async def approve(self, request: ToolRequest, asker_id: str, within: float) -> bool:
        self._before_prompt()
        try:
            answer = self._reader.read(texts.CONSOLE_APPROVE.format(tool=request.tool, arguments=request.arguments))
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")


def run_console(
    core: AbstractAsyncContextManager[ConversationCore],
    commands: Callable[[ConversationCore], Commands],
    *,
    user_name: str,
    banner: str,
    log: str,
    history: Path | None = None,
    reader: LineReader | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> None:
    """Open ``core``, then read and answer until ``/exit``, end of input or a second Ctrl-C; close it again.
    Tool progress goes to ``err`` (stderr by default)."""
    out = out or sys.stdout
    err = err or sys.stderr
    if isinstance(out, io.TextIOWrapper):
        out.reconfigure(errors="replace")  # a model can send anything, a lone surrogate included
    if reader is None:
        reader = StreamReader(sys.stdin.buffer, out)
        if sys.stdin.isatty() and out.isatty():
            with contextlib.suppress(ImportError):  # a Python built without readline reads the terminal plainly
                reader = TerminalReader(history)
    with asyncio.Runner() as runner:
        stack = contextlib.AsyncExitStack()
        opened = runner.run(stack.enter_async_context(core))
        try:
            count = runner.run(opened.store.count_messages(CONSOLE_KEY))
            session = _Session(runner, opened, commands(opened), reader, out, user_name, log, err)
            session.show(banner)
            if count:
                session.show(texts.CONSOLE_RESUMED.format(count=count, s=texts.plural(count)))
            session.loop()
        finally:
            # Closing must finish (the database writer thread above all): a Ctrl-C now would leave it half done.
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                runner.run(stack.aclose())
            finally:
                signal.signal(signal.SIGINT, previous)


class _Session:
    def __init__(
        self,
        runner: asyncio.Runner,
        core: ConversationCore,
        commands: Commands,
        reader: LineReader,
        out: TextIO,
        user_name: str,
        log: str,
        err: TextIO | None = None,
    ) -> None:
        self._runner = runner
        self._err = err or sys.stderr
        self._core = core
        self._commands = commands
        self._reader = reader
        self._out = out
        self._tty = out.isatty()
        self._user = user_name
        self._log = log

    def show(self, text: str, end: str = "\n") -> None:
        self._out.write(text + end)
        self._out.flush()

    def loop(self) -> None:
        # True right after a Ctrl-C (one that stopped an answer, or one at the prompt): another one quits.
        interrupted = False
        while True:
            try:
                text = self._next_message()
            except EOFError:
                self.show("")
                return
            except KeyboardInterrupt:
                if interrupted:
                    self.show("")
                    return
                interrupted = True
                self.show("\n" + texts.CONSOLE_INTERRUPT_HINT)
                continue
            interrupted = False
            line = text.strip()
            if line in ("/exit", "/quit"):
                return
            if not line:
                continue
            if not self._interruptible(self._command(line) if line.startswith("/") else self._answer(text)):
                interrupted = True

    def _next_message(self) -> str:
        """One message: a line, or the lines between two ``\"\"\"`` lines (for a terminal without bracketed paste,
        or a file), joined with newlines."""
        line = self._reader.read(PROMPT)
        if line.strip() != BLOCK:
            return line
        lines: list[str] = []
        while True:
            try:
                line = self._reader.read(MORE)
            except EOFError:
                break  # the end of the input closes the block too: what was written is asked
            if line.strip() == BLOCK:
                break
            lines.append(line)
        return "\n".join(lines)

    def _interruptible(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run one step; Ctrl-C during it cancels it. False when it was cancelled."""
        try:
            done = self._runner.run(_cancel_on_sigint(work))
        except KeyboardInterrupt:
            # Ctrl-C in the instant before the handler below was in place: the step had not begun.
            work.close()
            done = False
        except Exception:
            # The one handler for a step that failed for a reason of ours: the details go to the log, and the
            # person gets one sentence from the bot, not a traceback in the middle of the conversation.
            log.exception("console: a message or command failed")
            self.show(BOT + texts.CONSOLE_APOLOGY.format(log=self._log))
            return True
        if not done:
            self.show(BOT + texts.CONSOLE_CANCELLED)
        return done

    async def _command(self, line: str) -> None:
        match = re.match(r"/(\S*)\s*(.*)", line, re.DOTALL)
        name, arg = (match.group(1), match.group(2)) if match else ("", "")
        if name not in COMMANDS or name in CHANNEL_COMMANDS:
            self.show(BOT + texts.CONSOLE_UNKNOWN_COMMAND.format(command=f"/{name}"))
            return
        # The person at the terminal runs the bot, so they are its admin.
        ctx = CommandContext(CONSOLE_KEY, self._user, platform_admin=True, wording=WORDING)
        self.show(BOT + await self._commands.run(name, ctx, arg))

    async def _answer(self, text: str) -> None:
        printed: list[str] = []
        thinking = self._tty
        if thinking:
            self.show(BOT + texts.CONSOLE_THINKING, end="")

        def settle() -> None:
            nonlocal thinking
            if thinking:
                self.show(_CLEAR_LINE, end="")
                thinking = False

        async def on_text(piece: str) -> None:
            if not printed:
                settle()
                self.show(BOT, end="")
            printed.append(piece)
            self.show(piece, end="")

        def before_prompt() -> None:
            # The question goes on a line of its own: after "thinking…", or after the text streamed so far.
            settle()
            if printed:
                self.show("")

        # The person at the terminal runs the bot: its admin, in a conversation no one else sees (tool policies).
        message = IncomingMessage(
            CONSOLE_KEY, f"console:{uuid.uuid4()}", self._user, self._user, text, in_dm=True, author_is_admin=True
        )
        view = ConsoleView(self._reader, self._err, before_prompt)
        try:
            reply = await self._core.handle(message, on_text, view=view)
        except BaseException:
            # Cancelled or failed: the line is finished, and what follows starts on a line of its own.
            settle()
            if printed:
                self.show("")
            raise
        settle()
        streamed = "".join(printed)
        if streamed and reply.text.startswith(streamed):
            self.show(reply.text[len(streamed) :])
        elif reply.should_post:
            self.show(("\n" if streamed else "") + BOT + reply.text)
        if reply.notice:
            self.show(BOT + reply.notice)


async def _cancel_on_sigint(work: Coroutine[Any, Any, None]) -> bool:
    """Run ``work``; the first SIGINT cancels it (a second one does nothing, so that the cancelled turn can tidy
    up). True when it ran to its end."""
    loop = asyncio.get_running_loop()
    started: list[asyncio.Task[None]] = []

    def interrupt() -> None:
        if started and not started[0].cancelling():
            started[0].cancel()

    loop.add_signal_handler(signal.SIGINT, interrupt)
    try:
        task = asyncio.create_task(work)
        started.append(task)
        await asyncio.wait({task})
    finally:
        # SIGINT goes back to Python's default: a KeyboardInterrupt out of the next read.
        loop.remove_signal_handler(signal.SIGINT)
    if task.cancelled():
        return False
    task.result()
    return True
