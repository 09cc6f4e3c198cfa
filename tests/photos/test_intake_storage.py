"""Evidence storage through the whole path: content-addressed originals, thumbnails, retries, outages."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import boto3
import pytest
from PIL import Image, ImageDraw
from sqlalchemy import select

from accident_service.booking.scheduled import expire_idle_drafts
from accident_service.cases.service import open_case_for
from accident_service.desk import actions
from accident_service.models import Case, Party, PhotoStatus, WorkStatus
from accident_service.photos.intake import prepare_photo
from accident_service.wechat import inbox
from tests.photos import images
from tests.photos.driver import DRIVER, case_no_of, image_messages, photos_of, reply, seen_lines, send_photo, start_case
from tests.support.chat import post_file
from tests.support.live import drain
from tests.support.servers import MotoS3Server


def sideways_marked_jpeg() -> bytes:
    """A landscape sensor image with a red block top-left, tagged orientation 6 (phone held upright)."""
    picture = images.phone_photo("camera", (1600, 1200))
    ImageDraw.Draw(picture).rectangle((0, 0, 300, 300), fill=(255, 0, 0))
    return images.encode(picture, exif=images.exif_block(orientation=6))


def test_original_is_stored_byte_identical_under_its_content_address(wechat, live_app, wechat_runtime):
    data = sideways_marked_jpeg()
    digest = hashlib.sha256(data).hexdigest()
    start_case(wechat, wechat_runtime)
    send_photo(wechat, wechat_runtime, data)

    [photo] = photos_of(wechat_runtime)
    case_no = case_no_of(wechat_runtime)
    assert photo.status is PhotoStatus.ACCEPTED
    assert photo.object_key == f"cases/2026/11/{case_no}/{digest}.jpg"
    assert photo.thumb_key == f"cases/2026/11/{case_no}/{digest}.thumb.jpg"
    assert (photo.sha256, photo.size_bytes, photo.content_type) == (digest, len(data), "image/jpeg")

    original = wechat_runtime.store.get(photo.object_key)
    assert original.data == data  # never re-encoded, EXIF and orientation tag included
    assert original.content_type == "image/jpeg"
    assert original.metadata == {"sha256": digest, "case_no": case_no}
    assert Image.open(BytesIO(original.data)).getexif()[0x0112] == 6

    stored = wechat_runtime.store.get(photo.thumb_key)
    assert stored.content_type == "image/jpeg" and stored.metadata["sha256-of-original"] == digest
    thumbnail = Image.open(BytesIO(stored.data))
    # Upright: orientation 6 turns the sensor image 90 degrees clockwise, top-left lands top-right.
    assert thumbnail.size == (240, 320)
    red, green, blue = thumbnail.convert("RGB").getpixel((thumbnail.width - 10, 10))
    assert red > 200 and green < 60 and blue < 60
    assert thumbnail.getexif().get(0x0112, 1) == 1


def test_a_retried_upload_after_a_worker_crash_is_harmless(wechat, live_app, wechat_runtime, clock, photos):
    data = photos.medium_jpeg("astronaut")
    start_case(wechat, wechat_runtime)
    media_id = send_photo(wechat, wechat_runtime, data, process=False)
    # A worker claims the message, stores the photo, then dies before recording it.
    [message_id] = inbox.claim_due(wechat_runtime, "crashed-worker", limit=1)
    [message] = image_messages(wechat_runtime)
    assert message.id == message_id
    prepared = prepare_photo(wechat_runtime, data, media_id=media_id, case_no=case_no_of(wechat_runtime),
                             received_at=message.received_at)
    drain(wechat_runtime)  # still leased: nobody else may touch it
    assert photos_of(wechat_runtime) == []

    clock.advance(seconds=wechat_runtime.settings.INBOX_LEASE_SECONDS + 1)
    drain(wechat_runtime)

    [photo] = photos_of(wechat_runtime)
    assert (photo.status, photo.object_key, photo.thumb_key) == (
        PhotoStatus.ACCEPTED, prepared.object_key, prepared.thumb_key)
    assert wechat_runtime.store.get(photo.object_key).data == data
    root = Path(wechat_runtime.store.root)
    stored = sorted(p.name for p in root.rglob("*") if p.is_file() and not p.name.endswith(".meta.json"))
    assert stored == sorted([f"{photo.sha256}.jpg", f"{photo.sha256}.thumb.jpg"])
    [message] = image_messages(wechat_runtime)
    assert (message.status, message.attempts) == (WorkStatus.DONE, 2)
    assert seen_lines(wechat).count(reply("conv.photo_received", n=1, received=1, total=3)) == 1


@pytest.fixture
def own_s3():
    """A moto S3 server of this test's own, so stopping it disturbs no one else."""
    server = MotoS3Server()
    server.start()
    yield server
    server.stop()


@dataclass
class Outage:
    """What a photo needs going down and coming back: the evidence store (its S3 server stopped) or the
    platform's download (media/get answering -1, system busy, to every call)."""

    down: Callable[[], None]
    up: Callable[[], None]


@pytest.fixture(params=["storage", "platform"])
def outage(request, wechat, own_s3):
    if request.param == "storage":
        yield Outage(own_s3.stop, own_s3.start)
        return
    yield Outage(lambda: wechat.inject_error("media/get", -1, times=None), wechat.clear_faults)
    wechat.clear_faults()


def test_photo_sent_while_storage_is_down_is_saved_once_storage_is_back(wechat, start_live, own_s3, clock, photos):
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    data = photos.medium_jpeg("coffee")
    saving, saved = reply("conv.photo_saving"), reply("conv.photo_saved_late")
    start_case(wechat, runtime)
    own_s3.stop()

    send_photo(wechat, runtime, data)
    assert saving not in seen_lines(wechat)  # it may be a blip: nothing said yet
    [message] = image_messages(runtime)
    assert (message.status, message.attempts) == (WorkStatus.PENDING, 1)
    assert message.next_attempt_at > clock.now() and "StorageUnavailable" in message.last_error
    assert photos_of(runtime) == []

    clock.advance(seconds=6)  # past the first backoff (5 s): tried again, storage still down
    drain(runtime)
    [message] = image_messages(runtime)
    assert (message.status, message.attempts) == (WorkStatus.PENDING, 2)
    assert seen_lines(wechat).count(saving) == 1

    clock.advance(seconds=11)  # past the second backoff (10 s): still down
    drain(runtime)
    assert image_messages(runtime)[0].attempts == 3
    assert seen_lines(wechat).count(saving) == 1  # told once only

    own_s3.start()
    clock.advance(seconds=21)  # past the third backoff (20 s)
    drain(runtime)

    [message] = image_messages(runtime)
    assert message.status is WorkStatus.DONE
    [photo] = photos_of(runtime)
    assert photo.status is PhotoStatus.ACCEPTED
    s3 = boto3.client("s3", endpoint_url=own_s3.url, region_name="us-east-1")
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="evidence")["Contents"]]
    assert sorted(keys) == sorted([photo.object_key, photo.thumb_key])
    head = s3.head_object(Bucket="evidence", Key=photo.object_key)
    assert head["ContentType"] == "image/jpeg" and head["Metadata"]["sha256"] == photo.sha256
    assert s3.get_object(Bucket="evidence", Key=photo.object_key)["Body"].read() == data

    seen = seen_lines(wechat)
    assert seen.count(saving) == 1 and seen.count(saved) == 1
    assert seen.index(saving) < seen.index(saved) < seen.index(reply("conv.photo_received", n=1, received=1, total=3))


def test_a_blip_the_first_retry_outlasts_costs_the_driver_no_message(wechat, start_live, own_s3, outage, clock,
                                                                     photos):
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    before = len(wechat.messages_to(DRIVER))
    outage.down()
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"))
    assert len(wechat.messages_to(DRIVER)) == before
    outage.up()
    clock.advance(seconds=6)  # past the first backoff (5 s)
    drain(runtime)

    assert [p.status for p in photos_of(runtime)] == [PhotoStatus.ACCEPTED]
    assert len(wechat.messages_to(DRIVER)) == before + 1  # the photo's answer, as if nothing had happened
    seen = seen_lines(wechat)
    assert reply("conv.photo_received", n=1, received=1, total=3) in seen
    assert reply("conv.photo_saving") not in seen and reply("conv.photo_saved_late") not in seen


def test_a_blip_after_an_attempt_whose_worker_died_costs_the_driver_no_message(wechat, start_live, own_s3, outage,
                                                                              clock, photos):
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"), process=False)
    assert len(inbox.claim_due(runtime, "crashed-worker", limit=1)) == 1  # ...and it dies: no wait yet
    clock.advance(seconds=runtime.settings.INBOX_LEASE_SECONDS + 1)
    outage.down()
    drain(runtime)  # its second attempt is its first wait
    assert image_messages(runtime)[0].attempts == 2
    outage.up()
    clock.advance(seconds=11)  # past its backoff (10 s after a second attempt)
    drain(runtime)

    assert [p.status for p in photos_of(runtime)] == [PhotoStatus.ACCEPTED]
    seen = seen_lines(wechat)
    assert reply("conv.photo_received", n=1, received=1, total=3) in seen
    assert reply("conv.photo_saving") not in seen and reply("conv.photo_saved_late") not in seen


def test_a_download_refused_for_the_operator_to_fix_is_not_waited_out(wechat, start_live, clock, photos):
    """40164 (the server's address is not on the account's list) is no outage: tried INBOX_MAX_ATTEMPTS times,
    then the driver is asked to resend, never told it is being saved."""
    runtime = start_live(INBOX_MAX_ATTEMPTS=2)
    start_case(wechat, runtime)
    wechat.inject_error("media/get", 40164, times=None)
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"))
    clock.advance(seconds=6)
    drain(runtime)

    [message] = image_messages(runtime)
    assert message.status is WorkStatus.FAILED and "40164" in message.last_error
    seen = seen_lines(wechat)
    assert seen.count(reply("conv.photo_lost")) == 1 and reply("conv.photo_saving") not in seen


def test_a_photo_waiting_out_an_outage_keeps_a_draft_about_to_expire_open(wechat, start_live, own_s3, outage, clock,
                                                                          photos):
    """The photo is activity from its first wait: the draft does not expire in the seconds before the retry that
    would tell the driver."""
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    clock.advance(minutes=runtime.settings.DRAFT_EXPIRY_MINUTES, seconds=-2)
    outage.down()
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"))
    clock.advance(seconds=3)  # the draft's quiet period would be over now
    assert expire_idle_drafts(runtime) == 0
    outage.up()
    clock.advance(seconds=6)
    drain(runtime)

    assert [p.status for p in photos_of(runtime)] == [PhotoStatus.ACCEPTED]
    assert [status for _, status in driver_cases(runtime)] == ["draft"]


def test_a_photo_waiting_out_an_outage_keeps_its_deadline_through_an_error_the_operator_fixes(wechat, start_live,
                                                                                               clock, photos):
    """Its attempts were spent waiting: one refusal for the operator (40164) among them does not end it."""
    runtime = start_live(INBOX_MAX_ATTEMPTS=2)
    start_case(wechat, runtime)
    wechat.inject_error("media/get", -1, times=None)
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"))
    for _ in range(3):  # past the attempt limit, waiting
        clock.advance(minutes=10)
        drain(runtime)
    wechat.clear_faults()
    wechat.inject_error("media/get", 40164, times=1)
    clock.advance(minutes=10)
    drain(runtime)
    [message] = image_messages(runtime)
    assert message.status is WorkStatus.PENDING and "40164" in message.last_error
    clock.advance(minutes=10)
    drain(runtime)

    assert [p.status for p in photos_of(runtime)] == [PhotoStatus.ACCEPTED]
    assert reply("conv.photo_lost") not in seen_lines(wechat)


def test_an_outage_longer_than_the_attempt_limit_loses_no_photo(wechat, start_live, own_s3, outage, clock, photos):
    """The driver was told "no need to resend": the photo waits the outage out, past INBOX_MAX_ATTEMPTS,
    and the driver's texts meanwhile are answered rather than held behind it."""
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True,
                         INBOX_MAX_ATTEMPTS=2)
    start_case(wechat, runtime)
    outage.down()
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"))
    for _ in range(6):  # an hour down: six attempts, three times the limit
        clock.advance(minutes=10)
        drain(runtime)
    [message] = image_messages(runtime)
    assert message.status is WorkStatus.PENDING and message.attempts >= 6
    wechat.post_text(DRIVER, "状态")
    drain(runtime)
    assert seen_lines(wechat)[-1].startswith("案件")  # answered while the photo still waits
    wechat.post_text(DRIVER, "粤A12345")
    drain(runtime)
    assert seen_lines(wechat)[-2] == reply("conv.plate_saved", plate="粤A12345")
    second = send_photo(wechat, runtime, photos.medium_jpeg("astronaut"), process=False)
    drain(runtime)  # a later photo waits behind the first: the checklist keeps the order they were sent in
    assert [m.status for m in image_messages(runtime)] == [WorkStatus.PENDING, WorkStatus.PENDING]

    outage.up()
    clock.advance(minutes=11)
    drain(runtime)
    assert [m.status for m in image_messages(runtime)] == [WorkStatus.DONE, WorkStatus.DONE]
    assert [(p.item, p.media_id) for p in photos_of(runtime)][1] == (2, second)
    assert [photo.status for photo in photos_of(runtime)] == [PhotoStatus.ACCEPTED, PhotoStatus.ACCEPTED]
    seen = seen_lines(wechat)
    assert seen.count(reply("conv.photo_saving")) == 1 and seen.count(reply("conv.photo_saved_late")) == 1
    assert reply("conv.photo_lost") not in seen


def test_a_photo_is_saved_within_a_minute_of_the_end_of_a_long_outage(wechat, start_live, own_s3, outage, clock,
                                                                     photos):
    """Its backoff would have doubled to 10 minutes through a half-hour outage: the driver, told their photo is
    being saved, waits at most a minute once the store (or the platform's download) is back, and the photo
    they sent after it follows it at once."""
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    outage.down()
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"))
    for _ in range(30):  # half an hour down, looked at every minute (the scheduler's sweep looks every 2 s)
        clock.advance(minutes=1)
        drain(runtime)
    second = send_photo(wechat, runtime, photos.medium_jpeg("astronaut"), process=False)
    drain(runtime)
    [first, _] = image_messages(runtime)
    assert first.status is WorkStatus.PENDING and first.next_attempt_at <= clock.now() + inbox.OUTAGE_RETRY_WAIT_CAP

    outage.up()
    clock.advance(inbox.OUTAGE_RETRY_WAIT_CAP)
    drain(runtime)
    assert [m.status for m in image_messages(runtime)] == [WorkStatus.DONE, WorkStatus.DONE]
    assert [(p.item, p.media_id, p.status) for p in photos_of(runtime)][1] == (2, second, PhotoStatus.ACCEPTED)
    seen = seen_lines(wechat)
    assert seen.count(reply("conv.photo_saving")) == 1 and seen.count(reply("conv.photo_saved_late")) == 1


def test_a_photo_waiting_out_a_storage_outage_is_not_downloaded_again_while_the_store_is_down(wechat, start_live,
                                                                                                own_s3, clock, photos):
    """Tried every minute, it asks the store first: the platform's file (up to PHOTO_MAX_BYTES) is downloaded once
    as it comes and once more when the store is back, not at every try (review: about 1.2 GB a photo in two
    hours)."""
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    own_s3.stop()
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"))
    for _ in range(10):  # ten minutes down, looked at every minute
        clock.advance(minutes=1)
        drain(runtime)
    [message] = image_messages(runtime)
    assert message.status is WorkStatus.PENDING and message.attempts >= 10

    def downloads() -> int:
        return sum(1 for call in wechat.requests_log if call["path"] == "media/get")

    assert downloads() == 1
    own_s3.start()
    clock.advance(inbox.OUTAGE_RETRY_WAIT_CAP)
    drain(runtime)
    assert [p.status for p in photos_of(runtime)] == [PhotoStatus.ACCEPTED] and downloads() == 2


def test_when_the_outage_outlasts_the_patience_the_driver_is_asked_to_resend(wechat, start_live, own_s3, outage,
                                                                              clock, photos):
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True,
                         INBOX_MAX_ATTEMPTS=2)
    start_case(wechat, runtime)
    outage.down()
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"))
    clock.advance(minutes=runtime.settings.DRAFT_EXPIRY_MINUTES)  # as long as a quiet draft lives
    drain(runtime)
    [message] = image_messages(runtime)
    assert message.status is WorkStatus.FAILED
    assert seen_lines(wechat).count(reply("conv.photo_lost")) == 1
    clock.advance(hours=1)
    drain(runtime)  # failed for good: asked once, not again
    assert seen_lines(wechat).count(reply("conv.photo_lost")) == 1


def test_texts_are_answered_while_three_photos_wait_out_an_outage(wechat, start_live, own_s3, outage, clock, photos):
    """Photos sent during an outage queue behind the first one waiting it out; none holds the driver's texts
    back, and once it is over they are stored once each, in the order they were sent."""
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    outage.down()
    sent = [send_photo(wechat, runtime, photos.medium_jpeg(name), process=False)
            for name in ("coffee", "astronaut", "rocket")]
    drain(runtime)  # the first meets the outage, the other two queue behind it
    wechat.post_text(DRIVER, "状态")
    drain(runtime)
    assert wechat.messages_to(DRIVER)[-1].startswith("案件")  # answered while the photos still wait
    wechat.post_text(DRIVER, "粤A12345")
    drain(runtime)
    assert wechat.messages_to(DRIVER)[-1].startswith(reply("conv.plate_saved", plate="粤A12345"))
    assert [m.status for m in image_messages(runtime)] == [WorkStatus.PENDING] * 3
    assert photos_of(runtime) == []

    clock.advance(seconds=6)  # past the first photo's backoff: still down, the driver is told
    drain(runtime)
    assert seen_lines(wechat).count(reply("conv.photo_saving")) == 1

    outage.up()
    clock.advance(seconds=11)  # past its second backoff
    drain(runtime)

    assert [m.status for m in image_messages(runtime)] == [WorkStatus.DONE] * 3
    stored = photos_of(runtime)
    assert [(p.item, p.media_id, p.status) for p in stored] == [
        (item, media_id, PhotoStatus.ACCEPTED) for item, media_id in enumerate(sent, start=1)]
    s3 = boto3.client("s3", endpoint_url=own_s3.url, region_name="us-east-1")
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="evidence")["Contents"]]
    assert sorted(keys) == sorted(key for p in stored for key in (p.object_key, p.thumb_key))
    seen = seen_lines(wechat)
    assert seen.count(reply("conv.photo_saving")) == 1 and seen.count(reply("conv.photo_saved_late")) == 1
    progress = [seen.index(reply("conv.photo_received", n=n, received=n, total=3)) for n in (1, 2, 3)]
    assert progress == sorted(progress) and seen.index(reply("conv.plate_saved", plate="粤A12345")) < progress[0]



def test_a_wedged_store_holds_the_driver_s_text_back_only_for_one_short_try(wechat, start_live, own_s3, clock,
                                                                             photos):
    """A store that takes connections but never answers (hung, not down): the photo's first attempt gives up
    within one short try and the photo waits out the outage from there, so the driver's text sent after it
    is answered seconds later (acceptance pass: three tries of 10 s each held it for 32 s)."""
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"))  # the store answers: the client's connection is up
    own_s3.wedge()
    send_photo(wechat, runtime, photos.medium_jpeg("astronaut"), process=False)
    wechat.post_text(DRIVER, "状态")
    started = time.monotonic()
    drain(runtime)  # the photo's attempt first, then the text
    held_back = time.monotonic() - started

    assert wechat.messages_to(DRIVER)[-1].startswith("案件")
    assert held_back < 15  # one try (5 s), not three of 10 s
    waiting = image_messages(runtime)[-1]
    assert (waiting.status, waiting.attempts) == (WorkStatus.PENDING, 1) and waiting.waiting_until is not None

    own_s3.unwedge()
    clock.advance(seconds=6)
    drain(runtime)
    assert [m.status for m in image_messages(runtime)] == [WorkStatus.DONE] * 2
    assert [p.status for p in photos_of(runtime)] == [PhotoStatus.ACCEPTED] * 2


def test_a_file_from_the_chat_waiting_out_a_storage_outage_holds_no_text_back(wechat, start_live, own_s3, clock,
                                                                              photos):
    """A file sent from the chat is checked as a photo, and waits an outage out as one: the driver's texts go
    past it as they go past an image."""
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    own_s3.stop()
    post_file(wechat, DRIVER, wechat.add_media("chat-file", photos.medium_jpeg("coffee"), "image/jpeg"))
    drain(runtime)
    wechat.post_text(DRIVER, "粤A12345")
    drain(runtime)

    assert reply("conv.plate_saved", plate="粤A12345") in seen_lines(wechat)
    own_s3.start()
    clock.advance(seconds=6)
    drain(runtime)
    assert [p.status for p in photos_of(runtime)] == [PhotoStatus.ACCEPTED]


def test_a_file_from_the_chat_does_not_overtake_an_image_waiting_out_an_outage(wechat, start_live, own_s3, clock,
                                                                               photos):
    """Photos fill the checklist in the order they were sent, whichever way they came."""
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    own_s3.stop()
    image = send_photo(wechat, runtime, photos.medium_jpeg("astronaut"))  # meets the outage, waits 5 s
    own_s3.start()
    chat_file = wechat.add_media("chat-file", photos.medium_jpeg("coffee"), "image/jpeg")
    post_file(wechat, DRIVER, chat_file)
    drain(runtime)
    clock.advance(seconds=6)
    drain(runtime)

    assert [(p.item, p.media_id) for p in photos_of(runtime)] == [(1, image), (2, chat_file)]


OTHER_DRIVER = "oPhotoDriver00000000000002"


def withdraw(wechat, runtime, clock) -> None:
    """The reporter withdraws their case, a second apart (their texts go past a photo waiting out an outage)."""
    for word in ("撤案", "确认撤案"):
        clock.advance(seconds=1)
        wechat.post_text(DRIVER, word)
        drain(runtime)


def driver_cases(runtime, openid: str = DRIVER) -> list[tuple[str, str]]:
    with runtime.unit_of_work() as session:
        return [(case.case_no, case.status.value) for case in session.scalars(
            select(Case).join(Party, Party.case_id == Case.id).where(Party.openid == openid).order_by(Case.id))]


@pytest.mark.parametrize("new_case_meanwhile", [False, True], ids=["no_case_since", "a_new_case_since"])
def test_a_photo_that_waited_out_an_outage_is_not_added_after_its_case_was_withdrawn(wechat, start_live, own_s3,
                                                                                      clock, photos,
                                                                                      new_case_meanwhile):
    """It was sent for the case the driver withdrew meanwhile (their texts go past it): it opens no case of its
    own, joins none opened since, and the driver is told, naming the case."""
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    withdrawn = case_no_of(runtime)
    own_s3.stop()
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"))  # waits the outage out
    withdraw(wechat, runtime, clock)
    if new_case_meanwhile:
        clock.advance(seconds=1)
        start_case(wechat, runtime)
    before = driver_cases(runtime)
    assert before[0] == (withdrawn, "cancelled") and len(before) == (2 if new_case_meanwhile else 1)

    own_s3.start()
    clock.advance(seconds=6)
    drain(runtime)

    [message] = image_messages(runtime)
    assert message.status is WorkStatus.DONE
    assert photos_of(runtime) == [] and driver_cases(runtime) == before
    assert seen_lines(wechat)[-1] == reply("conv.photo_case_closed", case_no=withdrawn)


def test_a_photo_sent_after_a_withdrawal_starts_a_new_case_however_late_it_is_processed(wechat, start_live, clock,
                                                                                        photos):
    """No outage: the photo came after the withdrawal, so it is for a new case, even when the worker reaches
    the withdrawal after the photo came in."""
    runtime = start_live()
    start_case(wechat, runtime)
    wechat.post_text(DRIVER, "撤案")
    drain(runtime)
    clock.advance(seconds=1)
    wechat.post_text(DRIVER, "确认撤案")
    clock.advance(seconds=1)
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"), process=False)
    clock.advance(seconds=1)
    drain(runtime)  # the withdrawal is processed after the photo came, but was asked for before it

    assert [status for _, status in driver_cases(runtime)] == ["cancelled", "draft"]
    assert [p.status for p in photos_of(runtime)] == [PhotoStatus.ACCEPTED]


def test_a_photo_that_waited_out_an_outage_goes_to_the_case_its_sender_joined_meanwhile(wechat, start_live, own_s3,
                                                                                       clock, photos):
    """The other driver's photo opened a draft of their own; joining the reporter's case closed that empty
    draft (abandoned, not ended): the photo is for the accident, in the case they joined."""
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    reporters = case_no_of(runtime)
    code = join_code_of(runtime, reporters)
    own_s3.stop()
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"), openid=OTHER_DRIVER)  # opens their own draft, waits
    clock.advance(seconds=1)
    wechat.post_text(OTHER_DRIVER, code)
    drain(runtime)
    assert sorted(status for _, status in driver_cases(runtime, OTHER_DRIVER)) == ["cancelled", "draft"]

    own_s3.start()
    clock.advance(seconds=6)
    drain(runtime)

    [photo] = photos_of(runtime)
    assert photo.status is PhotoStatus.ACCEPTED
    with runtime.unit_of_work() as session:
        assert session.get(Case, photo.case_id).case_no == reporters
    assert reply("conv.photo_case_closed", case_no=reporters) not in seen_lines(wechat, OTHER_DRIVER)


def join_code_of(runtime, case_no: str) -> str:
    with runtime.unit_of_work() as session:
        return session.scalar(select(Case.join_code).where(Case.case_no == case_no))


def test_photos_queued_behind_a_waiting_one_are_not_added_after_the_case_was_withdrawn(wechat, start_live, own_s3,
                                                                                      clock, photos):
    """Every photo sent before the withdrawal was for the withdrawn case, not only the one that met the outage."""
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    withdrawn = case_no_of(runtime)
    own_s3.stop()
    for name in ("coffee", "astronaut"):
        send_photo(wechat, runtime, photos.medium_jpeg(name), process=False)
    drain(runtime)  # the first meets the outage, the second queues behind it
    withdraw(wechat, runtime, clock)

    own_s3.start()
    clock.advance(seconds=6)
    drain(runtime)

    assert [m.status for m in image_messages(runtime)] == [WorkStatus.DONE] * 2
    assert photos_of(runtime) == [] and [status for _, status in driver_cases(runtime)] == ["cancelled"]
    assert seen_lines(wechat).count(reply("conv.photo_case_closed", case_no=withdrawn)) == 2


def test_a_photo_that_waited_is_not_added_after_the_case_its_sender_joined_was_withdrawn(wechat, start_live,
                                                                                         own_s3, clock, photos):
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    reporters = case_no_of(runtime)
    own_s3.stop()
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"), openid=OTHER_DRIVER)  # opens their own draft, waits
    clock.advance(seconds=1)
    wechat.post_text(OTHER_DRIVER, join_code_of(runtime, reporters))
    drain(runtime)
    withdraw(wechat, runtime, clock)  # the reporter withdraws the case the other driver joined

    own_s3.start()
    clock.advance(seconds=6)
    drain(runtime)

    assert photos_of(runtime) == []
    assert sorted(status for _, status in driver_cases(runtime, OTHER_DRIVER)) == ["cancelled", "cancelled"]
    assert seen_lines(wechat, OTHER_DRIVER)[-1] == reply("conv.photo_case_closed", case_no=reporters)


def test_a_withdrawal_processed_while_the_photo_is_stored_is_seen_before_the_photo_is_recorded(wechat, start_live,
                                                                                               own_s3, clock,
                                                                                               photos):
    """The photo's retry checks its case before the download and again when it records the photo: a withdrawal
    the driver's texts make while the download runs (they go past a waiting photo) is not missed."""
    import threading

    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    start_case(wechat, runtime)
    withdrawn = case_no_of(runtime)
    own_s3.stop()
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"))  # waits the outage out
    own_s3.start()
    wechat.hold("media/get")  # the download waits until the withdrawal is made
    clock.advance(seconds=6)
    retry = threading.Thread(target=drain, args=(runtime,), kwargs={"worker_id": "photo-worker"})
    retry.start()
    try:
        wechat.wait_until_held("media/get")
        assert image_messages(runtime)[0].status is WorkStatus.PROCESSING
        for word in ("撤案", "确认撤案"):
            wechat.post_text(DRIVER, word)
            drain(runtime, worker_id="text-worker")
    finally:
        wechat.release("media/get")
        retry.join(timeout=30)
    drain(runtime)

    assert image_messages(runtime)[0].status is WorkStatus.DONE
    assert photos_of(runtime) == [] and [status for _, status in driver_cases(runtime)] == ["cancelled"]
    assert reply("conv.photo_case_closed", case_no=withdrawn) in seen_lines(wechat)
    s3 = boto3.client("s3", endpoint_url=own_s3.url, region_name="us-east-1")
    assert s3.list_objects_v2(Bucket="evidence").get("Contents", []) == []  # stored during the download, deleted


def test_a_photo_that_waited_goes_to_a_case_opened_after_it_that_its_sender_joined(wechat, start_live, own_s3,
                                                                                  clock, photos):
    """The other driver's photo opened a draft of their own, which they left (abandoned, not ended) to join the
    reporter's case, opened after the photo: the photo is for the accident, in that case."""
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    own_s3.stop()
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"), openid=OTHER_DRIVER)  # opens their own draft, waits
    clock.advance(seconds=1)
    start_case(wechat, runtime)
    reporters = case_no_of(runtime)
    clock.advance(seconds=1)
    wechat.post_text(OTHER_DRIVER, join_code_of(runtime, reporters))
    drain(runtime)

    own_s3.start()
    clock.advance(seconds=6)
    drain(runtime)

    [photo] = photos_of(runtime)
    with runtime.unit_of_work() as session:
        assert session.get(Case, photo.case_id).case_no == reporters


def test_the_other_driver_s_photo_sent_before_they_could_know_of_the_withdrawal_joins_no_case(wechat, start_live,
                                                                                             clock, photos):
    """The reporter's withdrawal counts from their message for their own photos only: the other driver's photo,
    sent after that message came but before it was processed, was for the case."""
    runtime = start_live()
    start_case(wechat, runtime)
    reporters = case_no_of(runtime)
    wechat.post_text(OTHER_DRIVER, join_code_of(runtime, reporters))
    wechat.post_text(DRIVER, "撤案")
    drain(runtime)
    clock.advance(seconds=1)
    wechat.post_text(DRIVER, "确认撤案")
    clock.advance(seconds=1)
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"), openid=OTHER_DRIVER, process=False)
    clock.advance(seconds=1)
    drain(runtime)

    assert photos_of(runtime) == [] and [status for _, status in driver_cases(runtime, OTHER_DRIVER)] == ["cancelled"]
    assert seen_lines(wechat, OTHER_DRIVER)[-1] == reply("conv.photo_case_closed", case_no=reporters)


THIRD_DRIVER = "oPhotoDriver00000000000003"


def a_third_case_and_the_reporter_s_joined(wechat, runtime, clock) -> tuple[str, str]:
    """A third driver's case, then a second later the reporter's, which the other driver joins; their numbers."""
    start_case(wechat, runtime, openid=THIRD_DRIVER)
    thirds = case_no_of(runtime, THIRD_DRIVER)
    clock.advance(seconds=1)
    start_case(wechat, runtime)
    reporters = case_no_of(runtime)
    wechat.post_text(OTHER_DRIVER, join_code_of(runtime, reporters))
    drain(runtime)
    return thirds, reporters


def test_a_photo_that_waited_does_not_join_a_case_opened_before_it_that_its_sender_joined_after(wechat, start_live,
                                                                                                own_s3, clock, photos):
    """The other driver's photo was for the reporter's case, which was withdrawn while it waited; they then joined a
    third driver's case, opened before the photo was sent. That case was open when the photo came, but not
    theirs: the photo joins no case, and they are told the case it was for has closed."""
    runtime = start_live(STORAGE_URL="s3://evidence", S3_ENDPOINT_URL=own_s3.url, S3_CREATE_BUCKET=True)
    thirds, withdrawn = a_third_case_and_the_reporter_s_joined(wechat, runtime, clock)
    own_s3.stop()
    clock.advance(seconds=1)
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"), openid=OTHER_DRIVER)  # waits the outage out
    withdraw(wechat, runtime, clock)
    clock.advance(seconds=1)
    wechat.post_text(OTHER_DRIVER, join_code_of(runtime, thirds))
    drain(runtime)
    assert dict(driver_cases(runtime, OTHER_DRIVER))[withdrawn] == "cancelled"
    with runtime.unit_of_work() as session:
        assert open_case_for(session, OTHER_DRIVER)[0].case_no == thirds

    own_s3.start()
    clock.advance(seconds=6)
    drain(runtime)

    assert image_messages(runtime)[0].status is WorkStatus.DONE
    assert photos_of(runtime) == []
    assert reply("conv.photo_case_closed", case_no=withdrawn) in seen_lines(wechat, OTHER_DRIVER)


def test_a_photo_sent_after_asking_to_join_a_case_goes_to_it_though_the_join_waited_for_another_to_close(
        wechat, start_live, clock, photos):
    """The other driver, still in the reporter's case, asks to join a third driver's case, then sends a photo; the
    desk ends the reporter's case before either message is processed. The join then holds, and the photo, sent
    after they asked, is for the case they joined, not refused for the case the desk ended."""
    runtime = start_live()
    thirds, reporters = a_third_case_and_the_reporter_s_joined(wechat, runtime, clock)
    clock.advance(seconds=1)
    wechat.post_text(OTHER_DRIVER, join_code_of(runtime, thirds))
    clock.advance(seconds=1)
    send_photo(wechat, runtime, photos.medium_jpeg("coffee"), openid=OTHER_DRIVER, process=False)
    clock.advance(seconds=1)
    with runtime.unit_of_work() as session:
        actions.close_case(session, actions.lock_case(session, reporters), reason="双方和解", staff="desk-1",
                           settings=runtime.settings, now=clock.now())
    clock.advance(seconds=1)
    drain(runtime)

    [photo] = photos_of(runtime)
    with runtime.unit_of_work() as session:
        assert open_case_for(session, OTHER_DRIVER)[0].case_no == thirds
        assert session.get(Case, photo.case_id).case_no == thirds
    assert reply("conv.photo_case_closed", case_no=reporters) not in seen_lines(wechat, OTHER_DRIVER)
