"""Temporary media (WECHAT.md §6): ``media/get`` and the PicUrl of image pushes.

Not thread-safe on its own: PlatformApi calls it under its lock.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from accident_service.sandbox.images import make_jpeg
from accident_service.sandbox.responses import ERRMSG, ApiResponse


@dataclass
class _Media:
    content_type: str
    produce: Callable[[], bytes]
    send_length: bool = True
    cached: bytes | None = field(default=None, repr=False)


class MediaStore:
    def __init__(self) -> None:
        self._media: dict[str, _Media] = {}

    def add(self, media_id: str | None, data: bytes | None, content_type: str, send_length: bool) -> str:
        media_id = media_id or "media-" + secrets.token_urlsafe(12)
        produce = (lambda: data) if data is not None else (lambda: make_jpeg(media_id))
        self._media[media_id] = _Media(content_type, produce, send_length)
        return media_id

    def remove(self, media_id: str) -> None:
        self._media.pop(media_id, None)

    def picture(self, media_id: str) -> ApiResponse:
        """The PicUrl: the bytes without a token, HTTP 404 for unknown media (a CDN, not the API)."""
        if media_id not in self._media:
            return ApiResponse(404, "text/plain", b"not found")
        return self.get(media_id)

    def get(self, media_id: str) -> ApiResponse:
        """``GET media/get``: the bytes, or the platform's JSON error with HTTP 200."""
        media = self._media.get(media_id)
        if media is None:
            return ApiResponse(200, "text/plain", json.dumps({"errcode": 40007, "errmsg": ERRMSG[40007]}).encode())
        if media.cached is None:
            media.cached = media.produce()
        return ApiResponse(200, media.content_type, media.cached, send_length=media.send_length)
