"""The API half of the WeChat emulator: what the service calls under ``/cgi-bin/``.

Pure request handling over thread-safe state (no sockets): ``handle()`` takes
the method, the path after ``/cgi-bin/``, the query and the body, and returns
status, content type and body bytes. :class:`~accident_service.sandbox.emulator.WeChatEmulator`
serves it over HTTP and adds the platform's pushes.

The platform's rules are always on: tokens (tokens.py, WECHAT.md §4),
customer-service allowances and following (allowances.py, §5), template
registration and field rules (templates.py, template_fields.py, §5). Time-based
rules read ``clock`` (seconds since the epoch), so tests can move time.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from accident_service.sandbox.allowances import Allowance, Audience
from accident_service.sandbox.faults import Fault, Faults, Holds
from accident_service.sandbox.media import MediaStore
from accident_service.sandbox.qrcodes import QrCodes, menu_problem
from accident_service.sandbox.responses import ERRMSG, ApiResponse
from accident_service.sandbox.templates import Card, TemplateBook, TemplateRefused
from accident_service.sandbox.tokens import TokenIssuer

#: The status of a template's result event when it reached the user (WECHAT.md §5).
TEMPLATE_SUCCESS = "success"


class PlatformApi:
    """State and handlers for tokens, media, messages, QR codes and menu."""

    def __init__(self, appid: str, secret: str, *, clock: Callable[[], float] = time.time,
                 token_ttl_seconds: int = 7200, token_grace_seconds: float = 300) -> None:
        self.appid = appid
        self.secret = secret
        self.clock = clock
        self._lock = threading.RLock()
        self.sent: list[dict[str, Any]] = []
        self._sent_by_user: dict[str, list[dict[str, Any]]] = {}
        self._arrivals: dict[str, threading.Condition] = {}  # per user, on self._lock: wakes only their waiters
        self.refused: list[dict[str, Any]] = []  # message sends the rules refused (not injected faults)
        self.requests_log: list[dict[str, Any]] = []
        self.token_requests = 0
        self.stable_token_requests = 0
        self.menu: dict[str, Any] | None = None
        self._tokens = TokenIssuer(appid, secret, clock, ttl_seconds=token_ttl_seconds,
                                   grace_seconds=token_grace_seconds)
        self._audience = Audience(clock)
        self._templates = TemplateBook(clock)
        self._qr = QrCodes(clock)
        self.qrcodes = self._qr.latest_ticket  # scene_str -> latest ticket
        self._media = MediaStore()
        self._faults = Faults()
        self._holds = Holds()
        # Template msgids: a sequence of their own (not the pushes' MsgIds), from a random start as the platform's
        # are not small numbers every run (emulators sharing a database must not reuse them).
        self._template_msgid = random.SystemRandom().randrange(10**9, 10**12)
        self._template_results: dict[str, str] = {}  # openid -> the result their templates get, if not "success"
        self.templates_not_delivered: list[dict[str, Any]] = []  # taken (errcode 0), never shown to the user

    # -- test controls: the platform's state --------------------------------

    def add_media(self, media_id: str | None = None, data: bytes | None = None,
                  content_type: str = "image/jpeg", *, send_length: bool = True) -> str:
        """Register media; without ``data`` a real JPEG (seeded by the id) is served. Returns the id."""
        with self._lock:
            return self._media.add(media_id, data, content_type, send_length)

    def remove_media(self, media_id: str) -> None:
        """Forget media, as the platform does after 3 days (40007 afterwards)."""
        with self._lock:
            self._media.remove(media_id)

    def expire_tokens(self) -> None:
        """Every token issued so far (both endpoints) is expired (42001) from now on."""
        with self._lock:
            self._tokens.expire_all()

    def register_template(self, template_id: str, fields: Mapping[str, str] | Iterable[str], *,
                          const_values: Mapping[str, Iterable[str]] | None = None) -> None:
        """Add a template as the console does: keyword -> type, or keyword names that carry it (``thing2``).

        Types: see template_fields. ``const_values`` gives each const keyword its approved values.
        """
        with self._lock:
            self._templates.register(template_id, fields, const_values=const_values)

    def note_user_activity(self, openid: str, event: str | None = None, *, msg_type: str | None = None,
                           action_key: Hashable | None = None) -> bool:
        """Record a user action as the push helpers do (without pushing: for API-only tests).

        ``event`` for an event (``"CLICK"``, ``"subscribe"``, ``"unsubscribe"``...), else a message of
        ``msg_type`` (default ``"text"``). ``action_key`` identifies a push so a retry is not a new action.
        Returns whether it counted (see allowances).
        """
        msg_type = "event" if event is not None else (msg_type or "text")
        with self._lock:
            return self._audience.record_action(openid, msg_type, event, action_key)

    def add_follower(self, openid: str) -> None:
        """``openid`` follows the account without having acted: template messages reach them,
        customer-service messages do not (45015) until they act."""
        with self._lock:
            self._audience.follow(openid)

    def set_user_unsubscribed(self, openid: str, unsubscribed: bool = True) -> None:
        """Unsubscribe ``openid`` (43004 for every message, allowance gone), or make them follow again."""
        with self._lock:
            (self._audience.unfollow if unsubscribed else self._audience.follow)(openid)

    def close_window(self, openid: str) -> None:
        """End ``openid``'s allowance now: customer service answers 45015 until the user acts again."""
        with self._lock:
            self._audience.close_window(openid)

    def set_template_result(self, openid: str, status: str | None) -> None:
        """What becomes of the templates to ``openid`` from now on (WECHAT.md §5): ``"failed:user block"`` (they
        turned the account's messages off) or ``"failed:system failed"``; None: ``success`` again.

        The send itself is taken as usual (errcode 0, a msgid); the user never sees the card, and the
        TEMPLATESENDJOBFINISH push carries the status. Customer-service messages are not affected: an
        assumption, as WECHAT.md does not say (were they, the service would meet the refusal's errcode on the
        text and handle it as any other).
        """
        with self._lock:
            if status is None:
                self._template_results.pop(openid, None)
            else:
                self._template_results[openid] = status

    # -- test controls: faults ------------------------------------------------

    def inject_error(self, path_suffix: str, errcode: int, times: int | None = 1) -> None:
        """The next ``times`` calls whose path ends with ``path_suffix`` get ``errcode`` (None: forever)."""
        with self._lock:
            self._faults.add(Fault(path_suffix, times, errcode=errcode))

    def inject_http_status(self, path_suffix: str, status: int, times: int | None = 1) -> None:
        """The next ``times`` matching calls answer with HTTP ``status`` (e.g. 502) and an HTML body."""
        with self._lock:
            self._faults.add(Fault(path_suffix, times, http_status=status))

    def set_delay(self, path_suffix: str, seconds: float) -> None:
        """Answer matching calls only after ``seconds`` (0 removes the delay)."""
        with self._lock:
            self._faults.set_delay(path_suffix, seconds)

    def hold(self, path_suffix: str) -> None:
        """Matching calls are neither handled nor answered until :meth:`release`, :meth:`clear_faults` or the
        server's stop (at most ``HOLD_MAX_SECONDS``, then counted in :attr:`expired_holds`); a released call is
        handled then, on the clock of then."""
        self._holds.hold(path_suffix)

    def release(self, path_suffix: str) -> None:
        """The calls held on ``path_suffix`` go on; later ones are not held."""
        self._holds.release(path_suffix)

    def wait_until_held(self, path_suffix: str, count: int = 1, timeout: float = 30.0) -> None:
        """Block until ``count`` calls are held on ``path_suffix`` (as given to :meth:`hold`). Raises TimeoutError."""
        self._holds.wait_until_held(path_suffix, count, timeout)

    @property
    def expired_holds(self) -> int:
        """Held calls let through at ``HOLD_MAX_SECONDS`` because no release came (see :meth:`hold`)."""
        return self._holds.expired

    def clear_faults(self) -> None:
        """Injected errors and delays are gone, and every hold is released."""
        with self._lock:
            self._faults.clear()
        self._holds.release_all()

    # -- introspection --------------------------------------------------------

    def sent_to(self, openid: str) -> list[dict[str, Any]]:
        """The records of what ``openid`` received (texts, replies, template cards), oldest first."""
        with self._lock:
            return [dict(m) for m in self._sent_by_user.get(openid, ())]

    def wait_for_received(self, openid: str, count: int, timeout: float) -> list[dict[str, Any]]:
        """Block until ``openid`` has received ``count`` messages in all; returns their records, oldest first.

        Each record's ``monotonic`` is ``time.monotonic()`` when it arrived (for latency figures). Raises
        TimeoutError. Waiting costs nothing while other users receive (many drivers may wait at once).
        """
        with self._lock:
            arrived = self._arrivals.setdefault(openid, threading.Condition(self._lock))
            if not arrived.wait_for(lambda: len(self._sent_by_user.get(openid, ())) >= count, timeout):
                raise TimeoutError(f"{openid} received {len(self._sent_by_user.get(openid, ()))} of {count} "
                                   f"messages within {timeout}s")
            return [dict(m) for m in self._sent_by_user[openid]]

    def allowance(self, openid: str) -> Allowance:
        """``openid``'s customer-service allowance now: following, remaining, window_ends_at, granted_by."""
        with self._lock:
            return self._audience.allowance(openid)

    def refusal_counts(self, kind: str | None = None) -> dict[int, int]:
        """How many message sends the rules refused, by errcode (``kind``: "custom" or "template")."""
        with self._lock:
            return dict(Counter(r["errcode"] for r in self.refused if kind is None or r["kind"] == kind))

    @property
    def force_refreshes(self) -> int:
        """stable_token calls with force_refresh that issued a new token."""
        with self._lock:
            return self._tokens.force_refreshes

    @property
    def duplicate_templates_dropped(self) -> int:
        """Template sends dropped as repeats of a client_msg_id within 10 minutes."""
        with self._lock:
            return self._templates.duplicates_dropped

    def scene_for_ticket(self, ticket: str) -> str | None:
        with self._lock:
            return self._qr.scene_for_ticket(ticket)

    def wait_to_handle(self, path: str, stopping: threading.Event) -> bool:
        """Wait out an injected delay, then a hold, before a call to ``path`` is handled (outside the platform's
        lock: other calls go on meanwhile). False if the server stops meanwhile: the call is not handled."""
        with self._lock:
            delay = self._faults.delay_for(path)
        if delay and stopping.wait(delay):
            return False
        return self._holds.pass_through(path, stopping)

    # -- request handling -------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes) -> ApiResponse:
        """Answer one API call (``path`` is relative to ``/cgi-bin/``) and log it."""
        with self._lock:
            response = self._dispatch(method, path, query, body)
            self.requests_log.append({"method": method, "path": path, "query": dict(query), "body": body,
                                      "time": self.clock(), "status": response.status,
                                      "errcode": response.errcode})
            return response

    def _dispatch(self, method: str, path: str, query: dict[str, str], body: bytes) -> ApiResponse:
        if path == "token":
            self.token_requests += 1
        elif path == "stable_token":
            self.stable_token_requests += 1
        fault = self._faults.take(path)
        if fault is not None:
            if fault.errcode is not None:
                return ApiResponse.error(fault.errcode)
            return ApiResponse(fault.http_status, "text/html", b"<html><body>Bad Gateway</body></html>")
        if path == "token":
            return self._tokens.token(query)
        if path == "stable_token":
            return self._tokens.stable_token(method, body)
        if path == "showqrcode":
            return self._qr.show(query.get("ticket", ""))
        routes: dict[str, Callable[[dict[str, Any]], ApiResponse]] = {
            "message/custom/send": self._custom_send, "message/template/send": self._template_send,
            "qrcode/create": self._qr.create, "menu/create": self._menu_create}
        if path != "media/get" and path not in routes:
            return ApiResponse.json({"errcode": 40066, "errmsg": ERRMSG[40066]}, status=404)
        token_error = self._tokens.check(query.get("access_token"))
        if token_error:
            return ApiResponse.error(token_error)
        if path == "media/get":
            return self._media.get(query.get("media_id", ""))
        if method != "POST" or not body.strip():
            return ApiResponse.error(44002)
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return ApiResponse.error(47001)
        if not isinstance(payload, dict):
            return ApiResponse.error(47001)
        return routes[path](payload)

    def picture(self, media_id: str) -> ApiResponse:
        """The PicUrl of an image push: the media's bytes, no token needed (HTTP 404 if unknown)."""
        with self._lock:
            return self._media.picture(media_id)

    # -- messages ------------------------------------------------------------

    def _custom_send(self, payload: dict[str, Any]) -> ApiResponse:
        openid, msgtype = payload.get("touser"), payload.get("msgtype")
        if not isinstance(openid, str) or not openid or not isinstance(msgtype, str):
            return self._refuse("custom", openid, payload, 47001)
        text = None
        if msgtype == "text":
            content = (payload.get("text") or {}).get("content")
            if not isinstance(content, str) or not content:
                return self._refuse("custom", openid, payload, 44002)
            text = content
        refusal = self._audience.charge_customer_service(openid)  # WECHAT.md §5: within the last action's allowance
        if refusal:
            return self._refuse("custom", openid, payload, refusal)
        self._record("custom", openid, msgtype, text, payload)
        return ApiResponse.error(0)

    def _template_send(self, payload: dict[str, Any]) -> ApiResponse:
        openid, data = payload.get("touser"), payload.get("data")
        if not isinstance(openid, str) or not openid or not isinstance(data, dict):
            return self._refuse("template", openid, payload, 47001)
        client_msg_id = payload.get("client_msg_id")
        # WECHAT.md §5 Template: a registered template (40037), a follower (43004), valid keywords (47003);
        # the customer-service allowance does not apply.
        try:
            template = self._templates.template(payload.get("template_id"))
            if not self._audience.follows(openid):
                return self._refuse("template", openid, payload, 43004)
            card = self._templates.card_for(template, payload)
            earlier_msgid = self._templates.check_client_msg_id(openid, client_msg_id)
        except TemplateRefused as refused:
            return self._refuse("template", openid, payload, refused.errcode, refused.errmsg)
        # A repeat within 10 minutes: dropped, nothing reaches the user. That the answer names the first send's
        # msgid is an assumption (WECHAT.md says only that the repeat is dropped).
        if earlier_msgid is not None:
            return ApiResponse.json({"errcode": 0, "errmsg": "ok", "msgid": earlier_msgid})
        self._template_msgid += 1
        msgid = self._template_msgid
        self._templates.remember_client_msg_id(openid, client_msg_id, msgid)
        status = self._template_results.get(openid, TEMPLATE_SUCCESS)
        if status == TEMPLATE_SUCCESS:
            self._record("template", openid, "template", card.text, payload, card=card)
        else:
            self.templates_not_delivered.append({"touser": openid, "msgid": msgid, "status": status,
                                                 "body": payload, "time": self.clock()})
        self._template_finished(openid, msgid, status)
        return ApiResponse.json({"errcode": 0, "errmsg": "ok", "msgid": msgid})

    def _template_finished(self, openid: str, msgid: int, status: str) -> None:
        """The platform is done with a template to ``openid``: it then pushes its result event (WeChatEmulator)."""

    def _refuse(self, kind: str, openid: Any, payload: dict[str, Any], errcode: int,
                errmsg: str | None = None) -> ApiResponse:
        response = ApiResponse.error(errcode, errmsg)
        self.refused.append({"kind": kind, "touser": openid, "errcode": errcode,
                             "errmsg": json.loads(response.body)["errmsg"], "body": payload, "time": self.clock()})
        return response

    def _record(self, kind: str, openid: str, msgtype: str, text: str | None, body: dict[str, Any], *,
                card: Card | None = None) -> None:
        record = {"kind": kind, "touser": openid, "msgtype": msgtype, "text": text, "body": body, "card": card,
                  "time": self.clock(), "monotonic": time.monotonic()}
        with self._lock:
            self.sent.append(record)
            self._sent_by_user.setdefault(openid, []).append(record)
            if openid in self._arrivals:
                self._arrivals[openid].notify_all()

    # -- menu ----------------------------------------------------------------

    def _menu_create(self, payload: dict[str, Any]) -> ApiResponse:
        problem = menu_problem(payload)
        if problem is not None:
            return ApiResponse.error(*problem)
        self.menu = payload
        return ApiResponse.error(0)
