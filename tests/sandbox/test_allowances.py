"""Customer-service allowances per user action (WECHAT.md §5, rules since 2023-06-12), and following (43004)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from accident_service.sandbox.emulator import WeChatEmulator
from accident_service.sandbox.push_messages import message_fields, render_xml
from tests.sandbox.calls import get_token, send_template, send_text
from tests.sandbox.conftest import PlatformClock, Receiver

HOURS_48 = 48 * 3600


@pytest.fixture
def token(emulator: WeChatEmulator) -> str:
    return get_token(emulator)["access_token"]


def sends(emulator: WeChatEmulator, token: str, openid: str, count: int) -> list[int]:
    return [send_text(emulator, token, openid, f"message {n}")["errcode"] for n in range(count)]


def push_message(emulator: WeChatEmulator, openid: str, msg_type: str, msg_id: int = 1) -> None:
    """A user message of any documented type (接收普通消息), pushed as raw XML."""
    bodies = {"voice": {"MediaId": "m", "Format": "amr"}, "video": {"MediaId": "m", "ThumbMediaId": "t"},
              "shortvideo": {"MediaId": "m", "ThumbMediaId": "t"},
              "link": {"Title": "t", "Description": "d", "Url": "https://example.invalid"},
              "file": {"Title": "a.pdf", "Description": "d", "FileKey": "k", "FileMd5": "0" * 32, "FileTotalLen": 3},
              "text": {"Content": "hi"}, "image": {"PicUrl": "https://example.invalid/p", "MediaId": "m"},
              "location": {"Location_X": 23.1, "Location_Y": 113.3, "Scale": 15, "Label": ""}}
    emulator.post_raw(render_xml(message_fields(emulator.original_id, openid, 1_700_000_000, msg_type,
                                                bodies[msg_type], msg_id)))


MESSAGES: dict[str, Callable[[WeChatEmulator, str], object]] = {
    t: (lambda emulator, openid, t=t: push_message(emulator, openid, t))
    for t in ("text", "image", "voice", "video", "shortvideo", "location", "link", "file")}
SHORT_ACTIONS: dict[str, Callable[[WeChatEmulator, str], object]] = {
    "click": lambda emulator, openid: emulator.post_click(openid, "REPORT_ACCIDENT"),
    "scancode_push": lambda emulator, openid: emulator.post_event(
        openid, "scancode_push", EventKey="SCAN_PLATE"),
    "scancode_waitmsg": lambda emulator, openid: emulator.post_event(
        openid, "scancode_waitmsg", EventKey="SCAN_PLATE"),
    "subscribe": lambda emulator, openid: emulator.post_event(openid, "subscribe"),
    "subscribe with a scene": lambda emulator, openid: emulator.post_scan(openid, "join:123456", subscribed=False),
    "scan": lambda emulator, openid: emulator.post_scan(openid, "join:123456", subscribed=True),
}


@pytest.mark.parametrize("message", MESSAGES)
def test_a_message_allows_five_sends_within_48_hours(emulator, token, platform_clock: PlatformClock,
                                                     message: str) -> None:
    MESSAGES[message](emulator, "o-user")

    assert sends(emulator, token, "o-user", 6) == [0, 0, 0, 0, 0, 45047]
    assert emulator.allowance("o-user").window_ends_at == platform_clock.now + HOURS_48


def test_the_48_hour_window_closes_with_sends_left(emulator, token, platform_clock: PlatformClock) -> None:
    emulator.post_text("o-user", "hello")
    assert sends(emulator, token, "o-user", 2) == [0, 0]

    platform_clock.advance(HOURS_48 - 1)
    assert emulator.allowance("o-user").remaining == 3
    platform_clock.advance(1)

    assert sends(emulator, get_token(emulator)["access_token"], "o-user", 1) == [45015]  # (tokens last 2 h)
    assert emulator.allowance("o-user").remaining == 0


@pytest.mark.parametrize("action", SHORT_ACTIONS)
def test_a_click_follow_or_scan_allows_three_sends_within_a_minute(emulator, token, platform_clock: PlatformClock,
                                                                   action: str) -> None:
    SHORT_ACTIONS[action](emulator, "o-user")

    assert sends(emulator, token, "o-user", 4) == [0, 0, 0, 45047]
    assert emulator.allowance("o-user").window_ends_at == platform_clock.now + 60


@pytest.mark.parametrize("action", ["click", "subscribe", "scan"])
def test_the_one_minute_window_closes(emulator, token, platform_clock: PlatformClock, action: str) -> None:
    SHORT_ACTIONS[action](emulator, "o-user")
    platform_clock.advance(59)
    assert sends(emulator, token, "o-user", 1) == [0]

    platform_clock.advance(1)

    assert sends(emulator, token, "o-user", 1) == [45015]


def test_a_closed_window_answers_45015_even_when_the_count_is_spent(emulator, token,
                                                                   platform_clock: PlatformClock) -> None:
    emulator.post_click("o-user", "REPORT_ACCIDENT")
    assert sends(emulator, token, "o-user", 4)[-1] == 45047

    platform_clock.advance(60)

    assert sends(emulator, token, "o-user", 1) == [45015]


def test_the_suites_wechat_fixture_has_the_rules_on_and_reads_the_test_clock(wechat, clock) -> None:
    token = get_token(wechat)["access_token"]
    wechat.note_user_activity("o-driver", "CLICK")

    assert sends(wechat, token, "o-stranger", 1) == [43004]
    assert wechat.allowance("o-driver").window_ends_at == clock.now().timestamp() + 60
    clock.advance(seconds=60)
    assert sends(wechat, token, "o-driver", 1) == [45015]


def test_a_click_after_a_message_resets_to_three_in_a_minute(emulator, token, platform_clock: PlatformClock) -> None:
    emulator.post_text("o-user", "hello")
    assert sends(emulator, token, "o-user", 1) == [0]  # 4 of the message's 5 left

    emulator.post_click("o-user", "MY_CASE")

    allowance = emulator.allowance("o-user")
    assert (allowance.remaining, allowance.granted_by) == (3, "click")
    platform_clock.advance(60)
    assert sends(emulator, token, "o-user", 1) == [45015]  # the message's 48 hours are gone with it


def test_a_message_after_spent_clicks_resets_to_five(emulator, token) -> None:
    emulator.post_click("o-user", "REPORT_ACCIDENT")
    assert sends(emulator, token, "o-user", 4) == [0, 0, 0, 45047]

    emulator.post_text("o-user", "快处")

    assert sends(emulator, token, "o-user", 6) == [0, 0, 0, 0, 0, 45047]


def test_allowances_do_not_add_up(emulator, token) -> None:
    emulator.post_text("o-user", "one")
    emulator.post_text("o-user", "two")

    assert sends(emulator, token, "o-user", 6) == [0, 0, 0, 0, 0, 45047]


@pytest.mark.parametrize("event, fields", [
    ("LOCATION", {"Latitude": 23.137466, "Longitude": 113.352425, "Precision": 119.385040}),
    ("VIEW", {"EventKey": "https://example.invalid/menu"}),
    ("TEMPLATESENDJOBFINISH", {"Status": "success", "MsgID": 200163836}),
])
def test_other_events_grant_nothing_and_keep_the_allowance(emulator, token, event: str, fields: dict) -> None:
    emulator.add_follower("o-follower")
    emulator.post_event("o-follower", event, **fields)
    assert sends(emulator, token, "o-follower", 1) == [45015]

    emulator.post_text("o-user", "hello")
    assert sends(emulator, token, "o-user", 1) == [0]
    emulator.post_event("o-user", event, **fields)

    assert emulator.allowance("o-user").remaining == 4


def test_users_who_never_acted_do_not_follow(emulator, token) -> None:
    emulator.register_template("TPL", ["thing1"])

    assert sends(emulator, token, "o-stranger", 1) == [43004]
    assert send_template(emulator, token, "o-stranger", "TPL", {"thing1": "x"})["errcode"] == 43004
    assert not emulator.allowance("o-stranger").following


def test_a_follower_without_an_action_gets_templates_but_no_customer_service(emulator, token) -> None:
    emulator.register_template("TPL", ["thing1"])
    emulator.add_follower("o-follower")

    assert sends(emulator, token, "o-follower", 1) == [45015]
    assert send_template(emulator, token, "o-follower", "TPL", {"thing1": "x"})["errcode"] == 0


def test_unsubscribing_ends_following_and_the_allowance(emulator, token) -> None:
    emulator.register_template("TPL", ["thing1"])
    emulator.post_text("o-user", "hello")

    emulator.post_event("o-user", "unsubscribe")

    assert sends(emulator, token, "o-user", 1) == [43004]
    assert send_template(emulator, token, "o-user", "TPL", {"thing1": "x"})["errcode"] == 43004
    emulator.post_event("o-user", "subscribe")
    assert sends(emulator, token, "o-user", 4) == [0, 0, 0, 45047]


def test_set_user_unsubscribed_and_close_window(emulator, token) -> None:
    emulator.post_text("o-gone", "hello")
    emulator.post_text("o-quiet", "hello")
    emulator.set_user_unsubscribed("o-gone")
    emulator.close_window("o-quiet")

    assert sends(emulator, token, "o-gone", 1) == [43004]
    assert sends(emulator, token, "o-quiet", 1) == [45015]
    emulator.post_text("o-quiet", "hello again")  # a new action opens a new window
    assert sends(emulator, token, "o-quiet", 1) == [0]
    emulator.set_user_unsubscribed("o-gone", False)  # follows again, but has not acted since
    assert sends(emulator, token, "o-gone", 1) == [45015]


def test_a_retried_push_is_the_same_action(emulator, token, receiver: Receiver) -> None:
    emulator.post_text("o-user", "hello", msg_id=42)
    assert sends(emulator, token, "o-user", 5) == [0] * 5
    emulator.post_text("o-user", "hello", msg_id=42)  # the platform pushing the same message again
    emulator.post_click("o-click", "K", create_time=1_700_000_000)
    emulator.post_click("o-click", "K", create_time=1_700_000_000)

    assert sends(emulator, token, "o-user", 1) == [45047]
    assert sends(emulator, token, "o-click", 4) == [0, 0, 0, 45047]
    assert len(receiver.requests) == 4


def test_post_raw_counts_a_well_formed_message_and_nothing_else(emulator, token) -> None:
    emulator.post_raw(b"<xml><ToUserName>gh</ToUserName><FromUserName>o-broken</FromUserName>")
    emulator.post_raw(b"<xml><FromUserName>o-no-type</FromUserName><Content>x</Content></xml>")
    entity = (b'<!DOCTYPE xml [<!ENTITY e "x">]><xml><FromUserName>o-entity</FromUserName>'
              b"<MsgType>text</MsgType><Content>&e;</Content><MsgId>1</MsgId></xml>")
    emulator.post_raw(entity)
    push_message(emulator, "o-raw", "text")

    assert [sends(emulator, token, o, 1)[0] for o in ("o-broken", "o-no-type", "o-entity")] == [43004] * 3
    assert sends(emulator, token, "o-raw", 1) == [0]


def test_an_action_counts_even_when_the_service_rejects_the_push(emulator, token, receiver: Receiver) -> None:
    receiver.respond = lambda request: (403, b"forbidden")

    assert emulator.post_text("o-user", "hello").status_code == 403

    assert sends(emulator, token, "o-user", 1) == [0]


def test_note_user_activity_records_an_action_without_a_push(emulator, token, receiver: Receiver) -> None:
    assert emulator.note_user_activity("o-user", msg_type="image")
    assert emulator.note_user_activity("o-clicker", "CLICK")

    assert sends(emulator, token, "o-user", 6)[-1] == 45047
    assert sends(emulator, token, "o-clicker", 4)[-1] == 45047
    assert receiver.requests == []


def test_refused_sends_are_counted_by_errcode_and_reach_nobody(emulator, token) -> None:
    emulator.post_click("o-user", "K")
    sends(emulator, token, "o-user", 5)
    sends(emulator, token, "o-stranger", 1)

    assert emulator.refusal_counts() == {45047: 2, 43004: 1}
    assert emulator.refusal_counts("template") == {}
    assert [m["text"] for m in emulator.sent] == ["message 0", "message 1", "message 2"]
    assert emulator.refused[-1]["touser"] == "o-stranger"


def test_templates_use_no_allowance(emulator, token) -> None:
    emulator.register_template("TPL", ["thing1"])
    emulator.post_click("o-user", "K")

    assert [send_template(emulator, token, "o-user", "TPL", {"thing1": str(n)})["errcode"] for n in range(4)] == [0] * 4
    assert emulator.allowance("o-user").remaining == 3
