"""Per-sender limits on the pushes that cost downloads and checks: photos, files, voice, video.

Nothing a driver sent is refused and the platform is never made to retry: a push over
the limit is answered "success" and stored like any other, and only its processing waits
(``next_attempt_at``) until the sender is within the limits again. A 429 would be read
by the platform as a failure (retries, then "service unavailable" shown to the driver),
and dropping the push would lose evidence. A real driver sends a handful of photos; the
defaults (WECHAT_MEDIA_PER_MINUTE, WECHAT_MEDIA_PER_HOUR) are far above that.

The counting is the ``limits`` library's moving window, the engine Flask-Limiter runs on,
used directly: Flask-Limiter's request hooks run on every request of the app (measured at
45-80 µs of CPU each, on a webhook that needs about a millisecond) and its answer to a
breach is a refusal, where this limit defers. Counts live in Redis when REDIS_URL is set
(shared by every web process), else in each process's memory. When Redis does not answer,
pushes are not held back: the limit protects capacity, never at the cost of a push.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from limits import RateLimitItemPerHour, RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from accident_service.settings import Settings

log = logging.getLogger(__name__)
#: Message types whose processing downloads media (wechatpy's names).
COSTLY_TYPES = frozenset({"image", "voice", "video", "shortvideo", "file"})
SCOPE = "wechat-media"
EXTENSION_KEY = "accident_service.intake_limits"
#: Redis must answer fast: the webhook waits for it (the platform gives 5 s in all).
REDIS_TIMEOUT_SECONDS = 0.25


class IntakeLimits:
    """The limits for one app; :meth:`defer_until` is asked once per costly push."""

    def __init__(self, settings: Settings) -> None:
        self._limits = [limit(count) for count, limit in ((settings.WECHAT_MEDIA_PER_MINUTE, RateLimitItemPerMinute),
                                                          (settings.WECHAT_MEDIA_PER_HOUR, RateLimitItemPerHour))
                        if count]
        self._strategy = MovingWindowRateLimiter(_storage(settings.REDIS_URL)) if self._limits else None

    def defer_until(self, msg_type: str, openid: str, now: datetime) -> datetime | None:
        """When to start processing a push over its sender's limits; None to start as usual.

        Counts the push when it is within them. ``now`` is the service's clock; the wait is
        measured on the limit's own (wall) clock and added to it.
        """
        if self._strategy is None or msg_type not in COSTLY_TYPES:
            return None
        try:
            waits = [self._strategy.get_window_stats(item, SCOPE, openid).reset_time - time.time()
                     for item in self._limits if not self._strategy.test(item, SCOPE, openid)]
            if waits:
                return now + timedelta(seconds=max(1.0, *waits))
            for item in self._limits:
                self._strategy.hit(item, SCOPE, openid)
        except Exception as exc:  # the counts' store is down: hold nothing back rather than fail the push
            log.warning("intake limits unavailable (%s); push not held back", type(exc).__name__)
        return None


def _storage(redis_url: str):
    if not redis_url:
        return storage_from_string("memory://")
    uri = "redis+unix://" + redis_url.removeprefix("unix://") if redis_url.startswith("unix://") else redis_url
    return storage_from_string(uri, key_prefix="accident-service-limits", socket_timeout=REDIS_TIMEOUT_SECONDS,
                               socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
