"""Files on Slack messages through the real slack-bolt against the fake Slack: downloaded with the bot token from
Slack's own file host only, and what reaches the model."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from adapters.slack import SlackAdapter
from adapters.slack.app import REQUIRED_SCOPES, check_slack
from bot import texts
from bot.runtime import open_core
from tests.adapters.slack import test_app as base
from tests.adapters.slack.test_app import Slack, settings_for
from tests.context import samples
from tests.fakes.elsewhere import Elsewhere
from tests.fakes.openai import FakeOpenAI, image_parts
from tests.fakes.slack import FakeSlack, direct_message, mention

# The Slack fixtures of test_app: a fake Slack (with its people) and a fake model.
fake, model = base.fake, base.model


@pytest.fixture
async def elsewhere() -> AsyncIterator[Elsewhere]:
    async with Elsewhere() as server:
        yield server


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
async def slack(fake: FakeSlack, model: FakeOpenAI, tmp_path: Path, overrides: dict[str, Any]) -> AsyncIterator[Slack]:
    settings = settings_for(fake, model, tmp_path / "teambot.db", **overrides)
    async with open_core(settings) as core, httpx.AsyncClient() as http:
        adapter = SlackAdapter(core, settings)
        await adapter.start()
        try:
            yield Slack(fake, model, adapter, http, tmp_path / "teambot.db")
        finally:
            await adapter.stop()


def with_files(event: dict[str, Any], *files: dict[str, Any]) -> dict[str, Any]:
    return {**event, "files": list(files)}


async def answered(slack: Slack, posts: int = 1) -> list[str]:
    """The texts posted once the answer (and its notice, if ``posts`` is 2) is out."""
    await slack.wait_posts(posts)
    await slack.fake.wait_for(lambda: not any(m.streaming for m in slack.fake.posted))
    return [m.text for m in slack.fake.posted]


async def test_an_image_on_a_mention_reaches_the_model_downscaled(slack: Slack) -> None:
    photo = slack.fake.add_file("photo.png", samples.png(4000, 3000), "image/png")
    await slack.event(with_files(mention("<@UBOT> what is this?", ts="1700000000.000100"), photo))
    await answered(slack)
    [part] = image_parts(slack.model.requests[-1]["messages"][-1])
    data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
    assert Image.open(io.BytesIO(data)).size == (1024, 768)
    assert slack.fake.file_requests == [(f"T1-{photo['id']}/download/photo.png", True)]


async def test_a_pdf_in_a_dm_is_read_and_a_zip_is_named_in_one_line(slack: Slack) -> None:
    report = slack.fake.add_file("report.pdf", samples.pdf("Quarterly revenue was 42 million."), "application/pdf")
    archive = slack.fake.add_file("code.zip", samples.zip_file(), "application/zip")
    event = direct_message("summarise these", ts="1700000000.000200", subtype="file_share")
    await slack.event(with_files(event, report, archive))
    texts_out = await answered(slack, 2)
    question = slack.model.requests[-1]["messages"][-1]["content"]
    assert "--- page 1 ---\nQuarterly revenue was 42 million." in question
    assert texts_out[0].startswith("echo: ")
    assert texts_out[1] == texts.FILES_NOT_READ.format(files="code.zip (not a type I can read)")
    assert [path for path, _ in slack.fake.file_requests] == [f"T1-{report['id']}/download/report.pdf"]


async def test_a_file_url_on_another_host_is_never_fetched(slack: Slack, elsewhere: Elsewhere) -> None:
    planted = {**slack.fake.add_file("notes.txt", b"x", "text/plain"), "url_private_download": f"{elsewhere.url}/a.txt"}
    await slack.event(with_files(mention("<@UBOT> read", ts="1700000000.000300"), planted))
    out = await answered(slack, 2)
    assert elsewhere.requests == []
    assert texts.FILE_HOST_REFUSED in out[1]


async def test_a_redirect_is_followed_on_slacks_host_only(slack: Slack, elsewhere: Elsewhere) -> None:
    good = slack.fake.add_file("good.txt", b"the magic word is XYZZY", "text/plain")
    good["url_private_download"] = slack.fake.redirect(good["url_private_download"])
    bad = {**slack.fake.add_file("bad.txt", b"x", "text/plain")}
    bad["url_private_download"] = slack.fake.redirect(f"{elsewhere.url}/steal")
    await slack.event(with_files(mention("<@UBOT> read", ts="1700000000.000400"), good, bad))
    out = await answered(slack, 2)
    assert "XYZZY" in slack.model.requests[-1]["messages"][-1]["content"]
    assert elsewhere.requests == []
    assert "bad.txt" in out[1] and texts.FILE_HOST_REFUSED in out[1]


async def test_a_login_page_instead_of_the_file_says_the_scope_is_missing(slack: Slack) -> None:
    slack.fake.files_read = False
    notes = slack.fake.add_file("notes.txt", b"hello", "text/plain")
    await slack.event(with_files(mention("<@UBOT> read", ts="1700000000.000500"), notes))
    out = await answered(slack, 2)
    assert "files:read" in out[1] and "<html" not in slack.model.requests[-1]["messages"][-1]["content"].lower()


async def test_a_30_mb_file_is_refused_by_its_reported_size_without_a_request(slack: Slack) -> None:
    big = slack.fake.add_file("dump.log", b"a" * (30 * 1024 * 1024), "text/plain")
    await slack.event(with_files(mention("<@UBOT> read", ts="1700000000.000600"), big))
    out = await answered(slack, 2)
    assert slack.fake.file_requests == []
    assert "dump.log (30.0 MB is over the 20.0 MB limit)" in out[1]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("overrides", [{"max_attachment_bytes": 1024 * 1024}])
async def test_a_file_that_lies_about_its_size_is_cut_off_at_the_cap(slack: Slack, chunked: bool) -> None:
    slack.fake.chunked_files = chunked
    data = b"a" * (48 * 1024 * 1024)
    big = slack.fake.add_file("dump.log", data, "text/plain", size=1000)
    await slack.event(with_files(mention("<@UBOT> read", ts="1700000000.000700"), big))
    out = await answered(slack, 2)
    assert "dump.log (" in out[1] and "over the 1.0 MB limit" in out[1]
    # The client hung up after its first megabyte: what the sockets' buffers took (several MB on a busy machine)
    # went out, never the whole file.
    assert slack.fake.file_bytes_sent < len(data)


@pytest.mark.parametrize("granted", [REQUIRED_SCOPES, tuple(s for s in REQUIRED_SCOPES if s != "files:read")])
async def test_check_names_a_missing_files_read_scope(granted: tuple[str, ...]) -> None:
    async with FakeSlack(scopes=granted) as fake, FakeOpenAI() as model:
        results = await check_slack(settings_for(fake, model, "unused.db"))
    [scopes] = [r for r in results if r.name == "slack scopes"]
    assert scopes.ok == ("files:read" in granted)
    assert scopes.detail.startswith("granted") if scopes.ok else "lacks files:read" in scopes.detail
