"""The API half of the WeChat emulator: what the service calls under ``/cgi-bin/``.

Pure request handling over thread-safe state (no sockets): ``handle()`` takes
the method, the path after ``/cgi-bin/``, the query and the body, and returns
status, content type and body bytes. :class:`~accident_service.sandbox.emulator.WeChatEmulator`
serves it over HTTP and adds the platform's pushes.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from accident_service.sandbox.images import make_jpeg, make_placeholder_qr

JSON_TYPE = "application/json; encoding=utf-8"
ERRMSG = {
    0: "ok", -1: "system error", 40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type", 40003: "invalid openid", 40007: "invalid media_id", 40013: "invalid appid",
    40037: "invalid template_id", 40053: "invalid action info", 40066: "invalid url",
    40125: "invalid appsecret", 41001: "access_token missing", 42001: "access_token expired",
    43004: "require subscribe", 44002: "empty post data", 45009: "reach max api daily quota limit",
    45015: "response out of time limit or subscription is canceled", 45047: "out of response count limit",
    47001: "data format error",
}
QR_MAX_EXPIRE = 2_592_000


@dataclass
class ApiResponse:
    status: int
    content_type: str
    body: bytes
    send_length: bool = True  # False: no Content-Length, the body ends when the connection closes

    @classmethod
    def json(cls, payload: dict[str, Any], status: int = 200) -> ApiResponse:
        return cls(status, JSON_TYPE, json.dumps(payload, ensure_ascii=False).encode("utf-8"))

    @classmethod
    def error(cls, errcode: int, errmsg: str | None = None) -> ApiResponse:
        return cls.json({"errcode": errcode, "errmsg": errmsg or ERRMSG.get(errcode, "error")})


@dataclass
class _Token:
    expires_at: float
    superseded_at: float | None = None


@dataclass
class _Fault:
    path_suffix: str
    remaining: int | None  # None: forever
    errcode: int | None = None
    http_status: int = 200


@dataclass
class _Media:
    content_type: str
    produce: Callable[[], bytes]
    send_length: bool = True
    cached: bytes | None = field(default=None, repr=False)


class PlatformApi:
    """State and handlers for token, media, messages, QR codes and menu."""

    def __init__(self, appid: str, secret: str, *, token_ttl_seconds: int = 7200,
                 token_grace_seconds: float = 300, enforce_window: bool = False,
                 window_seconds: float = 48 * 3600) -> None:
        self.appid = appid
        self.secret = secret
        self.token_ttl_seconds = token_ttl_seconds
        self.token_grace_seconds = token_grace_seconds
        self.enforce_window = enforce_window
        self.window_seconds = window_seconds
        self._lock = threading.RLock()
        self.sent: list[dict[str, Any]] = []
        self.requests_log: list[dict[str, Any]] = []
        self.token_requests = 0
        self.qrcodes: dict[str, str] = {}  # scene_str -> latest ticket
        self.menu: dict[str, Any] | None = None
        self._tokens: dict[str, _Token] = {}
        self._tickets: dict[str, dict[str, Any]] = {}
        self._media: dict[str, _Media] = {}
        self._faults: list[_Fault] = []
        self._delays: dict[str, float] = {}
        self._unsubscribed: set[str] = set()
        self._closed_windows: set[str] = set()
        self._last_interaction: dict[str, float] = {}
        self._template_msgid = 1000

    # -- test controls ----------------------------------------------------

    def add_media(self, media_id: str | None = None, data: bytes | None = None,
                  content_type: str = "image/jpeg", *, send_length: bool = True) -> str:
        """Register media; without ``data`` a real JPEG (seeded by the id) is served. Returns the id."""
        media_id = media_id or "media-" + secrets.token_urlsafe(12)
        produce = (lambda: data) if data is not None else (lambda: make_jpeg(media_id))
        with self._lock:
            self._media[media_id] = _Media(content_type, produce, send_length)
        return media_id

    def remove_media(self, media_id: str) -> None:
        """Forget media, as the platform does after 3 days (40007 afterwards)."""
        with self._lock:
            self._media.pop(media_id, None)

    def inject_error(self, path_suffix: str, errcode: int, times: int | None = 1) -> None:
        """The next ``times`` calls whose path ends with ``path_suffix`` get ``errcode`` (None: forever)."""
        with self._lock:
            self._faults.append(_Fault(path_suffix, times, errcode=errcode))

    def inject_http_status(self, path_suffix: str, status: int, times: int | None = 1) -> None:
        """The next ``times`` matching calls answer with HTTP ``status`` (e.g. 502) and an HTML body."""
        with self._lock:
            self._faults.append(_Fault(path_suffix, times, http_status=status))

    def set_delay(self, path_suffix: str, seconds: float) -> None:
        """Answer matching calls only after ``seconds`` (0 removes the delay)."""
        with self._lock:
            if seconds > 0:
                self._delays[path_suffix] = seconds
            else:
                self._delays.pop(path_suffix, None)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._delays.clear()

    def expire_tokens(self) -> None:
        """Every token issued so far is expired (42001) from now on."""
        with self._lock:
            now = time.time()
            for issued in self._tokens.values():
                issued.expires_at = min(issued.expires_at, now - 1)

    def set_user_unsubscribed(self, openid: str, unsubscribed: bool = True) -> None:
        """Messages to ``openid`` fail with 43004 until they subscribe again."""
        with self._lock:
            (self._unsubscribed.add if unsubscribed else self._unsubscribed.discard)(openid)

    def close_window(self, openid: str) -> None:
        """Customer-service messages to ``openid`` fail with 45015 until the user writes again."""
        with self._lock:
            self._closed_windows.add(openid)

    def note_user_activity(self, openid: str, event: str | None = None) -> None:
        """Called for each push: an interaction opens the 48 h window; (un)subscribe changes following."""
        with self._lock:
            if event == "unsubscribe":
                self._unsubscribed.add(openid)
                return
            if event == "subscribe":
                self._unsubscribed.discard(openid)
            self._closed_windows.discard(openid)
            self._last_interaction[openid] = time.time()

    def scene_for_ticket(self, ticket: str) -> str | None:
        with self._lock:
            info = self._tickets.get(ticket)
            return info["scene"] if info else None

    def delay_for(self, path: str) -> float:
        with self._lock:
            return max((s for suffix, s in self._delays.items() if path.endswith(suffix)), default=0.0)

    # -- request handling -------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes) -> ApiResponse:
        """Answer one API call (``path`` is relative to ``/cgi-bin/``) and log it."""
        with self._lock:
            response = self._dispatch(method, path, query, body)
            errcode = None
            if response.content_type == JSON_TYPE:
                errcode = json.loads(response.body).get("errcode")
            self.requests_log.append({"method": method, "path": path, "query": dict(query), "body": body,
                                      "time": time.time(), "status": response.status, "errcode": errcode})
            return response

    def _dispatch(self, method: str, path: str, query: dict[str, str], body: bytes) -> ApiResponse:
        if path in ("token", "stable_token"):
            self.token_requests += 1
        fault = self._take_fault(path)
        if fault is not None:
            if fault.errcode is not None:
                return ApiResponse.error(fault.errcode)
            return ApiResponse(fault.http_status, "text/html", b"<html><body>Bad Gateway</body></html>")
        if path == "token":
            return self._issue_token(query)
        if path == "stable_token":
            return self._stable_token(body)
        if path == "showqrcode":
            return self._show_qrcode(query)
        routes: dict[str, Callable[[dict[str, Any] | None, dict[str, str]], ApiResponse]] = {
            "media/get": self._media_get, "message/custom/send": self._custom_send,
            "message/template/send": self._template_send, "qrcode/create": self._qrcode_create,
            "menu/create": self._menu_create}
        handler = routes.get(path)
        if handler is None:
            return ApiResponse.json({"errcode": 40066, "errmsg": ERRMSG[40066]}, status=404)
        token_error = self._check_token(query.get("access_token"))
        if token_error:
            return ApiResponse.error(token_error)
        if path == "media/get":
            return handler(None, query)
        if method != "POST" or not body.strip():
            return ApiResponse.error(44002)
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return ApiResponse.error(47001)
        if not isinstance(payload, dict):
            return ApiResponse.error(47001)
        return handler(payload, query)

    def _take_fault(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if path.endswith(fault.path_suffix):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _issue_token(self, query: dict[str, str]) -> ApiResponse:
        if query.get("grant_type") != "client_credential":
            return ApiResponse.error(40002)
        if query.get("appid") != self.appid:
            return ApiResponse.error(40013)
        if query.get("secret") != self.secret:
            return ApiResponse.error(40125)
        now = time.time()
        for issued in self._tokens.values():  # a new token retires the old ones after a grace period
            if issued.superseded_at is None:
                issued.superseded_at = now
        token = secrets.token_urlsafe(96)[:128]
        self._tokens[token] = _Token(expires_at=now + self.token_ttl_seconds)
        return ApiResponse.json({"access_token": token, "expires_in": self.token_ttl_seconds})

    def _stable_token(self, body: bytes) -> ApiResponse:
        """POST stable_token (WECHAT.md §4): normal mode hands out the current token until it nears expiry."""
        try:
            request = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return ApiResponse.error(47001)
        if not isinstance(request, dict) or request.get("grant_type") != "client_credential":
            return ApiResponse.error(40002)
        if request.get("appid") != self.appid:
            return ApiResponse.error(40013)
        if request.get("secret") != self.secret:
            return ApiResponse.error(40125)
        now = time.time()
        current = getattr(self, "_stable", None)
        if request.get("force_refresh") or current is None or self._tokens[current].expires_at - now < 300 \
                or self._tokens[current].superseded_at is not None:
            if current is not None and request.get("force_refresh"):
                self._tokens[current].superseded_at = now - self.token_grace_seconds - 1
            current = secrets.token_urlsafe(96)[:128]
            self._tokens[current] = _Token(expires_at=now + self.token_ttl_seconds)
            self._stable = current
        return ApiResponse.json({"access_token": current,
                                 "expires_in": int(self._tokens[current].expires_at - now)})

    def _check_token(self, token: str | None) -> int | None:
        if not token:
            return 41001
        issued = self._tokens.get(token)
        now = time.time()
        if issued is None:
            return 40001
        if issued.superseded_at is not None and now > issued.superseded_at + self.token_grace_seconds:
            return 40001
        if now > issued.expires_at:
            return 42001
        return None

    def picture(self, media_id: str) -> ApiResponse:
        """The PicUrl of an image push: the media's bytes, no token needed (HTTP 404 if unknown)."""
        with self._lock:
            if media_id not in self._media:
                return ApiResponse(404, "text/plain", b"not found")
            return self._media_get(None, {"media_id": media_id})

    def _media_get(self, _payload: Any, query: dict[str, str]) -> ApiResponse:
        media = self._media.get(query.get("media_id", ""))
        if media is None:  # the platform answers errors with HTTP 200 and a JSON body
            return ApiResponse(200, "text/plain", json.dumps({"errcode": 40007, "errmsg": ERRMSG[40007]}).encode())
        if media.cached is None:
            media.cached = media.produce()
        return ApiResponse(200, media.content_type, media.cached, send_length=media.send_length)

    def _can_receive(self, openid: str, *, customer_service: bool) -> int | None:
        if openid in self._unsubscribed:
            return 43004
        if customer_service:
            if openid in self._closed_windows:
                return 45015
            last = self._last_interaction.get(openid)
            if self.enforce_window and (last is None or time.time() - last > self.window_seconds):
                return 45015
        return None

    def _custom_send(self, payload: dict[str, Any], _query: dict[str, str]) -> ApiResponse:
        openid, msgtype = payload.get("touser"), payload.get("msgtype")
        if not isinstance(openid, str) or not openid or not isinstance(msgtype, str):
            return ApiResponse.error(47001)
        text = None
        if msgtype == "text":
            content = (payload.get("text") or {}).get("content")
            if not isinstance(content, str) or not content:
                return ApiResponse.error(44002)
            text = content
        refusal = self._can_receive(openid, customer_service=True)
        if refusal:
            return ApiResponse.error(refusal)
        self._record("custom", openid, msgtype, text, payload)
        return ApiResponse.error(0)

    def _template_send(self, payload: dict[str, Any], _query: dict[str, str]) -> ApiResponse:
        openid, template_id, data = payload.get("touser"), payload.get("template_id"), payload.get("data")
        if not isinstance(openid, str) or not openid or not isinstance(data, dict):
            return ApiResponse.error(47001)
        if not isinstance(template_id, str) or not template_id:
            return ApiResponse.error(40037)
        refusal = self._can_receive(openid, customer_service=False)
        if refusal:
            return ApiResponse.error(refusal)
        text = "\n".join(str(v.get("value", "")) if isinstance(v, dict) else str(v) for v in data.values())
        self._record("template", openid, "template", text, payload)
        self._template_msgid += 1
        return ApiResponse.json({"errcode": 0, "errmsg": "ok", "msgid": self._template_msgid})

    def _record(self, kind: str, openid: str, msgtype: str, text: str | None, body: dict[str, Any]) -> None:
        self.sent.append({"kind": kind, "touser": openid, "msgtype": msgtype, "text": text, "body": body,
                          "time": time.time()})

    def _qrcode_create(self, payload: dict[str, Any], _query: dict[str, str]) -> ApiResponse:
        action = payload.get("action_name")
        scene = ((payload.get("action_info") or {}).get("scene") or {})
        value = scene.get("scene_str") if action in ("QR_STR_SCENE", "QR_LIMIT_STR_SCENE") else scene.get("scene_id")
        if action not in ("QR_SCENE", "QR_STR_SCENE", "QR_LIMIT_SCENE", "QR_LIMIT_STR_SCENE") or value in (None, ""):
            return ApiResponse.error(40053)
        if isinstance(value, str) and len(value) > 64:
            return ApiResponse.error(40053)
        ticket = "gQ" + secrets.token_urlsafe(36)
        result: dict[str, Any] = {"ticket": ticket, "url": "http://weixin.qq.com/q/" + secrets.token_urlsafe(16)}
        expires = None
        if "LIMIT" not in action:
            expire_seconds = int(payload.get("expire_seconds") or 60)  # omitted: the code dies within a minute
            if not 1 <= expire_seconds <= QR_MAX_EXPIRE:
                return ApiResponse.error(40053)
            result["expire_seconds"] = expire_seconds
            expires = time.time() + expire_seconds
        self.qrcodes[str(value)] = ticket
        self._tickets[ticket] = {"scene": str(value), "expires_at": expires, "url": result["url"]}
        return ApiResponse.json(result)

    def _show_qrcode(self, query: dict[str, str]) -> ApiResponse:
        ticket = query.get("ticket", "")
        if ticket not in self._tickets:
            return ApiResponse(404, "text/plain", b"invalid ticket")
        return ApiResponse(200, "image/png", make_placeholder_qr(self._tickets[ticket]["scene"]))

    def _menu_create(self, payload: dict[str, Any], _query: dict[str, str]) -> ApiResponse:
        buttons = payload.get("button")
        if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
            return ApiResponse.error(40016, "invalid button size")
        for button in buttons:
            subs = button.get("sub_button") or []
            if len(subs) > 5:
                return ApiResponse.error(40023, "invalid sub button size")
            for item in [button, *subs]:
                if len(str(item.get("key", "")).encode("utf-8")) > 128:
                    return ApiResponse.error(40019, "invalid button key size")
        self.menu = payload
        return ApiResponse.error(0)
