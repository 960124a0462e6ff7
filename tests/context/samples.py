"""Real files made in the tests: a photo-like PNG, a PDF whose text pypdf extracts, text in legacy encodings, a zip."""

from __future__ import annotations

import io
import zipfile

from PIL import Image, ImageDraw


def png(width: int = 4000, height: int = 3000) -> bytes:
    """A PNG with many colours (a gradient with shapes), like a photo or a rich screenshot."""
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for n in range(12):
        x = n * width // 12
        draw.ellipse((x, height // 4, x + width // 10, height // 2), fill=(40 + n * 15, 90, 200 - n * 10))
    out = io.BytesIO()
    img.save(out, "PNG", compress_level=1)
    return out.getvalue()


def small_png(colour: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def pdf(*pages: str) -> bytes:
    """A minimal valid PDF, written by hand: one page per string, its text in Helvetica."""
    count = len(pages)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids ["
        + b" ".join(f"{3 + 2 * i} 0 R".encode() for i in range(count))
        + f"] /Count {count} >>".encode(),
    ]
    font = 3 + 2 * count
    for i, text in enumerate(pages):
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 18 Tf 72 700 Td ({escaped}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def zip_file() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("inside.txt", "hidden text")
    return out.getvalue()


#: Text that only decodes right in its own encoding: cp1252's curly quotes and dashes, Shift-JIS's kana and kanji.
CP1252_TEXT = "Caf\u00e9 r\u00e9sum\u00e9 \u2013 \u201cna\u00efve\u201d d\u00e9j\u00e0 vu, 5\u20ac each. " * 20
SHIFT_JIS_TEXT = (
    "\u3053\u3093\u306b\u3061\u306f\u3001\u4e16\u754c\u3002\u30c6\u30b9\u30c8\u306e\u30d5\u30a1\u30a4\u30eb\u3067\u3059\u3002"
    * 20
)
