"""The WeChat callback (/wechat): verify, refuse, de-duplicate, persist, answer "success".

Requests are signed here independently of the code under test
(``sha1(sorted([token, timestamp, nonce]))``, plus ``Encrypt`` for
``msg_signature``) and encrypted with wechatpy's ``WeChatCrypto``. Every
refusal is checked together with "nothing stored": a 4xx that still wrote a
row would be worse than useless.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import xmltodict
from sqlalchemy import func, select
from wechatpy.crypto import WeChatCrypto
from wechatpy.utils import check_signature

from accident_service import create_app
from accident_service.models import InboundMessage, WorkStatus
from accident_service.runtime import build_runtime
from accident_service.settings import load_settings
from accident_service.wechat.xml_gate import parse_inbound
from tests.support.servers import free_port, http_handler_served, serving

FIXTURES = Path(__file__).parent / "fixtures"
REPO_ROOT = Path(__file__).resolve().parents[2]
AES_SAMPLES = json.loads((FIXTURES / "aes_samples.json").read_text(encoding="utf-8"))
TOKEN = "webhook-test-token"
APP_ID = "wx0123456789abcdef"
AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
AES_SETTINGS = {"WECHAT_ENCODING_AES_KEY": AES_KEY}
BODY_CAP = 4096
NONCE = "1320562132"


@pytest.fixture
def extra_settings() -> dict:
    """Per-test setting overrides; tests replace it with ``@pytest.mark.parametrize("extra_settings", ...)``."""
    return {}


@pytest.fixture
def settings_overrides(settings_overrides, extra_settings):
    return {**settings_overrides, "WECHAT_TOKEN": TOKEN, "WECHAT_APP_ID": APP_ID,
            "WECHAT_MAX_BODY_BYTES": BODY_CAP, **extra_settings}


# --- helpers ---------------------------------------------------------------

def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def sha1_sorted(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


def plain_query(token: str = TOKEN, *, timestamp: str | None = None, nonce: str | None = None) -> dict[str, str]:
    """A fresh query as the platform signs one: now, and a nonce of its own."""
    timestamp = timestamp or str(int(time.time()))
    nonce = nonce or str(secrets.randbelow(10**10))
    return {"signature": sha1_sorted(token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce,
            "openid": "fromUser"}


def aes_query(encrypt: str, token: str = TOKEN, *, timestamp: str | None = None,
              nonce: str = NONCE) -> dict[str, str]:
    query = plain_query(token, timestamp=timestamp, nonce=nonce)
    return {**query, "encrypt_type": "aes",
            "msg_signature": sha1_sorted(token, query["timestamp"], nonce, encrypt)}


def encrypt_for_push(xml: str, *, token: str = TOKEN, key: str = AES_KEY, appid: str = APP_ID) -> str:
    """The ``Encrypt`` value the platform would send for ``xml`` (safe mode)."""
    timestamp = str(int(time.time()))
    envelope = xmltodict.parse(WeChatCrypto(token, key, appid).encrypt_message(xml, NONCE, timestamp))["xml"]
    # Cross-check our signing against wechatpy's, so the two cannot drift apart unnoticed.
    assert envelope["MsgSignature"] == sha1_sorted(token, timestamp, NONCE, envelope["Encrypt"])
    return envelope["Encrypt"]


def safe_mode_body(encrypt: str) -> str:
    return f"<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"


def post(client, body: str | bytes, query: dict[str, str], **kwargs):
    data = body.encode("utf-8") if isinstance(body, str) else body
    return client.post("/wechat", query_string=query, data=data, content_type="text/xml", **kwargs)


def stored(runtime) -> list[InboundMessage]:
    with runtime.unit_of_work() as session:
        return list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))


def stored_count(runtime) -> int:
    with runtime.unit_of_work() as session:
        return session.scalar(select(func.count()).select_from(InboundMessage))


def assert_success(response) -> None:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_data() == b"success"
    assert response.mimetype == "text/plain"


def assert_refused(response, runtime, statuses: tuple[int, ...] = (400, 403, 413)) -> None:
    assert response.status_code in statuses, (response.status_code, response.get_data(as_text=True))
    assert b"Traceback" not in response.get_data()
    assert stored_count(runtime) == 0


def text_message(*, msg_id: int = 1234567890123456, source: str = "fromUser", content: str = "hi") -> str:
    return (f"<xml><ToUserName><![CDATA[toUser]]></ToUserName><FromUserName><![CDATA[{source}]]></FromUserName>"
            f"<CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>")


def event_message(*, source: str = "oDriver1", create_time: int = 1764036000, event: str = "SCAN",
                  key: str = "1-abc") -> str:
    return (f"<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>"
            f"<FromUserName><![CDATA[{source}]]></FromUserName><CreateTime>{create_time}</CreateTime>"
            f"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event>"
            f"<EventKey><![CDATA[{key}]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket></xml>")


# --- URL verification ----------------------------------------------------

def test_signing_helper_agrees_with_wechatpy():
    query = plain_query()
    check_signature(TOKEN, query["signature"], query["timestamp"], query["nonce"])  # raises if not


def test_url_verification_echoes_echostr(client):
    response = client.get("/wechat", query_string={**plain_query(), "echostr": "8390712853948571"})
    assert response.status_code == 200
    assert response.get_data() == b"8390712853948571"


@pytest.mark.parametrize("extra_settings", [AES_SETTINGS], ids=["aes_configured"])
def test_url_verification_stays_plain_in_safe_mode(client):
    response = client.get("/wechat", query_string={**plain_query(), "echostr": "plain-echo"})
    assert response.get_data() == b"plain-echo"


def _forged_queries() -> dict[str, dict[str, str]]:
    good = plain_query(timestamp="1764036000")
    return {
        "other_token": plain_query("another-token", timestamp="1764036000"),
        "missing_signature": {k: v for k, v in good.items() if k != "signature"},
        "empty_query": {},
        "timestamp_changed": {**good, "timestamp": "1764036001"},
        "nonce_changed": {**good, "nonce": "1"},
        "signature_garbage": {**good, "signature": "x" * 40},
    }


@pytest.mark.parametrize("query", _forged_queries().values(), ids=_forged_queries().keys())
def test_url_verification_refuses_bad_signatures(client, query):
    response = client.get("/wechat", query_string={**query, "echostr": "echo-me"})
    assert response.status_code == 403
    assert b"echo-me" not in response.get_data()


def test_a_refused_signature_is_plain_text_and_a_line_in_the_log(client, caplog):
    """What a wrong WECHAT_TOKEN looks like, on the URL check and on every push: the metrics counted the 403s and
    nothing was logged; the answer was werkzeug's HTML page (acceptance pass)."""
    forged = _forged_queries()["other_token"]
    with caplog.at_level(logging.WARNING, logger="accident_service.wechat.webhook"):
        checked = client.get("/wechat", query_string={**forged, "echostr": "echo-me"})
        pushed = client.post("/wechat", query_string=forged, data=text_message().encode(), content_type="text/xml")
    for response in (checked, pushed):
        assert response.status_code == 403 and response.mimetype == "text/plain" and b"<" not in response.data
    assert [record.getMessage() for record in caplog.records
            if record.name == "accident_service.wechat.webhook"] == ["wechat request refused: 403 Forbidden"] * 2


def test_a_bug_s_500_is_not_logged_as_a_refusal(client, caplog, monkeypatch):
    """The handler of refusals sees every HTTP error of the callback, a bug's 500 too (review): Flask logs that one
    with its traceback, and it is not a refusal."""
    from accident_service.wechat import webhook

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(webhook.inbox, "store_inbound", broken)
    with caplog.at_level(logging.WARNING):
        response = client.post("/wechat", query_string=plain_query(), data=text_message().encode(),
                               content_type="text/xml")
    assert response.status_code == 500
    assert not [record for record in caplog.records if "refused" in record.getMessage()]


# --- accepted pushes (plain mode) ---------------------------------------

@pytest.mark.parametrize(("fixture", "dedupe_key", "msg_type", "openid"), [
    ("text.xml", "msg:1234567890123456", "text", "fromUser"),
    ("image.xml", "msg:1234567890123456", "image", "fromUser"),
    ("location.xml", "msg:1234567890123456", "location", "fromUser"),
    ("event_click.xml", "evt:FromUser:123456789:click", "event:click", "FromUser"),
    ("event_scan.xml", "evt:FromUser:123456789:scan", "event:scan", "FromUser"),
    ("event_subscribe.xml", "evt:FromUser:123456789:subscribe", "event:subscribe", "FromUser"),
    ("event_subscribe_scan.xml", "evt:FromUser:123456789:subscribe_scan", "event:subscribe_scan", "FromUser"),
    ("event_location.xml", "evt:fromUser:123456789:location", "event:location", "fromUser"),
])
def test_push_is_stored_once_with_its_dedupe_key(client, runtime, clock, fixture, dedupe_key, msg_type, openid):
    body = fixture_text(fixture)
    assert_success(post(client, body, plain_query()))
    [row] = stored(runtime)
    assert (row.dedupe_key, row.msg_type, row.openid) == (dedupe_key, msg_type, openid)
    assert row.payload == body
    assert row.status is WorkStatus.PENDING and row.attempts == 0
    assert row.received_at == clock.now() and row.next_attempt_at == clock.now()


def test_subscribe_with_qrscene_keeps_the_scene_for_processing(client, runtime):
    assert_success(post(client, fixture_text("event_subscribe_scan.xml"), plain_query()))
    [row] = stored(runtime)
    event = parse_inbound(row.payload)
    assert (event.event, event.scene_id) == ("subscribe_scan", "123123")


def test_events_without_msgid_dedupe_by_user_time_and_event(client, runtime):
    scan, click = event_message(event="SCAN"), event_message(event="CLICK", key="REPORT_ACCIDENT")
    assert parse_inbound(scan).id == 0 and parse_inbound(click).id == 0  # wechatpy: events carry no MsgId
    for body in (scan, click, scan, click, scan):
        assert_success(post(client, body, plain_query()))
    assert [row.dedupe_key for row in stored(runtime)] == [
        "evt:oDriver1:1764036000:scan", "evt:oDriver1:1764036000:click"]

    assert_success(post(client, event_message(source="oDriver2", event="SCAN"), plain_query()))
    assert_success(post(client, event_message(create_time=1764036001, event="SCAN"), plain_query()))
    assert stored_count(runtime) == 4


@pytest.mark.parametrize("fixture", ["text.xml", "event_click.xml"])
def test_same_push_three_times_is_one_row(client, runtime, fixture):
    body = fixture_text(fixture)
    for _ in range(3):  # the platform's retries: same body, fresh signature each time
        assert_success(post(client, body, plain_query(nonce=str(time.monotonic_ns()))))
    assert stored_count(runtime) == 1


def test_a_push_runs_on_the_platform_s_own_app_without_the_staff_pages_machinery(client, runtime):
    """No session, sign-in, CSRF or sign-in throttle hooks for a push: they cost CPU and serve nobody here."""
    from flask import request_started

    apps = []

    def _seen(sender, **_extra):
        apps.append(sender)

    request_started.connect(_seen)
    try:
        assert_success(post(client, text_message(msg_id=777), plain_query()))
        client.get("/healthz")
    finally:
        request_started.disconnect(_seen)
    platform, service = apps
    assert stored_count(runtime) == 1
    assert {"limiter", "csrf"} <= set(service.extensions) and hasattr(service, "login_manager")
    assert not {"limiter", "csrf"} & set(platform.extensions) and not hasattr(platform, "login_manager")
    assert platform.before_request_funcs.keys() <= {None, "wechat"}


def test_a_push_opens_no_session_even_with_a_cookie(client, runtime):
    """The platform sends no cookie: a push gets a null session (no cookie read, no signer built), and a
    cookie sent anyway is neither read nor answered."""
    from flask import request_finished, session
    from flask.sessions import NullSession

    sessions = []

    def _seen(sender, **_extra):
        sessions.append(session._get_current_object())

    client.set_cookie("session", "forged.cookie.value")
    with request_finished.connected_to(_seen):
        response = post(client, text_message(msg_id=778), plain_query())
    assert_success(response)
    assert "Set-Cookie" not in response.headers
    assert stored_count(runtime) == 1
    assert len(sessions) == 1 and isinstance(sessions[0], NullSession)


def test_distinct_messages_of_one_driver_are_all_kept(client, runtime):
    for msg_id in (1, 2, 3):
        assert_success(post(client, text_message(msg_id=msg_id), plain_query()))
    assert [row.dedupe_key for row in stored(runtime)] == ["msg:1", "msg:2", "msg:3"]


@pytest.mark.parametrize("body", [
    fixture_text("unknown_type.xml"),
    event_message(event="notsure"),
])
def test_unknown_types_are_acknowledged_and_not_stored(client, runtime, body):
    assert_success(post(client, body, plain_query()))
    assert stored_count(runtime) == 0


def test_body_exactly_at_the_cap_is_accepted(client, runtime):
    body = text_message().encode("utf-8")
    body += b" " * (BODY_CAP - len(body))  # trailing whitespace after the root element is legal XML
    assert len(body) == BODY_CAP
    assert_success(post(client, body, plain_query()))
    assert stored_count(runtime) == 1


# --- refused pushes --------------------------------------------------------

@pytest.mark.parametrize("query", _forged_queries().values(), ids=_forged_queries().keys())
def test_forged_or_missing_signature_is_403_and_stores_nothing(client, runtime, query):
    assert_refused(post(client, fixture_text("text.xml"), query), runtime, (403,))


@pytest.mark.parametrize("extra_settings", [{"WECHAT_TIMESTAMP_TOLERANCE_SECONDS": 300}], ids=["tolerance"])
@pytest.mark.parametrize("timestamp", [str(int(time.time()) - 3600), str(int(time.time()) + 3600), "soon"],
                         ids=["an_hour_ago", "an_hour_ahead", "soon"])  # not the values: they move with the clock
def test_stale_timestamp_is_403_when_a_tolerance_is_set(client, runtime, timestamp):
    assert_refused(post(client, fixture_text("text.xml"), plain_query(timestamp=timestamp)), runtime, (403,))
    assert_success(post(client, fixture_text("text.xml"), plain_query()))


TOLERANCE = {"WECHAT_TIMESTAMP_TOLERANCE_SECONDS": 300}


@pytest.mark.parametrize("extra_settings", [TOLERANCE], ids=["tolerance"])
def test_another_body_under_a_used_plain_signature_is_403_and_stores_nothing_more(client, runtime):
    """The plain signature does not cover the body: a seen query must not carry a forged one."""
    query = plain_query(nonce="8723461203")
    assert_success(post(client, text_message(msg_id=1, content="real"), query))
    forged = post(client, text_message(msg_id=2, content="forged"), query)
    assert forged.status_code == 403
    [row] = stored(runtime)
    assert parse_inbound(row.payload).content == "real"


@pytest.mark.parametrize("extra_settings", [TOLERANCE], ids=["tolerance"])
def test_the_platforms_retry_of_the_same_push_still_passes(client, runtime):
    query = plain_query(nonce="5531907712")
    for _ in range(3):
        assert_success(post(client, text_message(msg_id=7), query))
    assert stored_count(runtime) == 1


@pytest.mark.parametrize("extra_settings", [TOLERANCE], ids=["tolerance"])
def test_an_overlong_nonce_is_refused(client, runtime):
    assert_refused(post(client, text_message(), plain_query(nonce="9" * 65)), runtime, (400,))


@pytest.mark.parametrize("extra_settings", [TOLERANCE], ids=["tolerance"])
def test_old_signature_records_are_forgotten_by_the_scheduler_job(client, runtime, clock):
    from accident_service.jobs import forget_push_signatures

    assert_success(post(client, text_message(msg_id=1), plain_query(nonce="1111")))
    assert forget_push_signatures(runtime, "test") == 0
    clock.advance(minutes=12)  # 2 x 300 s + a margin
    assert forget_push_signatures(runtime, "test") == 1


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<xml><ToUserName>toUser</ToUserName><FromUserName>fromUser</FromUserName><CreateTime>1348831860</CreateTime>
<MsgType>text</MsgType><Content>&lol4;</Content><MsgId>1</MsgId></xml>"""
EXTERNAL_ENTITY = """<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>toUser</ToUserName><FromUserName>fromUser</FromUserName><CreateTime>1348831860</CreateTime>
<MsgType>text</MsgType><Content>&xxe;</Content><MsgId>1</MsgId></xml>"""
HOSTILE_BODIES: dict[str, bytes] = {
    "truncated_xml": b"<xml><ToUserName><![CDATA[toUser]]></ToUserName><FromUserName>",
    "not_xml": b"hello, world",
    "json": b'{"MsgType": "text"}',
    "empty": b"",
    "missing_msgtype": text_message().replace("<MsgType><![CDATA[text]]></MsgType>", "").encode(),
    "msgid_not_a_number": text_message().replace("1234567890123456", "abc").encode(),
    "nested_content": text_message().replace("<![CDATA[hi]]>", "<a>1</a><b>2</b>").encode(),
    "billion_laughs": BILLION_LAUGHS.encode(),
    "external_entity": EXTERNAL_ENTITY.encode(),
    "doctype_only": b"<!DOCTYPE xml>" + text_message().encode(),
    "processing_instruction": b"<?xml-stylesheet href='x'?>" + text_message().encode(),
    "utf16": text_message().encode("utf-16"),
    "over_cap": text_message(content="x" * BODY_CAP).encode(),
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_hostile_or_malformed_body_is_4xx_and_stores_nothing(client, runtime, body):
    assert_refused(post(client, body, plain_query()), runtime, (400, 413))


def test_oversized_body_without_content_length_is_413(client, runtime):
    # A chunked upload: no Content-Length, the server marks the input terminated (as gunicorn does).
    body = text_message(content="x" * BODY_CAP).encode()
    response = client.post("/wechat", query_string=plain_query(), input_stream=io.BytesIO(body),
                           content_type="text/xml", environ_overrides={"wsgi.input_terminated": True})
    assert_refused(response, runtime, (413,))


@pytest.mark.parametrize(("field", "value"), [
    ("FromUserName", "o" * 300),
    ("MsgId", "9" * 250),
], ids=["long_openid", "long_msgid"])
def test_oversized_fields_are_refused_not_a_500(client, runtime, field, value):
    """Values longer than the inbox columns (openid 64, dedupe key 200) must not become a database error."""
    body = text_message()
    body = body.replace("fromUser", value) if field == "FromUserName" else body.replace("1234567890123456", value)
    assert_refused(post(client, body, plain_query()), runtime, (400,))


# --- safe mode (AES) -------------------------------------------------------

def _official_sample_cases():
    return [pytest.param(name, {"WECHAT_TOKEN": sample["token"], "WECHAT_ENCODING_AES_KEY": sample["encoding_aes_key"],
                                "WECHAT_APP_ID": sample["appid"]}, id=name)
            for name, sample in AES_SAMPLES.items()]


@pytest.mark.parametrize(("sample_name", "extra_settings"), _official_sample_cases())
def test_official_aes_samples_are_accepted_and_stored(client, runtime, sample_name):
    sample = AES_SAMPLES[sample_name]
    body = fixture_text(sample["file"])
    encrypt = xmltodict.parse(body)["xml"]["Encrypt"]
    # The fixture is the documented envelope with its documented signature.
    assert sample["msg_signature"] == sha1_sorted(sample["token"], sample["timestamp"], sample["nonce"], encrypt)
    query = {**plain_query(sample["token"], timestamp=sample["timestamp"], nonce=sample["nonce"]),
             "encrypt_type": "aes", "msg_signature": sample["msg_signature"]}
    assert_success(post(client, body, query))
    [row] = stored(runtime)
    expected = sample["expected"]
    assert row.dedupe_key == f"msg:{expected['MsgId']}"
    assert (row.openid, row.msg_type) == (expected["FromUserName"], expected["MsgType"])
    assert "<Encrypt>" not in row.payload  # the decrypted message is kept, not the envelope
    assert parse_inbound(row.payload).content == expected["Content"]


def _with_default_tolerance():
    return [pytest.param(name, {**settings, "WECHAT_TIMESTAMP_TOLERANCE_SECONDS": 300}, id=name)
            for name, settings in ((p.id, p.values[1]) for p in _official_sample_cases())]


@pytest.mark.parametrize(("sample_name", "extra_settings"), _with_default_tolerance())
@pytest.mark.parametrize("with_plain_signature", [True, False], ids=["both_signatures", "msg_signature_only"])
def test_official_aes_samples_are_accepted_verbatim_under_the_default_tolerance(client, runtime, sample_name,
                                                                                 with_plain_signature):
    """Their 2014 timestamps pass: msg_signature covers the body, so an old push can only be a duplicate."""
    sample = AES_SAMPLES[sample_name]
    query = {"timestamp": sample["timestamp"], "nonce": sample["nonce"], "encrypt_type": "aes",
             "msg_signature": sample["msg_signature"]}
    if with_plain_signature:
        query["signature"] = sha1_sorted(sample["token"], sample["timestamp"], sample["nonce"])
    assert_success(post(client, fixture_text(sample["file"]), query))
    assert_success(post(client, fixture_text(sample["file"]), query))  # replayed: still one row
    [row] = stored(runtime)
    assert row.dedupe_key == f"msg:{sample['expected']['MsgId']}"


@pytest.mark.parametrize(("sample_name", "extra_settings"), _official_sample_cases())
@pytest.mark.parametrize("broken", ["wrong_plain_signature", "no_msg_signature"])
def test_encrypted_push_with_a_bad_or_missing_signature_is_403(client, runtime, sample_name, broken):
    sample = AES_SAMPLES[sample_name]
    query = {"timestamp": sample["timestamp"], "nonce": sample["nonce"], "encrypt_type": "aes",
             "msg_signature": sample["msg_signature"],
             "signature": sha1_sorted(sample["token"], sample["timestamp"], sample["nonce"])}
    if broken == "wrong_plain_signature":
        query["signature"] = sha1_sorted("another-token", sample["timestamp"], sample["nonce"])
    else:
        del query["msg_signature"]
    assert_refused(post(client, fixture_text(sample["file"]), query), runtime, (403,))


@pytest.mark.parametrize(("sample_name", "extra_settings"), _official_sample_cases())
def test_official_aes_sample_with_altered_signature_is_403(client, runtime, sample_name):
    sample = AES_SAMPLES[sample_name]
    query = {**plain_query(sample["token"], timestamp=sample["timestamp"], nonce=sample["nonce"]),
             "encrypt_type": "aes", "msg_signature": sample["msg_signature"][:-1] + "0"}
    assert_refused(post(client, fixture_text(sample["file"]), query), runtime, (403,))


@pytest.mark.parametrize("extra_settings", [AES_SETTINGS], ids=["aes"])
def test_own_encrypted_push_round_trips(client, runtime):
    xml = fixture_text("text.xml")
    encrypt = encrypt_for_push(xml)
    assert_success(post(client, safe_mode_body(encrypt), aes_query(encrypt)))
    [row] = stored(runtime)
    assert (row.dedupe_key, row.payload) == ("msg:1234567890123456", xml)
    # A retry of the same push (freshly encrypted, new random prefix) is the same message.
    again = encrypt_for_push(xml)
    assert again != encrypt
    assert_success(post(client, safe_mode_body(again), aes_query(again)))
    assert stored_count(runtime) == 1


BAD_AES_CASES = ["wrong_msg_signature", "missing_msg_signature", "msg_signature_of_other_token",
                 "tampered_ciphertext", "other_appid_inside"]


def _bad_aes_request(case: str) -> tuple[str, dict[str, str]]:
    encrypt = encrypt_for_push(text_message())
    good = aes_query(encrypt)
    if case == "wrong_msg_signature":
        return safe_mode_body(encrypt), {**good, "msg_signature": sha1_sorted("x", "y", "z")}
    if case == "missing_msg_signature":
        return safe_mode_body(encrypt), {k: v for k, v in good.items() if k != "msg_signature"}
    if case == "msg_signature_of_other_token":
        return safe_mode_body(encrypt), {**good, "msg_signature": sha1_sorted(
            "another-token", good["timestamp"], good["nonce"], encrypt)}
    if case == "tampered_ciphertext":  # msg_signature covers Encrypt: one changed character is caught
        tampered = encrypt[:10] + ("A" if encrypt[10] != "A" else "B") + encrypt[11:]
        return safe_mode_body(tampered), good
    assert case == "other_appid_inside"  # correctly signed and encrypted, but for another account
    other = encrypt_for_push(text_message(), appid="wx9999999999999999")
    return safe_mode_body(other), aes_query(other)


@pytest.mark.parametrize("extra_settings", [AES_SETTINGS], ids=["aes"])
@pytest.mark.parametrize("case", BAD_AES_CASES)
def test_bad_aes_push_is_403_and_stores_nothing(client, runtime, case):
    body, query = _bad_aes_request(case)
    assert_refused(post(client, body, query), runtime, (403,))


@pytest.mark.parametrize("extra_settings", [AES_SETTINGS], ids=["aes"])
@pytest.mark.parametrize("encrypt", [
    "not base64 at all!",
    "QUJD",  # valid base64, not a whole AES block
    encrypt_for_push(text_message(), key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"),  # another key
])
def test_undecryptable_payload_with_valid_signature_is_4xx(client, runtime, encrypt):
    assert_refused(post(client, safe_mode_body(encrypt), aes_query(encrypt)), runtime, (400, 403))


@pytest.mark.parametrize("extra_settings", [AES_SETTINGS], ids=["aes"])
@pytest.mark.parametrize("plaintext", [BILLION_LAUGHS, EXTERNAL_ENTITY, "not xml",
                                       text_message().replace("<MsgType><![CDATA[text]]></MsgType>", "")],
                         ids=["billion_laughs", "external_entity", "not_xml", "missing_msgtype"])
def test_hostile_plaintext_inside_valid_envelope_is_400(client, runtime, plaintext):
    encrypt = encrypt_for_push(plaintext)
    assert_refused(post(client, safe_mode_body(encrypt), aes_query(encrypt)), runtime, (400,))


def test_aes_push_without_a_configured_key_is_refused(client, runtime):
    encrypt = encrypt_for_push(text_message())
    assert_refused(post(client, safe_mode_body(encrypt), aes_query(encrypt)), runtime, (400, 403))


# --- nothing slow in the request ------------------------------------------

class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    def _record(self) -> None:
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"errcode": 0, "errmsg": "ok"}')

    do_GET = do_POST = _record

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recording_api() -> Iterator[http.server.ThreadingHTTPServer]:
    with http_handler_served(_RecordingHandler) as server:
        server.paths = []  # type: ignore[attr-defined]
        yield server


@pytest.mark.parametrize("fixture", ["text.xml", "image.xml", "event_subscribe_scan.xml"])
def test_no_outbound_call_inside_the_request(settings_overrides, clock, recording_api, fixture):
    overrides = {**settings_overrides,
                 "WECHAT_API_BASE_URL": f"http://127.0.0.1:{recording_api.server_port}/cgi-bin/"}
    runtime = build_runtime(load_settings(overrides, environ={}), clock=clock)
    try:
        client = create_app(runtime=runtime).test_client()
        assert_success(post(client, fixture_text(fixture), plain_query()))
        assert stored_count(runtime) == 1
    finally:
        runtime.close()
    assert recording_api.paths == []  # type: ignore[attr-defined]


# --- concurrent retries under a real server --------------------------------

@pytest.fixture
def gunicorn_url(tmp_path, database_url) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "STORAGE_URL": f"file://{tmp_path}/objects",
           "DATA_DIR": str(tmp_path / "gunicorn-var"), "AUTO_MIGRATE": "false", "WECHAT_TOKEN": TOKEN,
           "WECHAT_APP_ID": APP_ID, "WECHAT_ENCODING_AES_KEY": "", "INBOX_PROCESS_INLINE": "false",
           "SECRET_KEY": "x", "APP_ENV": "test", "WECHAT_API_BASE_URL": "http://127.0.0.1:9/cgi-bin/",
           "LOG_LEVEL": "WARNING"}
    with serving([sys.executable, "-m", "gunicorn", "--chdir", str(REPO_ROOT), "--bind", f"127.0.0.1:{port}",
                  "--workers", "3", "--worker-class", "gthread", "--threads", "2", "--timeout", "30",
                  "--graceful-timeout", "5", "wsgi:app"], env=env, port=port,
                 log_path=tmp_path / "gunicorn.log") as url:
        yield url


def _post_concurrently(url: str, body: bytes, senders: int) -> list[object]:
    """POST ``body`` from ``senders`` threads released together; returns (status, text) or the exception."""
    barrier = threading.Barrier(senders, timeout=20)
    results: list[object] = []

    def send() -> None:
        try:
            barrier.wait()
            response = requests.post(url + "/wechat", params=plain_query(), data=body,
                                     headers={"Content-Type": "text/xml"}, timeout=20)
            results.append((response.status_code, response.text))
        except Exception as exc:  # reported by the caller, with the other results
            results.append(exc)

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.mark.slow
def test_concurrent_retries_across_workers_store_one_row(gunicorn_url, runtime):
    """The platform's retries can reach several workers at once; the UNIQUE dedupe key decides."""
    senders = 3
    for round_no in range(6):
        bodies = [text_message(msg_id=9000 + round_no), event_message(create_time=1764036000 + round_no)]
        results = _post_concurrently(gunicorn_url, bodies[round_no % 2].encode(), senders)
        assert results == [(200, "success")] * senders, results
        assert stored_count(runtime) == round_no + 1
