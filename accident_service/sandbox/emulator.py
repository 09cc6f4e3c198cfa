"""A WeChat platform on loopback, for tests and the dev sandbox.

API side (what the service calls): ``http://127.0.0.1:<port>/cgi-bin/...``,
see :class:`~accident_service.sandbox.platform_api.PlatformApi` for tokens,
media, messages, QR codes, menu and fault injection.

Platform side (what WeChat pushes): ``post_text`` & co. build the documented
XML, sign it (and encrypt it in safe mode) and POST it to ``callback_url``;
in-band replies are decrypted, checked and recorded like sent messages
(kind ``"reply"``), malformed ones land in ``reply_errors``.

    with WeChatEmulator("wx-app", "secret", "token") as wechat:
        settings = {"WECHAT_API_BASE_URL": wechat.api_base_url, ...}
        wechat.callback_url = live_server_url + "/wechat"
        wechat.post_click("openid-a", "REPORT_ACCIDENT")
        wechat.wait_for_sent(lambda m: m["touser"] == "openid-a")
"""

from __future__ import annotations

import itertools
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
import xmltodict

from accident_service.sandbox.platform_api import ApiResponse, PlatformApi
from accident_service.sandbox.push_messages import (
    Envelope,
    FieldValue,
    message_fields,
    new_nonce,
    render_xml,
    sha1_signature,
)

MAX_REQUEST_BYTES = 8 * 1024 * 1024
_FROM_USER = re.compile(rb"<FromUserName>\s*(?:<!\[CDATA\[)?(.*?)(?:\]\]>)?\s*</FromUserName>", re.S)


class WeChatEmulator(PlatformApi):
    """Loopback HTTP server playing the WeChat platform. Start/stop it, or use it as a context manager.

    ``encoding_aes_key`` enables safe mode, the default for pushes when set (``encrypted_by_default``
    overrides). ``api_options`` go to PlatformApi: ``token_ttl_seconds`` (7200),
    ``token_grace_seconds`` (300: how long a replaced token still works), ``enforce_window``
    (False: custom messages need a user interaction within ``window_seconds``, else 45015).
    """

    def __init__(self, appid: str, secret: str, token: str, encoding_aes_key: str | None = None,
                 callback_url: str | None = None, *, original_id: str = "gh_0123456789ab",
                 encrypted_by_default: bool | None = None, push_timeout: float = 5.0, port: int = 0,
                 **api_options: Any) -> None:
        super().__init__(appid, secret, **api_options)
        self.port = port  # 0: a free port chosen at start()
        self.token = token
        self.encoding_aes_key = encoding_aes_key
        self.callback_url = callback_url
        self.original_id = original_id
        self.encrypted_by_default = bool(encoding_aes_key) if encrypted_by_default is None else encrypted_by_default
        self.push_timeout = push_timeout
        self.reply_errors: list[dict[str, Any]] = []
        self._envelope = Envelope(token, encoding_aes_key, appid) if encoding_aes_key else None
        # Random start: MsgIds stay unique across emulators sharing one test database.
        self._msg_ids = itertools.count(random.SystemRandom().randrange(10**17, 9 * 10**18))
        self._last_event_time: dict[str, int] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> WeChatEmulator:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self.port), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="wechat-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in an injected delay
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> WeChatEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def api_base_url(self) -> str:
        """What WECHAT_API_BASE_URL should be set to."""
        return self.base_url + "/cgi-bin/"

    # -- pushes to the service -----------------------------------------------

    def post_text(self, openid: str, content: str, *, encrypted: bool | None = None,
                  create_time: int | None = None, msg_id: int | None = None) -> requests.Response:
        return self._push_message(openid, "text", {"Content": content}, encrypted, create_time, msg_id)

    def post_image(self, openid: str, media_id: str, *, pic_url: str | None = None, encrypted: bool | None = None,
                   create_time: int | None = None, msg_id: int | None = None) -> requests.Response:
        body = {"PicUrl": pic_url or f"{self.base_url}/pic/{media_id}", "MediaId": media_id}
        return self._push_message(openid, "image", body, encrypted, create_time, msg_id)

    def post_location(self, openid: str, lat: float, lng: float, label: str = "", *, scale: int = 15,
                      encrypted: bool | None = None, create_time: int | None = None,
                      msg_id: int | None = None) -> requests.Response:
        body = {"Location_X": float(lat), "Location_Y": float(lng), "Scale": int(scale), "Label": label}
        return self._push_message(openid, "location", body, encrypted, create_time, msg_id)

    def post_click(self, openid: str, key: str, **options: Any) -> requests.Response:
        return self.post_event(openid, "CLICK", EventKey=key, **options)

    def post_scan(self, openid: str, scene_str: str, subscribed: bool = True, *, ticket: str | None = None,
                  **options: Any) -> requests.Response:
        """A scan of the QR code for ``scene_str``: SCAN if already following, else subscribe + qrscene_."""
        with self._lock:
            ticket = ticket or self.qrcodes.get(scene_str) or "gQ-unregistered-" + scene_str
        if subscribed:
            return self.post_event(openid, "SCAN", EventKey=scene_str, Ticket=ticket, **options)
        return self.post_event(openid, "subscribe", EventKey="qrscene_" + scene_str, Ticket=ticket, **options)

    def post_event(self, openid: str, event: str, *, encrypted: bool | None = None, create_time: int | None = None,
                   msg_id: int | None = None, **fields: FieldValue) -> requests.Response:
        """Any event; ``fields`` are XML element names (EventKey, Latitude...). Events carry no MsgId."""
        body: dict[str, FieldValue] = {"Event": event, **fields}
        fields_xml = message_fields(self.original_id, openid, self._event_time(openid, create_time), "event",
                                    body, msg_id)
        self.note_user_activity(openid, event.lower())
        return self.post_raw(render_xml(fields_xml), encrypted=encrypted, openid=openid)

    def post_raw(self, xml: str | bytes, encrypted: bool | None = None, *, openid: str | None = None,
                 timestamp: int | str | None = None, nonce: str | None = None) -> requests.Response:
        """Sign (and in safe mode encrypt) ``xml`` as it is and POST it to ``callback_url``.

        Unlike the typed helpers it does not count as a user interaction (48 h window).
        Raises requests' exceptions, e.g. ReadTimeout when the service takes over ``push_timeout``.
        """
        if not self.callback_url:
            raise RuntimeError("set callback_url (the service's /wechat URL) before pushing")
        encrypted = self.encrypted_by_default if encrypted is None else encrypted
        raw = xml.encode("utf-8") if isinstance(xml, str) else xml
        if openid is None:
            found = _FROM_USER.search(raw)
            openid = found.group(1).decode("utf-8", "replace") if found else None
        timestamp = str(timestamp or int(time.time()))
        nonce = nonce or new_nonce()
        encrypt = None
        body = raw
        if encrypted:
            encrypt = self._require_envelope().encrypt(raw, nonce, timestamp)
            body = self._require_envelope().safe_body(self.original_id, encrypt).encode("utf-8")
        params = self.signed_params(encrypt, timestamp=timestamp, nonce=nonce, openid=openid)
        response = requests.post(self.callback_url, params=params, data=body, timeout=self.push_timeout,
                                 headers={"Content-Type": "text/xml; charset=utf-8"})
        self._note_reply(openid, response, encrypted)
        return response

    def signed_params(self, encrypt: str | None = None, *, timestamp: int | str | None = None,
                      nonce: str | None = None, openid: str | None = None) -> dict[str, str]:
        """The callback query string: signature, timestamp, nonce, openid (+ encrypt_type, msg_signature)."""
        timestamp = str(timestamp or int(time.time()))
        nonce = nonce or new_nonce()
        params = {"signature": sha1_signature(self.token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce}
        if openid is not None:
            params["openid"] = openid
        if encrypt is not None:
            params["encrypt_type"] = "aes"
            params["msg_signature"] = sha1_signature(self.token, timestamp, nonce, encrypt)
        return params

    def verify_url(self, echostr: str | None = None) -> requests.Response:
        """The GET check the platform makes when the URL is configured; the service must echo ``echostr``."""
        if not self.callback_url:
            raise RuntimeError("set callback_url before verifying it")
        params = self.signed_params()
        params["echostr"] = echostr or new_nonce()
        return requests.get(self.callback_url, params=params, timeout=self.push_timeout)

    # -- what the user sees --------------------------------------------------

    def messages_to(self, openid: str) -> list[str]:
        """Texts the user received, in order: text content, template values joined by newlines, or [type]."""
        with self._lock:
            return [m["text"] if m["text"] is not None else f"[{m['msgtype']}]"
                    for m in self.sent if m["touser"] == openid]

    def wait_for_sent(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0, *,
                      count: int = 1) -> list[dict[str, Any]]:
        """Poll ``sent`` until ``count`` records match; return the matches. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                matches = [m for m in self.sent if predicate(m)]
                summary = [(m["kind"], m["touser"], (m["text"] or "")[:40]) for m in self.sent[-10:]]
            if len(matches) >= count:
                return matches
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(matches)}/{count} matching messages after {timeout}s; last sent: {summary}")
            time.sleep(0.02)

    # -- internals -----------------------------------------------------------

    def _push_message(self, openid: str, msg_type: str, body: dict[str, FieldValue], encrypted: bool | None,
                      create_time: int | None, msg_id: int | None) -> requests.Response:
        with self._lock:
            msg_id = msg_id if msg_id is not None else next(self._msg_ids)
        fields = message_fields(self.original_id, openid, create_time or int(time.time()), msg_type, body, msg_id)
        self.note_user_activity(openid)
        return self.post_raw(render_xml(fields), encrypted=encrypted, openid=openid)

    def _event_time(self, openid: str, create_time: int | None) -> int:
        # Events are deduplicated by FromUserName+CreateTime(+Event): keep each user's strictly increasing.
        if create_time is not None:
            return int(create_time)
        with self._lock:
            value = max(int(time.time()), self._last_event_time.get(openid, 0) + 1)
            self._last_event_time[openid] = value
            return value

    def _require_envelope(self) -> Envelope:
        if self._envelope is None:
            raise ValueError("safe mode needs encoding_aes_key")
        return self._envelope

    def _note_reply(self, openid: str | None, response: requests.Response, encrypted: bool) -> None:
        text = response.content.decode("utf-8", "replace").strip()
        if response.status_code != 200 or text in ("", "success"):
            return
        try:
            if encrypted:
                if "<Encrypt>" not in text:
                    raise ValueError("plain reply to an encrypted push")
                text = self._require_envelope().decrypt_reply(text)
            reply = xmltodict.parse(text)["xml"]
            if openid is not None and reply.get("ToUserName") != openid:
                raise ValueError(f"reply addressed to {reply.get('ToUserName')!r}, not {openid!r}")
        except Exception as exc:  # anything unreadable is what the user sees as "service unavailable"
            with self._lock:
                self.reply_errors.append({"openid": openid, "body": response.content, "error": repr(exc),
                                          "time": time.time()})
            return
        with self._lock:
            msgtype = str(reply.get("MsgType"))
            self._record("reply", str(reply.get("ToUserName")), msgtype,
                         reply.get("Content") if msgtype == "text" else None, dict(reply))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that give up (timeouts, aborted downloads) are part of the tests; real bugs still print.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def _handler_for(emulator: WeChatEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "WeChatEmulator/1.0"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, MAX_REQUEST_BYTES)) if length > 0 else b""
            if url.path.startswith("/cgi-bin/"):
                relative = url.path[len("/cgi-bin/"):]
                delay = emulator.delay_for(relative)
                if delay and emulator._stopping.wait(delay):
                    return
                response = emulator.handle(method, relative, query, body)
            elif url.path.startswith("/pic/"):  # PicUrl: the image without a token, as the CDN serves it
                response = emulator.picture(url.path[len("/pic/"):])
            else:
                response = ApiResponse(404, "text/plain", b"not found")
            self._write(response)

        def _write(self, response: ApiResponse) -> None:
            try:
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                if response.send_length:
                    self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return Handler
