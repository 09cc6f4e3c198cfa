"""Per-sender limits on the pushes that cost downloads and checks: photos, files, voice, video.

Nothing a driver sent is refused and the platform is never made to retry: a push over
the limit is answered "success" and stored like any other, and only its processing waits
(``next_attempt_at``) until the sender is within the limits again. A 429 would be read
by the platform as a failure (retries, then "service unavailable" shown to the driver),
and dropping the push would lose evidence. A real driver sends a handful of photos; the
defaults (WECHAT_MEDIA_PER_MINUTE, WECHAT_MEDIA_PER_HOUR) are far above that.

Moving windows: with REDIS_URL, in Redis through the ``limits`` library (the engine under
Flask-Limiter; its Lua scripts keep the windows atomic and shared by every web process and
host), one round trip per limit. Without it, in each process's memory (:class:`_ProcessWindows`):
``limits``' memory storage starts a timer thread every 10 ms that sweeps every sender's
entries, which costs a web worker a large share of a core with thousands of senders.
Flask-Limiter itself is not used: its request hooks run on every request of the app
(45-80 µs of CPU each, measured, on a webhook that needs about a millisecond) and its answer
to a breach is a refusal, where this limit defers. When Redis does not answer, pushes are
not held back: the limit protects capacity, never at the cost of a push.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
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
    """The limits for one app; :meth:`defer_until` is asked once per push."""

    def __init__(self, settings: Settings) -> None:
        self._limits = [limit(count) for count, limit in ((settings.WECHAT_MEDIA_PER_MINUTE, RateLimitItemPerMinute),
                                                          (settings.WECHAT_MEDIA_PER_HOUR, RateLimitItemPerHour))
                        if count]
        self._windows = _RedisWindows(settings.REDIS_URL) if settings.REDIS_URL else _ProcessWindows()

    def defer_until(self, msg_type: str, openid: str, now: datetime) -> datetime | None:
        """When to start processing a costly push over its sender's limits; None to start as usual.

        A push within them is counted. ``now`` is the service's clock; the wait is measured
        on the windows' own (wall) clock and added to it.
        """
        if not self._limits or msg_type not in COSTLY_TYPES:
            return None
        try:
            wait = self._windows.wait_or_count(self._limits, openid)
        except Exception as exc:  # the windows' store is down: hold nothing back rather than fail the push
            log.warning("intake limits unavailable (%s); push not held back", type(exc).__name__)
            return None
        return now + timedelta(seconds=max(1.0, wait)) if wait else None


class _RedisWindows:
    def __init__(self, redis_url: str) -> None:
        uri = "redis+unix://" + redis_url.removeprefix("unix://") if redis_url.startswith("unix://") else redis_url
        self._strategy = MovingWindowRateLimiter(storage_from_string(
            uri, key_prefix="accident-service-limits", socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS))

    def wait_or_count(self, limits: Sequence[RateLimitItem], openid: str) -> float:
        """Seconds until the sender is within every limit again, or 0.0 after counting the push."""
        for limit in limits:  # a breach of a later limit leaves the earlier ones counted: a slight overcount
            if not self._strategy.hit(limit, SCOPE, openid):
                return self._strategy.get_window_stats(limit, SCOPE, openid).reset_time - time.time()
        return 0.0


class _ProcessWindows:
    """Moving windows in this process, without a thread: the times of each sender's counted pushes.

    Senders are kept in the order they were last counted; those quiet for the longest
    window are dropped from the front, a few at a time, as others are counted.
    """

    def __init__(self) -> None:
        self._times: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def wait_or_count(self, limits: Sequence[RateLimitItem], openid: str) -> float:
        """Seconds until the sender is within every limit again, or 0.0 after counting the push."""
        now = time.time()
        with self._lock:
            times = self._times.pop(openid, None) or collections.deque(maxlen=max(lim.amount for lim in limits))
            self._times[openid] = times  # the most recently seen sender goes last
            waits = [times[-limit.amount] + limit.get_expiry() - now for limit in limits
                     if len(times) >= limit.amount and times[-limit.amount] > now - limit.get_expiry()]
            if waits:
                return max(waits)
            times.append(now)
            longest = max(limit.get_expiry() for limit in limits)
            for sender in list(itertools.islice(self._times, 16)):
                if self._times[sender][-1] > now - longest:
                    break  # the front is the quietest: everyone after it is more recent
                del self._times[sender]
        return 0.0
