"""Thumbnails: 320 px JPEG, upright, no EXIF; the evidence bytes stay as they came."""

from __future__ import annotations

import hashlib
from io import BytesIO

import pytest
from PIL import Image, ImageDraw

from accident_service.photos.checks import ImageRejected, PhotoPolicy
from accident_service.photos.inspect import inspect_image_with_preview
from accident_service.photos.thumbnails import THUMBNAIL_MAX_SIDE, make_thumbnail
from tests.photos import images

MAX_PIXELS = PhotoPolicy().max_pixels


def opened(data: bytes) -> Image.Image:
    image = Image.open(BytesIO(data))
    image.load()
    return image


def test_thumbnail_of_a_12mp_photo_is_a_320px_jpeg(photos):
    data = photos.phone_jpeg("rocket")
    facts, preview = inspect_image_with_preview(data, max_pixels=MAX_PIXELS)
    thumbnail = opened(make_thumbnail(preview))
    assert thumbnail.format == "JPEG"
    assert thumbnail.size == (THUMBNAIL_MAX_SIDE, 240)
    assert preview.size == (500, 375)  # the caller's preview is left alone


def sideways_marked_photo() -> tuple[bytes, Image.Image]:
    """A landscape sensor image with a red block top-left, tagged orientation 6."""
    picture = images.phone_photo("camera", (1600, 1200))
    ImageDraw.Draw(picture).rectangle((0, 0, 300, 300), fill=(255, 0, 0))
    return images.encode(picture, exif=images.exif_block(orientation=6)), picture


def test_orientation_is_applied_to_the_thumbnail_only():
    data, _ = sideways_marked_photo()
    digest = hashlib.sha256(data).hexdigest()
    facts, preview = inspect_image_with_preview(data, max_pixels=MAX_PIXELS)

    # From the preview's own EXIF block, and from the orientation the facts carry.
    for thumbnail in (opened(make_thumbnail(preview)), opened(make_thumbnail(preview, orientation=facts.orientation))):
        # Orientation 6 = turn 90 degrees clockwise to view: top-left lands top-right.
        assert thumbnail.size == (240, THUMBNAIL_MAX_SIDE)
        red, green, blue = thumbnail.getpixel((thumbnail.width - 10, 10))
        assert red > 200 and green < 60 and blue < 60
        assert "exif" not in thumbnail.info or thumbnail.getexif().get(0x0112, 1) == 1

    assert hashlib.sha256(data).hexdigest() == digest
    assert (facts.width, facts.height, facts.orientation) == (1600, 1200, 6)
    assert preview.size == (800, 600)  # stored pixels keep their layout (drafted at 1/2)


def test_thumbnail_from_bytes_matches_the_one_from_the_preview():
    data, _ = sideways_marked_photo()
    from_bytes = opened(make_thumbnail(data))
    from_preview = opened(make_thumbnail(inspect_image_with_preview(data, max_pixels=MAX_PIXELS)[1]))
    assert from_bytes.size == from_preview.size == (240, THUMBNAIL_MAX_SIDE)


def test_small_and_transparent_images_are_not_enlarged():
    image = Image.new("RGBA", (200, 100), (0, 0, 255, 128))
    thumbnail = opened(make_thumbnail(images.encode(image, "PNG")))
    assert thumbnail.size == (200, 100)
    assert thumbnail.mode == "RGB"


def test_thumbnail_from_bytes_is_bounded_like_intake(photos):
    with pytest.raises(ImageRejected) as caught:
        make_thumbnail(photos.png_bomb())
    assert caught.value.code == "too_many_pixels"
