"""Decode just enough of an uploaded photo to judge it (the thin Pillow shell).

The intake path never decodes a JPEG at full resolution. ``Image.draft``
lets libjpeg decode at 1/2, 1/4 or 1/8 scale; a *quick look* at the smallest
scale that keeps >= 500 px (1/8 for 12 MP) settles most photos: clearly sharp
ones are accepted, and the same preview feeds the perceptual hash and the
320 px thumbnail. Only a photo that is not clearly sharp gets a *closer look*,
decoded again at >= 1000 px (1/4 for 12 MP), where blur is judged. PNG and
WebP cannot draft, so they are decoded once and bounded by the pixel cap,
read from the header before any pixel is decoded.

Everything the checks need ends up in the frozen :class:`ImageFacts`; the
judging itself is pure and lives in :mod:`accident_service.photos.checks`,
the measures in :mod:`accident_service.photos.measures`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from io import BytesIO
from zoneinfo import ZoneInfo

from PIL import ExifTags, Image

from accident_service.clock import HOME_TIMEZONE
from accident_service.photos.checks import DEFAULT_CLEARLY_SHARP, ImageRejected
from accident_service.photos.measures import (
    JUDGING_SIDE,
    QUICK_SIDE,
    STRUCTURE_FACTOR,
    perceptual_hash,
    sharpness,
    working_gray,
)

__all__ = ["ImageFacts", "inspect_image", "inspect_image_with_preview", "open_image", "decode_preview",
           "parse_exif_time", "perceptual_hash", "sharpness", "PREVIEW_SIDE", "QUICK_SIDE"]

# Format as Pillow names it -> (content type, file extension). MPO is how
# Pillow names a JPEG carrying extra pictures (some phones write them).
ACCEPTED_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "MPO": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
}
_DRAFTABLE = ("JPEG", "MPO")
_JPEG_AND_PNG_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
#: Longer side of the closer look; the blur threshold is calibrated at it.
PREVIEW_SIDE = JUDGING_SIDE


@dataclass(frozen=True)
class ImageFacts:
    """What the checks know about one upload; ``taken_at`` is aware UTC or None.

    ``sharpness`` comes from the quick look (500 px) when ``quick_look`` is
    True (it then cleared ``clearly_sharp``), else from the 1000 px judge.
    """

    format: str
    content_type: str
    extension: str
    width: int
    height: int
    sha256: str
    sharpness: float
    phash: int
    taken_at: datetime | None
    orientation: int
    quick_look: bool = False

    @property
    def capture_time_known(self) -> bool:
        return self.taken_at is not None


def inspect_image(data: bytes, *, max_pixels: int, exif_timezone: str = HOME_TIMEZONE,
                  clearly_sharp: float | None = DEFAULT_CLEARLY_SHARP) -> ImageFacts:
    """Decode ``data`` at reduced scale and return its facts.

    Raises ImageRejected with code ``not_an_image``, ``unsupported_format``,
    ``too_many_pixels`` or ``truncated`` (which also covers otherwise damaged
    files); ValueError if ``max_pixels`` is above Pillow's bomb warning level
    and ZoneInfoNotFoundError for an unknown ``exif_timezone`` (both are
    configuration errors, not the driver's).
    """
    return inspect_image_with_preview(data, max_pixels=max_pixels, exif_timezone=exif_timezone,
                                      clearly_sharp=clearly_sharp)[0]


def inspect_image_with_preview(
    data: bytes, *, max_pixels: int, exif_timezone: str = HOME_TIMEZONE,
    clearly_sharp: float | None = DEFAULT_CLEARLY_SHARP,
) -> tuple[ImageFacts, Image.Image]:
    """Like :func:`inspect_image`, also returning the reduced RGB preview.

    A quick-look sharpness of at least ``clearly_sharp`` ends the work at
    the quick look (None: always take the closer look). The preview (>= 500
    px, or >= 1000 px after a closer look) is not rotated; its EXIF
    orientation is ``facts.orientation``. Raises as :func:`inspect_image`.
    """
    zone = ZoneInfo(exif_timezone)
    image = open_image(data, max_pixels=max_pixels)
    width, height = image.size  # drafting below changes image.size to the preview's
    draftable = image.format in _DRAFTABLE
    preview = decode_preview(image, QUICK_SIDE if draftable else JUDGING_SIDE)
    orientation, taken_at = _read_exif(image, zone)
    gray = working_gray(preview, QUICK_SIDE)
    value, quick = sharpness(gray, structure_factor=STRUCTURE_FACTOR[QUICK_SIDE]), True
    phash = perceptual_hash(gray, orientation=orientation)
    if clearly_sharp is None or value < clearly_sharp:
        if max(preview.size) < min(JUDGING_SIDE, max(width, height)):
            preview = decode_preview(open_image(data, max_pixels=max_pixels), JUDGING_SIDE)
        value, quick = sharpness(working_gray(preview, JUDGING_SIDE)), False
    content_type, extension = ACCEPTED_FORMATS[image.format or ""]
    facts = ImageFacts(
        format="JPEG" if image.format == "MPO" else str(image.format),
        content_type=content_type,
        extension=extension,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
        sharpness=value,
        phash=phash,
        taken_at=taken_at,
        orientation=orientation,
        quick_look=quick,
    )
    return facts, preview


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Open ``data`` reading the header only; check format and pixel count.

    Raises ImageRejected (``not_an_image``, ``unsupported_format``,
    ``too_many_pixels``, ``truncated`` when the header of an accepted format is
    cut off) and ValueError for a ``max_pixels`` above Image.MAX_IMAGE_PIXELS.
    """
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        raise ValueError(f"max_pixels {max_pixels} is above Pillow's bomb warning level")
    try:
        # The JPEG opener also yields MPO, which is not a key of its own.
        image = Image.open(BytesIO(data), formats=["JPEG", "PNG", "WEBP"])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(None, max_pixels) from None
    except Exception:
        # Header parsers fail on hostile bytes in many ways besides
        # UnidentifiedImageError (struct.error, IndexError, SyntaxError, ...).
        raise _unreadable(data) from None
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise _too_many_pixels(pixels, max_pixels)
    return image


def _too_many_pixels(pixels: int | None, max_pixels: int) -> ImageRejected:
    return ImageRejected(
        "too_many_pixels",
        pixels=pixels,
        max_pixels=max_pixels,
        max_megapixels=max_pixels // 1_000_000,
    )


def _unreadable(data: bytes) -> ImageRejected:
    """Tell a damaged accepted file from another format from garbage."""
    if data.startswith(_JPEG_AND_PNG_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return ImageRejected("truncated")
    try:
        # Header parsing only; no pixels of a format we refuse get decoded.
        other = Image.open(BytesIO(data)).format
    except Exception:  # any parser failure just means "not an image we know"
        return ImageRejected("not_an_image")
    return ImageRejected("unsupported_format", format=other)


def _draft_scale(width: int, height: int, side: int) -> int:
    """Largest JPEG scale denominator that keeps the preview's longer side >= ``side``."""
    return next(s for s in (8, 4, 2, 1) if max(width, height) // s >= side or s == 1)


def decode_preview(image: Image.Image, side: int = JUDGING_SIDE) -> Image.Image:
    """Decode at the reduced scale keeping >= ``side`` px, as RGB.

    Raises ImageRejected("truncated") on damaged data.
    """
    scale = _draft_scale(image.width, image.height, side)
    try:
        if image.format in _DRAFTABLE:
            image.draft("RGB", (image.width // scale, image.height // scale))
            image.load()
            return _to_rgb(image)
        image.load()
    except Exception:
        # Pillow signals hostile or cut-off data with many exception types
        # (OSError, SyntaxError, ValueError, zlib.error, struct.error, ...).
        raise ImageRejected("truncated") from None
    # reduce() refuses palette, 1-bit and 16-bit modes, so convert first.
    rgb = _to_rgb(image)
    return rgb.reduce(scale) if scale > 1 else rgb


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit PNG: a plain convert would clip everything above 255 to white.
        image = image.convert("I").point(lambda value: value / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        # Transparent areas would turn black in a JPEG thumbnail; use paper white.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        canvas.info = dict(image.info)
        return canvas
    return image.convert("RGB")


def _read_exif(image: Image.Image, zone: tzinfo) -> tuple[int, datetime | None]:
    """(orientation, capture time); a malformed EXIF block reads as no EXIF."""
    try:
        exif = image.getexif()
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        orientation = exif.get(ExifTags.Base.Orientation, 1)
        taken_at = parse_exif_time(
            sub.get(ExifTags.Base.DateTimeOriginal), sub.get(ExifTags.Base.OffsetTimeOriginal), zone
        ) or parse_exif_time(exif.get(ExifTags.Base.DateTime), sub.get(ExifTags.Base.OffsetTime), zone)
    except Exception:
        # EXIF is advisory: a broken block must never cost the driver the photo.
        return 1, None
    if not isinstance(orientation, int) or orientation not in range(1, 9):
        orientation = 1
    return orientation, taken_at


_EXIF_TIME = re.compile(r"\s*(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_EXIF_OFFSET = re.compile(r"\s*([+-])(\d{2}):(\d{2})\s*$")


def parse_exif_time(value: object, offset: object, zone: tzinfo) -> datetime | None:
    """Parse an EXIF "YYYY:MM:DD HH:MM:SS" into aware UTC; None if absent or bogus.

    EXIF times are local wall-clock times; ``offset`` (OffsetTimeOriginal,
    "+08:00") says which zone when the phone wrote it, otherwise ``zone``
    is assumed. Never raises.
    """
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    match = _EXIF_TIME.match(value)
    if match is None:
        return None
    try:
        local = datetime(*(int(part) for part in match.groups()))
    except ValueError:  # "0000:00:00 00:00:00" and friends
        return None
    if local.year < 1990:
        return None  # factory-reset clocks, not a capture time
    return local.replace(tzinfo=_offset_zone(offset) or zone).astimezone(UTC)


def _offset_zone(offset: object) -> tzinfo | None:
    if isinstance(offset, bytes):
        offset = offset.decode("ascii", "replace")
    match = _EXIF_OFFSET.match(offset) if isinstance(offset, str) else None
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    if int(hours) > 14 or int(minutes) > 59:
        return None
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    return timezone(-delta if sign == "-" else delta)
