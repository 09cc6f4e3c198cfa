"""The emulator's API side, spoken to with plain requests (not our client)."""

from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from accident_service.sandbox.emulator import WeChatEmulator
from tests.sandbox.conftest import APPID, SECRET


def get_token(emulator: WeChatEmulator, secret: str = SECRET) -> dict:
    return requests.get(emulator.api_base_url + "token", timeout=5, params={
        "grant_type": "client_credential", "appid": APPID, "secret": secret}).json()


def send_text(emulator: WeChatEmulator, token: str, openid: str = "o-user", text: str = "hi") -> dict:
    body = {"touser": openid, "msgtype": "text", "text": {"content": text}}
    return requests.post(emulator.api_base_url + "message/custom/send", params={"access_token": token},
                         json=body, timeout=5).json()


def test_token_is_issued_and_counted(emulator: WeChatEmulator) -> None:
    result = get_token(emulator)

    assert result["expires_in"] == 7200
    assert 0 < len(result["access_token"]) <= 512
    assert emulator.token_requests == 1


def test_wrong_secret_or_appid_is_refused(emulator: WeChatEmulator) -> None:
    assert get_token(emulator, secret="wrong")["errcode"] == 40125
    wrong_app = requests.get(emulator.api_base_url + "token", timeout=5, params={
        "grant_type": "client_credential", "appid": "wx-other", "secret": SECRET}).json()
    assert wrong_app["errcode"] == 40013
    assert emulator.token_requests == 2


def test_every_token_call_issues_a_new_token_and_the_old_one_survives_the_grace(emulator: WeChatEmulator) -> None:
    first = get_token(emulator)["access_token"]
    second = get_token(emulator)["access_token"]

    assert first != second
    assert send_text(emulator, first)["errcode"] == 0  # still inside the grace period
    assert send_text(emulator, second)["errcode"] == 0


def test_old_token_is_invalid_once_the_grace_is_over(receiver) -> None:
    with WeChatEmulator(APPID, SECRET, "t", token_grace_seconds=0) as emulator:
        first = get_token(emulator)["access_token"]
        get_token(emulator)

        assert send_text(emulator, first)["errcode"] == 40001


def test_expired_unknown_and_missing_tokens(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    emulator.expire_tokens()

    assert send_text(emulator, token)["errcode"] == 42001
    assert send_text(emulator, "made-up")["errcode"] == 40001
    assert send_text(emulator, "")["errcode"] == 41001
    assert emulator.sent == []


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
    send_text(emulator, token, "o-a", "2/4 已收到")
    template = {"touser": "o-a", "template_id": "TPL", "url": "https://example.invalid/case",
                "data": {"first": {"value": "预约成功"}, "keyword1": {"value": "A-20240501-0001"}}}
    result = requests.post(emulator.api_base_url + "message/template/send", params={"access_token": token},
                           json=template, timeout=5).json()

    assert result["errcode"] == 0 and result["msgid"]
    assert [m["kind"] for m in emulator.sent] == ["custom", "template"]
    assert emulator.sent[1]["body"] == template
    assert emulator.messages_to("o-a") == ["2/4 已收到", "预约成功\nA-20240501-0001"]
    assert emulator.messages_to("o-b") == []


def test_malformed_bodies_are_refused(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    url = emulator.api_base_url + "message/custom/send"

    assert requests.post(url, params={"access_token": token}, data=b"{nope", timeout=5).json()["errcode"] == 47001
    assert requests.post(url, params={"access_token": token}, data=b"", timeout=5).json()["errcode"] == 44002
    empty_text = {"touser": "o", "msgtype": "text", "text": {"content": ""}}
    assert requests.post(url, params={"access_token": token}, json=empty_text, timeout=5).json()["errcode"] == 44002


def test_injected_errors_apply_the_given_number_of_times(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
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


def test_unsubscribed_users_and_closed_windows(emulator: WeChatEmulator) -> None:
    token = get_token(emulator)["access_token"]
    emulator.set_user_unsubscribed("o-gone")
    emulator.close_window("o-quiet")

    assert send_text(emulator, token, "o-gone")["errcode"] == 43004
    assert send_text(emulator, token, "o-quiet")["errcode"] == 45015
    emulator.post_text("o-quiet", "hello again")  # a new interaction reopens the window
    assert send_text(emulator, token, "o-quiet")["errcode"] == 0


def test_enforced_window_needs_a_user_interaction(receiver) -> None:
    with WeChatEmulator(APPID, SECRET, "t", callback_url=receiver.url, enforce_window=True) as emulator:
        token = get_token(emulator)["access_token"]
        assert send_text(emulator, token, "o-new")["errcode"] == 45015

        emulator.post_click("o-new", "REPORT_ACCIDENT")

        assert send_text(emulator, token, "o-new")["errcode"] == 0


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
    send_text(emulator, token, "o-a", "one")

    assert emulator.wait_for_sent(lambda m: m["touser"] == "o-a")[0]["text"] == "one"
    with pytest.raises(TimeoutError):
        emulator.wait_for_sent(lambda m: m["touser"] == "o-b", timeout=0.1)


def test_unknown_api_path_is_404(emulator: WeChatEmulator) -> None:
    response = requests.get(emulator.api_base_url + "user/info", timeout=5)

    assert response.status_code == 404
