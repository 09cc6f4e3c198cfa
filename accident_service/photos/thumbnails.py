"""Small JPEG previews for the desk; the evidence bytes themselves are never touched."""

from __future__ import annotations

from io import BytesIO

from PIL import Image, ImageOps

from accident_service.photos.checks import DEFAULT_MAX_PIXELS
from accident_service.photos.inspect import QUICK_SIDE, decode_preview, open_image
from accident_service.photos.measures import ORIENTATION_TRANSPOSE

THUMBNAIL_MAX_SIDE = 320
THUMBNAIL_CONTENT_TYPE = "image/jpeg"


def make_thumbnail(
    source: bytes | Image.Image,
    max_side: int = THUMBNAIL_MAX_SIDE,
    *,
    quality: int = 80,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    orientation: int | None = None,
) -> bytes:
    """Return JPEG bytes at most ``max_side`` px on the longer side, upright.

    ``source`` is either the preview from ``inspect.inspect_image_with_preview``
    (cheap: no second decode; pass ``orientation=facts.orientation`` to spare
    a second EXIF parse) or the original bytes, which are then decoded at
    reduced scale under the same ``max_pixels`` cap. The EXIF orientation is
    applied to the thumbnail only; the thumbnail carries no EXIF (no GPS).
    Never enlarges. Raises ImageRejected when given bytes it cannot decode.
    """
    if isinstance(source, bytes):
        source = decode_preview(open_image(source, max_pixels=max_pixels), QUICK_SIDE)
    elif source.mode not in ("RGB", "L"):
        source = source.convert("RGB")  # reduce() refuses palette and 16-bit modes
    # Shrink by a whole factor first (a cheap box average), then resample the
    # remaining < 2x with bilinear: a Lanczos pass straight from the preview
    # costs ~10x more (13 ms against 1.9 ms) and looks the same at 320 px.
    # reduce/resize return new images that keep the EXIF block, so the
    # caller's image is never changed and the orientation can be applied last.
    factor = max(1, max(source.size) // max_side)
    small = source.reduce(factor) if factor > 1 else source
    ratio = max_side / max(small.size)
    if ratio < 1:
        size = (max(1, round(small.width * ratio)), max(1, round(small.height * ratio)))
        small = small.resize(size, Image.Resampling.BILINEAR)
    if orientation is not None:
        transpose = ORIENTATION_TRANSPOSE.get(orientation)
        thumbnail = small.transpose(transpose) if transpose is not None else small
    else:
        try:
            thumbnail = ImageOps.exif_transpose(small)
        except Exception:
            # A corrupt EXIF block: show the pixels as stored, as inspect reads
            # the orientation as 1 then too.
            thumbnail = small
    if thumbnail.mode != "RGB":
        thumbnail = thumbnail.convert("RGB")
    output = BytesIO()
    thumbnail.save(output, "JPEG", quality=quality, optimize=False)
    return output.getvalue()
