"""Photos within a case, through the whole path: retakes, duplicates, capture times."""

from __future__ import annotations

from datetime import datetime

from accident_service.models import PhotoStatus
from tests.photos import images
from tests.photos.driver import DRIVER, photos_of, reply, seen_lines, send_photo, start_case

# The clock starts at 2026-11-25 02:00 UTC, 10:00 in Shanghai; phones write local time.
RECEIVED_LOCAL = datetime(2026, 11, 25, 10, 0)


def test_retake_replaces_the_item_and_keeps_the_old_photo_and_object(wechat, live_app, wechat_runtime, photos):
    start_case(wechat, wechat_runtime)
    send_photo(wechat, wechat_runtime, photos.medium_jpeg("astronaut"))
    send_photo(wechat, wechat_runtime, photos.medium_jpeg("coffee"))
    wechat.post_text(DRIVER, "重拍 2")
    # The same view taken again may look alike: not a near-duplicate of the photo it replaces.
    send_photo(wechat, wechat_runtime, photos.medium_jpeg("coffee", quality=60))

    rows = photos_of(wechat_runtime)
    assert [(p.item, p.status) for p in rows] == [
        (1, PhotoStatus.ACCEPTED), (2, PhotoStatus.SUPERSEDED), (2, PhotoStatus.ACCEPTED)]
    kept, old, new = rows
    assert old.sha256 != new.sha256 and new.kind == old.kind == "collision"
    # The replaced evidence stays in storage for the audit trail.
    assert wechat_runtime.store.get(old.object_key).data == photos.medium_jpeg("coffee")
    assert wechat_runtime.store.exists(old.thumb_key)
    seen = seen_lines(wechat)
    assert reply("conv.retake_ask", n=2, item=reply("checklist.collision")) in seen
    assert reply("conv.photo_replaced", n=2) in seen

    send_photo(wechat, wechat_runtime, photos.medium_jpeg("rocket"))
    assert reply("conv.photo_received", n=3, received=3, total=3) in seen_lines(wechat)
    assert kept.item == 1


def test_retake_with_the_very_same_photo_is_refused(wechat, live_app, wechat_runtime, photos):
    start_case(wechat, wechat_runtime)
    send_photo(wechat, wechat_runtime, photos.medium_jpeg("astronaut"))
    wechat.post_text(DRIVER, "retake 1")
    send_photo(wechat, wechat_runtime, photos.medium_jpeg("astronaut"))
    assert reply("photos.reject.duplicate", item=1) in seen_lines(wechat)
    assert [(p.item, p.status) for p in photos_of(wechat_runtime)] == [
        (1, PhotoStatus.ACCEPTED), (None, PhotoStatus.REJECTED)]


def test_retake_of_an_item_not_sent_yet_fills_it(wechat, live_app, wechat_runtime, photos):
    start_case(wechat, wechat_runtime)
    send_photo(wechat, wechat_runtime, photos.medium_jpeg("astronaut"))
    wechat.post_text(DRIVER, "重拍 3")
    send_photo(wechat, wechat_runtime, photos.medium_jpeg("coffee"))
    send_photo(wechat, wechat_runtime, photos.medium_jpeg("rocket"))
    assert [(p.item, p.status) for p in photos_of(wechat_runtime)] == [
        (1, PhotoStatus.ACCEPTED), (3, PhotoStatus.ACCEPTED), (2, PhotoStatus.ACCEPTED)]
    seen = seen_lines(wechat)
    assert reply("conv.photo_replaced", n=3) not in seen
    assert reply("conv.photo_received", n=3, received=2, total=3) in seen  # named by the item it fills
    assert reply("conv.photo_received", n=2, received=3, total=3) in seen


def test_copies_of_another_item_are_refused(wechat, live_app, wechat_runtime, photos):
    start_case(wechat, wechat_runtime)
    send_photo(wechat, wechat_runtime, photos.medium_jpeg("astronaut"))
    send_photo(wechat, wechat_runtime, photos.medium_jpeg("astronaut"))  # sent twice
    send_photo(wechat, wechat_runtime, photos.medium_jpeg("astronaut", quality=60))  # re-encoded copy
    send_photo(wechat, wechat_runtime, photos.medium_jpeg("coffee"))

    seen = seen_lines(wechat)
    assert reply("photos.reject.duplicate", item=1) in seen
    assert reply("photos.reject.near_duplicate", item=1) in seen
    assert reply("conv.photo_received", n=2, received=2, total=3) in seen
    assert [(p.item, p.status, p.reject_code) for p in photos_of(wechat_runtime)] == [
        (1, PhotoStatus.ACCEPTED, None), (None, PhotoStatus.REJECTED, "duplicate"),
        (None, PhotoStatus.REJECTED, "near_duplicate"), (2, PhotoStatus.ACCEPTED, None)]


def test_photo_taken_long_before_the_report_is_accepted_with_a_warning(wechat, live_app, wechat_runtime, clock):
    taken_local = datetime(2026, 11, 25, 7, 0)  # 3 h before it was received
    data = images.encode(images.phone_photo("rocket", (1600, 1200)),
                         exif=images.exif_block(taken_at=taken_local))
    start_case(wechat, wechat_runtime)
    send_photo(wechat, wechat_runtime, data)

    [photo] = photos_of(wechat_runtime)
    assert photo.status is PhotoStatus.ACCEPTED
    assert photo.warnings == ["capture_time_old"]
    assert photo.capture_time_known
    assert photo.received_at == clock.now()
    assert (photo.received_at - photo.taken_at).total_seconds() == 3 * 3600
    seen = seen_lines(wechat)
    assert reply("conv.photo_warning_old") in seen
    assert reply("conv.photo_received", n=1, received=1, total=3) in seen


def test_photo_without_exif_is_accepted_with_unknown_capture_time(wechat, live_app, wechat_runtime, clock, photos):
    start_case(wechat, wechat_runtime)
    send_photo(wechat, wechat_runtime, photos.medium_jpeg("camera"))

    [photo] = photos_of(wechat_runtime)
    assert photo.status is PhotoStatus.ACCEPTED
    assert (photo.capture_time_known, photo.taken_at) == (False, None)
    assert photo.received_at == clock.now()
    assert photo.warnings == ["capture_time_unknown"]  # for the desk; the driver is not bothered
    seen = seen_lines(wechat)
    assert reply("conv.photo_warning_old") not in seen
    assert reply("conv.photo_received", n=1, received=1, total=3) in seen


def test_recent_capture_time_is_kept_without_warning(wechat, live_app, wechat_runtime):
    data = images.encode(images.phone_photo("motorcycle", (1600, 1200)),
                         exif=images.exif_block(taken_at=RECEIVED_LOCAL.replace(hour=9, minute=50)))
    start_case(wechat, wechat_runtime)
    send_photo(wechat, wechat_runtime, data)
    [photo] = photos_of(wechat_runtime)
    assert (photo.status, photo.warnings, photo.capture_time_known) == (PhotoStatus.ACCEPTED, [], True)
    assert (photo.received_at - photo.taken_at).total_seconds() == 600
