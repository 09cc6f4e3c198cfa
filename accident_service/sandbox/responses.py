"""What the emulated API answers: HTTP status, content type and body, and the platform's error codes.

The errmsg texts are the platform's (全局返回码, and the texts developers
report for 47003 and 45009), so logs read as they would in production.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

JSON_TYPE = "application/json; encoding=utf-8"
ERRMSG = {
    0: "ok", -1: "system error", 40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type", 40003: "invalid openid", 40007: "invalid media_id", 40013: "invalid appid",
    40037: "invalid template_id", 40053: "invalid action info", 40066: "invalid url",
    40125: "invalid appsecret", 41001: "access_token missing", 42001: "access_token expired",
    43002: "require POST method", 43004: "require subscribe", 44002: "empty post data",
    45009: "reach max api daily quota limit", 45015: "response out of time limit or subscription is canceled",
    45047: "out of response count limit", 45067: "clientmsgid size out of limit", 47001: "data format error",
    47003: "argument invalid!",
}


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

    @property
    def errcode(self) -> int | None:
        """The JSON body's errcode (None for bytes such as media, or a body without one)."""
        if self.content_type != JSON_TYPE:
            return None
        return json.loads(self.body).get("errcode")
