"""Test photographs built from scikit-image's bundled samples (no network).

The samples are real photographs of 300-640 px; :func:`phone_photo` crops
them to the phone's aspect ratio and upscales them to phone resolution, so a
"sharp" test photo is as soft as an 8-10x enlargement: the hardest sharp case
the blur check will meet. Blur that a shaking hand gives is applied as a
Gaussian whose sigma is stated in *phone* pixels; it is applied to the sample
before upscaling (sigma scaled down by the same factor), which is the same
image up to resampling error and ten times cheaper than blurring 12 MP.
"""

from __future__ import annotations

import struct
import zlib
from datetime import datetime
from io import BytesIO

from PIL import ExifTags, Image, ImageFilter
from skimage import data as samples

PHONE_SIZE = (4000, 3000)  # 12 MP, the common phone default
#: Photographs of ordinary scenes; used for calibration and its tests.
SHARPNESS_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "motorcycle")
#: A phone shake at 1/15 s smears over 0.2 % of the frame or more.
SHAKE_SIGMA = 8.0


def sample(name: str) -> Image.Image:
    """An RGB scikit-image sample; "motorcycle" is the left stereo view."""
    if name == "motorcycle":
        array = samples.stereo_motorcycle()[0]
    elif name == "motorcycle_right":
        array = samples.stereo_motorcycle()[1]
    else:
        array = getattr(samples, name)()
    return Image.fromarray(array).convert("RGB")


def phone_photo(name: str, size: tuple[int, int] = PHONE_SIZE, *, blur_sigma: float = 0.0) -> Image.Image:
    """Sample ``name`` cropped to ``size``'s aspect and upscaled to ``size``."""
    source = _crop_to_aspect(sample(name), size)
    if blur_sigma:
        source = source.filter(ImageFilter.GaussianBlur(blur_sigma * source.width / size[0]))
    return source.resize(size, Image.Resampling.LANCZOS)


def _crop_to_aspect(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    width, height = image.size
    target = size[0] / size[1]
    if width / height > target:
        new_width = round(height * target)
        left = (width - new_width) // 2
        return image.crop((left, 0, left + new_width, height))
    new_height = round(width / target)
    top = (height - new_height) // 2
    return image.crop((0, top, width, top + new_height))


def exif_block(
    *,
    taken_at: datetime | None = None,
    offset: str | None = None,
    orientation: int | None = None,
    as_plain_datetime: bool = False,
) -> Image.Exif:
    """EXIF with a naive local capture time (as phones write it) and/or orientation.

    ``as_plain_datetime`` writes IFD0 DateTime instead of DateTimeOriginal.
    """
    exif = Image.Exif()
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    if taken_at is not None:
        stamp = taken_at.strftime("%Y:%m:%d %H:%M:%S")
        if as_plain_datetime:
            exif[ExifTags.Base.DateTime] = stamp
        else:
            sub = exif.get_ifd(ExifTags.IFD.Exif)
            sub[ExifTags.Base.DateTimeOriginal] = stamp
            if offset is not None:
                sub[ExifTags.Base.OffsetTimeOriginal] = offset
    return exif


def encode(image: Image.Image, fmt: str = "JPEG", *, exif: Image.Exif | None = None, **options: object) -> bytes:
    """Encode ``image``; JPEG defaults to quality 90 like a phone camera."""
    if fmt == "JPEG":
        options.setdefault("quality", 90)
    if exif is not None:
        options["exif"] = exif
    output = BytesIO()
    image.save(output, fmt, **options)
    return output.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` zero pixels, tens of KB on disk.

    Written chunk by chunk with zlib so building it never holds the pixels.
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    rows_per_block = 500
    compressor = zlib.compressobj(6)
    block = row * rows_per_block
    parts = [compressor.compress(block) for _ in range(height // rows_per_block)]
    parts.append(compressor.compress(row * (height % rows_per_block)))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def png_header_with_garbage(width: int, height: int) -> bytes:
    """A PNG whose header promises ``width`` x ``height`` RGB but whose data is junk.

    Rejected as too large rather than damaged only if the size is checked
    before decoding starts.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"not zlib data at all" * 10)
        + _png_chunk(b"IEND", b"")
    )
