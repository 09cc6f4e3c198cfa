"""A WeChat platform on loopback, for tests and the dev sandbox.

API side (what the service calls): ``http://127.0.0.1:<port>/cgi-bin/...``:
``token``, ``stable_token``, ``message/custom/send``, ``message/template/send``,
``qrcode/create``, ``showqrcode``, ``media/get``, ``menu/create``.

Platform side (what WeChat pushes): ``post_text`` & co. build the documented
XML, sign it (and encrypt it in safe mode) and POST it to ``callback_url``;
in-band replies are decrypted, checked and recorded like sent messages
(kind ``"reply"``), malformed ones land in ``reply_errors``.

    with WeChatEmulator("wx-app", "secret", "token") as wechat:
        settings = {"WECHAT_API_BASE_URL": wechat.api_base_url, ...}
        wechat.callback_url = live_server_url + "/wechat"
        wechat.register_template("TPL-BOOKED", {"character_string1": "character_string", "time2": "time"})
        wechat.post_click("openid-a", "REPORT_ACCIDENT")
        wechat.wait_for_sent(lambda m: m["touser"] == "openid-a")

The platform's rules are always on (there is no switch to turn them off):

* Customer-service allowances (WECHAT.md §5, allowances.py): a message from the
  user allows 5 sends in 48 h; a menu click, a follow or a QR scan 3 in 1 minute;
  each action replaces the last one's allowance. Beyond: 45047 (count spent),
  45015 (window closed or no action); not following: 43004.
* What counts as an action: every push this emulator makes, ``post_raw``
  included, when its plaintext XML is a well-formed message (parses, has
  FromUserName and MsgType, an Event for events); the user acted even if the
  service then rejects the push. A push repeating an earlier one (same MsgId,
  or same FromUserName + CreateTime + Event) is the platform retrying, not a
  new action. Malformed XML counts as nothing.
* Template messages (templates.py, template_fields.py): only registered
  templates (40037); keyword values typed and held to 20 characters (47003);
  ``first``/``remark`` and colours accepted, not shown; ``client_msg_id`` drops a
  repeat within 10 minutes; the receiver must follow (43004), nothing else. Each template taken is
  followed by a TEMPLATESENDJOBFINISH push to the callback URL (a platform event: no allowance), with
  Status ``success``, or what ``set_template_result`` set for the user (``failed:user block``: the
  card is not shown, ``templates_not_delivered`` lists it).
* Tokens (tokens.py): ``cgi-bin/token`` and ``cgi-bin/stable_token`` as WECHAT.md §4.
* Time: every time-based rule reads ``clock`` (a callable returning epoch
  seconds; default ``time.time``), so tests move time instead of sleeping.
  Push signatures and CreateTime stay on the wall clock, as the service checks them.

Controls and introspection (besides ``post_*`` and ``wait_for_sent``):

* ``messages_to(openid)``: what the user saw; a template message reads ``"[模板] value1 / value2"``
* ``register_template(template_id, {"thing2": "thing", ...} | ["thing2", ...], *, const_values=None)``
* ``note_user_activity(openid, event=None, *, msg_type=None, action_key=None) -> bool``: an action without a push
* ``add_follower(openid)``: follows, has done nothing (templates reach them, customer service does not)
* ``set_user_unsubscribed(openid, unsubscribed=True)``, ``close_window(openid)``
* ``set_template_result(openid, "failed:user block" | "failed:system failed" | None)``
* ``allowance(openid) -> Allowance(following, remaining, window_ends_at, granted_by)``
* ``refusal_counts(kind=None) -> {errcode: count}`` and ``refused`` (the refused sends' records)
* ``cards_to(openid) -> [Card]``: template messages as shown (``shown``, ``not_shown``, ``url``)
* ``duplicate_templates_dropped``, ``force_refreshes``, ``token_requests``, ``stable_token_requests``
* faults: ``inject_error``, ``inject_http_status``, ``set_delay``, ``hold``/``release``/``wait_until_held``
  (``expired_holds``: calls a hold let go at its time limit, not at a release), ``clear_faults``, ``expire_tokens``
* others: ``add_media``, ``remove_media``, ``qrcodes``, ``scene_for_ticket``, ``requests_log``, ``sent``
"""

from __future__ import annotations

import itertools
import random
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from accident_service.sandbox.http_server import LoopbackServing, handler_for
from accident_service.sandbox.platform_api import PlatformApi
from accident_service.sandbox.push_messages import (
    Envelope,
    FieldValue,
    action_of,
    message_fields,
    new_nonce,
    read_reply,
    render_xml,
    sha1_signature,
)
from accident_service.sandbox.templates import Card

_FROM_USER = re.compile(rb"<FromUserName>\s*(?:<!\[CDATA\[)?(.*?)(?:\]\]>)?\s*</FromUserName>", re.S)


class WeChatEmulator(PlatformApi, LoopbackServing):
    """Loopback HTTP server playing the WeChat platform. Start/stop it, or use it as a context manager.

    ``encoding_aes_key`` enables safe mode, the default for pushes when set (``encrypted_by_default``
    overrides). ``api_options`` go to PlatformApi: ``clock`` (time.time), ``token_ttl_seconds`` (7200),
    ``token_grace_seconds`` (300: how long a token replaced through ``cgi-bin/token`` still works).
    """

    _thread_name = "wechat-emulator"

    def __init__(self, appid: str, secret: str, token: str, encoding_aes_key: str | None = None,
                 callback_url: str | None = None, *, original_id: str = "gh_0123456789ab",
                 encrypted_by_default: bool | None = None, push_timeout: float = 5.0, port: int = 0,
                 **api_options: Any) -> None:
        super().__init__(appid, secret, **api_options)
        self._init_serving(port)
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

    # -- lifecycle: start(), stop() and ``with`` are LoopbackServing's --------

    def _handler(self):
        return handler_for(self, self._stopping)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._bound_port('emulator')}"

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
        return self.post_raw(render_xml(fields_xml), encrypted=encrypted, openid=openid)

    def post_raw(self, xml: str | bytes, encrypted: bool | None = None, *, openid: str | None = None,
                 timestamp: int | str | None = None, nonce: str | None = None) -> requests.Response:
        """Sign (and in safe mode encrypt) ``xml`` as it is and POST it to ``callback_url``.

        A well-formed message counts as the user's action, as the typed helpers' pushes do (see the
        module docstring); malformed XML counts as nothing.
        Raises requests' exceptions, e.g. ReadTimeout when the service takes over ``push_timeout``.
        """
        if not self.callback_url:
            raise RuntimeError("set callback_url (the service's /wechat URL) before pushing")
        encrypted = self.encrypted_by_default if encrypted is None else encrypted
        raw = xml.encode("utf-8") if isinstance(xml, str) else xml
        action = action_of(raw)
        if action is not None:  # the user acted before the platform pushes, whatever the service answers
            self.note_user_activity(action.openid, action.event, msg_type=action.msg_type, action_key=action.key)
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
        """What the user saw, in order: a text's content; a template message as its card,
        ``"[模板] value1 / value2 ..."`` (the shown keyword values in the template's order, never
        first/remark); any other message as ``"[msgtype]"``. Refused sends are not there."""
        with self._lock:
            return [m["text"] if m["text"] is not None else f"[{m['msgtype']}]"
                    for m in self.sent if m["touser"] == openid]

    def cards_to(self, openid: str) -> list[Card]:
        """The template messages ``openid`` received, as shown: ``shown`` values, ``not_shown`` keys, ``url``."""
        with self._lock:
            return [m["card"] for m in self.sent if m["touser"] == openid and m["card"] is not None]

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
        return self.post_raw(render_xml(fields), encrypted=encrypted, openid=openid)

    def _template_finished(self, openid: str, msgid: int, status: str) -> None:
        # WECHAT.md §5: after a template send the platform pushes TEMPLATESENDJOBFINISH to the callback URL,
        # on its own time (a platform event, not the user's action: it opens no allowance).
        if self.callback_url:
            threading.Thread(target=self._push_template_result, args=(openid, msgid, status), daemon=True,
                             name="wechat-template-result").start()

    def _push_template_result(self, openid: str, msgid: int, status: str) -> None:
        try:
            self.post_event(openid, "TEMPLATESENDJOBFINISH", MsgID=msgid, Status=status)
        except (requests.RequestException, RuntimeError):  # the service is gone or the emulator stopping
            pass

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
            reply = read_reply(text, self._envelope if encrypted else None, openid)
        except Exception as exc:  # anything unreadable is what the user sees as "service unavailable"
            with self._lock:
                self.reply_errors.append({"openid": openid, "body": response.content, "error": repr(exc),
                                          "time": time.time()})
            return
        with self._lock:
            msgtype = str(reply.get("MsgType"))
            self._record("reply", str(reply.get("ToUserName")), msgtype,
                         reply.get("Content") if msgtype == "text" else None, dict(reply))
