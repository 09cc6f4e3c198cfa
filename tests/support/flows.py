"""Driver journeys through the emulator, shared by the end-to-end tests."""

from __future__ import annotations

from sqlalchemy import select

from accident_service.models import Case, Party
from accident_service.sandbox.images import make_jpeg
from tests.support.live import drain

GUANGZHOU_TOWER = (23.1066, 113.3245)


def send_photos(wechat, runtime, openid: str, count: int, *, seed: str) -> list[str]:
    """Post ``count`` distinct sharp photos as image messages; returns their media ids."""
    media_ids = []
    for n in range(count):
        media_id = wechat.add_media(f"{seed}-{n}", make_jpeg(f"{seed}-{n}", 1600, 1200))
        assert wechat.post_image(openid, media_id).text == "success"
        drain(runtime)
        media_ids.append(media_id)
    return media_ids


def report_until_ready(wechat, runtime, reporter: str, other: str) -> Case:
    """Reporter starts by menu, sends their 3 photos, location, plate, phone; the other joins by QR scan and
    sends their photo (their own plate), plate and phone, which makes the case ready: the slot list is theirs.

    Each driver waits for the answer before the next step, as people do: the platform allows the service
    5 customer-service messages after each message, not 5 per message (WECHAT.md §5), so answering a
    burst only after its last message would be a test artefact."""
    wechat.post_click(reporter, "REPORT_ACCIDENT")
    drain(runtime)
    send_photos(wechat, runtime, reporter, 3, seed=reporter)
    wechat.post_location(reporter, *GUANGZHOU_TOWER, label="广州塔附近")
    drain(runtime)
    wechat.post_text(reporter, "粤A12345")
    drain(runtime)
    wechat.post_text(reporter, "13800138000")
    drain(runtime)
    scene = next(iter(wechat.qrcodes))
    wechat.post_scan(other, scene, subscribed=False)
    drain(runtime)
    send_photos(wechat, runtime, other, 1, seed=other)
    wechat.post_text(other, "粤BD12345")
    drain(runtime)
    wechat.post_text(other, "13900139000")
    drain(runtime)
    with runtime.unit_of_work() as session:
        party = session.scalar(select(Party).where(Party.openid == reporter))
        return session.get(Case, party.case_id)
