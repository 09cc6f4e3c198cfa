"""Real image files for the emulator's media and the sandbox's phones.

Images are drawn deterministically from a seed: the same seed gives the same
bytes (a re-sent photo is a true duplicate), different seeds give visibly
different, sharp scenes that pass size and blur checks.
"""

from __future__ import annotations

import io
import random
from datetime import datetime

from PIL import Image, ImageDraw, ImageFilter

EXIF_IFD = 0x8769
EXIF_DATETIME = 0x0132
EXIF_DATETIME_ORIGINAL = 0x9003


def make_jpeg(seed: str | int, width: int = 1280, height: int = 960, *, taken_at: datetime | None = None,
              quality: int = 90, blur_radius: float = 0.0) -> bytes:
    """A JPEG of random shapes; ``taken_at`` sets EXIF DateTimeOriginal (camera local time, as phones do).

    ``blur_radius`` > 0 gives a blurred picture (for rejection tests).
    """
    image = _draw_scene(random.Random(f"jpeg:{seed}"), width, height)
    if blur_radius > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur_radius))
    buffer = io.BytesIO()
    options: dict = {"quality": quality}
    if taken_at is not None:
        exif = Image.Exif()
        stamp = taken_at.strftime("%Y:%m:%d %H:%M:%S")
        exif[EXIF_DATETIME] = stamp
        exif.get_ifd(EXIF_IFD)[EXIF_DATETIME_ORIGINAL] = stamp
        options["exif"] = exif
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def make_png(seed: str | int, width: int = 1280, height: int = 960) -> bytes:
    buffer = io.BytesIO()
    _draw_scene(random.Random(f"png:{seed}"), width, height).save(buffer, "PNG")
    return buffer.getvalue()


def make_placeholder_qr(text: str, size: int = 430) -> bytes:
    """A PNG standing in for a QR code image: a grid derived from ``text``, with the text under it."""
    rng = random.Random(f"qr:{text}")
    cells = 25
    cell = (size - 40) // cells
    image = Image.new("L", (size, size + 30), 255)
    draw = ImageDraw.Draw(image)
    for row in range(cells):
        for col in range(cells):
            if rng.random() < 0.5:
                x, y = 20 + col * cell, 20 + row * cell
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=0)
    draw.text((20, size), text[:60], fill=0)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _draw_scene(rng: random.Random, width: int, height: int) -> Image.Image:
    background = tuple(rng.randrange(40, 200) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    scale = max(width, height)
    for _ in range(120):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        w, h = rng.randrange(scale // 40, scale // 6), rng.randrange(scale // 40, scale // 6)
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.random()
        if shape < 0.45:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        elif shape < 0.8:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.line((x0, y0, x0 + w, y0 + h), fill=colour, width=rng.randrange(2, 8))
    # A little sensor-like grain, so flat areas are not unnaturally smooth.
    grain = Image.frombytes("L", (width, height), rng.randbytes(width * height)).convert("RGB")
    return Image.blend(image, grain, 0.06)
