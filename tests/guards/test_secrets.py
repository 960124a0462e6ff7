"""Keys: read from a rotating file, and masked wherever text leaves the process."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from bot.guards import MASK, KeySource, RedactingFilter, redact, redaction
from bot.guards.redaction import _SECRET_PATTERNS
from bot.llm import ChatClient, Endpoint, RetryPolicy, model_http_client
from tests.bot_process import SECRET, start_bot
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack, event_envelope, mention


def test_key_from_the_environment_value() -> None:
    assert KeySource(SecretStr("sk-env")).get() == "sk-env"
    assert KeySource().get() is None


def test_key_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("sk-first-key\n")
    keys = KeySource(file=path)
    assert keys.get() == "sk-first-key"
    path.write_text("sk-second-key-rotated\n")
    os.utime(path, (1_900_000_000, 1_900_000_000))  # a rotation may land within the same mtime tick
    assert keys.get() == "sk-second-key-rotated"


async def test_a_rotated_key_file_is_sent_on_the_next_request_without_waiting_for_a_401(tmp_path: Path) -> None:
    # The fake accepts any key, so nothing is ever rejected: only noticing the file's change can send the new key.
    # (A server that rejects the old key would hide a missing re-read behind the client's 401 -> re-read path.)
    path = tmp_path / "key"
    path.write_text("sk-before-rotation-000\n")
    keys = KeySource(file=path)
    async with FakeOpenAI() as fake, model_http_client(30) as http:
        c = ChatClient(http, Endpoint("primary", fake.base_url, "m", keys), retry=RetryPolicy(max_retries=0))
        await c.complete([{"role": "user", "content": "first"}])
        path.write_text("sk-after-rotation-1111\n")
        os.utime(path, (1_900_000_000, 1_900_000_000))  # a rotation may land within the same mtime tick
        await c.complete([{"role": "user", "content": "second"}])
    assert [h["Authorization"] for h in fake.headers] == [
        "Bearer sk-before-rotation-000",
        "Bearer sk-after-rotation-1111",
    ]
    assert fake.calls == 2  # no request was refused and repeated


def test_an_unreadable_key_file_keeps_the_last_key(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("sk-kept")
    keys = KeySource(file=path)
    assert keys.get() == "sk-kept"
    path.unlink()
    assert keys.get() == "sk-kept"


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-AbCdEf0123456789xyz",
        "xoxb-1234567890-0987654321-AbCdEfGhIjKl",
        "xapp-1-A0123456789-0123456789-abcdef",
        "MTAwMDAwMDAwMDAwMDAwMDAw.GAbCdE.abcdefghijklmnopqrstuvwxyz0123",
    ],
)
def test_redact_masks_anything_shaped_like_a_token(secret: str) -> None:
    assert redact(f"oops {secret} leaked") == f"oops {MASK} leaked"


def test_redact_masks_what_the_whole_pattern_masks_and_looks_only_where_a_token_may_be() -> None:
    # The cheap look for a token's start (most log lines have none) must never skip a text the pattern would change.
    rng = random.Random(17)
    pieces = ["sk-", "xox", "xoxb-", "xapp-", "Bearer ", "Bearer\t", ".", "GAbCdE", "M", "N", "O", "abcdefgh", "-"]
    pieces += ["0123456789", "_", " ", ":", "/", "MTAwMDAwMDAwMDAwMDAwMDAw", "abcdefghijklmnopqrstuvwxyz0123"]
    masked = 0
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
        expected = _SECRET_PATTERNS.sub(MASK, text)
        assert redact(text) == expected, text
        masked += expected != text
    assert masked > 500  # the sample holds tokens of every kind, not only text the pattern leaves alone


def test_redact_masks_bearer_and_known_values() -> None:
    assert redact("Authorization: Bearer abc.def-ghi_123") == f"Authorization: Bearer {MASK}"
    assert redact("local key hunter2-long", "hunter2-long") == f"local key {MASK}"


def test_logging_filter_masks_messages_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("teambot.test")
    log.addFilter(RedactingFilter())
    try:
        with caplog.at_level(logging.INFO):
            log.info("calling with %s", "sk-live-0123456789abcdef")
            try:
                raise RuntimeError("token xoxb-1234567890-abcdefghij in the error")
            except RuntimeError:
                log.exception("failed")
    finally:
        log.filters.clear()
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "sk-live-0123456789abcdef" not in text and "xoxb-1234567890-abcdefghij" not in text
    assert text.count(MASK) >= 2


def test_logging_filter_masks_configured_values_of_any_shape(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("teambot.test.configured")
    log.addFilter(RedactingFilter(("local-key-without-prefix",)))
    try:
        with caplog.at_level(logging.INFO):
            log.info("the key is %s", "local-key-without-prefix")
    finally:
        log.filters.clear()
    assert "local-key-without-prefix" not in caplog.text and MASK in caplog.text


def test_a_discord_token_is_masked_whatever_digit_its_user_id_starts_with() -> None:
    # The first segment is the base64 of the bot's user id: ids starting 1-3 give M, 4-7 give N, 8-9 give O.
    for first in ("MTk5", "NDk5", "ODk5", "OTk5"):
        token = f"{first}OTk5OTk5OTk5OTk5OTk5.GAbCdE.abcdefghijklmnopqrstuvwxyz0123"
        assert redact(f"token {token} leaked") == f"token {MASK} leaked"


def test_a_key_read_from_the_file_is_masked_and_so_is_its_rotation(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("first-file-key-of-any-shape\n")
    keys = KeySource(file=path)
    assert keys.get() == "first-file-key-of-any-shape"
    assert redact("using first-file-key-of-any-shape") == f"using {MASK}"
    path.write_text("rotated-file-key-of-any-shape\n")
    os.utime(path, (1_900_000_000, 1_900_000_000))
    assert keys.get() == "rotated-file-key-of-any-shape"
    assert redact("now rotated-file-key-of-any-shape") == f"now {MASK}"


async def test_the_running_bot_masks_every_kind_of_secret_in_its_log(tmp_path: Path) -> None:
    """``teambot run`` at DEBUG logs each prompt and each Slack call: a person pasting secrets into the chat
    makes lines that hold them, and none may reach the log unmasked."""
    key_file = tmp_path / "openai-key"
    key_file.write_text("file-key-without-prefix-0001\n")
    pasted = {
        "openai": "sk-proj-AbCdEf0123456789xyz",
        "slack bot": "xoxb-1234567890-0987654321-AbCdEfGhIjKl",
        "slack app": "xapp-1-A0123456789-0123456789-abcdef",
        "discord": "OTk5OTk5OTk5OTk5OTk5OTk5.GAbCdE.abcdefghijklmnopqrstuvwxyz0123",
        "configured bot token": "xoxb-test-token",
        "configured signing secret": SECRET,
        "key file": "file-key-without-prefix-0001",
    }
    rotated = "file-key-rotated-0002"
    async with FakeOpenAI() as fake, FakeSlack() as slack, httpx.AsyncClient() as http:
        env = {"TEAMBOT_LOG_LEVEL": "DEBUG", "OPENAI_API_KEY_FILE": str(key_file)}
        bot = await start_bot(fake, slack, tmp_path / "teambot.db", http, env=env)

        def replies() -> int:
            # A streamed reply ends with chat.stopStream; one whole before its first flush is one chat.postMessage.
            return len(slack.calls_to("chat.stopStream")) + len(slack.calls_to("chat.postMessage"))

        try:
            await bot.send(http, event_envelope(mention("<@UBOT> " + " ".join(pasted.values()), ts="1.1")))
            await slack.wait_for(lambda: fake.calls == 1 and replies() == 1, 15)
            key_file.write_text(rotated + "\n")
            os.utime(key_file, (1_900_000_000, 1_900_000_000))
            await bot.send(http, event_envelope(mention("<@UBOT> the key changed", ts="1.2")))
            await slack.wait_for(lambda: fake.calls == 2, 15)  # this call reads the rotated key
            await bot.send(http, event_envelope(mention(f"<@UBOT> oops {rotated}", ts="1.3")))
            await slack.wait_for(lambda: fake.calls == 3 and replies() == 3, 15)
        finally:
            bot.proc.send_signal(signal.SIGTERM)
            assert await bot.wait() == 0
    log = "".join(bot.stderr)
    assert fake.requests[-1]["messages"][-1]["content"].endswith(rotated)  # the line to mask was really there
    leaked = [name for name, secret in pasted.items() if secret in log]
    assert not leaked and rotated not in log
    prompts = [line for line in bot.stderr if " prompt for slack:T1:C1" in line]
    assert len(prompts) == 3 and prompts[0].count(MASK) >= len(pasted) and MASK in prompts[2]


def test_a_secret_learned_while_another_thread_orders_the_known_ones_is_still_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # remember() runs on the loop's thread (a key file re-read); redact() on every thread that logs (the SQLite
    # writer's, the executor's). Here a remember() on another thread comes while one redact() reads the learned
    # secrets to order them: that order must not be kept without the new secret.
    learner: list[threading.Thread] = []

    class Learned(set[str]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            snapshot = list(set.__iter__(self))
            if not learner:
                learner.append(threading.Thread(target=redaction.remember, args=("rotated-key-value-123",)))
                learner[0].start()
                learner[0].join(0.5)  # done at once unless the ordering holds it off
            return iter(snapshot)

    monkeypatch.setattr(redaction, "_learned", Learned(redaction._learned))
    monkeypatch.setattr(redaction, "_ordered", {})
    redaction.redact("a log line", "configured-secret")
    learner[0].join(5)
    assert "rotated-key-value-123" not in redaction.redact("key rotated-key-value-123 used", "configured-secret")
