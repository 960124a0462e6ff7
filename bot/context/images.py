"""Images for the model: checked by their bytes, downscaled to what the model can use, re-encoded, and priced.

OpenAI's vision models look at an image at "high" detail by first fitting it within 2048x2048, then shrinking it
until its shortest side is at most 768 pixels, and charge 85 tokens plus 170 per 512-pixel tile of that size. A
bigger image costs upload and encoding time and buys nothing, so the bot sends exactly that size.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

#: The size the model sees an image at (OpenAI, detail "high"): fit within this square first...
FIT_SIDE = 2048
#: ...then the shortest side at most this.
SHORT_SIDE = 768
TILE = 512
BASE_TOKENS = 85
TILE_TOKENS = 170
#: What the image's bytes start with, per format the model takes (PNG, JPEG, GIF, WebP).
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)
#: More pixels than this is refused before decoding: a small file can claim a huge canvas (a decompression bomb).
#: 50 million holds a 48-megapixel phone photo, and stays below Pillow's own warning (89 million).
MAX_PIXELS = 50_000_000
JPEG_QUALITY = 85


class NotAnImage(ValueError):
    """The bytes are not an image the model takes, or cannot be decoded."""


@dataclass(frozen=True, slots=True)
class Picture:
    """An image as the model gets it: downscaled and re-encoded bytes, content-addressed by ``sha256``."""

    name: str
    mimetype: str
    data: bytes
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def tokens(self) -> int:
        return image_tokens(self.width, self.height)


def image_format(data: bytes) -> str | None:
    """``png``, ``jpeg``, ``gif`` or ``webp`` when the bytes are one of those, else None (the mimetype may lie)."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def model_size(width: int, height: int) -> tuple[int, int]:
    """The size the model looks at: within FIT_SIDExFIT_SIDE, then the shortest side at most SHORT_SIDE."""
    scale = min(1.0, FIT_SIDE / max(width, height))
    scale *= min(1.0, SHORT_SIDE / (min(width, height) * scale))
    return max(1, round(width * scale)), max(1, round(height * scale))


def image_tokens(width: int, height: int) -> int:
    """OpenAI's published estimate for an image at high detail: 85 + 170 per 512-pixel tile of its model size."""
    w, h = model_size(width, height)
    return BASE_TOKENS + TILE_TOKENS * math.ceil(w / TILE) * math.ceil(h / TILE)


def prepare(name: str, data: bytes) -> Picture:
    """``data`` downscaled to the model's size and re-encoded: PNG where it keeps something JPEG would spoil
    (transparency, few colours: screenshots, diagrams), JPEG otherwise. CPU-bound: run it in a thread."""
    if image_format(data) is None:
        raise NotAnImage("not a PNG, JPEG, GIF or WebP image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise NotAnImage(f"{width}x{height} pixels is more than the bot decodes")
            target = model_size(width, height)
            if img.format == "JPEG":
                # Decodes at 1/2, 1/4 or 1/8 scale straight away when that still covers the target: much faster.
                img.draft("RGB", target)
            img.seek(0)  # an animated GIF or WebP: its first frame
            frame: Image.Image = img
            if frame.mode not in ("L", "LA", "RGB", "RGBA"):
                frame = _normal_mode(frame)  # palette, 16-bit, CMYK: reduce() takes the common modes only
            factor = min(frame.width // target[0], frame.height // target[1])
            if factor > 1:
                # A box average by a whole factor first (cheap), then Lanczos over the few pixels left: for a
                # 4000x3000 PNG a fifth of the time of Lanczos over the full image, and as sharp at this size.
                frame = frame.reduce(factor)
            frame = _normal_mode(frame)
            if frame.size != target:
                frame = frame.resize(target, Image.Resampling.LANCZOS)
            return _encode(name, frame)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        # Pillow reports a truncated or corrupt file as OSError (or SyntaxError from some decoders).
        raise NotAnImage(f"cannot decode the image: {type(exc).__name__}") from None


def _normal_mode(img: Image.Image) -> Image.Image:
    transparent = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if transparent:
        rgba = img.convert("RGBA")
        # An alpha channel that is opaque everywhere changes nothing: the image can go as a JPEG.
        low = rgba.getchannel("A").getextrema()[0]
        return rgba if isinstance(low, int) and low < 255 else rgba.convert("RGB")
    wanted = "L" if img.mode in ("1", "L", "I;16", "I") else "RGB"
    return img if img.mode == wanted else img.convert(wanted)


def _encode(name: str, frame: Image.Image) -> Picture:
    out = io.BytesIO()
    few_colours = frame.getcolors(256) is not None
    if frame.mode == "RGBA" or few_colours:
        frame.save(out, "PNG", optimize=False)
        mimetype = "image/png"
    else:
        frame.save(out, "JPEG", quality=JPEG_QUALITY, optimize=False)
        mimetype = "image/jpeg"
    return Picture(name, mimetype, out.getvalue(), frame.width, frame.height)
