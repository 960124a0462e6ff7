"""The prompt's images: the marks in stored questions made into image parts, within the image cap, for the models
that can see them (TEAMBOT_VISION), and the store that keeps the images between turns."""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import Sequence
from typing import Any

from PIL import Image, UnidentifiedImageError

from bot import errors, texts
from bot.context.files import FileReader, FileSettings, ReadFiles
from bot.context.images import image_tokens
from bot.llm import ChatMessage, TokenCounter
from bot.messages import Attachment, ConversationKey
from bot.store import ImageBlob, Store

log = logging.getLogger(__name__)

#: An image's mark in a stored question (see :func:`bot.context.files.image_mark`): its name and its hash.
MARK = re.compile(r"\[Image: (?P<name>[^\]\n]*) #(?P<hash>[0-9a-f]{64})\]")
_MARK_START = "[Image: "
#: An image part whose size cannot be read counts as a 1024x768 one (765 tokens), the size most images come to.
_DEFAULT_IMAGE_TOKENS = image_tokens(1024, 768)


class Files:
    """What the core asks of bot.context about files: read a message's attachments, keep its images, build the
    prompt's image parts, and learn which models cannot see images.

    Which models refused image parts is remembered in memory, per model name: after a restart each such model is
    asked once more, and refuses once more (one extra request), which is cheaper than a table for it.
    """

    def __init__(self, settings: FileSettings, counter: TokenCounter) -> None:
        self.settings = settings
        self._reader = FileReader(settings, counter)
        self._counter = counter
        self._blind: set[str] = set()

    async def read(self, attachments: Sequence[Attachment], budget_tokens: int) -> ReadFiles:
        return await self._reader.read(attachments, budget_tokens)

    async def keep(self, store: Store, key: ConversationKey, message: int, files: ReadFiles) -> None:
        """Store the images of the question stored as row ``message``, so that later turns show them again."""
        if files.pictures:
            blobs = [ImageBlob(p.sha256, p.mimetype, p.data) for p in files.pictures]
            await store.add_images(key, message, blobs, cap_bytes=self.settings.image_store_bytes)

    @staticmethod
    def marked(messages: Sequence[ChatMessage]) -> bool:
        """Whether any message holds an image mark: only then is there anything to do (no await otherwise)."""
        return any(
            isinstance(m.get("content"), str) and _MARK_START in m["content"] and MARK.search(m["content"])
            for m in messages
        )

    def sees_images(self, model: str) -> bool:
        return self.settings.vision != "off" and not (self.settings.vision == "auto" and model in self._blind)

    async def prompt(
        self, prompt: list[ChatMessage], store: Store, model: str, files: ReadFiles | None
    ) -> list[ChatMessage]:
        """``prompt`` with each image mark made into the image itself (newest first, at most TEAMBOT_MAX_IMAGES over
        the whole prompt; none for a model that cannot see them), loading from the store what this turn did not
        read. Marks whose image is not shown say why, so the model knows an image was there."""
        hits: list[tuple[int, str]] = []
        for index in range(len(prompt) - 1, -1, -1):
            content = prompt[index].get("content")
            if prompt[index].get("role") == "user" and isinstance(content, str) and _MARK_START in content:
                hits.extend((index, m.group("hash")) for m in MARK.finditer(content))
        sees = self.sees_images(model)
        if files is not None and files.pictures and not sees:
            off = self.settings.vision == "off"
            files.vision_note = texts.VISION_OFF if off else texts.VISION_UNSUPPORTED.format(model=model)
        shown: list[str] = []
        if sees:
            for _, digest in hits:
                if digest not in shown and len(shown) < self.settings.max_images:
                    shown.append(digest)
        known = {p.sha256: ImageBlob(p.sha256, p.mimetype, p.data) for p in files.pictures} if files else {}
        wanted = [h for h in shown if h not in known]
        if wanted:
            known.update(await store.load_images(wanted))
        why = texts.IMAGE_OFF if self.settings.vision == "off" else texts.IMAGE_BLIND
        if sees:
            why = texts.IMAGE_OVER_CAP.format(count=self.settings.max_images)
        out = list(prompt)
        for index in sorted({i for i, _ in hits}):
            out[index] = {**prompt[index], "content": _parts(prompt[index]["content"], set(shown), known, why)}
        return out

    def refused(self, exc: errors.LLMError, prompt: Sequence[ChatMessage], model: str) -> bool:
        """Whether ``exc`` is ``model`` refusing the prompt's images (TEAMBOT_VISION=auto): then it is remembered,
        and the caller asks again once, without them."""
        if self.settings.vision != "auto" or not isinstance(exc, errors.BadRequest) or model in self._blind:
            return False
        if exc.param is not None and not exc.param.startswith("messages"):
            return False  # the server named another parameter: not about the images
        if not any(_image_parts(m) for m in prompt):
            return False
        self._blind.add(model)
        log.warning("the model %s refused image parts (%s); it gets no images from now on", model, exc)
        return True

    def prompt_tokens(self, prompt: Sequence[ChatMessage]) -> int:
        """An estimate of the prompt's tokens, image parts counted with the tile formula."""
        return sum(content_tokens(self._counter, m.get("content")) for m in prompt)


def without_hashes(text: str) -> str:
    """``text`` with its image marks as the model reads them (``[Image: name]``): the store's hashes left out."""
    if _MARK_START not in text:
        return text
    return MARK.sub(lambda m: texts.IMAGE_MARK.format(name=m.group("name")), text)


def content_tokens(counter: TokenCounter, content: Any) -> int:
    """A message's tokens, whether its content is text or a list of parts."""
    if isinstance(content, str):
        return counter.count_message(content)
    if not isinstance(content, list):
        return counter.count_message("")
    total = counter.count_message("")
    for part in content:
        if part.get("type") == "text":
            total += counter.count(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            total += _part_tokens(str((part.get("image_url") or {}).get("url", "")))
    return total


def _part_tokens(url: str) -> int:
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=False)
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            return image_tokens(*img.size)
    except (IndexError, ValueError, OSError, UnidentifiedImageError):
        return _DEFAULT_IMAGE_TOKENS


def _image_parts(message: ChatMessage) -> list[dict[str, Any]]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [p for p in content if isinstance(p, dict) and p.get("type") == "image_url"]


def _parts(content: str, shown: set[str], known: dict[str, ImageBlob], why: str) -> str | list[dict[str, Any]]:
    """The text with its marks: each shown image right after its mark (as an image part), the others' marks saying
    why they are not shown; plain text when no image is shown."""
    parts: list[dict[str, Any]] = []
    text: list[str] = []
    position = 0
    for match in MARK.finditer(content):
        text.append(content[position : match.start()])
        position = match.end()
        name, digest = match.group("name"), match.group("hash")
        blob = known.get(digest) if digest in shown else None
        if blob is None:
            reason = texts.IMAGE_GONE if digest in shown else why
            text.append(texts.IMAGE_NOT_SHOWN.format(name=name, why=reason))
            continue
        text.append(texts.IMAGE_MARK.format(name=name))
        parts.append({"type": "text", "text": "".join(text)})
        text = []
        url = f"data:{blob.mimetype};base64,{base64.b64encode(blob.data).decode('ascii')}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    text.append(content[position:])
    rest = "".join(text)
    if not parts:
        return rest
    if rest:
        parts.append({"type": "text", "text": rest})
    return parts
