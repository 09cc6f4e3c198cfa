"""WeChatApi against the emulator over HTTP: base URL, timeouts, capped retries, error mapping, media."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from PIL import Image

import accident_service.models  # noqa: F401  (registers wechat_token for the database fixture)
from accident_service.sandbox.emulator import WeChatEmulator
from accident_service.wechat_api.client import GatewayClient, MediaTooLarge, WeChatApi, WeChatApiError
from accident_service.wechat_api.tokens import LocalTokenStore
from tests.support.servers import http_handler_served, no_hold_expired

APPID = "wx-client-test"
SECRET = "client-secret"


@pytest.fixture
def emulator() -> Iterator[WeChatEmulator]:
    with WeChatEmulator(APPID, SECRET, "token") as running:
        # What the platform requires before these sends (WECHAT.md §5): "o-a" has just written to the
        # account (5 customer-service messages in 48 h), and the templates used here were added in the console.
        running.note_user_activity("o-a")
        running.register_template("TPL-1", ["keyword1"])
        yield running
    no_hold_expired(running)


def make_api(emulator: WeChatEmulator, *, timeout: float = 5.0, secret: str = SECRET) -> WeChatApi:
    client = GatewayClient(APPID, secret, api_base_url=emulator.api_base_url, timeout=timeout,
                           token_store=LocalTokenStore())
    return WeChatApi(client)


def calls_to(emulator: WeChatEmulator, path: str) -> int:
    return sum(1 for entry in emulator.requests_log if entry["path"] == path)


@pytest.fixture
def api(emulator: WeChatEmulator) -> WeChatApi:
    return make_api(emulator)


def test_token_and_calls_go_through_the_configured_base_url(emulator: WeChatEmulator, api: WeChatApi) -> None:
    api.send_text("o-a", "你好")
    api.send_text("o-a", "again")

    assert emulator.stable_token_requests == 1
    assert emulator.messages_to("o-a") == ["你好", "again"]


def test_text_is_sent_as_utf8_not_escaped(emulator: WeChatEmulator, api: WeChatApi) -> None:
    api.send_text("o-a", "粤A12345")

    body = emulator.requests_log[-1]["body"]
    assert "粤A12345".encode() in body
    assert json.loads(body) == {"touser": "o-a", "msgtype": "text", "text": {"content": "粤A12345"}}


def test_wechatpy_helpers_share_the_store_token(emulator: WeChatEmulator, api: WeChatApi) -> None:
    api.send_text("o-a", "first")

    api.client.menu.create({"button": [{"type": "click", "name": "事故报案", "key": "REPORT_ACCIDENT"}]})

    assert emulator.menu["button"][0]["key"] == "REPORT_ACCIDENT"
    assert emulator.stable_token_requests == 1


def test_token_fetch_has_a_timeout(emulator: WeChatEmulator) -> None:
    emulator.set_delay("token", 30)
    api = make_api(emulator, timeout=0.3)

    with pytest.raises(WeChatApiError) as caught:
        api.send_text("o-a", "x")

    assert caught.value.errcode is None and caught.value.retryable
    assert emulator.sent == []


def test_token_error_refreshes_once_and_retries_once(emulator: WeChatEmulator, api: WeChatApi) -> None:
    api.send_text("o-a", "warm up")
    emulator.expire_tokens()

    api.send_text("o-a", "after expiry")

    assert emulator.stable_token_requests == 2
    assert emulator.messages_to("o-a") == ["warm up", "after expiry"]


@pytest.mark.parametrize("token_age,forced", [(0, []), (11 * 60, [True])], ids=["just issued", "11 minutes old"])
def test_a_token_error_that_persists_ends_after_one_refresh(token_age, forced) -> None:
    """After the refusal normal mode hands back the same token: replaced by force only once it is 10 minutes old
    (the platform allows 20 forced refreshes a day; a fault pass saw 40 s of 40001 force 28 of them); else it is
    tried once more."""
    now = [1_780_000_000.0]
    with WeChatEmulator(APPID, SECRET, "token", clock=lambda: now[0]) as emulator:
        emulator.note_user_activity("o-a")
        api = make_api(emulator)
        api.client.current_token()  # the first token
        now[0] += token_age
        emulator.inject_error("message/custom/send", 40001, times=None)

        with pytest.raises(WeChatApiError) as caught:
            api.send_text("o-a", "x")

        assert caught.value.errcode == 40001 and caught.value.is_token_error and caught.value.retryable
        assert [json.loads(r["body"]).get("force_refresh") for r in emulator.requests_log
                if r["path"] == "stable_token"] == [False, False, *forced]
        assert calls_to(emulator, "message/custom/send") == 2


@pytest.mark.parametrize("errcode, retryable, permanent", [
    (-1, True, False), (45009, True, False), (43004, False, True), (45015, False, True),
    (45047, False, True), (40003, False, True), (40037, False, True), (48001, False, False),
])
def test_errors_are_classified(emulator: WeChatEmulator, api: WeChatApi, errcode: int, retryable: bool,
                               permanent: bool) -> None:
    emulator.inject_error("message/template/send", errcode)

    with pytest.raises(WeChatApiError) as caught:
        api.send_template("o-a", "TPL", {"first": "x"})

    error = caught.value
    assert (error.errcode, error.retryable, error.permanent) == (errcode, retryable, permanent)
    assert calls_to(emulator, "message/template/send") == 1  # nothing retried behind the caller's back


def test_unsubscribed_user_is_permanent(emulator: WeChatEmulator, api: WeChatApi) -> None:
    emulator.set_user_unsubscribed("o-gone")

    with pytest.raises(WeChatApiError) as caught:
        api.send_text("o-gone", "x")

    assert caught.value.errcode == 43004 and caught.value.permanent


def test_http_5xx_is_retryable(emulator: WeChatEmulator, api: WeChatApi) -> None:
    api.send_text("o-a", "warm up")
    emulator.inject_http_status("message/custom/send", 502)

    with pytest.raises(WeChatApiError) as caught:
        api.send_text("o-a", "x")

    assert (caught.value.errcode, caught.value.http_status, caught.value.retryable) == (None, 502, True)


def test_a_call_answered_after_its_timeout_may_have_gone_out(emulator: WeChatEmulator) -> None:
    api = make_api(emulator, timeout=1.0)
    api.send_text("o-a", "warm up")  # the token is had: what follows is the call itself
    emulator.hold("message/custom/send")  # answered only after the timeout

    try:
        with pytest.raises(WeChatApiError) as caught:
            api.send_text("o-a", "x")
    finally:
        emulator.release("message/custom/send")

    assert caught.value.retryable and not caught.value.undelivered  # the platform took it, late


def test_bad_app_secret_is_neither_retryable_nor_permanent(emulator: WeChatEmulator) -> None:
    api = make_api(emulator, secret="wrong")

    with pytest.raises(WeChatApiError) as caught:
        api.send_text("o-a", "x")

    assert (caught.value.errcode, caught.value.retryable, caught.value.permanent) == (40125, False, False)


def test_unreachable_platform_is_retryable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = GatewayClient(APPID, SECRET, api_base_url=f"http://127.0.0.1:{port}/cgi-bin/", timeout=2)

    with pytest.raises(WeChatApiError) as caught:
        WeChatApi(client).send_text("o-a", "x")

    assert caught.value.retryable


def test_template_message_body(emulator: WeChatEmulator, api: WeChatApi) -> None:
    msgid = api.send_template("o-a", "TPL-1", {"first": "预约成功", "keyword1": {"value": "A1", "color": "#173177"}},
                              url="https://example.invalid/c/1")

    body = emulator.sent[-1]["body"]
    assert msgid
    assert body == {"touser": "o-a", "template_id": "TPL-1", "url": "https://example.invalid/c/1",
                    "data": {"first": {"value": "预约成功"}, "keyword1": {"value": "A1", "color": "#173177"}}}


def test_join_qrcode(emulator: WeChatEmulator, api: WeChatApi) -> None:
    qr = api.create_join_qrcode("join:654321", 86400)

    assert emulator.qrcodes["join:654321"] == qr.ticket
    assert qr.expire_seconds == 86400 and qr.url
    assert qr.image_url.startswith(emulator.api_base_url + "showqrcode?ticket=")


@pytest.mark.parametrize("scene, expire", [("", 60), ("x" * 65, 60), ("ok", 0), ("ok", 2_592_001)])
def test_join_qrcode_validates_its_input(api: WeChatApi, scene: str, expire: int) -> None:
    with pytest.raises(ValueError):
        api.create_join_qrcode(scene, expire)


def test_qrcode_image_url_on_the_real_platform() -> None:
    client = GatewayClient(APPID, SECRET)

    assert client.qrcode_image_url("a/b=") == "https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket=a/b%3D"


def test_download_media_returns_bytes_and_type(emulator: WeChatEmulator, api: WeChatApi) -> None:
    media_id = emulator.add_media()

    media = api.download_media(media_id, max_bytes=2 * 1024 * 1024, timeout=5)

    assert media.content_type == "image/jpeg"
    assert Image.open(io.BytesIO(media.data)).size == (1280, 960)


def test_download_media_json_error_with_http_200(api: WeChatApi) -> None:
    with pytest.raises(WeChatApiError) as caught:
        api.download_media("expired", max_bytes=1024, timeout=5)

    assert caught.value.errcode == 40007 and caught.value.permanent


def test_download_media_refreshes_a_rejected_token(emulator: WeChatEmulator, api: WeChatApi) -> None:
    api.send_text("o-a", "warm up")
    emulator.expire_tokens()
    emulator.add_media("m", b"\xff\xd8\xff" + b"x" * 100)

    assert api.download_media("m", max_bytes=1024, timeout=5).data.startswith(b"\xff\xd8\xff")
    assert emulator.stable_token_requests == 2


@pytest.mark.parametrize("send_length", [True, False])
def test_download_media_stops_past_max_bytes(emulator: WeChatEmulator, api: WeChatApi, send_length: bool) -> None:
    emulator.add_media("big", b"\xff\xd8\xff" + b"\0" * (3 * 1024 * 1024), send_length=send_length)

    with pytest.raises(MediaTooLarge) as caught:
        api.download_media("big", max_bytes=1024 * 1024, timeout=5)

    assert caught.value.permanent and caught.value.max_bytes == 1024 * 1024


def test_download_media_exactly_max_bytes_is_fine(emulator: WeChatEmulator, api: WeChatApi) -> None:
    emulator.add_media("exact", b"\xff" * 5000, send_length=False)

    assert len(api.download_media("exact", max_bytes=5000, timeout=5).data) == 5000


def test_download_media_times_out(emulator: WeChatEmulator, api: WeChatApi) -> None:
    api.send_text("o-a", "warm up")
    emulator.set_delay("media/get", 30)
    emulator.add_media("slow")

    with pytest.raises(WeChatApiError) as caught:
        api.download_media("slow", max_bytes=1024, timeout=0.3)

    assert caught.value.retryable


def test_build_wechat_api_uses_settings_and_the_database_store(runtime, emulator: WeChatEmulator) -> None:
    api = runtime.wechat

    api.send_text("o-a", "hi")
    runtime.__dict__.pop("wechat")  # a second process: new client, same database
    runtime.wechat.send_text("o-a", "again")

    assert emulator.stable_token_requests == 1
    assert emulator.messages_to("o-a") == ["hi", "again"]


@pytest.fixture
def settings_overrides(settings_overrides, emulator: WeChatEmulator):
    return {**settings_overrides, "WECHAT_API_BASE_URL": emulator.api_base_url, "WECHAT_APP_ID": APPID,
            "WECHAT_APP_SECRET": SECRET}


def test_the_app_secret_and_every_token_are_never_logged(emulator: WeChatEmulator) -> None:
    """What the client gets from the platform or from the shared store is masked in every log line from then on
    (accident_service.logs.never_log): urllib3 quotes each call's URL, a failed write of the token quotes it."""
    from accident_service.logs import mask_personal_data

    secret = "an-app-secret-for-masking-0001"
    emulator_with_secret = WeChatEmulator(APPID, secret, "token")
    with emulator_with_secret:
        client = GatewayClient(APPID, secret, api_base_url=emulator_with_secret.api_base_url,
                               token_store=LocalTokenStore())
        fetched, _ = client.fetch_token_pair()
    assert secret not in mask_personal_data(f"&secret={secret}")
    assert fetched not in mask_personal_data(f"?access_token={fetched} ('{fetched}', 'wx')")

    class AnotherProcessFetchedIt:
        def get_token(self, fetch, *, stale=None):
            return "a-token-another-process-fetched-01"

    shared = GatewayClient(APPID, "ignored-secret-000", api_base_url=emulator.api_base_url,
                           token_store=AnotherProcessFetchedIt())
    token = shared.current_token()
    assert token not in mask_personal_data(f"?access_token={token}")


def test_a_transport_error_does_not_carry_the_access_token(emulator: WeChatEmulator, api: WeChatApi) -> None:
    """urllib3 quotes the URL of a call it could not make, ``?access_token=…`` included; the error's text goes
    into rows (an inbox message's or a notice's last error, shown on the desk), where no log filter masks it."""
    api.send_text("o-a", "warm up")  # the token is fetched
    token = api.client.current_token()
    emulator.stop()

    for call in (lambda: api.download_media("m", max_bytes=1024, timeout=2), lambda: api.send_text("o-a", "hi")):
        with pytest.raises(WeChatApiError) as caught:
            call()
        assert caught.value.retryable and caught.value.errcode is None
        assert caught.value.errmsg.startswith("transport error: ") and "127.0.0.1" in caught.value.errmsg
        assert token not in caught.value.errmsg and "access_token" not in caught.value.errmsg


@pytest.fixture
def answers_without_fields() -> Iterator[dict[str, dict]]:
    """A platform on loopback that answers 200 with the JSON a test sets per path (not the emulator: the real
    platform is not documented to do this, so the emulator does not)."""
    answers: dict[str, dict] = {"/cgi-bin/stable_token": {"access_token": "TOKEN-1", "expires_in": 7200}}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802  (http.server's name)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.dumps(answers.get(self.path.split("?")[0], {"errcode": 0, "errmsg": "ok"})).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            pass

    with http_handler_served(Handler) as server:
        answers["base_url"] = f"http://127.0.0.1:{server.server_address[1]}/cgi-bin/"  # type: ignore[assignment]
        yield answers


def test_an_answer_without_what_was_asked_for_is_a_retryable_platform_error(answers_without_fields) -> None:
    """An operator's fault pass: a 200 without a ticket raised KeyError, logged with its traceback at ERROR on
    every try."""
    client = GatewayClient(APPID, SECRET, api_base_url=answers_without_fields["base_url"], timeout=2,
                           token_store=LocalTokenStore())
    with pytest.raises(WeChatApiError, match="qrcode/create: the answer has no ticket") as caught:
        WeChatApi(client).create_join_qrcode("join:1", 60)
    assert caught.value.retryable and caught.value.errcode is None

    answers_without_fields["/cgi-bin/stable_token"] = {"errcode": 0, "errmsg": "ok"}
    client = GatewayClient(APPID, SECRET, api_base_url=answers_without_fields["base_url"], timeout=2,
                           token_store=LocalTokenStore())
    with pytest.raises(WeChatApiError, match="stable_token: the answer has no access_token") as caught:
        WeChatApi(client).send_text("o-a", "x")
    assert caught.value.retryable
