"""``teambot run`` as a process: health, readiness and metrics, log context, SIGTERM drain, SIGKILL and restart."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from bot import texts
from tests.bot_process import free_port, scrape, spawn_bot, start_bot
from tests.fakes.discord import BOT_ID, BOT_USER, CHANNEL_ID, FakeDiscord
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack, event_envelope, mention


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeOpenAI, FakeSlack, httpx.AsyncClient]]:
    slack_users = {"U1": {"display_name": "Ada"}}
    async with FakeOpenAI() as fake, FakeSlack(users=slack_users) as slack, httpx.AsyncClient() as http:
        yield fake, slack, http


#: A log line as cli.py formats it: time, level, logger, [turn], message.
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ (?P<level>[A-Z]+) (?P<logger>\S+) \[(?P<turn>[^\]]*)\] (?P<text>.*)")


def _turn_lines(stderr: list[str]) -> list[re.Match[str]]:
    """The lines logged while turns ran: from the first line of a turn until the process is told to stop, the
    lines of our own loggers and of every Slack call that posts or edits a reply."""
    lines = [m for line in stderr if (m := _LOG_LINE.match(line))]
    first = next(i for i, m in enumerate(lines) if m["turn"] != "-")
    stop = next(i for i, m in enumerate(lines) if m["text"].startswith("stopping:"))
    ours = ("bot.", "adapters.")
    return [
        m
        for m in lines[first:stop]
        if m["logger"].startswith(ours) or (m["logger"].startswith("slack_sdk.") and "/api/chat." in m["text"])
    ]


async def test_health_readiness_metrics_and_log_context(fakes, tmp_path: Path) -> None:
    fake, slack, http = fakes
    env = {
        "TEAMBOT_LOG_LEVEL": "DEBUG",
        "OPENAI_MODEL": "fake-model",
        "TEAMBOT_MAX_RETRIES": "0",  # one failed call is one error, at once
        "TEAMBOT_PRICES": json.dumps({"fake-model": [1000.0, 2000.0]}),  # dollars per million tokens in, out
    }
    bot = await start_bot(fake, slack, tmp_path / "teambot.db", http, env=env)
    try:
        # /healthz answers once the server is up; /readyz waits for Slack's auth.test too, which a loaded machine
        # can answer a moment later.
        async with asyncio.timeout(15):
            while (ready := await http.get(f"{bot.url}/readyz")).status_code != 200:  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.05)
        assert ready.json() == {"database": True, "slack": True}
        await bot.send(http, event_envelope(mention("<@UBOT> count me", ts="1.1")))
        await slack.wait_for(lambda: bool(slack.posted) and slack.posted[0].text == "echo: Ada: count me", 15)
        answered = ("teambot_replies_total", (("kind", "answer"), ("platform", "slack")))
        async with asyncio.timeout(10):  # the text streams out before the turn has finished its bookkeeping
            while answered not in (samples := await scrape(http, bot.url)):  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.05)
        assert samples[("teambot_mentions_total", (("platform", "slack"),))] == 1
        assert samples[("teambot_replies_total", (("kind", "answer"), ("platform", "slack")))] == 1
        assert samples[("teambot_model_latency_seconds_count", ())] == 1
        assert samples[("teambot_time_to_first_token_seconds_count", ())] == 1
        assert samples[("teambot_tokens_total", (("direction", "completion"),))] > 0
        assert samples[("teambot_queue_depth", ())] == 0
        prompt = samples[("teambot_tokens_total", (("direction", "prompt"),))]
        completion = samples[("teambot_tokens_total", (("direction", "completion"),))]
        assert samples[("teambot_cost_usd_total", ())] == pytest.approx((prompt * 1000 + completion * 2000) / 1e6)
        assert ("teambot_model_errors_total", (("kind", "ServiceUnavailable"),)) not in samples
        # The reply is done: streamed (ended by chat.stopStream) or, whole before its first flush, one post.
        await slack.wait_for(lambda: bool(slack.calls_to("chat.postMessage") or slack.calls_to("chat.stopStream")), 15)
        await bot.send(http, event_envelope(mention("<@UBOT> [[500]] fail once", ts="1.0")))
        await slack.wait_for(lambda: any(p.text.startswith(texts.UNAVAILABLE[:20]) for p in slack.posted), 15)
        failed = ("teambot_model_errors_total", (("kind", "ServiceUnavailable"),))
        async with asyncio.timeout(10):
            while failed not in (samples := await scrape(http, bot.url)):  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.05)
        assert samples[failed] == 1
        assert samples[("teambot_tokens_total", (("direction", "prompt"),))] == prompt  # a failed call costs nothing
        # A third turn whose reply and apology Slack refuses: the failure is logged outside core.handle.
        for method in ("chat.startStream", "chat.postMessage"):
            slack.refuse(method, "channel_not_found")
        await bot.send(http, event_envelope(mention("<@UBOT> fail me", ts="1.2")))
        await slack.wait_for(lambda: len(slack.calls_to("chat.postMessage")) >= 2, 15)  # the reply, the apology
        async with asyncio.timeout(10):
            while not any("could not post the apology" in line for line in bot.stderr):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        bot.proc.send_signal(signal.SIGTERM)
        assert await bot.wait() == 0
    lines = _turn_lines(bot.stderr)
    turns = {f"slack:T1:C1 slack:T1:C1:{ts}" for ts in ("1.1", "1.0", "1.2")}
    missing = [m.group(0) for m in lines if m["turn"] not in turns]
    assert not missing, "\n".join(missing)
    assert {m["turn"] for m in lines} == turns
    logged = [m["text"] for m in lines]
    for expected in ("prompt for", "answered slack:T1:C1:1.1", "answering slack:T1:C1:1.2"):
        assert any(expected in text for text in logged), expected
    assert any("/api/chat.postMessage" in text or "/api/chat.stopStream" in text for text in logged)
    # Start-up's objects are frozen out of the cyclic collector's walk once the adapters are up, before any turn.
    parsed = [m for line in bot.stderr if (m := _LOG_LINE.match(line))]
    settled = next(i for i, m in enumerate(parsed) if m["logger"] == "bot.heap")
    assert int(re.findall(r"\d+", parsed[settled]["text"])[0]) > 10_000
    assert settled < next(i for i, m in enumerate(parsed) if m["turn"] != "-")


async def test_ops_endpoints_can_be_kept_off_the_public_port(fakes, tmp_path: Path) -> None:
    fake, slack, http = fakes
    ops_port = free_port()
    env = {"TEAMBOT_OPS_HOST": "127.0.0.1", "TEAMBOT_OPS_PORT": str(ops_port)}
    bot = await start_bot(fake, slack, tmp_path / "teambot.db", http, env=env)
    ops = f"http://127.0.0.1:{ops_port}"
    try:
        # The public port (the one Slack, and so anyone, reaches) serves Slack's events and /healthz only.
        for path in ("/metrics", "/readyz"):
            assert (await http.get(f"{bot.url}{path}")).status_code == 404, path
        assert (await http.get(f"{bot.url}/healthz")).status_code == 200
        ready = await http.get(f"{ops}/readyz")
        assert ready.status_code == 200 and ready.json() == {"database": True, "slack": True}
        assert (await http.get(f"{ops}/healthz")).status_code == 200
        assert (await http.post(f"{ops}/slack/events", content="{}")).status_code in (404, 405)
        await bot.send(http, event_envelope(mention("<@UBOT> still answered", ts="1.1")))
        await slack.wait_for(lambda: any(p.text == "echo: Ada: still answered" for p in slack.posted), 15)
        mentions = ("teambot_mentions_total", (("platform", "slack"),))
        async with asyncio.timeout(10):
            while mentions not in (samples := await scrape(http, ops)):  # noqa: ASYNC110 - another process
                await asyncio.sleep(0.05)
        assert samples[mentions] == 1
    finally:
        bot.proc.send_signal(signal.SIGTERM)
        assert await bot.wait() == 0


async def test_a_port_in_use_is_one_line_naming_it(fakes, tmp_path: Path) -> None:
    fake, slack, _ = fakes
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"TEAMBOT_OPS_HOST": "127.0.0.1", "TEAMBOT_OPS_PORT": str(port)}
        proc = await spawn_bot(fake, slack, tmp_path / "teambot.db", env=env)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert f"teambot: cannot listen on 127.0.0.1:{port}" in stderr.decode()
    assert "Traceback" not in stderr.decode()


async def test_sigterm_lets_the_reply_in_progress_finish(fakes, tmp_path: Path) -> None:
    fake, slack, http = fakes
    fake.chunk_delay = 0.05
    words = " ".join(f"w{i}" for i in range(40))  # about two seconds of streaming
    bot = await start_bot(fake, slack, tmp_path / "teambot.db", http)
    await bot.send(http, event_envelope(mention(f"<@UBOT> {words}", ts="1.1")))
    await slack.wait_for(lambda: bool(slack.posted), 15)  # the reply has started streaming
    bot.proc.send_signal(signal.SIGTERM)
    assert await bot.wait() == 0
    assert slack.posted[0].text == f"echo: Ada: {words}"  # finished, not cut off
    assert any("letting replies in progress finish" in line for line in bot.stderr)


@pytest.mark.parametrize("native", [True, False], ids=["native-stream", "post-and-edit"])
async def test_sigterm_past_the_drain_deadline_marks_the_reply_cut_off_and_frees_the_question(
    fakes, tmp_path: Path, native: bool
) -> None:
    fake, slack, http = fakes
    fake.chunk_delay = 0.2
    words = " ".join(f"w{i}" for i in range(50))  # about ten seconds of streaming, far past the deadline
    db = tmp_path / "teambot.db"
    env = {"TEAMBOT_DRAIN_SECONDS": "0.5", "TEAMBOT_SLACK_NATIVE_STREAMING": str(native).lower()}
    envelope = event_envelope(mention(f"<@UBOT> {words}", ts="1.1"), event_id="Ev1")
    bot = await start_bot(fake, slack, db, http, env=env)
    await bot.send(http, envelope)
    await slack.wait_for(lambda: bool(slack.posted), 15)
    started = time.monotonic()
    bot.proc.send_signal(signal.SIGTERM)
    assert await bot.wait() == 0
    assert time.monotonic() - started < 0.5 + 3.0  # the deadline, plus marking the reply and closing down
    assert fake.calls == 1
    [reply] = slack.posted
    # What the person sees: the text that had streamed, then the mark, and no message left "still writing".
    assert reply.text.startswith("echo: Ada: w0") and reply.text != f"echo: Ada: {words}"
    assert reply.text.endswith(texts.STOPPING + "]_"), reply.text
    if native:
        assert not reply.streaming and texts.STOPPING in slack.calls_to("chat.stopStream")[-1]["markdown_text"]
    else:
        assert texts.STOPPING in slack.calls_to("chat.update")[-1]["text"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = conn.execute("SELECT role, platform_message_id FROM messages ORDER BY id").fetchall()
        handled = conn.execute("SELECT count(*) FROM handled_messages").fetchone()
        ledger = conn.execute("SELECT prompt_tokens, completion_tokens, exact FROM usage").fetchall()
    # The question is released, not left handled and unanswered; what the model generated is charged.
    assert rows == [] and handled == (0,)
    [(prompt, completion, exact)] = ledger
    assert prompt > 0 and completion > 0 and exact == 0

    # After the restart the question is answered when it comes again (a platform's redelivery, or re-sent).
    fake.chunk_delay = 0.0
    bot = await start_bot(fake, slack, db, http, env=env)
    try:
        await bot.send(http, envelope)
        await slack.wait_for(lambda: any(p.text == f"echo: Ada: {words}" for p in slack.posted), 15)
    finally:
        bot.proc.send_signal(signal.SIGTERM)
        assert await bot.wait() == 0
    assert fake.calls == 2
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT role, platform_message_id FROM messages ORDER BY id").fetchall()
    assert rows == [("user", "slack:T1:C1:1.1"), ("assistant", None)]


async def test_sigkill_mid_reply_then_restart_is_consistent(fakes, tmp_path: Path) -> None:
    fake, slack, http = fakes
    fake.chunk_delay = 0.1
    db = tmp_path / "teambot.db"
    envelope = event_envelope(mention("<@UBOT> " + " ".join(f"w{i}" for i in range(50)), ts="1.1"), event_id="Ev1")
    bot = await start_bot(fake, slack, db, http)
    await bot.send(http, envelope)
    await slack.wait_for(lambda: bool(slack.posted), 15)
    bot.proc.kill()
    assert await bot.wait() == -signal.SIGKILL

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    fake.chunk_delay = 0.0
    bot = await start_bot(fake, slack, db, http)
    try:
        await bot.send(http, envelope)  # Slack redelivers the event the dead process never finished
        await bot.send(http, event_envelope(mention("<@UBOT> still there?", ts="1.2")))
        await slack.wait_for(lambda: any(p.text == "echo: Ada: still there?" for p in slack.posted), 15)
    finally:
        bot.proc.send_signal(signal.SIGTERM)
        assert await bot.wait() == 0
    assert fake.calls == 2  # the redelivery was not answered a second time
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT role, platform_message_id FROM messages ORDER BY id").fetchall()
    assert rows == [("user", "slack:T1:C1:1.1"), ("user", "slack:T1:C1:1.2"), ("assistant", None)]


async def test_readiness_fails_while_the_database_does_not_answer(fakes, tmp_path: Path, postgres_url: str) -> None:
    fake, slack, http = fakes
    database = postgres_url.rsplit("/", 1)[1]
    bot = await start_bot(fake, slack, postgres_url, http, cwd=tmp_path)
    admin = await asyncpg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres")
    try:
        assert (await http.get(f"{bot.url}/readyz")).status_code == 200
        # The database goes away under the running bot: its connections are cut and no new one is let in.
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database)
        down = await http.get(f"{bot.url}/readyz", timeout=30)
        assert down.status_code == 503, "".join(bot.stderr)
        assert down.json() == {"database": False, "slack": True}
        assert (await http.get(f"{bot.url}/healthz")).status_code == 200  # the process itself is still up
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        assert (await http.get(f"{bot.url}/readyz", timeout=30)).status_code == 200
    finally:
        await admin.close()
        bot.proc.send_signal(signal.SIGTERM)
        await bot.wait()


async def test_readiness_fails_while_the_database_refuses_writes(fakes, tmp_path: Path) -> None:
    fake, slack, http = fakes
    db = tmp_path / "teambot.db"
    bot = await start_bot(fake, slack, db, http)
    try:
        assert (await http.get(f"{bot.url}/readyz")).status_code == 200
        # The file still answers every read, but no longer takes the write each turn begins with. (A trigger binds
        # root too, unlike a file's permissions; the tests may run as root.)
        with sqlite3.connect(db) as conn:
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON handled_messages BEGIN SELECT RAISE(FAIL, 'disk full'); END"
            )
        down = await http.get(f"{bot.url}/readyz")
        assert down.status_code == 503 and down.json() == {"database": False, "slack": True}
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TRIGGER refuse")
            assert conn.execute("SELECT count(*) FROM handled_messages").fetchone() == (0,)  # probes keep nothing
        assert (await http.get(f"{bot.url}/readyz")).status_code == 200
    finally:
        bot.proc.send_signal(signal.SIGTERM)
        assert await bot.wait() == 0


#: Socket Mode on the fake: an app-level token (the fake takes any), the signing secret left to no use.
_SOCKET_MODE = {"SLACK_APP_TOKEN": "xapp-1-A1-1-app-token-never-shown"}


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/api/"


def _not_log_lines(stderr: list[str]) -> list[str]:
    """Lines that are not one whole log line each: tracebacks, or a library's own print."""
    return [line for line in stderr if not _LOG_LINE.match(line)]


@pytest.mark.parametrize(
    ("state", "sig"),
    [
        ("connecting", signal.SIGTERM),
        ("retrying", signal.SIGTERM),
        ("retrying", signal.SIGINT),
        ("connected", signal.SIGTERM),
    ],
    ids=["connecting-SIGTERM", "retrying-SIGTERM", "retrying-Ctrl-C", "connected-SIGTERM"],
)
async def test_socket_mode_stops_when_told_in_every_state(
    fakes, tmp_path: Path, state: str, sig: signal.Signals
) -> None:
    fake, slack, http = fakes
    env = _SOCKET_MODE | {"TEAMBOT_DRAIN_SECONDS": "1"}
    if state == "retrying":
        slack.refuse("apps.connections.open", "internal_error")  # Slack answers, but opens no socket
    elif state == "connecting":
        slack.stall("apps.connections.open", 8)  # Slack takes its time: the attempt is under way
    bot = await start_bot(fake, slack, tmp_path / "teambot.db", http, env=env)
    if state == "connecting":
        await slack.wait_for(lambda: bool(slack.calls_to("apps.connections.open")), 15)
    elif state == "retrying":
        await slack.wait_for(lambda: len(slack.calls_to("apps.connections.open")) >= 2, 20)  # failed, tried again
    else:
        await slack.wait_for_socket(15)
        assert (await http.get(f"{bot.url}/readyz")).json() == {"database": True, "slack": True}
    started = time.monotonic()
    bot.proc.send_signal(sig)
    assert await bot.wait() == 0, "".join(bot.stderr)
    assert time.monotonic() - started < 1 + 3.0  # TEAMBOT_DRAIN_SECONDS, plus closing down
    assert not _not_log_lines(bot.stderr), "".join(bot.stderr)
    assert any("stopping: letting replies in progress finish" in line for line in bot.stderr)


async def test_an_unreachable_slack_is_one_line_per_attempt_with_a_growing_pause(fakes, tmp_path: Path) -> None:
    fake, slack, http = fakes
    api_url = _closed_port_url()
    env = _SOCKET_MODE | {"SLACK_API_URL": api_url}
    bot = await start_bot(fake, slack, tmp_path / "teambot.db", http, env=env)
    try:
        lines = await bot.logged("Slack: checking the bot token (auth.test) failed", count=3, within=20)
        # The process serves meanwhile: alive, not ready, and /readyz names what is down.
        assert (await http.get(f"{bot.url}/healthz")).status_code == 200
        ready = await http.get(f"{bot.url}/readyz")
        assert ready.status_code == 503 and ready.json() == {"database": True, "slack": False}
    finally:
        bot.proc.send_signal(signal.SIGTERM)
        assert await bot.wait() == 0
    assert [re.search(r"retrying in (\d+) s$", line.rstrip())[1] for line in lines[:3]] == ["1", "2", "4"]  # type: ignore[index]
    for line in lines:
        assert " WARNING adapters.slack.app " in line
        assert "ClientConnectorError: Cannot connect to host 127.0.0.1" in line and api_url in line
        assert "check " in line and "proxy" in line
    assert not _not_log_lines(bot.stderr), "".join(bot.stderr)  # no traceback below INFO's DEBUG
    assert _SOCKET_MODE["SLACK_APP_TOKEN"] not in "".join(bot.stderr)


@pytest.mark.parametrize("mode", ["http", "socket"])
async def test_a_refused_bot_token_stops_the_adapter_in_one_line_and_readiness_says_so(
    fakes, tmp_path: Path, mode: str
) -> None:
    fake, slack, http = fakes
    env = {"SLACK_BOT_TOKEN": "xoxb-0000-fake-token-never-shown"} | (_SOCKET_MODE if mode == "socket" else {})
    bot = await start_bot(fake, slack, tmp_path / "teambot.db", http, env=env)
    try:
        [refused] = await bot.logged("Slack refused SLACK_BOT_TOKEN (invalid_auth)")
        await bot.logged("teambot is running: no platform connected")  # start-up is over: no retry is pending
        ready = await http.get(f"{bot.url}/readyz")
        assert ready.status_code == 503 and ready.json() == {"database": True, "slack": False}
        assert (await http.get(f"{bot.url}/healthz")).status_code == 200
        assert len(slack.calls_to("auth.test")) == 1 and not slack.calls_to("apps.connections.open")
    finally:
        bot.proc.send_signal(signal.SIGTERM)
        assert await bot.wait() == 0
    assert " ERROR " in refused and "the Slack adapter is stopped" in refused
    assert not _not_log_lines(bot.stderr), "".join(bot.stderr)
    assert "fake-token-never-shown" not in "".join(bot.stderr)


async def test_a_refused_app_token_stops_slack_and_discord_keeps_answering(fakes, tmp_path: Path) -> None:
    fake, slack, http = fakes
    slack.refuse("apps.connections.open", "invalid_auth")
    async with FakeDiscord() as discord_fake:
        env = _SOCKET_MODE | {"DISCORD_TOKEN": "fake-discord-token"}
        bot = await start_bot(fake, slack, tmp_path / "teambot.db", http, env=env, discord_url=discord_fake.url)
        try:
            [refused] = await bot.logged("Slack refused SLACK_APP_TOKEN (invalid_auth)")
            await bot.logged("teambot is running: discord")
            ready = await http.get(f"{bot.url}/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"database": True, "slack": False, "discord": True}
            trigger = discord_fake.message_create(f"<@{BOT_ID}> still here?", mentions=(BOT_USER,))
            await discord_fake.dispatch("MESSAGE_CREATE", trigger)
            await discord_fake.wait_for(
                lambda: any(m.content == "echo: Ada: still here?" for m in discord_fake.channel_messages(CHANNEL_ID)),
                15,
            )
        finally:
            bot.proc.send_signal(signal.SIGTERM)
            assert await bot.wait() == 0
    assert len(slack.calls_to("apps.connections.open")) == 1  # refused once: not tried again
    assert "connections:write" in refused
    assert not _not_log_lines(bot.stderr), "".join(bot.stderr)


@pytest.mark.parametrize("fault", ["gateway unreachable", "token refused"])
async def test_discord_failures_are_one_line_each_and_sigterm_stops_it(fakes, tmp_path: Path, fault: str) -> None:
    fake, slack, http = fakes
    async with FakeDiscord(token="the-right-token") as discord_fake:
        token = "the-right-token" if fault == "gateway unreachable" else "a-wrong-token-never-shown"
        gateway = f"ws://127.0.0.1:{free_port()}/gw" if fault == "gateway unreachable" else None
        env = {"DISCORD_TOKEN": token, "TEAMBOT_DRAIN_SECONDS": "1"}
        bot = await start_bot(
            fake, slack, tmp_path / "teambot.db", http, env=env, discord_url=discord_fake.url, discord_gateway=gateway
        )
        try:
            if fault == "gateway unreachable":
                lines = await bot.logged("Discord: connecting to the gateway failed", count=2, within=20)
            else:
                lines = await bot.logged("Discord refused DISCORD_TOKEN (401 Unauthorized)")
                await bot.logged("teambot is running: slack")
            ready = await http.get(f"{bot.url}/readyz")
            assert ready.json() == {"database": True, "slack": True, "discord": False}
        finally:
            started = time.monotonic()
            bot.proc.send_signal(signal.SIGTERM)
            assert await bot.wait() == 0
            assert time.monotonic() - started < 1 + 3.0
    if fault == "gateway unreachable":
        assert "ClientConnectorError: Cannot connect to host 127.0.0.1" in lines[0] and "retrying in 1 s" in lines[0]
        assert "retrying in 2 s" in lines[1]
    assert not _not_log_lines(bot.stderr), "".join(bot.stderr)  # no traceback, no "Unclosed client session"
    assert not any("the Discord client stopped" in line or " ERROR discord." in line for line in bot.stderr)
    assert "never-shown" not in "".join(bot.stderr)
