"""Benchmarks of files on a message: a mention with one 4000x3000 PNG (download from the fake Slack's file host with
the bot token, downscale, re-encode, into the model's image part), and what the image store costs on disk."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import os
import statistics
import time
from pathlib import Path

import aiohttp
from PIL import Image, ImageFilter

from adapters.downloads import FileHosts, download
from bench.core import COUNTER, add_row, percentile
from bot.context import Files, FileSettings, prepare
from bot.messages import Attachment, ConversationKey, IncomingMessage
from bot.store import ImageBlob, open_store
from tests.context.samples import png
from tests.fakes.slack import FakeSlack

#: What a turn leaves the files after the question, at the default budget (8,000 tokens, half for one message).
_BUDGET = 3900


async def image_mention(repeats: int) -> tuple[list[float], int, int]:
    """Seconds per read of a mention's 4000x3000 PNG (fetch + downscale + encode), the PNG's size, and the bytes of
    the image part sent to the model."""
    files = Files(FileSettings(), COUNTER)
    data = png(4000, 3000)
    async with FakeSlack() as slack, aiohttp.ClientSession() as session:
        shared = slack.add_file("photo.png", data, "image/png")
        fetch = functools.partial(
            download,
            session,
            shared["url_private_download"],
            hosts=FileHosts.of([slack.url]),
            max_bytes=FileSettings().max_attachment_bytes,
            headers={"Authorization": f"Bearer {slack.bot_token}"},
        )

        async def fetch_bytes() -> bytes:
            return (await fetch())[0]

        attachment = Attachment("slack:F1", "photo.png", "image/png", len(data), fetch_bytes)
        timings = []
        read = None
        for _ in range(repeats):
            started = time.perf_counter()
            read = await files.read([attachment], _BUDGET)
            timings.append(time.perf_counter() - started)
    assert read is not None and read.pictures
    picture = read.pictures[0]
    part = f"data:{picture.mimetype};base64,{base64.b64encode(picture.data).decode()}"
    return timings, len(data), len(part)


def _photo_like(seed: int) -> bytes:
    """A 1024x768 image with a photo's texture (noise over a gradient), downscaled and encoded as the bot does."""
    base = Image.linear_gradient("L").resize((1024, 768)).convert("RGB")
    noise = Image.merge("RGB", [Image.effect_noise((1024, 768), 50 + seed % 8) for _ in range(3)])
    # Blurred colour noise over a gradient compresses about as a photo does (80-150 KB as JPEG at this size).
    img = Image.blend(base, noise.filter(ImageFilter.GaussianBlur(0.8)), 0.4)
    out = io.BytesIO()
    img.save(out, "PNG", compress_level=1)
    return prepare(f"p{seed}.png", out.getvalue()).data


async def store_cost(workdir: Path, images: int) -> tuple[float, float]:
    """Bytes on disk per image kept (SQLite, after a checkpoint), and the images' own mean size."""
    samples = [_photo_like(n) for n in range(8)]
    db = workdir / "images.db"
    store = await open_store(str(db))
    key = ConversationKey("bench", "T1", "C1")
    try:
        before = _size(db)
        sizes = []
        for n in range(images):
            # Distinct bytes (a changed JPEG comment), so every image is its own row as different photos would be.
            data = samples[n % len(samples)] + n.to_bytes(4, "big")
            sizes.append(len(data))
            row = await store.add_question(IncomingMessage(key, f"m{n}", "U1", "Ada", "look"), 10)
            blob = ImageBlob(hashlib.sha256(data).hexdigest(), "image/jpeg", data)
            await store.add_images(key, row, [blob], cap_bytes=FileSettings().image_store_bytes)
    finally:
        await store.close()
    return (_size(db) - before) / images, statistics.mean(sizes)


def _size(db: Path) -> int:
    return sum(os.path.getsize(p) for p in db.parent.glob(db.name + "*"))


async def run_files(quick: bool, workdir: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    timings, png_bytes, part_bytes = await image_mention(2 if quick else 15)
    add_row(
        rows,
        (
            "mention with one 4000x3000 PNG: download from the file host + downscale + encode (median, p95); "
            "bytes sent to the model",
            f"{statistics.median(timings) * 1000:.0f} ms, {percentile(timings, 95) * 1000:.0f} ms; PNG "
            f"{png_bytes / 1024:,.0f} KB in, image part {part_bytes / 1024:,.0f} KB out (1024x768)",
        ),
    )
    count = 20 if quick else 1000
    per_image, mean = await asyncio.wait_for(store_cost(workdir, count), 600)
    add_row(
        rows,
        (
            f"image store on disk (SQLite, {count:,} photo-like 1024x768 images of {mean / 1024:,.0f} KB each)",
            f"{per_image * 1000 / 1024 / 1024:,.0f} MB per 1,000 images",
        ),
    )
    return rows
