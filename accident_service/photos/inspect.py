"""Decode just enough of an uploaded photo to judge it (the thin Pillow shell).

The intake path never decodes a JPEG at full resolution: ``Image.draft`` lets
libjpeg decode at 1/2, 1/4 or 1/8 scale, aiming at a *preview* of about
1000 px on the longer side. That preview feeds the sharpness measure, the
perceptual hash and the 320 px thumbnail. PNG and WebP cannot draft, so they
are bounded by the pixel cap, read from the header before any pixel is decoded.

Everything the checks need ends up in the frozen :class:`ImageFacts`; the
judging itself is pure and lives in :mod:`accident_service.photos.checks`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from io import BytesIO
from zoneinfo import ZoneInfo

import numpy as np
from PIL import ExifTags, Image

from accident_service.photos.checks import ImageRejected

# Format as Pillow names it -> (content type, file extension). MPO is how
# Pillow names a JPEG carrying extra pictures (some phones write them).
ACCEPTED_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", "jpg"),
    "MPO": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
}
_JPEG_AND_PNG_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
#: Longer side the preview aims at; the sharpness calibration is tied to it.
PREVIEW_SIDE = 1000
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class ImageFacts:
    """What the checks know about one upload; ``taken_at`` is aware UTC or None."""

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

    @property
    def capture_time_known(self) -> bool:
        return self.taken_at is not None


def inspect_image(data: bytes, *, max_pixels: int, exif_timezone: str = "Asia/Shanghai") -> ImageFacts:
    """Decode ``data`` at reduced scale and return its facts.

    Raises ImageRejected with code ``not_an_image``, ``unsupported_format``,
    ``too_many_pixels`` or ``truncated`` (which also covers otherwise damaged
    files); ValueError if ``max_pixels`` is above Pillow's bomb warning level
    and ZoneInfoNotFoundError for an unknown ``exif_timezone`` (both are
    configuration errors, not the driver's).
    """
    return inspect_image_with_preview(data, max_pixels=max_pixels, exif_timezone=exif_timezone)[0]


def inspect_image_with_preview(
    data: bytes, *, max_pixels: int, exif_timezone: str = "Asia/Shanghai"
) -> tuple[ImageFacts, Image.Image]:
    """Like :func:`inspect_image`, also returning the reduced RGB preview.

    The preview is not rotated; it keeps the EXIF block so that
    ``thumbnails.make_thumbnail`` can apply the orientation. Raises as
    :func:`inspect_image` does.
    """
    image = open_image(data, max_pixels=max_pixels)
    width, height = image.size  # drafting below changes image.size to the preview's
    preview = decode_preview(image)
    orientation, taken_at = _read_exif(image, ZoneInfo(exif_timezone))
    gray = _working_gray(preview)
    content_type, extension = ACCEPTED_FORMATS[image.format or ""]
    facts = ImageFacts(
        format="JPEG" if image.format == "MPO" else str(image.format),
        content_type=content_type,
        extension=extension,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
        sharpness=sharpness(gray),
        phash=perceptual_hash(gray, orientation=orientation),
        taken_at=taken_at,
        orientation=orientation,
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


def _draft_scale(width: int, height: int) -> int:
    """Largest JPEG scale denominator that keeps the preview >= PREVIEW_SIDE."""
    return next(s for s in (8, 4, 2, 1) if max(width, height) // s >= PREVIEW_SIDE or s == 1)


def decode_preview(image: Image.Image) -> Image.Image:
    """Decode at reduced scale; raises ImageRejected("truncated") on damaged data."""
    scale = _draft_scale(image.width, image.height)
    try:
        if image.format in ("JPEG", "MPO"):
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


def _working_gray(preview: Image.Image) -> Image.Image:
    """Grayscale at <= PREVIEW_SIDE px so the measures see one scale for all inputs."""
    gray = preview.convert("L")
    longer = max(gray.size)
    if longer > PREVIEW_SIDE:
        ratio = PREVIEW_SIDE / longer
        size = (max(1, round(gray.width * ratio)), max(1, round(gray.height * ratio)))
        gray = gray.resize(size, Image.Resampling.BOX)
    return gray


def sharpness(gray: Image.Image) -> float:
    """Fine-detail energy over coarse-structure energy (x1000); higher is sharper.

    Works on the <= 1000 px grayscale working image, so a 12 MP photo (drafted
    at 1/4) and a 1440 px chat-app photo are judged at one scale. Dividing by
    the coarse band makes it a *ratio* that plain Laplacian variance is not:
    on the photos below, Laplacian variance of sharp ones spread over 7-446
    and overlapped the shaken ones; this measure separates them 3.4x.

    Calibration (``python benchmarks/photo_check.py --calibrate``): scikit-image
    sample photographs cropped to 4:3, upscaled to 4000x3000, JPEG q90, a
    Gaussian blur of sigma px applied at 12 MP (a shaking hand at 1/15 s gives
    sigma 8 or more), measured through ``inspect_image``::

        photo        sharp  sigma4  sigma8  sigma12  sigma16
        astronaut     20.6     5.6    0.71     0.13     0.04
        coffee        56.0    10.9    0.90     0.13     0.03
        chelsea       11.5     3.5    0.33     0.05     0.02
        rocket       221.8    36.5    1.74     0.15     0.04
        camera        48.9    10.4    1.22     0.25     0.06
        motorcycle    82.2    15.8    1.53     0.24     0.06
        coins         21.3     7.4    0.95     0.14     0.03
        brick         10.3     3.9    0.85     0.24     0.08
        gravel        74.0    22.2    2.99     0.51     0.13

    ``PhotoPolicy.min_sharpness`` = 5.0: 2.1x below the softest sharp photo
    (brick), 1.7x above the sharpest sigma-8 shake (gravel); sigma 4 is the
    grey zone. The samples are 8-10x enlargements, so the "sharp" column is
    the worst case; a real phone photo keeps more fine detail and scores higher.

    Known limits: the measure is isotropic, so a straight one-way motion
    streak keeps the detail across it (40 px streaks scored 3-74, i.e. often
    passed); strong sensor noise in dark photos reads as detail beyond the
    half-grey-level coring.
    """
    if min(gray.size) < 24:
        return 0.0  # nothing to judge; such images fail the size check anyway
    fine = _fine_detail_energy(gray)
    return 1000.0 * fine / max(_structure_energy(gray), 1.0)


def _fine_detail_energy(gray: Image.Image, strip_rows: int = 128) -> float:
    """Mean square of what a 3x3 binomial blur removes, cored by half a grey level.

    The coring drops rounding and JPEG noise, which would otherwise give a
    blurred photo a floor of fake "detail". Worked in strips of rows: the
    temporaries stay small and are reused, which on our VMs is 4x faster
    than whole-image arrays (fresh memory pages are expensive there).
    """
    pixels = np.asarray(gray)
    total, count = 0.0, 0
    for top in range(0, pixels.shape[0] - 2, strip_rows):
        strip = pixels[top : top + strip_rows + 2].astype(np.float32)
        middle = strip[:, 1:-1]
        rows = strip[:, :-2] + strip[:, 2:]
        rows += middle
        rows += middle
        residual = rows[:-2] + rows[2:]
        residual += rows[1:-1]
        residual += rows[1:-1]
        residual *= -1.0 / 16.0  # now minus the blurred strip
        residual += strip[1:-1, 1:-1]
        np.abs(residual, out=residual)
        residual -= 0.5
        np.maximum(residual, 0.0, out=residual)
        flat = residual.ravel()
        total += float(np.dot(flat, flat))
        count += flat.size
    return total / count


def _structure_energy(gray: Image.Image) -> float:
    """Energy of the band of ~16-32 px structures (at the 1000 px scale).

    Blur of any plausible size leaves this band alone, so dividing by it
    cancels most of the photo's own contrast and texture.
    """
    factor = max(1, min(8, min(gray.size) // 24))
    coarse = np.asarray(gray.reduce(factor) if factor > 1 else gray, dtype=np.float32)
    once = _binomial5(coarse)
    four_times = _binomial5(_binomial5(_binomial5(once)))
    band = once[6:-6, 6:-6] - four_times
    return float(np.mean(band * band))


def _binomial5(pixels: np.ndarray) -> np.ndarray:
    """Separable [1 4 6 4 1]/16 blur (a Gaussian of sigma 1), valid part only."""
    rows = pixels[:, :-4] + 4 * pixels[:, 1:-3] + 6 * pixels[:, 2:-2] + 4 * pixels[:, 3:-1] + pixels[:, 4:]
    return (rows[:-4] + 4 * rows[1:-3] + 6 * rows[2:-2] + 4 * rows[3:-1] + rows[4:]) / 256.0


def _dct_matrix(size: int) -> np.ndarray:
    k = np.arange(size)
    matrix = np.sqrt(2.0 / size) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * size))
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT32 = _dct_matrix(32)


def perceptual_hash(gray: Image.Image, *, orientation: int = 1) -> int:
    """64-bit pHash: signs of the lowest 8x8 DCT frequencies against their median.

    Computed upright (EXIF orientation applied), so the same scene sent with
    a different orientation tag still matches. Compare with
    ``checks.hamming_distance``.
    """
    small = gray.resize((32, 32), Image.Resampling.BOX)
    if orientation in _ORIENTATION_TRANSPOSE:
        small = small.transpose(_ORIENTATION_TRANSPOSE[orientation])
    pixels = np.asarray(small, dtype=np.float64)
    low = (_DCT32 @ pixels @ _DCT32.T)[:8, :8].ravel()
    bits = np.packbits(low > np.median(low))
    return int.from_bytes(bits.tobytes(), "big")
