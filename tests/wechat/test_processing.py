"""What a driver hears when their message fails for good."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from accident_service.messages import text
from accident_service.models import InboundMessage, Notification
from accident_service.wechat import inbox
from accident_service.wechat.processing import tell_sender_it_was_lost
from accident_service.wechat.xml_gate import parse_inbound

HEAD = "<xml><ToUserName>gh_x</ToUserName><FromUserName>oLost</FromUserName><CreateTime>1764036000</CreateTime>"
PUSHES = {
    "text": HEAD + "<MsgType>text</MsgType><Content>粤A12345</Content><MsgId>71</MsgId></xml>",
    "image": HEAD + "<MsgType>image</MsgType><PicUrl>http://127.0.0.1/p.jpg</PicUrl><MediaId>m</MediaId>"
                    "<MsgId>72</MsgId></xml>",
    "click": HEAD + "<MsgType>event</MsgType><Event>CLICK</Event><EventKey>REPORT_ACCIDENT</EventKey></xml>",
    "subscribe": HEAD + "<MsgType>event</MsgType><Event>subscribe</Event></xml>",
}


def _lose(runtime, kind: str) -> list[str]:
    xml = PUSHES[kind]
    row_id = inbox.store_inbound(runtime, parse_inbound(xml), xml, runtime.clock.now())
    with runtime.unit_of_work() as session:
        tell_sender_it_was_lost(session, session.get(InboundMessage, row_id), runtime.clock.now())
    with runtime.unit_of_work() as session:
        return [n.payload["text"] for n in session.scalars(select(Notification).where(Notification.openid == "oLost"))]


@pytest.mark.parametrize(("kind", "key"), [("text", "conv.message_lost"), ("click", "conv.message_lost"),
                                           ("image", "conv.photo_lost")])
def test_what_the_driver_did_is_asked_for_again(runtime, kind, key):
    assert _lose(runtime, kind) == [text(key, "zh")]


def test_a_follow_event_is_not_answered(runtime):
    assert _lose(runtime, "subscribe") == []
