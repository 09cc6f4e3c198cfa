"""The Pillow shell: formats, bombs, damaged files, reduced decoding, EXIF, measures."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from io import BytesIO
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter

from accident_service.photos.checks import ImageRejected, PhotoPolicy, hamming_distance
from accident_service.photos.inspect import (
    PREVIEW_SIDE,
    QUICK_SIDE,
    inspect_image,
    inspect_image_with_preview,
    parse_exif_time,
    sharpness,
)
from accident_service.photos.thumbnails import make_thumbnail
from tests.photos import images

MAX_PIXELS = PhotoPolicy().max_pixels
SHANGHAI = ZoneInfo("Asia/Shanghai")


def rejection_code(data: bytes, max_pixels: int = MAX_PIXELS) -> str:
    with pytest.raises(ImageRejected) as caught:
        inspect_image(data, max_pixels=max_pixels)
    return caught.value.code


# --- calibration: the threshold separates real sharp and shaken photos -------


@pytest.mark.parametrize("name", images.SHARPNESS_SOURCES)
def test_sharp_12mp_photo_clears_the_blur_threshold_with_margin(photos, name):
    facts = inspect_image(photos.phone_jpeg(name), max_pixels=MAX_PIXELS, clearly_sharp=None)
    assert not facts.quick_look
    assert facts.sharpness >= 1.5 * PhotoPolicy().min_sharpness


@pytest.mark.parametrize("name", images.SHARPNESS_SOURCES)
def test_sharp_12mp_photo_is_settled_by_the_quick_look(photos, name):
    facts = inspect_image(photos.phone_jpeg(name), max_pixels=MAX_PIXELS)
    assert facts.quick_look
    assert facts.sharpness >= 1.1 * PhotoPolicy().clearly_sharp


@pytest.mark.parametrize("name", images.SHARPNESS_SOURCES)
def test_shaken_12mp_photo_falls_below_the_blur_threshold_with_margin(photos, name):
    data = photos.phone_jpeg(name, blur_sigma=images.SHAKE_SIGMA)
    facts = inspect_image(data, max_pixels=MAX_PIXELS)
    assert not facts.quick_look  # judged at 1000 px after the quick look was unsure
    assert facts.sharpness <= PhotoPolicy().min_sharpness / 1.5


@pytest.mark.parametrize("name", ["chelsea", "brick", "rocket"])
def test_the_quick_look_never_accepts_what_the_judge_rejects(photos, name):
    """Softly shaken (sigma 4: the grey zone) photos of the calibration's weakest subjects."""
    data = photos.phone_jpeg(name, blur_sigma=4)
    facts = inspect_image(data, max_pixels=MAX_PIXELS)
    judged = inspect_image(data, max_pixels=MAX_PIXELS, clearly_sharp=None)
    assert not facts.quick_look or judged.sharpness >= PhotoPolicy().min_sharpness
    assert facts.quick_look or facts == judged


def test_sharpness_falls_as_blur_grows(photos):
    preview = inspect_image_with_preview(photos.medium_jpeg("coffee"), max_pixels=MAX_PIXELS)[1]
    gray = preview.convert("L")
    measured = [sharpness(gray.filter(ImageFilter.GaussianBlur(sigma)) if sigma else gray) for sigma in (0, 1, 2, 4)]
    assert measured == sorted(measured, reverse=True)


def test_flat_and_tiny_images_have_no_sharpness():
    assert sharpness(Image.new("L", (800, 600), 128)) == 0.0
    assert sharpness(Image.new("L", (10, 10), 128)) == 0.0


# --- facts of good photos ----------------------------------------------------


def test_12mp_jpeg_facts_come_from_a_reduced_decode(photos):
    data = photos.phone_jpeg("astronaut")
    facts, preview = inspect_image_with_preview(data, max_pixels=MAX_PIXELS)
    assert (facts.format, facts.content_type, facts.extension) == ("JPEG", "image/jpeg", "jpg")
    assert (facts.width, facts.height) == images.PHONE_SIZE
    assert facts.sha256 == hashlib.sha256(data).hexdigest()
    assert 0 <= facts.phash < 2**64
    # Drafted at 1/8 (a quick look was enough): the intake path never holds the 12 MP pixels.
    assert preview.size == (500, 375)
    assert preview.mode == "RGB"


def test_12mp_jpeg_that_is_not_clearly_sharp_gets_a_closer_look_at_quarter_scale(photos):
    facts, preview = inspect_image_with_preview(photos.phone_jpeg("astronaut", blur_sigma=images.SHAKE_SIGMA),
                                                max_pixels=MAX_PIXELS)
    assert not facts.quick_look
    assert preview.size == (1000, 750)


FAST_ENCODING: dict[str, dict[str, object]] = {"PNG": {"compress_level": 1}, "WEBP": {"method": 0}}


@pytest.mark.parametrize(
    ("fmt", "content_type", "extension"),
    [("PNG", "image/png", "png"), ("WEBP", "image/webp", "webp")],
)
def test_png_and_webp_are_accepted_and_reduced(fmt, content_type, extension):
    data = images.encode(images.phone_photo("rocket", (2400, 1800)), fmt, **FAST_ENCODING[fmt])
    facts, preview = inspect_image_with_preview(data, max_pixels=MAX_PIXELS)
    assert (facts.format, facts.content_type, facts.extension) == (fmt, content_type, extension)
    assert (facts.width, facts.height) == (2400, 1800)
    assert preview.size == (1200, 900)
    assert facts.sharpness > PhotoPolicy().min_sharpness


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_get_an_rgb_preview(mode):
    data = images.encode(images.phone_photo("camera", (2400, 1800)).convert(mode))
    facts, preview = inspect_image_with_preview(data, max_pixels=MAX_PIXELS, clearly_sharp=None)
    assert (facts.format, preview.mode, preview.size) == ("JPEG", "RGB", (1200, 900))
    facts, preview = inspect_image_with_preview(data, max_pixels=MAX_PIXELS)
    assert (facts.quick_look, preview.mode, preview.size) == (True, "RGB", (600, 450))


def test_multi_picture_jpeg_is_a_jpeg():
    first, second = (images.phone_photo(name, (2400, 1800)) for name in ("coins", "coffee"))
    data = images.encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(BytesIO(data)).format == "MPO"
    facts, preview = inspect_image_with_preview(data, max_pixels=MAX_PIXELS, clearly_sharp=None)
    assert (facts.format, facts.content_type, facts.extension) == ("JPEG", "image/jpeg", "jpg")
    assert preview.size == (1200, 900)


@pytest.mark.parametrize("mode", ["1", "P", "LA", "I;16"])
def test_png_of_any_mode_gets_a_faithful_rgb_preview(mode):
    picture = images.phone_photo("coffee", (2400, 1800))
    gray = picture.convert("L")
    if mode == "I;16":
        converted = gray.convert("I").point(lambda value: value * 257).convert("I;16")
    else:
        converted = picture.convert(mode)
    facts, preview = inspect_image_with_preview(
        images.encode(converted, "PNG", compress_level=1), max_pixels=MAX_PIXELS
    )
    assert (preview.mode, preview.size) == ("RGB", (1200, 900))
    if mode in ("LA", "I;16"):  # same grey levels as the 8-bit original
        expected = gray.reduce(2).getpixel((600, 450))
        assert abs(preview.getpixel((600, 450))[0] - expected) <= 2


def test_transparent_png_gets_a_white_rgb_preview():
    image = Image.new("RGBA", (900, 900), (0, 0, 0, 0))
    facts, preview = inspect_image_with_preview(images.encode(image, "PNG"), max_pixels=MAX_PIXELS)
    assert preview.mode == "RGB"
    assert preview.getpixel((10, 10)) == (255, 255, 255)
    assert facts.format == "PNG"


# --- bad inputs ---------------------------------------------------------------


def test_text_named_jpg_is_not_an_image():
    assert rejection_code("事故照片\nnot really a JPEG\n".encode()) == "not_an_image"
    assert rejection_code(b"") == "not_an_image"


def test_jpeg_cut_in_half_is_truncated(photos):
    data = photos.medium_jpeg("chelsea")
    assert rejection_code(data[: len(data) // 2]) == "truncated"
    assert rejection_code(data[:200]) == "truncated"


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_image_formats_are_unsupported(fmt):
    data = images.encode(images.phone_photo("coffee", (200, 150)), fmt)
    with pytest.raises(ImageRejected) as caught:
        inspect_image(data, max_pixels=MAX_PIXELS)
    assert caught.value.code == "unsupported_format"
    assert caught.value.params == {"format": fmt}


def test_png_bomb_is_refused_from_its_header(photos):
    with pytest.raises(ImageRejected) as caught:
        inspect_image(photos.png_bomb(), max_pixels=MAX_PIXELS)
    assert caught.value.code == "too_many_pixels"
    assert caught.value.params["max_pixels"] == MAX_PIXELS


def test_pixel_cap_below_pillows_own_limit_is_checked_before_decoding():
    # 64 MP: Pillow would not even warn; the junk data proves nothing was decoded.
    data = images.png_header_with_garbage(8000, 8000)
    with pytest.raises(ImageRejected) as caught:
        inspect_image(data, max_pixels=MAX_PIXELS)
    assert caught.value.code == "too_many_pixels"
    assert caught.value.params["pixels"] == 64_000_000
    assert rejection_code(images.png_header_with_garbage(800, 800)) == "truncated"


def test_pixel_cap_is_configurable(photos):
    assert rejection_code(photos.medium_jpeg("camera"), max_pixels=1_000_000) == "too_many_pixels"


def test_a_cap_above_pillows_warning_level_is_a_configuration_error():
    with pytest.raises(ValueError):
        inspect_image(b"", max_pixels=Image.MAX_IMAGE_PIXELS + 1)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's "Corrupt EXIF data" and the like
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_damaged_files_only_ever_raise_image_rejected(small_files, data):
    original = data.draw(st.sampled_from(small_files))
    position = data.draw(st.integers(0, len(original) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=16))
    cut = data.draw(st.booleans())
    damaged = original[:position] + (b"" if cut else junk + original[position + len(junk) :])
    try:
        preview = inspect_image_with_preview(damaged, max_pixels=MAX_PIXELS)[1]
    except ImageRejected:
        return
    make_thumbnail(preview)  # what passed inspection must also make a thumbnail


@pytest.fixture(scope="module")
def small_files() -> list[bytes]:
    picture = images.phone_photo("astronaut", (96, 72))
    exif = images.exif_block(taken_at=datetime(2024, 5, 1, 10, 0), orientation=6)
    return [images.encode(picture, fmt, exif=exif) for fmt in ("JPEG", "PNG", "WEBP")]


# --- EXIF ---------------------------------------------------------------------


def test_naive_exif_time_is_read_in_the_configured_zone():
    data = images.encode(
        images.phone_photo("coins", (960, 720)),
        exif=images.exif_block(taken_at=datetime(2024, 5, 1, 10, 30, 0), orientation=6),
    )
    facts = inspect_image(data, max_pixels=MAX_PIXELS)
    assert facts.taken_at == datetime(2024, 5, 1, 2, 30, tzinfo=UTC)
    assert facts.orientation == 6
    berlin = inspect_image(data, max_pixels=MAX_PIXELS, exif_timezone="Europe/Berlin")
    assert berlin.taken_at == datetime(2024, 5, 1, 8, 30, tzinfo=UTC)


def test_exif_offset_wins_over_the_configured_zone():
    exif = images.exif_block(taken_at=datetime(2024, 5, 1, 10, 30), offset="-05:00")
    data = images.encode(images.phone_photo("coins", (960, 720)), exif=exif)
    assert inspect_image(data, max_pixels=MAX_PIXELS).taken_at == datetime(2024, 5, 1, 15, 30, tzinfo=UTC)


def test_plain_exif_datetime_is_the_fallback():
    exif = images.exif_block(taken_at=datetime(2024, 5, 1, 10, 30), as_plain_datetime=True)
    data = images.encode(images.phone_photo("coins", (960, 720)), "PNG", exif=exif)
    assert inspect_image(data, max_pixels=MAX_PIXELS).taken_at == datetime(2024, 5, 1, 2, 30, tzinfo=UTC)


def test_corrupt_exif_reads_as_no_exif():
    exif = images.exif_block(taken_at=datetime(2024, 5, 1, 10, 30), orientation=6)
    data = images.encode(images.phone_photo("coins", (960, 720)), exif=exif)
    start = data.index(b"Exif\x00\x00") + 6
    damaged = data[:start] + b"XX" + data[start + 2 :]  # byte-order mark of the TIFF header
    facts, preview = inspect_image_with_preview(damaged, max_pixels=MAX_PIXELS)
    assert (facts.taken_at, facts.orientation) == (None, 1)
    assert Image.open(BytesIO(make_thumbnail(preview))).size == (320, 240)


def test_photo_without_exif_has_unknown_capture_time(photos):
    facts = inspect_image(photos.medium_jpeg("coins"), max_pixels=MAX_PIXELS)
    assert facts.taken_at is None
    assert not facts.capture_time_known
    assert facts.orientation == 1


@pytest.mark.parametrize(
    "bogus", ["0000:00:00 00:00:00", "2024:13:01 10:00:00", "    ", "yesterday", "1970:01:01 00:00:00"]
)
def test_bogus_exif_times_read_as_unknown(bogus):
    assert parse_exif_time(bogus, None, SHANGHAI) is None


@settings(max_examples=200, deadline=None)
@given(
    value=st.one_of(st.none(), st.text(max_size=40), st.binary(max_size=40), st.integers()),
    offset=st.one_of(st.none(), st.text(max_size=10), st.binary(max_size=10)),
)
def test_exif_time_parser_never_raises(value, offset):
    parsed = parse_exif_time(value, offset, SHANGHAI)
    assert parsed is None or parsed.utcoffset() == timedelta(0)


@settings(max_examples=200, deadline=None)
@given(moment=st.datetimes(min_value=datetime(1990, 1, 2), max_value=datetime(2099, 12, 31)))
@example(moment=datetime(1991, 4, 14, 2, 30))  # China kept summer time until 1991: a wall time that never was
@example(moment=datetime(1991, 9, 15, 1, 30))  # and one that was twice (the earlier is taken)
def test_exif_time_round_trips(moment):
    moment = moment.replace(microsecond=0)
    parsed = parse_exif_time(moment.strftime("%Y:%m:%d %H:%M:%S"), None, SHANGHAI)
    # Compared as instants in UTC: Python never finds a time in a zone's gap or fold equal to one in another zone.
    assert parsed == moment.replace(tzinfo=SHANGHAI).astimezone(UTC)


# --- perceptual hash ------------------------------------------------------------

NEAR = PhotoPolicy().near_duplicate_distance


def phash_of(data: bytes) -> int:
    return inspect_image(data, max_pixels=MAX_PIXELS).phash


@pytest.mark.parametrize("name", ["astronaut", "camera", "rocket"])
def test_reencoded_or_slightly_cropped_copies_are_near(photos, name):
    original = phash_of(photos.medium_jpeg(name))
    picture = images.phone_photo(name, (1600, 1200))
    cropped = picture.crop((32, 24, 1600, 1200)).resize((1600, 1200))
    assert hamming_distance(original, phash_of(photos.medium_jpeg(name, quality=60))) <= 2
    assert hamming_distance(original, phash_of(images.encode(cropped, quality=85))) <= NEAR
    assert hamming_distance(original, phash_of(images.encode(picture.resize((800, 600)), "PNG"))) <= 2


def test_different_photos_are_far_apart(photos):
    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "motorcycle"]
    hashes = {name: phash_of(photos.medium_jpeg(name)) for name in names}
    distances = [hamming_distance(hashes[a], hashes[b]) for a in names for b in names if a < b]
    assert min(distances) > 2 * NEAR


def test_hash_is_taken_upright(photos):
    picture = images.phone_photo("chelsea", (1600, 1200))
    # Stored sideways with orientation 6, as a phone held upright writes it.
    sideways = images.encode(picture.transpose(Image.Transpose.ROTATE_90), exif=images.exif_block(orientation=6))
    assert hamming_distance(phash_of(sideways), phash_of(photos.medium_jpeg("chelsea"))) <= 2


def test_preview_keeps_a_longer_side_of_at_least_the_working_size(photos):
    preview = inspect_image_with_preview(photos.medium_jpeg("coffee"), max_pixels=MAX_PIXELS)[1]
    assert max(preview.size) >= QUICK_SIDE
    closer = inspect_image_with_preview(photos.medium_jpeg("coffee"), max_pixels=MAX_PIXELS, clearly_sharp=None)[1]
    assert max(closer.size) >= PREVIEW_SIDE
