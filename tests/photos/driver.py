"""A driver sending photos through the WeChat emulator, and what the service made of them."""

from __future__ import annotations

import itertools

from sqlalchemy import select

from accident_service.messages import text
from accident_service.models import Case, InboundMessage, Photo
from tests.support.live import drain

DRIVER = "oPhotoDriver00000000000001"
_media_ids = itertools.count(1)


def reply(key: str, **params: object) -> str:
    """The Chinese catalogue text the driver should see."""
    return text(key, "zh", **params)


def seen_lines(wechat, openid: str = DRIVER) -> list[str]:
    """Every line the driver read, in order: one reply holds a reason and the next step, a line each."""
    return [line for message in wechat.messages_to(openid) for line in message.split("\n")]


def start_case(wechat, runtime, openid: str = DRIVER) -> None:
    assert wechat.post_text(openid, "快处").text == "success"
    drain(runtime)


def send_photo(wechat, runtime, data: bytes, *, openid: str = DRIVER, content_type: str = "image/jpeg",
               send_length: bool = True, process: bool = True) -> str:
    """Upload ``data`` as media, push the image message and (by default) let the workers run."""
    media_id = wechat.add_media(f"photo-{next(_media_ids)}", data, content_type, send_length=send_length)
    assert wechat.post_image(openid, media_id).text == "success"
    if process:
        drain(runtime)
    return media_id


def photos_of(runtime) -> list[Photo]:
    """Every Photo row, oldest first, detached from the session."""
    with runtime.unit_of_work() as session:
        rows = list(session.scalars(select(Photo).order_by(Photo.id)))
        session.expunge_all()
    return rows


def case_no_of(runtime, openid: str = DRIVER) -> str:
    from accident_service.models import Party

    with runtime.unit_of_work() as session:
        party = session.scalar(select(Party).where(Party.openid == openid))
        return session.get(Case, party.case_id).case_no


def image_messages(runtime) -> list[InboundMessage]:
    with runtime.unit_of_work() as session:
        rows = list(session.scalars(select(InboundMessage).where(InboundMessage.msg_type == "image")
                                    .order_by(InboundMessage.id)))
        session.expunge_all()
    return rows
