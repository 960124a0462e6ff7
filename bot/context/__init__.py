"""What a turn sees besides the mention: the thread's earlier messages and replied-to messages (:class:`Backfill`
stores them before the question, reading each thread once), and the files on a message (images, text files, PDFs)
with the images kept from earlier turns (:class:`Files`)."""

from __future__ import annotations

from bot.context.backfill import BOT_MARK, READ_TIMEOUT_S, Backfill
from bot.context.files import (
    FileReader,
    FileSettings,
    ReadFiles,
    Vision,
    classify,
    decode_text,
    pdf_text,
    size_text,
)
from bot.context.images import NotAnImage, Picture, image_format, image_tokens, model_size, prepare
from bot.context.prompt import MARK, Files, content_tokens, without_hashes

__all__ = [
    "BOT_MARK",
    "MARK",
    "READ_TIMEOUT_S",
    "Backfill",
    "FileReader",
    "FileSettings",
    "Files",
    "NotAnImage",
    "Picture",
    "ReadFiles",
    "Vision",
    "classify",
    "content_tokens",
    "decode_text",
    "image_format",
    "image_tokens",
    "model_size",
    "pdf_text",
    "prepare",
    "size_text",
    "without_hashes",
]
