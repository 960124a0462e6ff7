"""What a turn sees besides the mention: the files on a message (images, text files, PDFs) and the images kept from
earlier turns. Thread history and replied-to messages join this package too."""

from __future__ import annotations

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
    "MARK",
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
