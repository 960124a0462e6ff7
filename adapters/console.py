"""The console adapter: chat with the bot in a terminal, through the same core as Slack and Discord."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TextIO

from bot import texts
from bot.commands import COMMANDS, CommandContext, Commands
from bot.conversation import ConversationCore
from bot.messages import ConversationKey, IncomingMessage

CONSOLE_KEY = ConversationKey("console", "local", "")
PROMPT = "you> "
BOT = "teambot> "


async def _stdin_lines() -> AsyncIterator[str]:
    """Lines from stdin without blocking the loop; a regular file (``< input.txt``) or a device that is not a
    terminal (``< /dev/null``) cannot be watched, so it is read directly, which is fine because reading them never
    waits on a person."""
    mode = os.fstat(sys.stdin.fileno()).st_mode
    if stat.S_ISREG(mode) or (stat.S_ISCHR(mode) and not sys.stdin.isatty()):
        for line in sys.stdin:
            yield line
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            yield line.decode("utf-8", errors="replace")
    finally:
        transport.close()


async def run_console(
    core: ConversationCore,
    commands: Commands,
    *,
    user_name: str,
    banner: str,
    lines: AsyncIterator[str] | None = None,
    out: TextIO = sys.stdout,
) -> None:
    """Read lines until ``/exit`` or end of input, answering each through the core."""

    def show(text: str, end: str = "\n") -> None:
        out.write(text + end)
        out.flush()

    show(banner)
    show(PROMPT, end="")
    async for raw in lines if lines is not None else _stdin_lines():
        line = raw.strip()
        if line in ("/exit", "/quit"):
            break
        if line.startswith("/"):
            name, _, arg = line[1:].partition(" ")
            if name in COMMANDS:
                # The person at the terminal runs the bot, so they are its admin.
                ctx = CommandContext(CONSOLE_KEY, user_name, platform_admin=True)
                show(BOT + await commands.run(name, ctx, arg))
            else:
                show(BOT + texts.CONSOLE_UNKNOWN_COMMAND.format(command=f"/{name}"))
        elif line:
            await _answer(core, line, user_name, show)
        show(PROMPT, end="")
    show("")


async def _answer(core: ConversationCore, line: str, user_name: str, show: Callable[..., None]) -> None:
    printed: list[str] = []

    async def on_text(piece: str) -> None:
        if not printed:
            show(BOT, end="")
        printed.append(piece)
        show(piece, end="")

    message = IncomingMessage(CONSOLE_KEY, f"console:{uuid.uuid4()}", user_name, user_name, line)
    reply = await core.handle(message, on_text)
    streamed = "".join(printed)
    if streamed and reply.text.startswith(streamed):
        show(reply.text[len(streamed) :])
    elif reply.should_post:
        show(("\n" if streamed else "") + BOT + reply.text)
    if reply.notice:
        show(BOT + reply.notice)
