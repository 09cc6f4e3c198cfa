"""Access tokens as the platform issues them (WECHAT.md §4), on an injectable clock.

``cgi-bin/token`` (GET): every call issues a new token; the ones before it
keep working for a grace period (about 5 minutes) and then answer 40001.
2000 calls a day, then 45009.

``cgi-bin/stable_token`` (POST JSON ``{grant_type, appid, secret,
force_refresh}``), a separate family: neither endpoint's calls affect the
other's tokens, and both kinds work on the API. From 获取稳定版接口调用凭据
(getStableAccessToken):

* normal mode returns the current token with its remaining ``expires_in``;
  within the last 5 minutes of its life a call gets a new token while the old
  one keeps working until it expires ("普通模式下平台会提前5分钟更新
  access_token", "新旧access_token都可用"), so ``expires_in`` is never below 300;
* ``force_refresh`` invalidates the current token and returns a new one;
  "强制刷新模式每天限用20次且需间隔30秒": the 21st call of a day (Beijing
  date) answers 45009, and a call within 30 s of the last refresh "不会刷新":
  it answers the current token as normal mode does. Every force_refresh call
  counts towards the 20 (the stricter reading of "限用20次").
* GET answers 43002; a body that is not a JSON object, or a force_refresh
  that is not a boolean, answers 47001.

Not thread-safe on its own: PlatformApi calls it under its lock.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from accident_service.sandbox.responses import ApiResponse

PLATFORM_ZONE = ZoneInfo("Asia/Shanghai")  # daily quotas reset at midnight, Beijing time
TOKEN_DAILY_QUOTA = 2000
STABLE_ROTATE_BEFORE_SECONDS = 300
FORCE_REFRESH_DAILY_LIMIT = 20
FORCE_REFRESH_MIN_INTERVAL_SECONDS = 30


@dataclass
class _Token:
    family: str  # "token" (cgi-bin/token) or "stable" (cgi-bin/stable_token)
    expires_at: float
    superseded_at: float | None = None  # cgi-bin/token: a newer token was issued
    revoked: bool = False  # stable_token: invalidated by force_refresh


class TokenIssuer:
    def __init__(self, appid: str, secret: str, clock: Callable[[], float], *, ttl_seconds: int = 7200,
                 grace_seconds: float = 300, daily_quota: int = TOKEN_DAILY_QUOTA) -> None:
        self.appid = appid
        self.secret = secret
        self.ttl_seconds = ttl_seconds
        self.grace_seconds = grace_seconds
        self.daily_quota = daily_quota
        self._clock = clock
        self._tokens: dict[str, _Token] = {}
        self._stable_current: str | None = None
        self._last_force_refresh_at: float | None = None
        self._calls_by_day: Counter[tuple[str, date]] = Counter()
        self.force_refreshes = 0  # force_refresh calls that issued a new token

    def expire_all(self) -> None:
        now = self._clock()
        for issued in self._tokens.values():
            issued.expires_at = min(issued.expires_at, now - 1)

    def check(self, token: str | None) -> int | None:
        """The errcode a call with ``token`` gets (41001, 40001, 42001), or None when it is valid."""
        if not token:
            return 41001
        issued = self._tokens.get(token)
        now = self._clock()
        if issued is None or issued.revoked:
            return 40001
        if issued.superseded_at is not None and now > issued.superseded_at + self.grace_seconds:
            return 40001
        if now > issued.expires_at:
            return 42001
        return None

    def token(self, query: dict[str, str]) -> ApiResponse:
        """``GET cgi-bin/token``."""
        refusal = self._credentials_problem(query.get("grant_type"), query.get("appid"), query.get("secret"))
        if refusal:
            return ApiResponse.error(refusal)
        if self._over_quota("token", self.daily_quota):
            return ApiResponse.error(45009)
        now = self._clock()
        for issued in self._tokens.values():
            if issued.family == "token" and issued.superseded_at is None:
                issued.superseded_at = now
        return self._issue("token", now)

    def stable_token(self, method: str, body: bytes) -> ApiResponse:
        """``POST cgi-bin/stable_token``."""
        if method != "POST":
            return ApiResponse.error(43002)
        if not body.strip():
            return ApiResponse.error(44002)
        try:
            payload: Any = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return ApiResponse.error(47001)
        if not isinstance(payload, dict) or not isinstance(payload.get("force_refresh", False), bool):
            return ApiResponse.error(47001)
        refusal = self._credentials_problem(payload.get("grant_type"), payload.get("appid"), payload.get("secret"))
        if refusal:
            return ApiResponse.error(refusal)
        now = self._clock()
        if payload.get("force_refresh"):
            if self._over_quota("force_refresh", FORCE_REFRESH_DAILY_LIMIT):
                return ApiResponse.error(45009)
            last = self._last_force_refresh_at
            if last is None or now - last >= FORCE_REFRESH_MIN_INTERVAL_SECONDS:
                self._last_force_refresh_at = now
                self.force_refreshes += 1
                if self._stable_current is not None:
                    self._tokens[self._stable_current].revoked = True
                return self._issue_stable(now)
        current = self._tokens.get(self._stable_current or "")
        if current is None or current.revoked or current.expires_at - now <= STABLE_ROTATE_BEFORE_SECONDS:
            return self._issue_stable(now)  # the old one keeps working until it expires
        return ApiResponse.json({"access_token": self._stable_current, "expires_in": int(current.expires_at - now)})

    def _issue_stable(self, now: float) -> ApiResponse:
        response = self._issue("stable", now)
        self._stable_current = json.loads(response.body)["access_token"]
        return response

    def _issue(self, family: str, now: float) -> ApiResponse:
        token = secrets.token_urlsafe(96)[:128]
        self._tokens[token] = _Token(family, expires_at=now + self.ttl_seconds)
        return ApiResponse.json({"access_token": token, "expires_in": self.ttl_seconds})

    def _credentials_problem(self, grant_type: Any, appid: Any, secret: Any) -> int | None:
        if grant_type != "client_credential":
            return 40002
        if appid != self.appid:
            return 40013
        if secret != self.secret:
            return 40125
        return None

    def _over_quota(self, what: str, limit: int) -> bool:
        today = datetime.fromtimestamp(self._clock(), PLATFORM_ZONE).date()
        self._calls_by_day[(what, today)] += 1
        return self._calls_by_day[(what, today)] > limit
