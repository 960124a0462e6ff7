"""Reading a message's files into what the model gets: images, text files and PDFs.

Each file is fetched (only through its :class:`bot.messages.Attachment`, which the adapter made to fetch from the
platform's own host only, with a byte cap), recognised by its bytes as much as by its name and mimetype, and turned
into text for the question (a text file under a header with its name, a PDF's text with page markers) or into a
:class:`Picture` for the model. A file that cannot be read costs the turn nothing but a line saying why.
"""

from __future__ import annotations

import asyncio
import io
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

import charset_normalizer
import pypdf
import pypdf.errors

from bot import errors, texts
from bot.context.images import NotAnImage, Picture, image_format, prepare
from bot.llm import TokenCounter
from bot.messages import Attachment
from bot.text_clean import clean

log = logging.getLogger(__name__)

Kind = Literal["image", "pdf", "text", "unknown", "unsupported"]
Vision = Literal["auto", "on", "off"]

#: Names of text files by their extension: source code, data, configuration, logs, documents in plain text.
_TEXT_EXTENSION_WORDS = (
    "txt text md markdown rst adoc org log out err csv tsv json jsonl ndjson yaml yml toml ini cfg conf env "
    "properties xml html htm css scss less svg py pyi ipynb js mjs cjs ts tsx jsx java kt kts scala groovy go rs "
    "c h cc cpp cxx hpp hh cs fs vb swift m mm rb php pl pm lua r jl dart ex exs erl hrl hs ml mli clj cljs elm "
    "sql sh bash zsh fish ps1 bat cmd make mk cmake gradle dockerfile tf tfvars hcl nix vue svelte proto graphql "
    "gql diff patch tex bib srt vtt lock gitignore editorconfig"
)
TEXT_EXTENSIONS = frozenset(_TEXT_EXTENSION_WORDS.split())
#: Text by mimetype beyond text/*: what platforms report for JSON, YAML, XML, scripts and the like.
TEXT_MIMETYPES = frozenset(
    {
        "application/json",
        "application/ld+json",
        "application/x-ndjson",
        "application/xml",
        "application/yaml",
        "application/x-yaml",
        "application/toml",
        "application/javascript",
        "application/x-javascript",
        "application/typescript",
        "application/x-sh",
        "application/x-python",
        "application/x-python-code",
        "application/sql",
        "application/graphql",
        "application/x-tex",
        "application/x-httpd-php",
        "application/xhtml+xml",
        "image/svg+xml",
    }
)
IMAGE_MIMETYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp"})
IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "gif", "webp"})
#: Mimetypes that say nothing about the content: the bytes decide.
GENERIC_MIMETYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/unknown"})
#: How many bytes the binary sniff looks at.
SNIFF_BYTES = 8192
#: How much of a long text file is decoded at most, per token the budget leaves it: the rest could not be shown.
_BYTES_PER_TOKEN = 8
_MIN_DECODE_BYTES = 256 * 1024
#: Encodings of one byte a character, which charset-normalizer confuses with one another.
_SINGLE_BYTE = ("cp12", "cp7", "cp8", "iso8859", "latin", "mac")
#: What pypdf may raise on a malformed file besides its own errors: it parses untrusted bytes deep into their
#: structure, and a broken one surfaces as whatever that structure broke.
_PDF_ERRORS = (
    pypdf.errors.PyPdfError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    AttributeError,
    RecursionError,
    OSError,
    zlib.error,
)


@dataclass(frozen=True, slots=True)
class FileSettings:
    """TEAMBOT_MAX_IMAGES, TEAMBOT_MAX_ATTACHMENT_BYTES, TEAMBOT_VISION and TEAMBOT_IMAGE_STORE_MB."""

    max_images: int = 4
    max_attachment_bytes: int = 20 * 1024 * 1024
    vision: Vision = "auto"
    image_store_mb: int = 1024

    @property
    def image_store_bytes(self) -> int:
        return self.image_store_mb * 1024 * 1024


@dataclass(slots=True)
class ReadFiles:
    """What a message's files gave: the text that follows the question (file sections, image marks, a line for
    each file not read), the images, and the files not read with why (for the line beside the answer)."""

    sections: list[str] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    #: Set while the turn runs: the model refused the images (TEAMBOT_VISION=auto), or they were switched off.
    vision_note: str | None = None

    @property
    def image_tokens(self) -> int:
        return sum(p.tokens for p in self.pictures)

    def question(self, text: str) -> str:
        """The question as stored and sent: its text, then the files."""
        return "\n\n".join([text, *self.sections]) if self.sections else text

    def notice(self) -> str | None:
        """The lines beside the answer: the files not read, and why; the images the model did not see."""
        lines = []
        if self.problems:
            items = ", ".join(texts.FILE_NOT_READ_ITEM.format(name=n, why=w) for n, w in self.problems)
            lines.append(texts.FILES_NOT_READ.format(files=items))
        if self.vision_note:
            lines.append(self.vision_note)
        return "\n".join(lines) or None


@dataclass(frozen=True, slots=True)
class _Fetched:
    """One file after its download: an image, text, or why it is neither."""

    attachment: Attachment
    picture: Picture | None = None
    text: str | None = None
    #: The text is a PDF's (page markers inside); True with text None: a PDF without text.
    pdf: bool = False
    problem: str | None = None


def classify(name: str, mimetype: str) -> Kind:
    """What a file is by what the platform says of it; ``unknown`` when only its bytes can tell."""
    mime = mimetype.split(";", 1)[0].strip().lower()
    ext = PurePosixPath(name.lower()).suffix.lstrip(".") or name.lower()
    if mime in IMAGE_MIMETYPES or (mime in GENERIC_MIMETYPES and ext in IMAGE_EXTENSIONS):
        return "image"
    if mime == "application/pdf" or ext == "pdf":
        return "pdf"
    if mime.startswith("text/") or mime in TEXT_MIMETYPES or mime.endswith(("+json", "+xml")) or ext in TEXT_EXTENSIONS:
        return "text"
    if mime in GENERIC_MIMETYPES:
        return "unknown"
    return "unsupported"


def looks_binary(data: bytes) -> bool:
    """A NUL byte in the first few kilobytes: no text encoding a person writes in has one (UTF-16 aside)."""
    return b"\x00" in data[:SNIFF_BYTES] and not data.startswith((b"\xff\xfe", b"\xfe\xff"))


def decode_text(data: bytes) -> str:
    """The text of ``data`` in whatever encoding it is in; never raises, whatever the bytes."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start >= len(data) - 3 and exc.reason == "unexpected end of data":
            # UTF-8 cut inside a character (the file was read only up to the budget): drop that last half.
            return clean(data[: exc.start].decode("utf-8"))
        best = charset_normalizer.from_bytes(data).best()
        if best is None or best.encoding.startswith(_SINGLE_BYTE):
            # charset-normalizer often takes Western text (French, a price in euros) for Baltic or Central European:
            # single-byte code pages decode the same bytes to different letters. Windows-1252 is by far the most
            # common of them in files people send, so it wins whenever it reads the bytes without mess (Polish,
            # Russian and the like do not: their cp1252 reading is all mess). A Baltic file is the price.
            western = charset_normalizer.from_bytes(data, cp_isolation=["cp1252"], threshold=0.3).best()
            best = western or best
        # Nothing plausible: every byte still becomes a character (U+FFFD for what UTF-8 cannot read).
        text = str(best) if best is not None else data.decode("utf-8", errors="replace")
    return clean(text)


def pdf_text(data: bytes, max_chars: int) -> str | None:
    """The PDF's text with a page marker before each page, up to about ``max_chars``; None when it has none.

    Raises :class:`ValueError` with a reason for people when it cannot be opened."""
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ValueError(texts.FILE_LOCKED_PDF)
        pages: list[str] = []
        size = 0
        for number, page in enumerate(reader.pages, start=1):
            text = clean(page.extract_text() or "").strip()
            pages.append(f"{texts.PDF_PAGE.format(number=number)}\n{text}")
            size += len(text)
            if size > max_chars:
                break  # the rest could not be shown: no need to parse it
    except pypdf.errors.FileNotDecryptedError:
        raise ValueError(texts.FILE_LOCKED_PDF) from None
    except _PDF_ERRORS as exc:
        if isinstance(exc, ValueError) and str(exc) == texts.FILE_LOCKED_PDF:
            raise
        raise ValueError(texts.FILE_BAD_PDF) from None
    if size == 0:
        return None
    return "\n".join(pages)


def size_text(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size >= 1024 * 1024 else f"{max(1, size // 1024)} KB"


class FileReader:
    """Reads a message's attachments within the limits: how many images, how many bytes a file, the token budget."""

    def __init__(self, settings: FileSettings, counter: TokenCounter) -> None:
        self.settings = settings
        self._counter = counter

    async def read(self, attachments: Sequence[Attachment], budget_tokens: int) -> ReadFiles:
        """The files' text (within ``budget_tokens`` together with the images), images and problems, in order.

        Files are fetched in parallel; a file over the size limit, of a type the bot cannot read, or an image over
        the image cap is never fetched."""
        result = ReadFiles()
        plans: list[tuple[Attachment, Kind, str | None]] = []
        images = 0
        for attachment in attachments:
            kind = classify(attachment.name, attachment.mimetype)
            problem = self._refusal(attachment, kind)
            if problem is None and kind == "image":
                images += 1
                if images > self.settings.max_images:
                    problem = texts.FILE_TOO_MANY_IMAGES.format(count=self.settings.max_images)
            plans.append((attachment, kind, problem))
        char_budget = max(_MIN_DECODE_BYTES, budget_tokens * _BYTES_PER_TOKEN)
        fetched = await asyncio.gather(
            *(self._fetch(a, kind, char_budget) for a, kind, problem in plans if problem is None)
        )
        done = iter(fetched)
        room = budget_tokens
        texts_left = sum(1 for f in fetched if f.text is not None)
        for attachment, _, problem in plans:
            one = _Fetched(attachment, problem=problem) if problem is not None else next(done)
            name = safe_name(attachment.name)
            if one.problem is not None:
                result.problems.append((name, one.problem))
                result.sections.append(texts.FILE_NOT_READ_MARK.format(name=name, why=one.problem))
            elif one.picture is not None:
                result.pictures.append(one.picture)
                room -= one.picture.tokens
                result.sections.append(image_mark(one.picture))
            elif one.text is None:
                result.sections.append(f"{texts.FILE_HEADER.format(name=name)}\n{texts.PDF_NO_TEXT}")
            else:
                # Each text file gets an even share of what is left, so one long log cannot crowd out the rest.
                share = room // max(1, texts_left)
                texts_left -= 1
                section = self._section(name, one.text, share)
                if section is None:
                    result.problems.append((name, texts.FILE_NO_ROOM))
                    result.sections.append(texts.FILE_NOT_READ_MARK.format(name=name, why=texts.FILE_NO_ROOM))
                    continue
                room -= self._counter.count(section)
                result.sections.append(section)
        return result

    def _refusal(self, attachment: Attachment, kind: Kind) -> str | None:
        """Why the file is not even fetched, or None."""
        limit = self.settings.max_attachment_bytes
        if attachment.size is not None and attachment.size > limit:
            return texts.FILE_TOO_BIG.format(size=size_text(attachment.size), limit=size_text(limit))
        if kind == "unsupported":
            return texts.FILE_TYPE
        if kind == "image" and self.settings.vision == "off":
            return texts.FILE_IMAGES_OFF
        return None

    async def _fetch(self, attachment: Attachment, kind: Kind, max_chars: int) -> _Fetched:
        try:
            data = await attachment.fetch()
        except errors.AttachmentError as exc:
            log.info("file %s not read: %s", attachment.file_id, exc)
            return _Fetched(attachment, problem=exc.user_message)
        limit = self.settings.max_attachment_bytes
        if len(data) > limit:  # the adapter caps the download; a fetch that did not is held to the limit here
            too_big = texts.FILE_TOO_BIG.format(size=size_text(len(data)), limit=size_text(limit))
            return _Fetched(attachment, problem=too_big)
        if image_format(data) is not None and kind in ("image", "unknown"):
            if self.settings.vision == "off":
                return _Fetched(attachment, problem=texts.FILE_IMAGES_OFF)
            try:
                return _Fetched(attachment, picture=await asyncio.to_thread(prepare, safe_name(attachment.name), data))
            except NotAnImage as exc:
                log.info("file %s is not a usable image: %s", attachment.file_id, exc)
                return _Fetched(attachment, problem=texts.FILE_BAD_IMAGE)
        if kind == "image":
            return _Fetched(attachment, problem=texts.FILE_BAD_IMAGE)
        if data.startswith(b"%PDF-"):
            try:
                return _Fetched(attachment, text=await asyncio.to_thread(pdf_text, data, max_chars), pdf=True)
            except ValueError as exc:
                return _Fetched(attachment, problem=str(exc))
        if kind == "pdf" or looks_binary(data):
            return _Fetched(attachment, problem=texts.FILE_BAD_PDF if kind == "pdf" else texts.FILE_TYPE)
        # Only what the budget could show is decoded: a 20 MB log costs no more than its first pages.
        return _Fetched(attachment, text=await asyncio.to_thread(decode_text, data[:max_chars]))

    def _section(self, name: str, text: str, share: int) -> str | None:
        """``text`` under its header, cut to ``share`` tokens with a note saying so; None if not even a line fits."""
        header = texts.FILE_HEADER.format(name=name)
        footer = texts.FILE_FOOTER.format(name=name)
        whole = f"{header}\n{text}\n{footer}"
        if self._counter.count(whole) <= share:
            return whole
        total = self._counter.count(text)
        frame = self._counter.count(f"{header}\n\n{footer}\n") + self._counter.count(
            texts.FILE_CUT.format(name=name, shown=total, total=total)
        )
        room = share - frame
        if room < 16:
            return None
        cut = self._counter.truncate(text, room)
        note = texts.FILE_CUT.format(name=name, shown=room, total=total)
        return f"{header}\n{cut}\n{note}\n{footer}"


def image_mark(picture: Picture) -> str:
    """Where the image sits in the stored question: its name for the model, its hash for the store."""
    return f"{texts.IMAGE_MARK.format(name=picture.name)[:-1]} #{picture.sha256}]"


def safe_name(name: str) -> str:
    """A file name as it may stand in the question: one line, no brackets to end a mark early, not too long."""
    cleaned = clean(name).replace("\n", " ").replace("\r", " ").replace("[", "(").replace("]", ")")
    return cleaned.strip()[:200] or "file"
