"""The sandbox's two phones: a page with driver A's and driver B's chat panes, and the JSON they use.

Each action of a pane becomes what WeChat would push (through the emulator: signed, AES-encrypted,
to the service's real ``/wechat``); each pane shows what the platform delivered to that phone: the
customer-service texts, the in-band replies, template messages as cards, and the SMS sent to the
number the pane's driver types when asked. Only installed by ``sandbox.launcher``.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from flask import Blueprint, Flask, abort, current_app, jsonify, redirect, render_template, request, session, url_for
from flask_login import login_user

from accident_service.sandbox import console
from accident_service.sandbox.images import make_jpeg
from accident_service.wechat.menu import MENU

if TYPE_CHECKING:
    from accident_service.sandbox.launcher import Sandbox

EXTENSION_KEY = "accident_service.sandbox"
MAX_PHOTO_BYTES = 10 * 2**20
SAMPLE_PHOTOS = ("scene", "collision", "plate-a", "plate-b")
SAMPLE_LABELS = {"scene": "现场全景", "collision": "碰撞部位", "plate-a": "本车车牌", "plate-b": "对方车牌"}
#: Places a driver can share, as WeChat's location picker would send them.
LOCATIONS = {
    "tower": (23.1066, 113.3245, "广州塔附近"),
    "tianhe": (23.1372, 113.3270, "天河体育中心西门"),
    "zhujiang": (23.1200, 113.3210, "珠江新城花城大道"),
}
CAMERA_ZONE = ZoneInfo("Asia/Shanghai")
_QR_LINK = re.compile(r"https?://\S*showqrcode\?ticket=[^\s)）]+")

bp = Blueprint("sandbox", __name__, url_prefix="/sandbox", template_folder="phone_templates",
               static_folder="phone_static")


@dataclass
class Phone:
    key: str  # "a" or "b"
    name: str
    openid: str
    number: str  # what the driver types when asked for a phone number; SMS to it shows in this pane
    sent: list[dict[str, Any]] = field(default_factory=list)  # what the driver did, for the pane
    photos: int = 0


@dataclass
class Phones:
    sandbox: Sandbox
    phones: dict[str, Phone]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def phone(self, key: str) -> Phone:
        if key not in self.phones:
            abort(404)
        return self.phones[key]

    def other(self, phone: Phone) -> Phone:
        return next(p for p in self.phones.values() if p is not phone)


def install(app: Flask, sandbox: Sandbox) -> None:
    """Serve the phones at /sandbox (and / leads there); driver A follows the account, B has not met it yet."""
    # Openids of the shape the platform gives ("o" and 27 more characters), so that what masks a real one in
    # the logs masks these too (an operator's pass found "oSandboxDriverA" in urllib3's lines).
    phones = {"a": Phone("a", "司机 A", "oSandboxDriverA-000000000001", "13800138000"),
              "b": Phone("b", "司机 B", "oSandboxDriverB-000000000002", "13900139000")}
    app.extensions[EXTENSION_KEY] = Phones(sandbox, phones)
    sandbox.wechat.add_follower(phones["a"].openid)
    app.register_blueprint(bp)
    app.add_url_rule("/", "sandbox_home", lambda: redirect(url_for("sandbox.page")))


def _state() -> Phones:
    return current_app.extensions[EXTENSION_KEY]


@bp.get("/")
def page():
    state = _state()
    return render_template("phones.html", phones=list(state.phones.values()), menu=MENU["button"],
                           samples=[(name, SAMPLE_LABELS[name]) for name in SAMPLE_PHOTOS],
                           locations={key: label for key, (_, _, label) in LOCATIONS.items()},
                           desk_user=_demo_username())


@bp.get("/samples/<name>.jpg")
def sample(name: str):
    """A sample as a file to download and pick (the page shows it scaled down)."""
    if name not in SAMPLE_PHOTOS:
        abort(404)
    return _camera_photo(f"sample-{name}"), 200, {"Content-Type": "image/jpeg", "Cache-Control": "no-cache"}


@bp.get("/desk")
def desk():
    """The desk, signed in as the demo officer (the real sign-in: audited, a fresh session)."""
    from accident_service.desk.sign_in import sign_in
    from accident_service.sandbox.launcher import DEMO_PASSWORD
    from accident_service.web import current_runtime

    runtime = current_runtime()
    with runtime.unit_of_work() as db:
        staff = sign_in(db, _demo_username(), DEMO_PASSWORD, now=runtime.clock.now(), address=request.remote_addr)
    if staff is None:  # someone changed the demo password: the ordinary sign-in form
        return redirect(url_for("desk.login"))
    session.clear()
    login_user(staff)
    session.permanent = True
    return redirect(url_for("desk.queue"))


@bp.get("/api/<key>/messages")
def messages(key: str):
    """Everything in the pane, oldest first: the driver's own actions and what reached the phone."""
    state = _state()
    phone = state.phone(key)
    wechat, sms = state.sandbox.wechat, state.sandbox.sms
    with state.lock:
        shown = list(phone.sent)
    shown += [_wechat_message(m) for m in wechat.sent_to(phone.openid)]
    shown += [{"from": "sms", "kind": "sms", "text": s.text, "at": s.at} for s in sms.sent_to(phone.number)]
    shown.sort(key=lambda m: m["at"])
    return jsonify({"messages": shown, "following": wechat.allowance(phone.openid).following})


@bp.post("/api/<key>/text")
def text(key: str):
    content = str((request.get_json(silent=True) or {}).get("text") or "").strip()
    if not content:
        return _refused("type something first")
    if len(content) > 600:
        return _refused("at most 600 characters")
    return _push(key, {"kind": "text", "text": content}, lambda w, openid: w.post_text(openid, content))


@bp.post("/api/<key>/click")
def click(key: str):
    menu_key = str((request.get_json(silent=True) or {}).get("key") or "")
    names = {button["key"]: button["name"] for button in MENU["button"]}
    if menu_key not in names:
        return _refused("not a menu item")
    return _push(key, {"kind": "click", "text": names[menu_key]}, lambda w, openid: w.post_click(openid, menu_key))


@bp.post("/api/<key>/follow")
def follow(key: str):
    return _push(key, {"kind": "event", "text": "关注公众号"}, lambda w, openid: w.post_event(openid, "subscribe"))


@bp.post("/api/<key>/photo")
def photo(key: str):
    """A photo from the file picker (multipart ``photo``) or a bundled sample (JSON ``sample``)."""
    state = _state()
    phone = state.phone(key)
    upload = request.files.get("photo")
    if upload is not None:
        data = upload.read(MAX_PHOTO_BYTES + 1)
        if not data or len(data) > MAX_PHOTO_BYTES:
            return _refused("a photo of at most 10 MB")
        content_type = upload.mimetype or "image/jpeg"
    else:
        name = str((request.get_json(silent=True) or {}).get("sample") or "")
        if name not in SAMPLE_PHOTOS:
            return _refused("not a sample photo")
        # Each phone's samples are its own pictures (the same sample twice is a true duplicate).
        data, content_type = _camera_photo(f"sample-{name}-{phone.key}"), "image/jpeg"
    wechat = state.sandbox.wechat
    with state.lock:
        phone.photos += 1
        media_id = f"sandbox-{phone.key}-{phone.photos}-{int(time.time())}"
    wechat.add_media(media_id, data, content_type)
    return _push(key, {"kind": "image", "text": "[图片]", "image": f"{wechat.base_url}/pic/{media_id}"},
                 lambda w, openid: w.post_image(openid, media_id))


@bp.post("/api/<key>/location")
def location(key: str):
    preset = str((request.get_json(silent=True) or {}).get("preset") or "")
    if preset not in LOCATIONS:
        return _refused("not a preset place")
    lat, lng, label = LOCATIONS[preset]
    return _push(key, {"kind": "location", "text": f"[位置] {label}"},
                 lambda w, openid: w.post_location(openid, lat, lng, label))


@bp.post("/api/<key>/scan")
def scan(key: str):
    """Scan the join QR code the other phone shows (its newest one)."""
    state = _state()
    phone = state.phone(key)
    wechat = state.sandbox.wechat
    ticket = _newest_qr_ticket(wechat, state.other(phone).openid)
    scene = wechat.scene_for_ticket(ticket) if ticket else None
    if scene is None:
        return _refused("the other phone shows no QR code yet")
    following = wechat.allowance(phone.openid).following
    return _push(key, {"kind": "scan", "text": "[扫码] 对方的二维码"},
                 lambda w, openid: w.post_scan(openid, scene, subscribed=following, ticket=ticket))


def _push(key: str, shown: dict[str, Any], send) -> Any:
    state = _state()
    phone = state.phone(key)
    with state.lock:
        phone.sent.append({"from": "me", **shown, "at": time.time()})
    response = send(state.sandbox.wechat, phone.openid)
    return jsonify({"status": response.status_code}), (200 if response.ok else 502)


def _refused(reason: str):
    return jsonify({"error": reason}), 400


def _wechat_message(record: dict[str, Any]) -> dict[str, Any]:
    card = record.get("card")
    if card is not None:
        rows = [[console.KEYWORD_LABELS.get(name, name), value] for name, value in card.shown.items()]
        return {"from": "account", "kind": "card", "title": "事故快处通知", "rows": rows, "at": record["time"]}
    text = record.get("text")
    message = {"from": "account", "kind": "text" if text is not None else record["msgtype"],
               "text": text if text is not None else f"[{record['msgtype']}]", "at": record["time"]}
    link = _QR_LINK.search(text or "")
    if link:
        message["qr"] = link.group(0)
    return message


def _newest_qr_ticket(wechat, openid: str) -> str | None:
    for record in reversed(wechat.sent_to(openid)):
        link = _QR_LINK.search(record["text"] or "")
        if link:
            return (parse_qs(urlsplit(link.group(0)).query).get("ticket") or [None])[0]
    return None


def _camera_photo(seed: str) -> bytes:
    """A sharp 1600x1200 JPEG taken now, its EXIF time on the clock of a phone in China (as cameras write it)."""
    return make_jpeg(seed, 1600, 1200, taken_at=datetime.now(CAMERA_ZONE).replace(tzinfo=None))


def _demo_username() -> str:
    from accident_service.sandbox.launcher import DEMO_USERNAME

    return DEMO_USERNAME
