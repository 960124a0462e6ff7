"""Keys: read from a rotating file, and masked wherever text leaves the process."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.keys import KeySource
from bot.redact import MASK, RedactingFilter, redact


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
