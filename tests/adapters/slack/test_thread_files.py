"""Files on a Slack thread's earlier messages through the real slack-bolt and slack_sdk against the fake Slack: read
with the thread on the mention's turn (images as image parts, text files as text), fetched once, from Slack's own
file host only."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from bot import texts
from tests.adapters.slack import test_app as base
from tests.adapters.slack.test_app import Slack
from tests.adapters.slack.test_threads import LATER, REPLIES, ROOT, ask
from tests.context import samples
from tests.fakes.elsewhere import Elsewhere
from tests.fakes.openai import image_parts
from tests.fakes.slack import FakeSlack

# The Slack fixtures of test_app: a fake Slack and model, and the adapter started against them over HTTP.
fake, model, overrides, native, slack = base.fake, base.model, base.overrides, base.native, base.slack


@pytest.fixture
async def elsewhere() -> AsyncIterator[Elsewhere]:
    async with Elsewhere() as server:
        yield server


def shared(fake: FakeSlack, n: int, text: str, *files: dict[str, Any], user: str = "U2") -> dict[str, Any]:
    """A message with files in the thread, as Slack serves it (subtype ``file_share``)."""
    message = fake.thread_message(text, ts=f"1700000000.{n:06d}", thread_ts=ROOT, user=user, subtype="file_share")
    message["files"] = list(files)
    return message


async def test_an_image_and_a_text_file_earlier_in_the_thread_reach_the_model(slack: Slack) -> None:
    screenshot = slack.fake.add_file("screenshot.png", samples.png(1600, 1200), "image/png")
    log = slack.fake.add_file("deploy.log", b"ERROR: disk full on db-3\n", "text/plain")
    slack.fake.thread_message("the deploy failed", ts=ROOT, thread_ts=ROOT, user="U2")
    shared(slack.fake, 200, "here is what I saw", screenshot, log)
    await ask(slack, "1700000000.000300", "what went wrong?", answers=1)
    messages = slack.model.requests[-1]["messages"]
    [part] = [p for m in messages for p in image_parts(m)]
    data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
    assert Image.open(io.BytesIO(data)).size == (1024, 768)
    grace = "".join(p["text"] for p in messages[-2]["content"] if p["type"] == "text")
    assert grace.startswith("Grace Hopper: here is what I saw")
    assert "[Image: screenshot.png]" in grace and "ERROR: disk full on db-3" in grace
    assert messages[-1]["content"] == "Ada: what went wrong?"
    # With the bot token, from the fake's file host.
    assert set(slack.fake.file_requests) == {
        (f"T1-{log['id']}/download/deploy.log", True),
        (f"T1-{screenshot['id']}/download/screenshot.png", True),
    }
    assert len(slack.fake.file_requests) == 2


async def test_a_second_mention_does_not_download_the_threads_files_again(slack: Slack) -> None:
    picture = slack.fake.add_file("trace.png", samples.small_png(), "image/png")
    slack.fake.thread_message("help?", ts=ROOT, thread_ts=ROOT, user="U2")
    shared(slack.fake, 200, "the trace", picture)
    await ask(slack, "1700000000.000300", "what is this?", answers=1)
    assert len(slack.fake.file_requests) == 1
    slack.fake.thread_message("still broken", ts=LATER, thread_ts=ROOT, user="U2")
    await ask(slack, f"{LATER}1", "any idea now?", answers=2)
    assert len(slack.fake.calls_to(REPLIES)) == 2
    assert len(slack.fake.file_requests) == 1  # the thread's files were fetched once
    # ...and the image is still shown, from the store.
    assert len([p for m in slack.model.requests[-1]["messages"] for p in image_parts(m)]) == 1


async def test_a_file_on_another_host_in_the_thread_is_never_fetched(slack: Slack, elsewhere: Elsewhere) -> None:
    planted = {**slack.fake.add_file("notes.txt", b"x", "text/plain"), "url_private_download": f"{elsewhere.url}/a"}
    slack.fake.thread_message("see the notes", ts=ROOT, thread_ts=ROOT, user="U2")
    shared(slack.fake, 200, "notes attached", planted)
    await ask(slack, "1700000000.000300", "what do the notes say?", answers=1)
    assert elsewhere.requests == []
    content = slack.model.requests[-1]["messages"][-2]["content"]
    assert texts.FILE_NOT_READ_MARK.format(name="notes.txt", why=texts.FILE_HOST_REFUSED) in content
