"""The emulator's API side, spoken to with plain requests (not our client): media, messages, faults, QR, menu.

Tokens, allowances and templates have their own modules (test_tokens, test_allowances, test_templates).
"""

from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from accident_service.sandbox.emulator import WeChatEmulator
from tests.sandbox.calls import get_token, send_template, send_text, token_works
from tests.sandbox.conftest import APPID, SECRET
from tests.support.servers import no_hold_expired


def test_media_get_returns_a_real_jpeg(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    media_id = emulator.add_media()

    response = requests.get(emulator.api_base_url + "media/get", timeout=5,
                            params={"access_token": token, "media_id": media_id})

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.format == "JPEG"
    assert image.size == (1280, 960)


def test_media_is_stable_per_id_and_differs_between_ids(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    emulator.add_media("a")
    emulator.add_media("b")

    def fetch(media_id: str) -> bytes:
        return requests.get(emulator.api_base_url + "media/get", timeout=5,
                            params={"access_token": token, "media_id": media_id}).content

    assert fetch("a") == fetch("a")
    assert fetch("a") != fetch("b")


def test_registered_bytes_are_served_as_given(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    emulator.add_media("doc", b"%PDF-1.4 not an image", "application/pdf")

    response = requests.get(emulator.api_base_url + "media/get", timeout=5,
                            params={"access_token": token, "media_id": "doc"})

    assert response.content == b"%PDF-1.4 not an image"
    assert response.headers["Content-Type"] == "application/pdf"


def test_unknown_media_is_a_json_error_with_http_200(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    emulator.add_media("old")
    emulator.remove_media("old")

    response = requests.get(emulator.api_base_url + "media/get", timeout=5,
                            params={"access_token": token, "media_id": "old"})

    assert response.status_code == 200
    assert response.json()["errcode"] == 40007


def test_pic_url_serves_the_image_without_a_token(emulator: WeChatEmulator) -> None:
    emulator.add_media("pic")

    response = requests.get(emulator.base_url + "/pic/pic", timeout=5)

    assert response.headers["Content-Type"] == "image/jpeg"
    assert requests.get(emulator.base_url + "/pic/none", timeout=5).status_code == 404


def test_custom_and_template_messages_are_recorded(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    emulator.register_template("TPL", ["character_string1"])
    emulator.post_image("o-a", emulator.add_media())
    send_text(emulator, token, "o-a", "2/4 已收到")
    data = {"first": "预约成功", "character_string1": "A-20240501-0001"}
    result = send_template(emulator, token, "o-a", "TPL", data, url="https://example.invalid/case")

    assert result["errcode"] == 0 and result["msgid"]
    assert [m["kind"] for m in emulator.sent] == ["custom", "template"]
    assert emulator.sent[1]["body"]["data"] == {"first": {"value": "预约成功"},
                                                "character_string1": {"value": "A-20240501-0001"}}
    assert emulator.messages_to("o-a") == ["2/4 已收到", "[模板] A-20240501-0001"]
    assert emulator.messages_to("o-b") == []


def test_malformed_bodies_are_refused(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    emulator.post_text("o", "hello")
    url = emulator.api_base_url + "message/custom/send"

    assert requests.post(url, params={"access_token": token}, data=b"{nope", timeout=5).json()["errcode"] == 47001
    assert requests.post(url, params={"access_token": token}, data=b"", timeout=5).json()["errcode"] == 44002
    empty_text = {"touser": "o", "msgtype": "text", "text": {"content": ""}}
    assert requests.post(url, params={"access_token": token}, json=empty_text, timeout=5).json()["errcode"] == 44002


def test_injected_errors_apply_the_given_number_of_times(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    emulator.post_text("o-user", "hello")  # allows 5 sends; injected errors use none of them
    emulator.inject_error("message/custom/send", -1, times=2)

    codes = [send_text(emulator, token)["errcode"] for _ in range(3)]

    assert codes == [-1, -1, 0]
    assert [entry["errcode"] for entry in emulator.requests_log[-3:]] == [-1, -1, 0]


def test_injected_http_status(emulator: WeChatEmulator) -> None:
    emulator.inject_http_status("token", 502)

    response = requests.get(emulator.api_base_url + "token", timeout=5, params={
        "grant_type": "client_credential", "appid": APPID, "secret": SECRET})

    assert response.status_code == 502
    assert get_token(emulator)["access_token"]


def test_delay_makes_a_client_time_out(emulator: WeChatEmulator) -> None:
    emulator.set_delay("token", 30)

    with pytest.raises(requests.Timeout):
        requests.get(emulator.api_base_url + "token", timeout=0.3, params={
            "grant_type": "client_credential", "appid": APPID, "secret": SECRET})
    emulator.set_delay("token", 0)
    assert get_token(emulator)["access_token"]


@pytest.mark.parametrize("let_go", ["release", "clear_faults"])
def test_a_held_call_waits_unanswered_until_released(emulator: WeChatEmulator, let_go: str) -> None:
    """A hold is a delay as long as the test needs: its calls wait; others are answered meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    token = get_token(emulator)["access_token"]
    media_id = emulator.add_media()
    emulator.hold("media/get")
    with ThreadPoolExecutor(1) as pool:
        download = pool.submit(requests.get, emulator.api_base_url + "media/get", timeout=30,
                               params={"access_token": token, "media_id": media_id})
        emulator.wait_until_held("media/get")
        assert token_works(emulator, token) == 0  # another path is not held
        assert not download.done()
        with pytest.raises(TimeoutError):  # only one call is held
            emulator.wait_until_held("media/get", count=2, timeout=0.2)
        emulator.release("media/get") if let_go == "release" else emulator.clear_faults()
        emulator.hold("media/get")  # a new hold, for later calls: the one released goes on
        response = download.result(timeout=10)
        emulator.release("media/get")
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/jpeg"
    assert emulator.requests_log[-1]["path"] == "media/get"


def test_a_hold_never_released_lets_its_call_go_at_its_limit_and_is_counted(monkeypatch) -> None:
    """A forgotten hold does not hang the test's call for ever, and it is not silent either: the fixtures fail
    on a call let through by the limit rather than by the test (an emulator of its own here, so the fixture's
    check is not this test's)."""
    from concurrent.futures import ThreadPoolExecutor

    from accident_service.sandbox import faults

    monkeypatch.setattr(faults, "HOLD_MAX_SECONDS", 0.3)
    with WeChatEmulator(APPID, SECRET, "token") as own:
        token = get_token(own)["access_token"]
        own.hold("media/get")
        response = requests.get(own.api_base_url + "media/get", timeout=10,
                                params={"access_token": token, "media_id": own.add_media()})
        assert response.status_code == 200 and own.expired_holds == 1
        own.release("media/get")
        assert own.expired_holds == 1  # a release after the limit does not undo it
        with pytest.raises(AssertionError, match="1 held call"):
            no_hold_expired(own)
        monkeypatch.setattr(faults, "HOLD_MAX_SECONDS", 60.0)  # the limit as tests have it
        own.hold("media/get")
        with ThreadPoolExecutor(1) as pool:
            download = pool.submit(requests.get, own.api_base_url + "media/get", timeout=10,
                                   params={"access_token": token, "media_id": own.add_media()})
            own.wait_until_held("media/get")
            own.release("media/get")
            assert download.result(timeout=10).status_code == 200
        assert own.expired_holds == 1  # released in time: not counted


def test_qrcode_create_returns_a_ticket_and_serves_an_image(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    body = {"expire_seconds": 86400, "action_name": "QR_STR_SCENE",
            "action_info": {"scene": {"scene_str": "join:123456"}}}

    result = requests.post(emulator.api_base_url + "qrcode/create", params={"access_token": token},
                           json=body, timeout=5).json()

    assert result["expire_seconds"] == 86400 and result["url"]
    assert emulator.qrcodes["join:123456"] == result["ticket"]
    assert emulator.scene_for_ticket(result["ticket"]) == "join:123456"
    image = requests.get(emulator.api_base_url + "showqrcode", params={"ticket": result["ticket"]}, timeout=5)
    assert Image.open(io.BytesIO(image.content)).format == "PNG"


@pytest.mark.parametrize("scene, expire", [("x" * 65, 60), ("ok", 2_592_001), ("", 60)])
def test_qrcode_create_refuses_invalid_requests(emulator: WeChatEmulator, scene: str, expire: int) -> None:
    token = get_token(emulator)["access_token"]
    body = {"expire_seconds": expire, "action_name": "QR_STR_SCENE", "action_info": {"scene": {"scene_str": scene}}}

    result = requests.post(emulator.api_base_url + "qrcode/create", params={"access_token": token},
                           json=body, timeout=5).json()

    assert result["errcode"] == 40053


def test_menu_create_stores_a_valid_menu_and_refuses_a_long_key(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    url = emulator.api_base_url + "menu/create"
    menu = {"button": [{"type": "click", "name": "事故报案", "key": "REPORT_ACCIDENT"}]}

    assert requests.post(url, params={"access_token": token}, json=menu, timeout=5).json()["errcode"] == 0
    assert emulator.menu == menu
    too_long = {"button": [{"type": "click", "name": "x", "key": "k" * 129}]}
    assert requests.post(url, params={"access_token": token}, json=too_long, timeout=5).json()["errcode"] == 40019


def test_wait_for_sent_returns_matches_or_times_out(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    emulator.post_text("o-a", "hello")
    send_text(emulator, token, "o-a", "one")

    assert emulator.wait_for_sent(lambda m: m["touser"] == "o-a")[0]["text"] == "one"
    with pytest.raises(TimeoutError):
        emulator.wait_for_sent(lambda m: m["touser"] == "o-b", timeout=0.1)


def test_unknown_api_path_is_404(emulator: WeChatEmulator) -> None:
    response = requests.get(emulator.api_base_url + "user/info", timeout=5)

    assert response.status_code == 404
