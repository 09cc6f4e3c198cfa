"""Scene QR codes (WECHAT.md §3 "Scene QR") and the custom menu's limits (§7).

Not thread-safe on its own: PlatformApi calls it under its lock.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from accident_service.sandbox.images import make_placeholder_qr
from accident_service.sandbox.responses import ApiResponse

QR_MAX_EXPIRE = 2_592_000
QR_DEFAULT_EXPIRE = 60  # expire_seconds omitted: the code dies within about a minute
QR_ACTIONS = ("QR_SCENE", "QR_STR_SCENE", "QR_LIMIT_SCENE", "QR_LIMIT_STR_SCENE")


class QrCodes:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.latest_ticket: dict[str, str] = {}  # scene -> the latest ticket made for it
        self._tickets: dict[str, dict[str, Any]] = {}

    def scene_for_ticket(self, ticket: str) -> str | None:
        info = self._tickets.get(ticket)
        return info["scene"] if info else None

    def create(self, payload: dict[str, Any]) -> ApiResponse:
        """``POST qrcode/create``."""
        action = payload.get("action_name")
        scene = ((payload.get("action_info") or {}).get("scene") or {})
        value = scene.get("scene_str") if action in ("QR_STR_SCENE", "QR_LIMIT_STR_SCENE") else scene.get("scene_id")
        if action not in QR_ACTIONS or value in (None, ""):
            return ApiResponse.error(40053)
        if isinstance(value, str) and len(value) > 64:
            return ApiResponse.error(40053)
        ticket = "gQ" + secrets.token_urlsafe(36)
        result: dict[str, Any] = {"ticket": ticket, "url": "http://weixin.qq.com/q/" + secrets.token_urlsafe(16)}
        expires = None
        if "LIMIT" not in action:
            expire_seconds = int(payload.get("expire_seconds") or QR_DEFAULT_EXPIRE)
            if not 1 <= expire_seconds <= QR_MAX_EXPIRE:
                return ApiResponse.error(40053)
            result["expire_seconds"] = expire_seconds
            expires = self._clock() + expire_seconds
        self.latest_ticket[str(value)] = ticket
        self._tickets[ticket] = {"scene": str(value), "expires_at": expires, "url": result["url"]}
        return ApiResponse.json(result)

    def show(self, ticket: str) -> ApiResponse:
        """``GET showqrcode?ticket=``: the image (no token needed)."""
        if ticket not in self._tickets:
            return ApiResponse(404, "text/plain", b"invalid ticket")
        return ApiResponse(200, "image/png", make_placeholder_qr(self._tickets[ticket]["scene"]))


def menu_problem(payload: dict[str, Any]) -> tuple[int, str] | None:
    """(errcode, errmsg) when a ``menu/create`` body breaks the menu's limits, else None."""
    buttons = payload.get("button")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
        return 40016, "invalid button size"
    for button in buttons:
        subs = button.get("sub_button") or []
        if len(subs) > 5:
            return 40023, "invalid sub button size"
        for item in [button, *subs]:
            if len(str(item.get("key", "")).encode("utf-8")) > 128:
                return 40019, "invalid button key size"
    return None
