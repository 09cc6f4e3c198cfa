"""The emulator's platform side: what it POSTs to the callback, checked with wechatpy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xmltodict
from wechatpy import create_reply, parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.utils import check_signature

from accident_service.sandbox.emulator import WeChatEmulator
from tests.sandbox.conftest import AES_KEY, APPID, TOKEN, Received, Receiver

FIXTURES = Path(__file__).resolve().parents[1] / "wechat" / "fixtures"


def parsed(request: Received):
    check_signature(TOKEN, request.query["signature"], request.query["timestamp"], request.query["nonce"])
    return parse_message(request.body)


def test_text_push_is_signed_and_parses(emulator: WeChatEmulator, receiver: Receiver) -> None:
    response = emulator.post_text("o-driver", "快处")

    assert response.status_code == 200
    request = receiver.last
    assert request.method == "POST" and request.query["openid"] == "o-driver"
    assert "encrypt_type" not in request.query
    message = parsed(request)
    assert (message.type, message.content, message.source, message.target) == (
        "text", "快处", "o-driver", emulator.original_id)
    assert message.id > 0


def test_forged_signature_does_not_verify(emulator: WeChatEmulator, receiver: Receiver) -> None:
    emulator.post_text("o-driver", "x")
    query = receiver.last.query

    with pytest.raises(InvalidSignatureException):
        check_signature("other-token", query["signature"], query["timestamp"], query["nonce"])


def test_msg_ids_increase_and_can_be_overridden(emulator: WeChatEmulator, receiver: Receiver) -> None:
    emulator.post_text("o", "a")
    emulator.post_text("o", "b")
    emulator.post_text("o", "c", msg_id=42, create_time=1_700_000_000)

    first, second, third = (parsed(r) for r in receiver.requests)
    assert second.id == first.id + 1
    assert (third.id, third.time) == (42, 1_700_000_000)


def test_image_push_carries_media_id_and_a_working_pic_url(emulator: WeChatEmulator, receiver: Receiver) -> None:
    media_id = emulator.add_media()

    emulator.post_image("o", media_id)

    message = parsed(receiver.last)
    assert (message.type, message.media_id) == ("image", media_id)
    assert message.image == f"{emulator.base_url}/pic/{media_id}"


def test_location_push(emulator: WeChatEmulator, receiver: Receiver) -> None:
    emulator.post_location("o", 23.134521, 113.358803, "广州市海珠区")

    message = parsed(receiver.last)
    assert message.type == "location"
    assert (float(message.location_x), float(message.location_y), message.label) == (
        23.134521, 113.358803, "广州市海珠区")


def test_click_and_location_events(emulator: WeChatEmulator, receiver: Receiver) -> None:
    emulator.post_click("o", "REPORT_ACCIDENT")
    emulator.post_event("o", "LOCATION", Latitude=23.137466, Longitude=113.352425, Precision=119.385040)

    click, location = (parsed(r) for r in receiver.requests)
    assert (click.event, click.key, click.id) == ("click", "REPORT_ACCIDENT", 0)
    assert (location.event, location.latitude, location.longitude) == ("location", 23.137466, 113.352425)


def test_events_of_one_user_get_distinct_create_times(emulator: WeChatEmulator, receiver: Receiver) -> None:
    emulator.post_click("o", "MY_CASE")
    emulator.post_click("o", "MY_CASE")

    first, second = (parsed(r) for r in receiver.requests)
    assert second.time > first.time


def test_scan_when_following_and_when_subscribing(emulator: WeChatEmulator, receiver: Receiver) -> None:
    emulator.qrcodes["join:123456"] = "TICKET-1"

    emulator.post_scan("o-b", "join:123456", subscribed=True)
    emulator.post_scan("o-c", "join:123456", subscribed=False)

    scan, subscribe = (parsed(r) for r in receiver.requests)
    assert (scan.event, scan.scene_id, scan.ticket) == ("scan", "join:123456", "TICKET-1")
    assert (subscribe.event, subscribe.scene_id, subscribe.ticket) == ("subscribe_scan", "join:123456", "TICKET-1")
    assert "<EventKey><![CDATA[qrscene_join:123456]]></EventKey>" in receiver.last.body.decode()


def test_cdata_terminator_in_content_survives(emulator: WeChatEmulator, receiver: Receiver) -> None:
    emulator.post_text("o", "a]]>b<c>&d")

    assert parsed(receiver.last).content == "a]]>b<c>&d"


def test_safe_mode_push_decrypts_with_wechatpy(emulator: WeChatEmulator, receiver: Receiver) -> None:
    emulator.post_text("o-safe", "加密", encrypted=True)

    request = receiver.last
    query = request.query
    assert query["encrypt_type"] == "aes"
    envelope = xmltodict.parse(request.body)["xml"]
    assert set(envelope) == {"ToUserName", "Encrypt"}
    check_signature(TOKEN, query["signature"], query["timestamp"], query["nonce"])
    xml = WeChatCrypto(TOKEN, AES_KEY, APPID).decrypt_message(request.body, query["msg_signature"],
                                                              query["timestamp"], query["nonce"])
    message = parse_message(xml)
    assert (message.content, message.source) == ("加密", "o-safe")


def test_safe_mode_is_the_default_with_an_aes_key(receiver: Receiver) -> None:
    with WeChatEmulator(APPID, "s", TOKEN, AES_KEY, callback_url=receiver.url) as emulator:
        emulator.post_click("o", "K")

    assert receiver.last.query["encrypt_type"] == "aes"


def test_verify_url_sends_a_signed_get(emulator: WeChatEmulator, receiver: Receiver) -> None:
    response = emulator.verify_url("echo-123")

    assert response.text == "echo-123"
    query = receiver.last.query
    check_signature(TOKEN, query["signature"], query["timestamp"], query["nonce"])


def test_post_raw_delivers_fixture_bytes_unchanged(emulator: WeChatEmulator, receiver: Receiver) -> None:
    body = (FIXTURES / "location.xml").read_bytes()

    emulator.post_raw(body)

    assert receiver.last.body == body
    assert receiver.last.query["openid"] == "fromUser"


@pytest.mark.parametrize("name, expected", [
    ("text.xml", ("text", None)), ("image.xml", ("image", None)), ("location.xml", ("location", None)),
    ("event_subscribe.xml", ("event", "subscribe")), ("event_unsubscribe.xml", ("event", "unsubscribe")),
    ("event_subscribe_scan.xml", ("event", "subscribe_scan")), ("event_scan.xml", ("event", "scan")),
    ("event_location.xml", ("event", "location")), ("event_click.xml", ("event", "click")),
    ("event_view.xml", ("event", "view")), ("unknown_type.xml", ("unknown", None)),
])
def test_documentation_samples_parse(name: str, expected: tuple[str, str | None]) -> None:
    message = parse_message((FIXTURES / name).read_text(encoding="utf-8"))

    assert (message.type, getattr(message, "event", None)) == expected


@pytest.mark.parametrize("sample", ["official_compatible", "sample_safe"])
def test_documentation_aes_samples_decrypt(sample: str) -> None:
    spec = json.loads((FIXTURES / "aes_samples.json").read_text(encoding="utf-8"))[sample]
    crypto = WeChatCrypto(spec["token"], spec["encoding_aes_key"], spec["appid"])

    xml = crypto.decrypt_message((FIXTURES / spec["file"]).read_bytes(), spec["msg_signature"],
                                 spec["timestamp"], spec["nonce"])

    assert {k: v for k, v in xmltodict.parse(xml)["xml"].items()} == spec["expected"]
    with pytest.raises(InvalidSignatureException):
        crypto.decrypt_message((FIXTURES / spec["file"]).read_bytes(), "0" * 40, spec["timestamp"], spec["nonce"])


def test_emulator_pushes_the_official_sample_as_the_platform_did(receiver: Receiver) -> None:
    spec = json.loads((FIXTURES / "aes_samples.json").read_text(encoding="utf-8"))["official_compatible"]
    with WeChatEmulator(spec["appid"], "s", spec["token"], spec["encoding_aes_key"],
                        callback_url=receiver.url) as emulator:
        query = emulator.signed_params(xmltodict.parse((FIXTURES / spec["file"]).read_text())["xml"]["Encrypt"],
                                       timestamp=spec["timestamp"], nonce=spec["nonce"])

    assert query["msg_signature"] == spec["msg_signature"]


def test_passive_replies_are_recorded_as_messages(emulator: WeChatEmulator, receiver: Receiver) -> None:
    def reply(request: Received) -> tuple[int, bytes]:
        return 200, create_reply("已收到 1/4", parse_message(request.body), render=True).encode()

    receiver.respond = reply

    emulator.post_text("o-a", "hello")

    assert emulator.messages_to("o-a") == ["已收到 1/4"]
    assert emulator.sent[-1]["kind"] == "reply"
    assert emulator.reply_errors == []


def test_encrypted_replies_are_decrypted(emulator: WeChatEmulator, receiver: Receiver) -> None:
    crypto = WeChatCrypto(TOKEN, AES_KEY, APPID)

    def reply(request: Received) -> tuple[int, bytes]:
        q = request.query
        message = parse_message(crypto.decrypt_message(request.body, q["msg_signature"], q["timestamp"], q["nonce"]))
        return 200, crypto.encrypt_message(create_reply("safe", message, render=True), q["nonce"]).encode()

    receiver.respond = reply

    emulator.post_text("o-a", "hello", encrypted=True)

    assert emulator.messages_to("o-a") == ["safe"]


@pytest.mark.parametrize("body", [b"{\"json\": true}", b"<xml><Content>unsigned</Content>"])
def test_invalid_replies_are_reported(emulator: WeChatEmulator, receiver: Receiver, body: bytes) -> None:
    receiver.respond = lambda request: (200, body)

    emulator.post_text("o-a", "hello")

    assert emulator.messages_to("o-a") == []
    assert emulator.reply_errors[-1]["openid"] == "o-a"


def test_success_and_errors_are_not_replies(emulator: WeChatEmulator, receiver: Receiver) -> None:
    receiver.respond = lambda request: (403, b"forbidden")

    assert emulator.post_text("o-a", "x").status_code == 403
    assert emulator.sent == [] and emulator.reply_errors == []


def test_pushing_needs_a_callback_url() -> None:
    with WeChatEmulator(APPID, "s", TOKEN) as emulator, pytest.raises(RuntimeError):
        emulator.post_text("o", "x")
