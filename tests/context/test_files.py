"""Files on a message, through the real core, a real SQLite file and the loopback fake model: what reaches the model
(text sections, image parts), what is stored, and the one line beside the answer for what could not be read."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr

from bot import errors, texts
from bot.context import (
    Files,
    FileSettings,
    NotAnImage,
    classify,
    decode_text,
    image_tokens,
    model_size,
    prepare,
    without_hashes,
)
from bot.conversation import ConversationCore, TurnSettings
from bot.guards import KeySource
from bot.llm import ChatClient, Endpoint, RetryPolicy, TokenCounter, model_http_client
from bot.messages import Attachment, ConversationKey, IncomingMessage, Reply, ReplyKind
from bot.store import Store, open_store
from tests.context import samples
from tests.fakes.openai import FakeOpenAI, image_parts

KEY = ConversationKey("slack", "T1", "C1")


@dataclass
class FileOnHand:
    """An attachment whose bytes are in memory; ``fetched`` counts the downloads."""

    name: str
    data: bytes
    mimetype: str = ""
    size: int | None = -1
    fetched: int = 0
    error: str | None = None

    def attachment(self) -> Attachment:
        async def fetch() -> bytes:
            self.fetched += 1
            if self.error is not None:
                raise errors.AttachmentError("refused", user_message=self.error)
            return self.data

        size = len(self.data) if self.size == -1 else self.size
        return Attachment(f"F-{self.name}", self.name, self.mimetype, size, fetch)


@dataclass
class Bot:
    core: ConversationCore
    fake: FakeOpenAI
    store: Store
    n: int = 0
    files: list[FileOnHand] = field(default_factory=list)

    async def ask(self, text: str, *files: FileOnHand) -> Reply:
        self.n += 1
        attachments = tuple(f.attachment() for f in files)
        return await self.core.handle(IncomingMessage(KEY, f"m{self.n}", "U1", "Ada", text, attachments))

    def last_question(self) -> Any:
        return self.fake.requests[-1]["messages"][-1]["content"]


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter.load()


@pytest.fixture
def file_settings(request: pytest.FixtureRequest) -> FileSettings:
    return getattr(request, "param", FileSettings())


@pytest.fixture
def model(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "fake-model")


@pytest.fixture
async def bot(tmp_path: Path, counter: TokenCounter, file_settings: FileSettings, model: str) -> AsyncIterator[Bot]:
    store = await open_store(str(tmp_path / "teambot.db"))
    async with FakeOpenAI() as fake, model_http_client(5.0) as http:
        llm = ChatClient(
            http,
            Endpoint("primary", fake.base_url, model, KeySource(SecretStr("sk-test"))),
            retry=RetryPolicy(max_retries=0, base_delay=0.01, deadline=10),
        )
        files = Files(file_settings, counter)
        core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", 8000), files=files)
        yield Bot(core, fake, store)
    await store.close()


def decoded(part: dict[str, Any]) -> Image.Image:
    url = part["image_url"]["url"]
    assert url.startswith(("data:image/jpeg;base64,", "data:image/png;base64,"))
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


async def test_a_big_png_reaches_the_model_downscaled_as_an_image_part(bot: Bot) -> None:
    photo = FileOnHand("photo.png", samples.png(4000, 3000), "image/png")
    reply = await bot.ask("what is in this picture?", photo)
    assert reply.kind is ReplyKind.ANSWER and reply.notice is None
    content = bot.last_question()
    assert isinstance(content, list)
    [image] = [p for p in content if p["type"] == "image_url"]
    assert decoded(image).size == (1024, 768)  # fit in 2048, then shortest side 768
    text = "".join(p["text"] for p in content if p["type"] == "text")
    assert "Ada: what is in this picture?" in text and "[Image: photo.png]" in text
    assert "#" not in text  # the store's hash stays out of what the model reads
    assert len(base64.b64decode(image["image_url"]["url"].split(",", 1)[1])) < 300_000


async def test_a_later_turn_shows_a_stored_image_again_and_counts_it(bot: Bot, counter: TokenCounter) -> None:
    await bot.ask("remember this", FileOnHand("chart.png", samples.small_png(size=(640, 480)), "image/png"))
    await bot.ask("and what colour was the chart?")
    messages = bot.fake.requests[-1]["messages"]
    assert isinstance(messages[-1]["content"], str)  # the new question has no files: plain text
    earlier = messages[-3]["content"]
    assert isinstance(earlier, list) and len(image_parts(messages[-3])) == 1
    assert decoded(image_parts(messages[-3])[0]).getpixel((10, 10))[0] > 150  # the red image, from the store
    history = await bot.store.load_history(KEY, 8000, before=10**9)
    question = history[0]
    assert question.tokens >= image_tokens(640, 480) + counter.count_message(f"Ada: {question.content}") - 1


async def test_the_image_cap_holds_over_the_whole_prompt_newest_first(bot: Bot) -> None:
    bot.core.files.settings = FileSettings(max_images=2)
    bot.core.files._reader.settings = bot.core.files.settings
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    first = [FileOnHand(f"old{n}.png", samples.small_png(c), "image/png") for n, c in enumerate(colours[:2])]
    await bot.ask("two images", *first)
    await bot.ask("one more", FileOnHand("new.png", samples.small_png(colours[2]), "image/png"))
    messages = bot.fake.requests[-1]["messages"]
    shown = [part for m in messages for part in image_parts(m)]
    assert len(shown) == 2
    assert decoded(image_parts(messages[-1])[0]).getpixel((1, 1))[2] > 200  # the newest is shown first
    assert "[Image: old1.png (not shown: at most 2 images per question)]" in str(messages[-3]["content"])


async def test_extra_images_on_one_message_are_not_fetched_and_named(bot: Bot) -> None:
    images = [FileOnHand(f"i{n}.png", samples.small_png(), "image/png") for n in range(6)]
    reply = await bot.ask("many", *images)
    assert len(image_parts(bot.fake.requests[-1]["messages"][-1])) == 4
    assert [f.fetched for f in images] == [1, 1, 1, 1, 0, 0]
    assert reply.notice is not None and "i4.png" in reply.notice and "i5.png" in reply.notice


async def test_a_pdf_reaches_the_model_as_text_with_page_markers(bot: Bot) -> None:
    report = FileOnHand("report.pdf", samples.pdf("The launch code is PELICAN.", "Page two says OSPREY."), "")
    reply = await bot.ask("what is the launch code?", report)
    assert reply.kind is ReplyKind.ANSWER and reply.notice is None
    question = bot.last_question()
    assert isinstance(question, str)
    assert "[File: report.pdf]" in question and "[End of file: report.pdf]" in question
    assert "--- page 1 ---\nThe launch code is PELICAN." in question
    assert "--- page 2 ---\nPage two says OSPREY." in question


async def test_a_pdf_without_text_says_so(bot: Bot) -> None:
    await bot.ask("read it", FileOnHand("scan.pdf", samples.pdf(""), "application/pdf"))
    assert texts.PDF_NO_TEXT in bot.last_question()


@pytest.mark.parametrize(("encoding", "text"), [("cp1252", samples.CP1252_TEXT), ("shift_jis", samples.SHIFT_JIS_TEXT)])
async def test_a_text_file_in_a_legacy_encoding_is_decoded(bot: Bot, encoding: str, text: str) -> None:
    notes = FileOnHand("notes.txt", text.encode(encoding), "text/plain")
    await bot.ask("summarise", notes)
    assert text.strip() in bot.last_question()


def test_bad_bytes_never_crash_the_decoder() -> None:
    assert isinstance(decode_text(bytes(range(256)) * 10), str)
    assert decode_text("a\ud800b".encode("utf-8", "surrogatepass")).encode("utf-8")  # storable, whatever came
    assert decode_text("caf\u00e9".encode()[:-1]) == "caf"  # cut inside a character: that half is dropped


async def test_a_long_text_file_is_cut_to_the_budget_with_a_visible_note(bot: Bot) -> None:
    log = "\n".join(f"line {n}: something happened at step {n}" for n in range(20_000))
    reply = await bot.ask("what went wrong?", FileOnHand("server.log", log.encode(), ""))
    question = bot.last_question()
    assert "[File: server.log]" in question and "line 0: something" in question
    assert "line 19999" not in question
    assert "the rest of server.log is left out" in question
    assert reply.kind is ReplyKind.ANSWER


async def test_a_zip_and_a_big_file_are_named_in_one_line_and_the_answer_still_comes(bot: Bot) -> None:
    archive = FileOnHand("code.zip", samples.zip_file(), "application/zip")
    huge = FileOnHand("dump.bin", b"", "application/octet-stream", size=30 * 1024 * 1024)
    notes = FileOnHand("notes.md", b"# Plan\nShip on Friday.", "text/markdown")
    reply = await bot.ask("look at these", archive, huge, notes)
    assert reply.kind is ReplyKind.ANSWER and reply.text.startswith("echo: ")
    assert archive.fetched == 0 and huge.fetched == 0  # refused by type and by reported size, not downloaded
    assert reply.notice is not None and len(reply.notice.splitlines()) == 1
    assert "code.zip (not a type I can read)" in reply.notice
    assert "dump.bin (30.0 MB is over the 20.0 MB limit)" in reply.notice
    assert "Ship on Friday." in bot.last_question()


async def test_a_download_bigger_than_the_limit_is_refused_even_if_the_size_was_not_said(bot: Bot) -> None:
    bot.core.files._reader.settings = FileSettings(max_attachment_bytes=1000)
    unsaid = FileOnHand("big.txt", b"x" * 5000, "text/plain", size=None)
    reply = await bot.ask("read", unsaid)
    assert reply.notice is not None and "big.txt" in reply.notice and "over the" in reply.notice


async def test_a_file_the_platform_would_not_give_is_named_with_its_reason(bot: Bot) -> None:
    locked = FileOnHand("secret.txt", b"", "text/plain", error="the app needs the files:read scope")
    reply = await bot.ask("read", locked)
    assert reply.notice == texts.FILES_NOT_READ.format(files="secret.txt (the app needs the files:read scope)")


async def test_an_image_that_is_not_one_is_refused_by_its_bytes(bot: Bot) -> None:
    fake_image = FileOnHand("cat.png", b"this is not a png at all", "image/png")
    reply = await bot.ask("what cat?", fake_image)
    assert reply.notice is not None and texts.FILE_BAD_IMAGE in reply.notice
    assert not image_parts(bot.fake.requests[-1]["messages"][-1])


@pytest.mark.parametrize("file_settings", [FileSettings(vision="off")], indirect=True)
async def test_with_vision_off_no_image_is_fetched_or_sent(bot: Bot) -> None:
    photo = FileOnHand("photo.png", samples.small_png(), "image/png")
    reply = await bot.ask("see?", photo)
    assert photo.fetched == 0 and not image_parts(bot.fake.requests[-1]["messages"][-1])
    assert reply.notice is not None and "photo.png (images are switched off" in reply.notice


@pytest.mark.parametrize("model", ["text-only-model"], indirect=True)
async def test_a_model_that_refuses_images_is_asked_again_without_them_once_and_remembered(bot: Bot) -> None:
    reply = await bot.ask("see?", FileOnHand("photo.png", samples.small_png(), "image/png"))
    assert reply.kind is ReplyKind.ANSWER
    assert reply.notice == texts.VISION_UNSUPPORTED.format(model="text-only-model")
    assert len(bot.fake.requests) == 2
    assert image_parts(bot.fake.requests[0]["messages"][-1]) and not image_parts(bot.fake.requests[1]["messages"][-1])
    assert "not shown: the model cannot see images" in str(bot.fake.requests[1]["messages"][-1]["content"])
    await bot.ask("and this one?", FileOnHand("other.png", samples.small_png((0, 0, 255)), "image/png"))
    assert len(bot.fake.requests) == 3  # remembered: no second refusal


@pytest.mark.parametrize("file_settings", [FileSettings(vision="on")], indirect=True)
@pytest.mark.parametrize("model", ["text-only-model"], indirect=True)
async def test_with_vision_on_a_refusal_is_an_error_not_a_retry(bot: Bot) -> None:
    reply = await bot.ask("see?", FileOnHand("photo.png", samples.small_png(), "image/png"))
    assert reply.kind is ReplyKind.ERROR and len(bot.fake.requests) == 1


async def test_a_binary_file_of_no_known_type_is_told_by_its_bytes(bot: Bot) -> None:
    blob = FileOnHand("data", b"\x00\x01\x02 binary \x00" * 100, "application/octet-stream")
    text = FileOnHand("README", b"plain words, no type said", "application/octet-stream")
    reply = await bot.ask("what are these?", blob, text)
    assert reply.notice == texts.FILES_NOT_READ.format(files="data (not a type I can read)")
    assert "plain words, no type said" in bot.last_question()


def test_an_image_claiming_too_many_pixels_is_refused_before_decoding() -> None:
    out = io.BytesIO()
    Image.new("L", (8000, 7000)).save(out, "PNG")
    with pytest.raises(NotAnImage, match="more than"):
        prepare("huge.png", out.getvalue())


class CountingStore:
    """The real store, counting which of its methods a turn calls."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.called: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if callable(attribute):
            self.called.append(name)
        return attribute


async def test_a_question_without_files_is_sent_as_before_and_touches_no_image(bot: Bot) -> None:
    counting = CountingStore(bot.store)
    bot.core.store = counting  # type: ignore[assignment]
    await bot.ask("plain question")
    await bot.ask("another")
    assert bot.last_question() == "Ada: another"
    assert not {"add_images", "load_images"} & set(counting.called)


async def test_a_restart_still_shows_the_stored_image(bot: Bot, tmp_path: Path, counter: TokenCounter) -> None:
    await bot.ask("keep this", FileOnHand("chart.png", samples.small_png((10, 200, 10)), "image/png"))
    store = await open_store(str(tmp_path / "teambot.db"))
    try:
        async with model_http_client(5.0) as http:
            llm = ChatClient(http, Endpoint("primary", bot.fake.base_url, "fake-model", KeySource(SecretStr("k"))))
            core = ConversationCore(store, llm, counter, TurnSettings("You are a test bot.", 8000))
            await core.handle(IncomingMessage(KEY, "after-restart", "U1", "Ada", "what colour was it?"))
    finally:
        await store.close()
    [part] = [p for m in bot.fake.requests[-1]["messages"] for p in image_parts(m)]
    assert decoded(part).getpixel((5, 5))[1] > 150


def test_the_store_hash_of_an_image_mark_stays_out_of_what_models_read() -> None:
    mark = "see [Image: a.png #" + "ab" * 32 + "] here"
    assert without_hashes(mark) == "see [Image: a.png] here"
    assert without_hashes("no marks") == "no marks"


def test_files_are_told_apart_by_mimetype_and_extension() -> None:
    assert classify("a.py", "") == "text"
    assert classify("data.json", "application/json") == "text"
    assert classify("x.yaml", "application/octet-stream") == "text"
    assert classify("photo", "image/webp") == "image"
    assert classify("doc.pdf", "application/octet-stream") == "pdf"
    assert classify("blob", "application/octet-stream") == "unknown"
    assert classify("code.zip", "application/zip") == "unsupported"
    assert classify("movie.mp4", "video/mp4") == "unsupported"


def test_the_model_size_and_token_estimate_follow_openais_formula() -> None:
    assert model_size(4000, 3000) == (1024, 768)
    assert model_size(512, 512) == (512, 512)
    assert model_size(4096, 8192) == (768, 1536)
    assert image_tokens(4000, 3000) == 85 + 170 * 4
    assert image_tokens(512, 512) == 85 + 170
