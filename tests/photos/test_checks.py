"""The pure judgement: thresholds, duplicates, capture-time warnings, catalogue texts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accident_service.messages import text
from accident_service.photos.checks import (
    REJECTION_CODES,
    WARNING_CODES,
    ExistingPhoto,
    ImageRejected,
    PhotoPolicy,
    Verdict,
    evaluate,
)
from accident_service.photos.inspect import ImageFacts, inspect_image
from tests.photos import images

#: A fixed "now" (12:00 in Shanghai); capture times are relative to it.
RECEIVED_AT = datetime(2024, 5, 1, 4, 0, tzinfo=UTC)
GOOD = ImageFacts(
    format="JPEG",
    content_type="image/jpeg",
    extension="jpg",
    width=4000,
    height=3000,
    sha256="a" * 64,
    sharpness=40.0,
    phash=0x0F0F_0F0F_0F0F_0F0F,
    taken_at=RECEIVED_AT - timedelta(minutes=10),
    orientation=1,
)


def judge(facts: ImageFacts = GOOD, existing=(), policy: PhotoPolicy | None = None) -> Verdict:
    return evaluate(facts, policy=policy or PhotoPolicy(), received_at=RECEIVED_AT, existing=list(existing))


def test_a_good_recent_photo_is_accepted_without_warnings():
    verdict = judge()
    assert verdict.accepted and verdict.code is None and verdict.message_key is None
    assert verdict.warnings == []
    assert verdict.capture_time_known and verdict.taken_at == GOOD.taken_at


@pytest.mark.parametrize(("width", "height"), [(300, 200), (1280, 719), (719, 4000)])
def test_short_side_below_the_minimum_is_too_small(width, height):
    verdict = judge(replace(GOOD, width=width, height=height))
    assert (verdict.accepted, verdict.code) == (False, "too_small")
    assert verdict.params == {"min_px": 720, "width": width, "height": height}


def test_minimum_size_is_inclusive_and_configurable():
    assert judge(replace(GOOD, width=960, height=720)).accepted
    assert judge(replace(GOOD, width=960, height=720), policy=PhotoPolicy(min_short_side=1000)).code == "too_small"


def test_blurred_photo_is_rejected():
    verdict = judge(replace(GOOD, sharpness=1.2))
    assert verdict.code == "too_blurry"
    assert verdict.params == {"sharpness": 1.2, "min_sharpness": PhotoPolicy().min_sharpness}


def test_a_quick_look_value_is_held_against_its_own_scale():
    policy = PhotoPolicy()
    assert judge(replace(GOOD, sharpness=policy.clearly_sharp, quick_look=True)).accepted
    # 40 clears the 1000 px threshold but is no "clearly sharp" at 500 px.
    verdict = judge(replace(GOOD, sharpness=40.0, quick_look=True))
    assert verdict.code == "too_blurry"
    assert verdict.params == {"sharpness": 40.0, "min_sharpness": policy.clearly_sharp}


def test_policy_pixel_cap_also_applies_to_facts():
    verdict = judge(policy=PhotoPolicy(max_pixels=10_000_000))
    assert verdict.code == "too_many_pixels"
    assert verdict.params["max_megapixels"] == 10


def test_exact_duplicate_names_the_item_it_repeats():
    existing = [ExistingPhoto(item=1, sha256="b" * 64, phash=0), ExistingPhoto(item=2, sha256="a" * 64, phash=0)]
    verdict = judge(existing=existing)
    assert (verdict.code, verdict.params) == ("duplicate", {"item": 2})


def test_exact_duplicate_is_named_even_if_the_copy_is_blurred():
    verdict = judge(replace(GOOD, sharpness=0.1), existing=[ExistingPhoto(3, "a" * 64, 0)])
    assert verdict.code == "duplicate"


def test_near_duplicate_is_the_nearest_item_within_the_distance():
    near = PhotoPolicy().near_duplicate_distance
    flip = (1 << near) - 1  # exactly `near` bits differ
    existing = [
        ExistingPhoto(item=1, sha256="1" * 64, phash=GOOD.phash ^ flip),
        ExistingPhoto(item=3, sha256="3" * 64, phash=GOOD.phash ^ 0b11),
    ]
    verdict = judge(existing=existing)
    assert (verdict.code, verdict.params) == ("near_duplicate", {"item": 3, "distance": 2})
    assert judge(existing=existing[:1]).params == {"item": 1, "distance": near}


def test_just_beyond_the_distance_is_a_different_photo():
    far = (1 << (PhotoPolicy().near_duplicate_distance + 1)) - 1
    assert judge(existing=[ExistingPhoto(1, "1" * 64, GOOD.phash ^ far)]).accepted


def test_photo_taken_three_hours_ago_is_accepted_with_a_desk_warning():
    verdict = judge(replace(GOOD, taken_at=RECEIVED_AT - timedelta(hours=3)))
    assert verdict.accepted
    assert verdict.warnings == ["capture_time_old"]
    assert verdict.warning_keys == ["photos.warning.capture_time_old"]


@pytest.mark.parametrize(("ahead", "warnings"), [
    (timedelta(minutes=30), []),  # a camera clock a little fast, or a zone-less EXIF time
    (timedelta(hours=2), ["capture_time_future"]),
    (timedelta(days=400), ["capture_time_future"]),
])
def test_a_capture_time_after_the_receipt_is_accepted_with_a_desk_warning(ahead, warnings):
    verdict = judge(replace(GOOD, taken_at=RECEIVED_AT + ahead))
    assert verdict.accepted and verdict.warnings == warnings


def test_capture_age_window_is_inclusive_and_configurable():
    two_hours = replace(GOOD, taken_at=RECEIVED_AT - timedelta(hours=2))
    assert judge(two_hours).warnings == []
    assert judge(two_hours, policy=PhotoPolicy(max_capture_age=timedelta(hours=1))).warnings == ["capture_time_old"]


def test_missing_capture_time_is_recorded_never_rejected():
    verdict = judge(replace(GOOD, taken_at=None))
    assert verdict.accepted
    assert verdict.warnings == ["capture_time_unknown"]
    assert verdict.taken_at is None and not verdict.capture_time_known


def test_naive_received_at_is_refused():
    with pytest.raises(ValueError):
        evaluate(GOOD, policy=PhotoPolicy(), received_at=datetime(2024, 5, 1, 12), existing=[])


def test_rejection_from_the_decoder_becomes_a_verdict():
    verdict = Verdict.from_rejection(ImageRejected("unsupported_format", format="GIF"))
    assert (verdict.accepted, verdict.code, verdict.params) == (False, "unsupported_format", {"format": "GIF"})
    assert verdict.message_key == "photos.reject.unsupported_format"
    with pytest.raises(ValueError):
        ImageRejected("too_ugly")


# --- the catalogue has an actionable sentence for every outcome -----------------

SAMPLE_PARAMS: dict[str, dict[str, object]] = {
    "unsupported_format": {"format": "GIF"},
    "too_many_pixels": {"pixels": 400_000_000, "max_pixels": 50_000_000, "max_megapixels": 50},
    "too_small": {"min_px": 720, "width": 300, "height": 200},
    "too_blurry": {"sharpness": 1.2, "min_sharpness": 5.0},
    "duplicate": {"item": 2},
    "near_duplicate": {"item": 2, "distance": 4},
    "too_large": {"max_mb": "20"},
}


@pytest.mark.parametrize("code", REJECTION_CODES)
@pytest.mark.parametrize("language", ["zh", "en"])
def test_every_rejection_has_a_short_text(code, language):
    sentence = text(f"photos.reject.{code}", language, **SAMPLE_PARAMS.get(code, {}))
    assert "{" not in sentence
    assert len(sentence) <= (40 if language == "zh" else 120)


@pytest.mark.parametrize("code", WARNING_CODES)
def test_every_warning_has_a_text(code):
    assert text(f"photos.warning.{code}", "zh") and text(f"photos.warning.{code}", "en")


def test_params_of_real_verdicts_fill_their_texts():
    too_small = text("photos.reject.too_small", "zh", **judge(replace(GOOD, width=300, height=200)).params)
    assert "原图" in too_small and "像素" not in too_small  # asks for the original, without pixel jargon
    assert "px" not in text("photos.reject.too_small", "en")
    for verdict in (
        judge(existing=[ExistingPhoto(4, "a" * 64, 0)]),
        judge(existing=[ExistingPhoto(4, "b" * 64, GOOD.phash)]),
    ):
        assert "第4张" in text(verdict.message_key, "zh", **verdict.params)
        assert "no. 4" in text(verdict.message_key, "en", **verdict.params)


# --- properties -----------------------------------------------------------------

SHAS = ["a" * 64, "b" * 64, "c" * 64, "d" * 64]  # few values, so duplicates do occur
facts_strategy = st.builds(
    ImageFacts,
    format=st.just("JPEG"),
    content_type=st.just("image/jpeg"),
    extension=st.just("jpg"),
    width=st.integers(1, 12_000),
    height=st.integers(1, 12_000),
    sha256=st.sampled_from(SHAS),
    sharpness=st.floats(0, 1000, allow_nan=False),
    phash=st.integers(0, 2**64 - 1),
    taken_at=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
    orientation=st.integers(1, 8),
)
existing_strategy = st.lists(
    st.builds(
        ExistingPhoto,
        item=st.integers(1, 6),
        sha256=st.sampled_from(SHAS),
        phash=st.integers(0, 2**64 - 1),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(facts=facts_strategy, existing=existing_strategy)
def test_evaluate_always_answers_consistently(facts, existing):
    verdict = judge(facts, existing)
    assert verdict.accepted == (verdict.code is None)
    if verdict.accepted:
        assert len(verdict.warnings) <= 1
        assert verdict.capture_time_known == (facts.taken_at is not None)
        assert min(facts.width, facts.height) >= 720 and facts.sharpness >= PhotoPolicy().min_sharpness
    else:
        assert verdict.code in REJECTION_CODES and not verdict.warnings
        text(verdict.message_key, "zh", **verdict.params)


# --- with real photographs ------------------------------------------------------


def test_real_photos_end_to_end(photos):
    """Exact copy, near copy (re-encoded, cropped), other photo, tiny and 3 h old photo."""
    policy = PhotoPolicy()
    first = inspect_image(photos.medium_jpeg("astronaut"), max_pixels=policy.max_pixels)
    existing = [ExistingPhoto(item=1, sha256=first.sha256, phash=first.phash)]

    def verdict_for(data: bytes) -> Verdict:
        facts = inspect_image(data, max_pixels=policy.max_pixels)
        return evaluate(facts, policy=policy, received_at=RECEIVED_AT, existing=existing)

    assert verdict_for(photos.medium_jpeg("astronaut")).code == "duplicate"
    picture = images.phone_photo("astronaut", (1600, 1200))
    recrop = images.encode(picture.crop((24, 18, 1600, 1200)).resize((1600, 1200)), quality=70)
    assert verdict_for(recrop).code == "near_duplicate"
    other = verdict_for(photos.medium_jpeg("coffee"))
    assert other.accepted and other.warnings == ["capture_time_unknown"]
    assert verdict_for(images.encode(images.phone_photo("coffee", (300, 200)))).code == "too_small"

    three_hours_ago = (RECEIVED_AT - timedelta(hours=3)).astimezone(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None)
    old = images.encode(images.phone_photo("rocket", (1600, 1200)), exif=images.exif_block(taken_at=three_hours_ago))
    verdict = verdict_for(old)
    assert verdict.accepted and verdict.warnings == ["capture_time_old"]
    assert verdict.taken_at == RECEIVED_AT - timedelta(hours=3)
