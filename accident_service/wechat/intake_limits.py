"""Per-sender limits on the pushes that cost downloads and checks: photos, files, voice, video.

Nothing a driver sent is refused and the platform is never made to retry: a push over
the limit is answered "success" and stored like any other, and only its processing waits
(``next_attempt_at``) until the sender is within the limits again. A 429 would be read
by the platform as a failure (retries, then "service unavailable" shown to the driver),
and dropping the push would lose evidence. A real driver sends a handful of photos; the
defaults (WECHAT_MEDIA_PER_MINUTE, WECHAT_MEDIA_PER_HOUR) are far above that.

Moving windows, and a push over them takes its turn in them: it is counted at the time its processing
is due, so the pushes held back are spread at the limits' pace (1,000 photos at once, with 30 a minute
and 300 an hour allowed: 30 in each of the first ten minutes, then 300 in the next hour, and so on), not
all let through together once the first minute has passed. A push that is not stored after all (the
platform's retry of one stored already, a reused signature, the database down) gives its turn back.
With REDIS_URL the windows are in Redis, shared by every web process and host: one script, one round
trip, every limit at once, on Redis's clock. ``limits`` (Flask-Limiter's engine) counts only at the
present, so it cannot hold a turn in the future: the script is this module's. Without REDIS_URL they are
in each process's memory (:class:`_ProcessWindows`, on the monotonic clock; ``limits``' memory storage
also started a timer thread every 10 ms that swept every sender, a large share of a web worker's core
with thousands of senders). Flask-Limiter itself is not used: its request hooks run on every request of
the app (45-80 µs of CPU each, measured, on a webhook that needs about a millisecond) and its answer to
a breach is a refusal, where this limit defers. When Redis does not answer, pushes are not held back:
the limit protects capacity, never at the cost of a push.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from accident_service.settings import Settings

log = logging.getLogger(__name__)
#: Message types whose processing downloads media (wechatpy's names).
COSTLY_TYPES = frozenset({"image", "voice", "video", "shortvideo", "file"})
KEY_PREFIX = "accident-service-limits:wechat-media"
EXTENSION_KEY = "accident_service.intake_limits"
#: Redis must answer fast: the webhook waits for it (the platform gives 5 s in all).
REDIS_TIMEOUT_SECONDS = 0.25


#: A moving window: at most ``amount`` pushes processed in any ``seconds``.
Window = tuple[int, float]


#: A wait shorter than this is no wait: the push is processed at once (the sweep would take it a few seconds on).
SHORTEST_WAIT_SECONDS = 1.0
#: A sender's record keeps this many turns beyond the largest limit's amount (the most a window looks back):
#: a turn given back (a push found stored already) must not have pushed out one still counted. Room for that
#: many of one sender's turns in flight at once, each from its turn to its push's store (milliseconds).
TURNS_IN_FLIGHT = 64


def _turns_kept(limits: Sequence[Window]) -> int:
    return max(amount for amount, _ in limits) + TURNS_IN_FLIGHT


@dataclass(frozen=True)
class Turn:
    """A push's turn in its sender's windows: when its processing may start (None: now), and how to give it back."""

    not_before: datetime | None
    openid: str
    token: Any


class IntakeLimits:
    """The limits for one app: :meth:`take_turn` once per push, :meth:`give_back` when it was not stored after all."""

    def __init__(self, settings: Settings) -> None:
        self._limits: list[Window] = [(count, seconds) for count, seconds in (
            (settings.WECHAT_MEDIA_PER_MINUTE, 60.0), (settings.WECHAT_MEDIA_PER_HOUR, 3600.0)) if count]
        self._windows = (_RedisWindows(settings.REDIS_URL, settings.SECRET_KEY) if settings.REDIS_URL
                         else _ProcessWindows())

    def take_turn(self, msg_type: str, openid: str, now: datetime) -> Turn | None:
        """A costly push's turn, counted; None for a push the limits do not count.

        ``now`` is the service's clock; the wait is measured on the windows' own and added to it.
        """
        if not self._limits or msg_type not in COSTLY_TYPES:
            return None
        try:
            wait, token = self._windows.take_turn(self._limits, openid)
        except Exception as exc:  # the windows' store is down: hold nothing back rather than fail the push
            log.warning("intake limits unavailable (%s); push not held back", type(exc).__name__)
            return None
        return Turn(now + timedelta(seconds=wait) if wait >= SHORTEST_WAIT_SECONDS else None, openid, token)

    def give_back(self, turn: Turn | None) -> None:
        """The push did not count after all; its turn is free for the sender's next one (a later push keeps the
        turn it took: it waits a little longer than it had to, never less)."""
        if turn is None:
            return
        try:
            self._windows.give_back(turn.openid, turn.token)
        except Exception as exc:  # counted once too often: the sender's next push waits a little longer
            log.warning("intake limits unavailable (%s); a turn not given back", type(exc).__name__)


#: KEYS[1]: one sender's turns, a sorted set scored by when each counted push is (or was) due.
#: ARGV: this push's member name, how many turns the record keeps, then each window's amount and seconds.
#: Returns the wait, as text (Redis would cut a number to an integer). Redis's clock: every web host's is
#: the same one.
_TAKE_TURN = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local turn, longest = now, 0
for i = 3, #ARGV, 2 do
  local amount, seconds = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  longest = math.max(longest, seconds)
  local nth = redis.call('ZREVRANGE', KEYS[1], amount - 1, amount - 1, 'WITHSCORES')
  if nth[2] then turn = math.max(turn, tonumber(nth[2]) + seconds) end
end
redis.call('ZADD', KEYS[1], turn, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[2]) + 1))
redis.call('PEXPIRE', KEYS[1], math.ceil((turn - now + longest) * 1000))
return tostring(turn - now)
"""


class _RedisWindows:
    """The windows in Redis, shared by every web process; a sender's key names them by a keyed hash of their
    openid (SECRET_KEY, the same in every instance), not the openid: the logs mask openids, and Redis is read
    by other tools (an operator's pass found them in the key names)."""

    def __init__(self, redis_url: str, secret_key: str) -> None:
        import redis

        self._client = redis.Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                            socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        self._take_turn = self._client.register_script(_TAKE_TURN)
        self._hash_key = hashlib.sha256(f"intake-limits:{secret_key}".encode()).digest()

    def key(self, openid: str) -> str:
        return f"{KEY_PREFIX}:{hashlib.blake2b(openid.encode(), key=self._hash_key, digest_size=16).hexdigest()}"

    def take_turn(self, limits: Sequence[Window], openid: str) -> tuple[float, str]:
        """Seconds until the push's turn in the sender's windows (0.0: now), the turn counted; and its name."""
        member = uuid.uuid4().hex
        wait = float(self._take_turn(keys=[self.key(openid)],
                                     args=[member, _turns_kept(limits), *itertools.chain.from_iterable(limits)]))
        return max(0.0, wait), member

    def give_back(self, openid: str, member: str) -> None:
        self._client.zrem(self.key(openid), member)


class _ProcessWindows:
    """Moving windows in this process, without a thread: when each of a sender's counted pushes is due.

    Senders are kept in the order they were last counted; those quiet for the longest window are
    dropped from the front, a few at a time, as others are counted.
    """

    def __init__(self) -> None:
        self._turns: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def take_turn(self, limits: Sequence[Window], openid: str) -> tuple[float, float]:
        """Seconds until the push's turn in the sender's windows (0.0: now), the turn counted; and the turn."""
        now = time.monotonic()  # a step of the wall clock must not hold pushes back, nor let them through
        longest = max(seconds for _, seconds in limits)
        with self._lock:
            turns = self._turns.pop(openid, None) or collections.deque(maxlen=_turns_kept(limits))
            self._turns[openid] = turns  # the most recently seen sender goes last
            # Turns are taken in order, so the amount-th latest is the one the window must have passed.
            turn = max([now, *(turns[-amount] + seconds for amount, seconds in limits if len(turns) >= amount)])
            turns.append(turn)
            for sender in list(itertools.islice(self._turns, 16)):
                last = self._turns[sender][-1] if self._turns[sender] else now - longest
                if last <= now - longest:
                    del self._turns[sender]  # quiet for a whole window
                elif last > now:  # a push still waiting for its turn: looked at again after the others
                    self._turns[sender] = self._turns.pop(sender)
                else:
                    break  # the front is the quietest: everyone after it is more recent
        return turn - now, turn

    def give_back(self, openid: str, turn: float) -> None:
        with self._lock:
            turns = self._turns.get(openid)
            if turns is not None and turn in turns:
                turns.remove(turn)
                if not turns:  # nothing left to hold them back: forgotten, as a quiet sender is
                    del self._turns[openid]
