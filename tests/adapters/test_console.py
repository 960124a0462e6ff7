"""The console adapter as a person uses it: ``teambot console`` in a subprocess, typing into its stdin."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import signal
import sqlite3
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot import texts
from tests.fakes.openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
PROMPT = b"you> "


class Console:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.transcript = b""
        self.banner = ""

    async def until_prompt(self) -> str:
        """Everything printed up to the next prompt."""
        assert self.proc.stdout is not None
        out = await asyncio.wait_for(self.proc.stdout.readuntil(PROMPT), 20)
        self.transcript += out
        return out[: -len(PROMPT)].decode()

    async def say(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.until_prompt()

    async def close(self) -> tuple[int, str]:
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        code = await asyncio.wait_for(self.proc.wait(), 20)
        return code, (await self.proc.stderr.read()).decode()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(api_key="sk-console-test-key", chunk_delay=0.001) as server:
        yield server


def env_at(base_url: str, db: Path, *extra_env: tuple[str, str]) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "OPENAI_BASE_URL": base_url,
        "TEAMBOT_DB": str(db),
        "TEAMBOT_MAX_RETRIES": "1",
        **dict(extra_env),
    }


def console_env(fake: FakeOpenAI, db: Path, *extra_env: tuple[str, str]) -> dict[str, str]:
    return env_at(fake.base_url, db, ("OPENAI_API_KEY", "sk-console-test-key"), *extra_env)


async def start(fake: FakeOpenAI, db: Path, *extra_env: tuple[str, str]) -> Console:
    return await start_at(fake.base_url, db, ("OPENAI_API_KEY", "sk-console-test-key"), *extra_env)


async def start_at(base_url: str, db: Path, *extra_env: tuple[str, str]) -> Console:
    """``teambot console`` on ``db``, talking to the model server at ``base_url``; returns at its first prompt."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "console",
        "--name",
        "Ada",
        cwd=db.parent,
        env=env_at(base_url, db, *extra_env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    console = Console(proc)
    console.banner = await console.until_prompt()
    assert "console:local" in console.banner and base_url in console.banner
    return console


async def test_a_conversation_survives_a_restart_and_reset_forgets_it(fake: FakeOpenAI, tmp_path: Path) -> None:
    db = tmp_path / "teambot.db"
    console = await start(fake, db)
    assert await console.say("my name is Ada and I like teal") == "teambot> echo: Ada: my name is Ada and I like teal\n"
    assert (await console.close())[0] == 0

    console = await start(fake, db)  # a new process: only the database remembers
    await console.say("what colour do I like?")
    sent = [m["content"] for m in fake.requests[-1]["messages"] if m["role"] != "system"]
    assert sent == [
        "Ada: my name is Ada and I like teal",
        "echo: Ada: my name is Ada and I like teal",
        "Ada: what colour do I like?",
    ]
    assert (
        await console.say("/reset")
        == "teambot> Forgot 4 messages of this conversation. The next message starts fresh.\n"
    )
    await console.say("hello again")
    assert [m["content"] for m in fake.requests[-1]["messages"] if m["role"] == "user"] == ["Ada: hello again"]
    assert console.proc.stdin is not None
    console.proc.stdin.write(b"/exit\n")
    code = await asyncio.wait_for(console.proc.wait(), 20)  # /exit ends it while stdin is still open
    assert console.proc.stderr is not None
    stderr = (await console.proc.stderr.read()).decode()
    assert code == 0 and "Traceback" not in stderr
    assert fake.headers[-1]["Authorization"] == "Bearer sk-console-test-key"


async def test_one_long_answer_does_not_erase_the_conversation_before_it(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.chunk_delay = 0.0
    console = await start(fake, tmp_path / "t.db", ("TEAMBOT_HISTORY_TOKENS", "2000"))
    await console.say("my name is Ada and I like teal")
    essay = await console.say("write me an essay [[long:50000]]")
    assert essay.startswith("teambot> Paragraph 1: ") and len(essay) > 50_000
    out = await console.say("what did the first paragraph say?")
    # The model gets the essay's beginning, cut to fit the budget, rather than no history at all.
    sent = fake.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "assistant", "user"]
    assert sent[1]["content"].startswith("Paragraph 1: lorem ipsum") and sent[1]["content"].endswith(" […]")
    # And the person is told, in one line under the answer.
    assert out == "teambot> echo: Ada: what did the first paragraph say?\nteambot> " + texts.HISTORY_CUT + "\n"
    code, stderr = await console.close()
    assert code == 0 and "Traceback" not in stderr


async def test_a_first_answer_without_a_key_from_the_fake_model_the_readme_names(tmp_path: Path) -> None:
    # README: `python -m tests.fakes.openai` in a checkout, then the line it prints, in another terminal.
    fake = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.openai",
        "--port",
        "0",
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert fake.stdout is not None and fake.stderr is not None
    try:
        printed = b""
        async with asyncio.timeout(20):
            while b"OPENAI_BASE_URL=" not in printed:
                line = await fake.stdout.readline()
                assert line, (await fake.stderr.read()).decode()
                printed += line
        found = re.search(
            r"^  OPENAI_BASE_URL=(http://127\.0\.0\.1:\d+/v1) \.venv/bin/teambot console$", printed.decode(), re.M
        )
        assert found, printed.decode()
        console = await start_at(found.group(1), tmp_path / "teambot.db")  # no OPENAI_API_KEY at all
        assert await console.say("hello") == "teambot> echo: Ada: hello\n"
        code, stderr = await console.close()
        assert code == 0 and "Traceback" not in stderr
    finally:
        fake.send_signal(signal.SIGINT)  # Ctrl-C in its terminal
        await asyncio.wait_for(fake.wait(), 20)
    assert fake.returncode == 0 and b"Traceback" not in await fake.stderr.read()


async def test_model_errors_reach_the_user_without_a_traceback(fake: FakeOpenAI, tmp_path: Path) -> None:
    console = await start(fake, tmp_path / "t.db")
    assert await console.say("[[quota]] hi") == (
        "teambot> The AI service's quota or credit is used up; an admin must check the provider account.\n"
    )
    out = await console.say("[[cut]] tell me a story about a lighthouse keeper")
    assert out.startswith("teambot> echo: Ada: [[cut]]") and "The answer was cut off" in out
    assert "Unknown command" in await console.say("/nope")
    code, stderr = await console.close()
    assert code == 0 and "Traceback" not in stderr
    assert "sk-console-test-key" not in stderr + console.transcript.decode()


async def test_a_wrong_key_is_explained(fake: FakeOpenAI, tmp_path: Path) -> None:
    console = await start(fake, tmp_path / "t.db", ("OPENAI_API_KEY", "sk-wrong-key-0000000"))
    assert await console.say("hi") == "teambot> The API key was rejected; an admin must check OPENAI_API_KEY.\n"
    code, stderr = await console.close()
    assert code == 0 and "sk-wrong-key-0000000" not in stderr


async def test_usage_system_and_model_in_the_console(fake: FakeOpenAI, tmp_path: Path) -> None:
    console = await start(fake, tmp_path / "t.db", ("TEAMBOT_MODELS", "other-model"))
    await console.say("hello")
    usage = await console.say("/usage")
    assert "• This console: today" in usage
    assert (
        await console.say("/system Reply in haiku.")
        == "teambot> Done: this conversation now uses the new system prompt.\n"
    )
    assert await console.say("/model other-model") == "teambot> Done: this conversation now uses other-model.\n"
    await console.say("and now?")
    assert fake.requests[-1]["model"] == "other-model"
    assert fake.requests[-1]["messages"][0]["content"].startswith("Reply in haiku.")
    code, stderr = await console.close()
    assert code == 0 and "Traceback" not in stderr


async def test_stdin_from_dev_null_ends_the_console_cleanly(fake: FakeOpenAI, tmp_path: Path) -> None:
    # `teambot console < /dev/null` (a cron job, a CI step): end of input at once, not a hang or a traceback.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "console",
        cwd=tmp_path,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "sk-console-test-key",
            "TEAMBOT_DB": str(tmp_path / "teambot.db"),
        },
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and b"Traceback" not in stderr, stderr.decode()


async def test_the_banner_names_a_postgresql_database_without_its_password(
    fake: FakeOpenAI, tmp_path: Path, postgres_url: str
) -> None:
    # The test server trusts loopback, so it accepts the URL whatever password it carries.
    url = postgres_url.replace("teambot@", "teambot:pw-console-never-shown@")
    console = await start(fake, tmp_path / "unused.db", ("TEAMBOT_DB", url))
    banner = console.transcript.decode()
    assert url.rsplit("@", 1)[1] in banner  # host, port and database name: where the history is kept
    assert "pw-console-never-shown" not in banner
    assert await console.say("hello") == "teambot> echo: Ada: hello\n"
    code, stderr = await console.close()
    assert code == 0 and "pw-console-never-shown" not in stderr + console.transcript.decode()


async def test_a_reply_held_open_by_keep_alives_is_cut_at_the_call_cap(fake: FakeOpenAI, tmp_path: Path) -> None:
    # The server sends one piece of text, then only comment lines: the cap on the whole call ends it (the read
    # timeout of 30 s never would), the text so far is kept, and the conversation answers the next question.
    console = await start(
        fake,
        tmp_path / "t.db",
        ("TEAMBOT_MAX_CALL_SECONDS", "1.5"),
        ("TEAMBOT_REQUEST_DEADLINE", "1"),
        ("TEAMBOT_REQUEST_TIMEOUT", "30"),
    )
    started = time.monotonic()
    out = await console.say("[[keepalive]] tell me everything about the sea")
    assert time.monotonic() - started < 6
    assert out.startswith("teambot> echo: ") and "The answer was cut off" in out
    assert await console.say("and now?") == "teambot> echo: Ada: and now?\n"
    code, stderr = await console.close()
    assert code == 0 and "Traceback" not in stderr


# --- The console as a terminal program --------------------------------------------------------------------------

#: Make the pty the child's controlling terminal (so Ctrl-C typed into it is a SIGINT, as in a terminal window),
#: then become ``python -m bot ...``.
_ON_TTY = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
PASTE_START, PASTE_END = b"\x1b[200~", b"\x1b[201~"
LEFT, UP = b"\x1b[D", b"\x1b[A"


class Terminal:
    """``teambot console`` on a pseudo-terminal, as a person sees it in a terminal window: typed keys (Enter is
    ``\\r``, Ctrl-C is ``\\x03``) go in, and everything it prints (with the terminal's echo) comes out."""

    def __init__(self, proc: asyncio.subprocess.Process, master: int) -> None:
        self.proc = proc
        self.master = master
        self.banner = b""
        self.pending = b""
        self.closed = False
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 1 << 16)
        except OSError:  # EIO: the child closed its side
            data = b""
        if not data:
            self.closed = True
            asyncio.get_running_loop().remove_reader(self.master)
        self.pending += data
        self._changed.set()

    async def expect(self, pattern: bytes, seconds: float = 20) -> bytes:
        """Everything printed up to and including ``pattern``; what comes after stays for the next call."""
        async with asyncio.timeout(seconds):
            while (index := self.pending.find(pattern)) < 0:
                assert not self.closed, f"the console ended without printing {pattern!r}: {self.pending!r}"
                self._changed.clear()
                await self._changed.wait()
        end = index + len(pattern)
        out, self.pending = self.pending[:end], self.pending[end:]
        return out

    async def type(self, keys: bytes) -> None:
        # A blocking write in a thread: the pty takes a few KiB at a time, as fast as the console reads them.
        def write() -> None:
            view = memoryview(keys)
            while view:
                view = view[os.write(self.master, view[:1024]) :]

        await asyncio.to_thread(write)

    async def ctrl_c_at_the_prompt(self) -> None:
        """Press Ctrl-C at the prompt, until the console shows that it saw it.

        CPython's readline misses a SIGINT that lands between printing the prompt and waiting for a key (no person
        is that quick, but a test right after the prompt on a busy machine can be); a missed one prints nothing at
        all, so pressing it again is safe: the console then sees one Ctrl-C, not two."""
        for _ in range(5):
            before = len(self.pending)
            await self.type(b"\x03")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    while len(self.pending) == before and not self.closed:
                        self._changed.clear()
                        await self._changed.wait()
            if len(self.pending) > before or self.closed:
                return
        raise AssertionError("the console never showed that it saw Ctrl-C at the prompt")

    async def close(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), 20)
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
        return code


async def open_terminal(fake: FakeOpenAI, db: Path, *extra_env: tuple[str, str]) -> Terminal:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = console_env(fake, db, ("TERM", "xterm-256color"), ("LC_ALL", "C.UTF-8"), ("HOME", str(db.parent)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ON_TTY,
        "-m",
        "bot",
        "console",
        "--name",
        "Ada",
        cwd=db.parent,
        env=env | dict(extra_env),
        stdin=slave,
        stdout=slave,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    os.close(slave)
    terminal = Terminal(proc, master)
    terminal.banner = await terminal.expect(b"console:local")
    terminal.banner += await terminal.expect(PROMPT)
    return terminal


def asked(fake: FakeOpenAI) -> str:
    """The newest question the model was asked."""
    return str(fake.requests[-1]["messages"][-1]["content"])


async def test_a_terminal_edits_lines_with_readline_and_keeps_their_history(fake: FakeOpenAI, tmp_path: Path) -> None:
    db = tmp_path / "teambot.db"
    term = await open_terminal(fake, db)
    await term.type(b"hello wrld" + LEFT * 3 + b"o\r")  # a typo mended with the arrow keys, as in any shell
    await term.expect(b"echo: Ada: hello world")
    await term.expect(PROMPT)
    assert asked(fake) == "Ada: hello world"
    await term.type(b"\x04")  # Ctrl-D
    assert await term.close() == 0

    history = tmp_path / "teambot.history"  # beside the database, private like a shell's history
    assert "hello world" in history.read_text().splitlines() and history.stat().st_mode & 0o077 == 0
    term = await open_terminal(fake, db)  # a new session: the arrow up brings the question back
    await term.type(UP + b"\r")
    await term.expect(PROMPT)
    assert asked(fake) == "Ada: hello world" and len(fake.requests) == 2
    await term.type(b"\x04")  # Ctrl-D
    assert await term.close() == 0


async def test_a_pasted_block_is_one_question_and_a_long_paste_is_not_cut(fake: FakeOpenAI, tmp_path: Path) -> None:
    # Room for the whole paste in one message, so that only the terminal could cut it.
    term = await open_terminal(fake, tmp_path / "teambot.db", ("TEAMBOT_HISTORY_TOKENS", "100000"))
    # Terminals send a paste between these markers (bracketed paste) once the program asks for it, with \r for
    # each newline; Enter after it sends the whole block.
    assert b"\x1b[?2004h" + PROMPT in term.banner  # asked for
    await term.type(PASTE_START + b"line one\rline two\rline three" + PASTE_END + b"\r")
    await term.expect(b"echo: Ada: line one\r\nline two\r\nline three")
    await term.expect(PROMPT)
    assert asked(fake) == "Ada: line one\nline two\nline three" and len(fake.requests) == 1

    # 20,000 characters: the kernel's canonical line buffer would keep 4,095 of them.
    paragraphs = [f"paragraph {i}: " + "lorem ipsum dolor sit amet " * 37 for i in range(20)]
    pasted = "\n".join(paragraphs)
    assert len(pasted) > 20_000
    await term.type(PASTE_START + pasted.replace("\n", "\r").encode() + PASTE_END + b"\r")
    await term.expect(b"paragraph 19", seconds=60)
    await term.expect(PROMPT, seconds=60)
    assert asked(fake) == f"Ada: {pasted}" and len(fake.requests) == 2

    typed = "x" * 6_000  # typed (or pasted by a terminal without bracketed paste) as one long line
    await term.type(typed.encode() + b"\r")
    await term.expect(PROMPT, seconds=60)
    assert asked(fake) == f"Ada: {typed}"
    await term.type(b"/exit\r")
    assert await term.close() == 0


async def test_a_block_between_triple_quotes_is_one_question(fake: FakeOpenAI, tmp_path: Path) -> None:
    console = await start(fake, tmp_path / "teambot.db")
    assert console.proc.stdin is not None
    console.proc.stdin.write(b'"""\ndef f():\n    return 1\n"""\n')
    out = await console.until_prompt()
    assert asked(fake) == "Ada: def f():\n    return 1" and len(fake.requests) == 1
    assert out == "...> ...> ...> teambot> echo: Ada: def f():\n    return 1\n"
    assert (await console.close())[0] == 0


async def test_invalid_utf8_from_a_file_is_answered_as_from_a_pipe(fake: FakeOpenAI, tmp_path: Path) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_bytes(b"caf\xe9 au lait\nand tea\n")  # Latin-1, not UTF-8
    env = console_env(fake, tmp_path / "teambot.db")
    with questions.open("rb") as stdin:  # teambot console < questions.txt
        from_file = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "console", "--name", "Ada", cwd=tmp_path, env=env, stdin=stdin,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        file_out, file_err = await asyncio.wait_for(from_file.communicate(), 30)
    assert from_file.returncode == 0 and b"Traceback" not in file_err, file_err.decode()
    by_file = [asked_at(fake, i) for i in range(len(fake.requests))]

    piped = await asyncio.create_subprocess_exec(  # cat questions.txt | teambot console
        sys.executable, "-m", "bot", "console", "--name", "Ada", cwd=tmp_path,
        env=console_env(fake, tmp_path / "other.db"), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    pipe_out, pipe_err = await asyncio.wait_for(piped.communicate(questions.read_bytes()), 30)
    assert piped.returncode == 0, pipe_err.decode()
    by_pipe = [asked_at(fake, i) for i in range(len(by_file), len(fake.requests))]
    assert by_file == by_pipe == ["Ada: caf\ufffd au lait", "Ada: and tea"]
    assert file_out.split(b"\n", 3)[3:] == pipe_out.split(b"\n", 3)[3:]  # the same answers, after the banners


def asked_at(fake: FakeOpenAI, index: int) -> str:
    return str(fake.requests[index]["messages"][-1]["content"])


async def test_ctrl_c_stops_the_answer_not_the_session(tmp_path: Path) -> None:
    async with FakeOpenAI(api_key="sk-console-test-key", chunk_delay=0.001) as fake:
        console = await start(fake, tmp_path / "teambot.db")
        await console.say("my name is Ada")
        assert console.proc.stdin is not None
        console.proc.stdin.write(b"[[slow:30]] tell me a long story\n")
        await fake.wait_for_requests(2, timeout=20)
        console.proc.send_signal(signal.SIGINT)  # Ctrl-C while the model has not answered yet
        assert "Stopped. That question is not kept" in await console.until_prompt()
        assert console.proc.returncode is None

        assert await console.say("what is my name?") == "teambot> echo: Ada: what is my name?\n"
        roles = [m["role"] for m in fake.requests[-1]["messages"]]
        assert roles == ["system", "user", "assistant", "user"]  # the stopped question left nothing behind
        assert "long story" not in str(fake.requests[-1]["messages"])

        console.proc.send_signal(signal.SIGINT)  # at the prompt: a hint
        assert "Ctrl-C again quits" in await console.until_prompt()
        console.proc.send_signal(signal.SIGINT)  # and a second one quits
        code = await asyncio.wait_for(console.proc.wait(), 20)
        assert console.proc.stderr is not None
        assert code == 0 and "Traceback" not in (await console.proc.stderr.read()).decode()


async def test_a_terminal_shows_thinking_and_ctrl_c_twice_quits(tmp_path: Path) -> None:
    async with FakeOpenAI(api_key="sk-console-test-key", chunk_delay=0.001) as fake:
        term = await open_terminal(fake, tmp_path / "teambot.db")
        await term.type(b"[[slow:1]] hi\r")
        await term.expect("teambot> thinking…".encode())  # while waiting for the first word
        answer = await term.expect(PROMPT)
        assert b"\r\x1b[Kteambot> echo: Ada: [[slow:1]] hi" in answer  # the indicator gives way to the answer

        await term.type(b"[[slow:30]] and a long story\r")
        await fake.wait_for_requests(2, timeout=20)
        await term.type(b"\x03")  # Ctrl-C on the keyboard
        assert b"Stopped." in await term.expect(PROMPT)
        await term.ctrl_c_at_the_prompt()  # right after a stop, one more quits
        assert await term.close() == 0
        assert term.proc.stderr is not None
        assert b"Traceback" not in await term.proc.stderr.read()


async def test_logs_go_to_a_file_not_into_the_chat(fake: FakeOpenAI, tmp_path: Path) -> None:
    console = await start(fake, tmp_path / "teambot.db")
    log_file = tmp_path / "teambot.log"  # beside the database
    assert f"the log goes to {log_file}" in console.banner
    # A retried 500 logs a warning: it goes to the log file, not between the question and the answer.
    assert await console.say("[[500x1]] hi") == "teambot> echo: Ada: [[500x1]] hi\n"
    code, stderr = await console.close()
    assert code == 0 and stderr == ""
    assert "WARNING" in log_file.read_text()

    elsewhere = tmp_path / "logs" / "console.log"
    elsewhere.parent.mkdir()
    console = await start(fake, tmp_path / "teambot.db", ("TEAMBOT_LOG_FILE", str(elsewhere)))
    assert f"the log goes to {elsewhere}" in console.banner
    await console.say("[[500x1]] again")
    code, stderr = await console.close()
    assert code == 0 and stderr == "" and "WARNING" in elsewhere.read_text()


async def test_debug_logs_go_to_stderr_in_any_case(fake: FakeOpenAI, tmp_path: Path) -> None:
    console = await start(fake, tmp_path / "teambot.db", ("TEAMBOT_LOG_LEVEL", "debug"))
    assert "the log goes to stderr" in console.banner
    await console.say("hi")
    code, stderr = await console.close()
    assert code == 0 and " DEBUG " in stderr and "prompt for console:local" in stderr
    assert not (tmp_path / "teambot.log").exists()


async def test_a_failure_is_one_sentence_from_the_bot(fake: FakeOpenAI, tmp_path: Path) -> None:
    db = tmp_path / "teambot.db"
    console = await start(fake, db)
    await console.say("hi")
    with sqlite3.connect(db) as broken:  # something outside the bot breaks its database
        broken.execute("DROP TABLE messages")
    out = await console.say("still there?")
    log_file = tmp_path / "teambot.log"
    apology = (
        f"teambot> Sorry, something went wrong on my side while answering; the details are in the log ({log_file}).\n"
    )
    assert out == apology
    assert await console.say("/reset") == apology  # a command too
    assert "Unknown command" in await console.say("/nope")  # the session goes on
    code, stderr = await console.close()
    assert code == 0 and stderr == ""
    assert "Traceback" in log_file.read_text()


async def test_console_wording(fake: FakeOpenAI, tmp_path: Path) -> None:
    db = tmp_path / "teambot.db"
    console = await start(fake, db)
    assert "Resuming" not in console.banner
    await console.say("hello")
    usage = await console.say("/usage")
    # Plain text, not Slack's mrkdwn, and the console's one conversation once, not as channel, user and workspace.
    assert usage.startswith("teambot> Usage (cost is an estimate")
    assert "*" not in usage and usage.count("today") == 1 and "channel" not in usage
    refused = await console.say("/model gpt-9")
    assert "TEAMBOT_MODELS" in refused and refused.startswith("teambot> gpt-9 is not on the list of allowed models")
    assert (await console.close())[0] == 0

    console = await start(fake, db)
    assert "Resuming the earlier conversation (2 messages); /reset forgets it." in console.banner
    reset = await console.say("/reset")
    assert reset == "teambot> Forgot 2 messages of this conversation. The next message starts fresh.\n"
    assert "mention" not in reset
    assert (await console.close())[0] == 0


async def test_a_log_file_that_cannot_be_written_is_one_line(fake: FakeOpenAI, tmp_path: Path) -> None:
    env = console_env(fake, tmp_path / "teambot.db", ("TEAMBOT_LOG_FILE", str(tmp_path / "missing" / "x.log")))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "console", cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert stderr.decode().splitlines() == [
        f"teambot: TEAMBOT_LOG_FILE names {str(tmp_path / 'missing' / 'x.log')!r}, which cannot be written: "
        "No such file or directory"
    ]


async def test_a_reply_that_is_not_valid_unicode_is_printed_anyway(tmp_path: Path) -> None:
    # A lone surrogate is valid JSON ("\ud800") but no encoding can write it: it is shown as "?", not a crash.
    async with FakeOpenAI(api_key="sk-console-test-key", reply=lambda messages: "odd \ud800 text") as fake:
        console = await start(fake, tmp_path / "teambot.db")
        # It is stored as "?" too (bot.conversation), so the console says nothing more about it.
        assert (await console.say("hi")) == "teambot> odd ? text\n"
        code, stderr = await console.close()
        assert code == 0 and stderr == ""
