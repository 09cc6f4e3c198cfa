"""Photo intake through the whole path: signed push → inbox → download from the emulator → checks → reply.

Nothing is called directly: the emulator pushes image messages to the app on
a live server, the workers drain the inbox and outbox, and the test reads
what the driver received and what the database and the store hold.
"""

from __future__ import annotations

import threading
import tracemalloc
from pathlib import Path

from accident_service.models import PhotoStatus, WorkStatus
from tests.photos import images
from tests.photos.driver import DRIVER, image_messages, photos_of, reply, seen_lines, send_photo, start_case
from tests.support.live import drain, wait_until


def test_sharp_12mp_photos_are_accepted_with_progress_and_a_shaken_one_is_refused(
        wechat, live_app, wechat_runtime, photos):
    start_case(wechat, wechat_runtime)
    send_photo(wechat, wechat_runtime, photos.phone_jpeg("astronaut"))
    send_photo(wechat, wechat_runtime, photos.phone_jpeg("chelsea", blur_sigma=images.SHAKE_SIGMA))
    send_photo(wechat, wechat_runtime, photos.phone_jpeg("coffee"))

    seen = seen_lines(wechat)
    assert reply("conv.photo_received", n=1, received=1, total=3) in seen
    assert reply("photos.reject.too_blurry") in seen
    assert reply("conv.photo_received", n=2, received=2, total=3) in seen
    # The refusal sits between the two progress replies and moved nothing.
    second = reply("conv.photo_received", n=2, received=2, total=3)
    assert seen.index(reply("photos.reject.too_blurry")) < seen.index(second)
    rows = photos_of(wechat_runtime)
    assert [(p.item, p.status, p.reject_code) for p in rows] == [
        (1, PhotoStatus.ACCEPTED, None), (None, PhotoStatus.REJECTED, "too_blurry"), (2, PhotoStatus.ACCEPTED, None)]
    assert [(p.width, p.height) for p in rows] == [images.PHONE_SIZE] * 3
    assert [p.kind for p in rows if p.item] == ["scene", "collision"]


def test_unusable_files_are_refused_with_their_reasons(wechat, live_app, wechat_runtime, photos):
    sharp = photos.medium_jpeg("rocket")
    sent = [
        (photos.png_bomb(), "image/png", "too_many_pixels"),
        (sharp[: len(sharp) // 2], "image/jpeg", "truncated"),
        (b"Dear officer, the other car hit me first.\n" * 20, "image/jpeg", "not_an_image"),
        (images.encode(images.phone_photo("coffee", (300, 200))), "image/jpeg", "too_small"),
    ]
    start_case(wechat, wechat_runtime)
    for data, content_type, _ in sent:
        send_photo(wechat, wechat_runtime, data, content_type=content_type)

    seen = seen_lines(wechat)
    reasons = [("too_many_pixels", {}), ("truncated", {}), ("not_an_image", {}), ("too_small", {"min_px": 720})]
    for key, params in reasons:
        assert reply(f"photos.reject.{key}", **params) in seen, key
    assert not any("已收到" in message for message in seen)
    rows = photos_of(wechat_runtime)
    assert [(p.status, p.reject_code, p.item) for p in rows] == [
        (PhotoStatus.REJECTED, code, None) for _, _, code in sent]
    # Kept all the same (nothing a driver sent is lost); undecodable files as opaque bytes.
    assert [p.object_key.rsplit(".", 1)[-1] for p in rows] == ["bin", "bin", "bin", "jpg"]
    assert (rows[3].width, rows[3].height) == (300, 200)


def test_media_the_platform_no_longer_has_is_asked_for_again(wechat, live_app, wechat_runtime):
    start_case(wechat, wechat_runtime)
    assert wechat.post_image(DRIVER, "expired-after-three-days").text == "success"  # never uploaded: 40007
    drain(wechat_runtime)
    assert reply("photos.reject.media_unavailable") in seen_lines(wechat)
    [row] = photos_of(wechat_runtime)
    assert (row.status, row.reject_code, row.object_key) == (PhotoStatus.REJECTED, "media_unavailable", None)
    [message] = image_messages(wechat_runtime)
    assert message.status is WorkStatus.DONE


def test_a_photo_over_the_byte_cap_is_refused_without_being_read_whole(wechat, start_live, photos):
    runtime = start_live(PHOTO_MAX_BYTES=200_000)
    start_case(wechat, runtime)
    # The first photo in a process imports the image modules: not measured.
    send_photo(wechat, runtime, b"warm-up, not a photo", send_length=False)
    # 40 MB sent without Content-Length: only reading the stream can find out.
    huge = photos.medium_jpeg("camera") + b"\0" * (40 * 2**20)
    media_id = send_photo(wechat, runtime, huge, send_length=False, process=False)
    # Let the webhook's request thread end first: werkzeug's dev server drains each
    # socket through a 10 MB buffer afterwards, which tracemalloc would count too.
    wait_until(lambda: not any("process_request" in t.name for t in threading.enumerate()))

    tracemalloc.start()
    try:
        drain(runtime)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Reading it whole would hold 40 MB at least twice (the chunks and their join).
    assert peak < 8 * 2**20, f"{peak} bytes traced while refusing a 40 MB download"
    assert reply("photos.reject.too_large", max_mb="0.2") in seen_lines(wechat)
    row = photos_of(runtime)[-1]
    assert (row.status, row.reject_code, row.media_id, row.object_key, row.size_bytes) == (
        PhotoStatus.REJECTED, "too_large", media_id, None, 0)
    assert not any(row.sha256 and row.sha256 in name for name in _stored_files(runtime))


def test_download_is_retried_with_backoff_after_a_platform_error_and_a_timeout(wechat, start_live, clock, photos):
    runtime = start_live(WECHAT_API_TIMEOUT_SECONDS=1)  # the download may take 4x: 4 s
    start_case(wechat, runtime)
    wechat.inject_http_status("media/get", 502)
    send_photo(wechat, runtime, photos.medium_jpeg("astronaut"))
    [message] = image_messages(runtime)
    assert (message.status, message.attempts) == (WorkStatus.PENDING, 1)
    assert "WeChatApiError" in message.last_error and message.next_attempt_at > clock.now()
    assert photos_of(runtime) == []

    wechat.hold("media/get")  # answered only after the download's time is up
    clock.advance(seconds=6)
    try:
        drain(runtime)
    finally:
        wechat.release("media/get")
    [message] = image_messages(runtime)
    assert (message.status, message.attempts) == (WorkStatus.PENDING, 2)
    assert photos_of(runtime) == []

    wechat.clear_faults()
    clock.advance(seconds=11)
    drain(runtime)
    [message] = image_messages(runtime)
    assert message.status is WorkStatus.DONE
    assert [p.status for p in photos_of(runtime)] == [PhotoStatus.ACCEPTED]
    assert reply("conv.photo_received", n=1, received=1, total=3) in seen_lines(wechat)


def test_the_checklist_comes_from_the_configuration(wechat, start_live, photos):
    runtime = start_live(PHOTO_CHECKLIST="scene,plate_a", PHOTO_CHECKLIST_B="")  # no item for the other party
    start_case(wechat, runtime)
    for name in ("astronaut", "coffee", "rocket"):
        send_photo(wechat, runtime, photos.medium_jpeg(name))
    seen = seen_lines(wechat)
    assert reply("conv.photo_received", n=1, received=1, total=2) in seen
    assert reply("conv.photo_received", n=2, received=2, total=2) in seen
    assert reply("conv.photo_extra") in seen
    assert [(p.item, p.kind) for p in photos_of(runtime)] == [(1, "scene"), (2, "plate_a"), (3, "extra")]


def _stored_files(runtime) -> list[str]:
    root = Path(runtime.store.root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
