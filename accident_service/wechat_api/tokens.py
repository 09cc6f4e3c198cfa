"""One shared access token per appid, refreshed by exactly one process at a time.

Every ``cgi-bin/token`` call issues a new token and the previous one survives
only about five minutes, so processes that refresh on their own invalidate one
another (WECHAT.md §4). A :class:`TokenStore` keeps the token where all
processes see it and lets only the holder of a refresh lock fetch a new one;
the others wait (bounded) and read the result.

``get_token(fetch, stale=...)``: ``fetch`` returns ``(access_token,
expires_in)`` and raises whatever the caller wants to surface (the API client
raises ``WeChatApiError``). ``stale`` is the token the platform just rejected:
it is never handed out again, and since every caller that saw it passes it,
one refresh serves them all.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from accident_service.clock import Clock, SystemClock

log = logging.getLogger(__name__)
Fetch = Callable[[], tuple[str, int]]

SAFETY_MARGIN = timedelta(minutes=5)
#: How long a process trusts the shared token it last read before reading the shared store again. A
#: token replaced by an ordinary refresh still works about 5 minutes (WECHAT.md §4), so a process that
#: missed it sends with the old one meanwhile; one replaced by a forced refresh (after the platform
#: rejected it) fails once in each process that still trusts it, comes back as ``stale`` and is read again
#: at once. Every API call (each reply, each photo download) used to read it: a transaction each.
LOCAL_TRUST = timedelta(seconds=30)
LOCK_SECONDS = 30
WAIT_SECONDS = 15.0
POLL_SECONDS = 0.05


class TokenUnavailable(RuntimeError):
    """No usable token could be obtained in time (another refresher holds the lock)."""


class TokenStore(Protocol):
    def get_token(self, fetch: Fetch, *, stale: str | None = None) -> str:
        """A token valid for at least the safety margin and different from ``stale`` (unless ``fetch`` hands that
        one back: the platform's current token, too young to replace by force).

        Calls ``fetch`` at most once, and only while holding the refresh lock.
        Raises what ``fetch`` raises, or TokenUnavailable after waiting in vain.
        """


@dataclass(frozen=True)
class _Cached:
    token: str
    expires_at: datetime

    def usable(self, now: datetime, stale: str | None, margin: timedelta) -> bool:
        return self.token != stale and self.expires_at - margin > now

    def still_valid(self, now: datetime, stale: str | None) -> bool:
        return self.token != stale and self.expires_at > now


def _expiry(now: datetime, expires_in: int) -> datetime:
    return now + timedelta(seconds=max(int(expires_in), 0))


class LocalTokenStore:
    """Process-local store for scripts and single-process sandboxes only.

    Several processes each holding one of these invalidate each other's
    tokens; services use DatabaseTokenStore or RedisTokenStore.
    """

    def __init__(self, clock: Clock | None = None, *, margin: timedelta = SAFETY_MARGIN) -> None:
        self._clock = clock or SystemClock()
        self._margin = margin
        self._lock = threading.Lock()
        self._cached: _Cached | None = None

    def get_token(self, fetch: Fetch, *, stale: str | None = None) -> str:
        with self._lock:
            now = self._clock.now()
            if self._cached and self._cached.usable(now, stale, self._margin):
                return self._cached.token
            token, expires_in = fetch()
            self._cached = _Cached(token, _expiry(now, expires_in))
            return token


class _SharedTokenStore:
    """The wait loop of a store shared by processes; subclasses read, lock and refresh.

    ``_try_lock(now)`` returns an ownership mark or None when another process
    holds the lock; ``_refresh_holding(mark, fetch, stale)`` fetches (unless
    the token was refreshed meanwhile), stores, and releases the lock.
    """

    _appid: str
    _clock: Clock
    _margin: timedelta
    _wait_seconds: float
    _poll_seconds: float
    #: The token this process last read from the shared store, and when (trusted for LOCAL_TRUST).
    _last_read: tuple[_Cached, datetime] | None = None
    #: The latest token this process read or fetched: what it sends with while the shared store is down.
    _held: _Cached | None = None
    _held_lock = threading.Lock()  # for every store: held only to compare two expiries

    def get_token(self, fetch: Fetch, *, stale: str | None = None) -> str:
        last_read, now = self._last_read, self._clock.now()
        # Trusted from its reading on, not before: a wall clock set back (NTP stepping) would stretch the window.
        if (last_read is not None and last_read[1] <= now < last_read[1] + LOCAL_TRUST
                and last_read[0].usable(now, stale, self._margin)):
            return last_read[0].token
        deadline = time.monotonic() + self._wait_seconds
        while True:
            now = self._clock.now()
            try:
                cached = self._read()
                if cached and cached.usable(now, stale, self._margin):
                    self._last_read = (cached, now)
                    self._hold(cached)
                    return cached.token
                lock = self._try_lock(now)
            except Exception as exc:  # the shared store does not answer (Redis down): not the platform's fault
                return self._held_through_outage(exc, now, stale)
            if lock is not None:
                fresh = self._refresh_holding(lock, fetch, stale)
                self._hold(fresh)
                self._last_read = None  # what it trusted may be the token just replaced: read the new one next
                return fresh.token
            # Someone else is refreshing: a token that is merely close to expiry still works meanwhile.
            if cached and cached.still_valid(now, stale):
                return cached.token
            if time.monotonic() >= deadline:
                raise TokenUnavailable(f"access token for {self._appid} is being refreshed elsewhere; gave up waiting")
            time.sleep(self._poll_seconds)

    def _hold(self, token: _Cached) -> None:
        """Keep the newest: a thread that read a token before another thread's refresh comes back after it."""
        with self._held_lock:
            if self._held is None or token.expires_at >= self._held.expires_at:
                self._held = token

    def _held_through_outage(self, error: Exception, now: datetime, stale: str | None) -> str:
        """The token this process last read or fetched, for as long as it lasts (about two hours) while the shared
        store is down; none held: TokenUnavailable, retried later like the platform's own outage. Refreshing
        without the store would invalidate the token every other process holds (WECHAT.md §4)."""
        held = self._held
        if held is not None and held.token == stale:
            self._held = self._last_read = None  # the platform rejected it: never handed out again
        elif held is not None and held.usable(now, stale, self._margin):
            log.warning("token store unavailable (%s): sending with the token this process holds",
                        type(error).__name__)
            # Trusted as if read now: the store is asked again after LOCAL_TRUST, not on every call (each
            # would wait out the store's timeout).
            self._last_read = (held, now)
            return held.token
        raise TokenUnavailable(f"the token store is unavailable ({type(error).__name__}) and this process holds "
                               f"no usable token for {self._appid}") from error

    def _read(self) -> _Cached | None:
        raise NotImplementedError

    def _try_lock(self, now: datetime) -> Any:
        raise NotImplementedError

    def _refresh_holding(self, lock: Any, fetch: Fetch, stale: str | None) -> _Cached:
        raise NotImplementedError


class DatabaseTokenStore(_SharedTokenStore):
    """The token in table ``wechat_token``, refresh lock in ``refresh_lock_until``.

    The lock is taken with a conditional UPDATE (or the INSERT of the first
    row, where the primary key settles races), committed before fetching, so
    it works across processes on PostgreSQL and SQLite alike. A crashed
    refresher's lock simply expires.
    """

    def __init__(self, session_factory: sessionmaker[Session], appid: str, clock: Clock | None = None, *,
                 margin: timedelta = SAFETY_MARGIN, lock_seconds: float = LOCK_SECONDS,
                 wait_seconds: float = WAIT_SECONDS, poll_seconds: float = POLL_SECONDS) -> None:
        self._session_factory = session_factory
        self._appid = appid
        self._clock = clock or SystemClock()
        self._margin = margin
        self._lock_ttl = timedelta(seconds=lock_seconds)
        self._wait_seconds = wait_seconds
        self._poll_seconds = poll_seconds

    def _model(self) -> Any:
        from accident_service.models import WechatToken  # the models module imports much; load it on use

        return WechatToken

    def _read(self) -> _Cached | None:
        model = self._model()
        with self._session_factory() as session:
            row = session.execute(select(model.access_token, model.expires_at)
                                  .where(model.appid == self._appid)).first()
            session.commit()
        if row is None or not row.access_token or row.expires_at is None:
            return None
        return _Cached(row.access_token, row.expires_at)

    def _try_lock(self, now: datetime) -> datetime | None:
        """Take the refresh lock; return its expiry (our ownership mark) or None if taken."""
        model = self._model()
        until = now + self._lock_ttl
        with self._session_factory() as session:
            result = session.execute(
                update(model)
                .where(model.appid == self._appid,
                       or_(model.refresh_lock_until.is_(None), model.refresh_lock_until < now))
                .values(refresh_lock_until=until)
                .execution_options(synchronize_session=False))
            if result.rowcount == 1:
                session.commit()
                return until
            exists = session.execute(select(model.appid).where(model.appid == self._appid)).first()
            if exists is not None:
                session.rollback()
                return None
            session.add(model(appid=self._appid, refresh_lock_until=until))
            try:
                session.commit()
            except IntegrityError:  # another process inserted the first row first: it holds the lock
                session.rollback()
                return None
            return until

    def _refresh_holding(self, lock: datetime, fetch: Fetch, stale: str | None) -> _Cached:
        try:
            now = self._clock.now()
            cached = self._read()
            # Between our read and our lock another process may have finished a refresh.
            if cached and cached.usable(now, stale, self._margin):
                fetched = None
            else:
                fetched = fetch()
        except BaseException:
            self._release(lock)
            raise
        if fetched is None:
            self._release(lock)
            return cached  # type: ignore[return-value]
        token, expires_in = fetched
        fresh = _Cached(token, _expiry(now, expires_in))
        self._store(lock, token, fresh.expires_at, now)
        return fresh

    def _store(self, lock: datetime, token: str, expires_at: datetime, now: datetime) -> None:
        model = self._model()
        with self._session_factory() as session:
            # Guarded by our lock mark: if our lock expired and someone else took over, their write wins.
            session.execute(
                update(model)
                .where(model.appid == self._appid, model.refresh_lock_until == lock)
                .values(access_token=token, expires_at=expires_at, refreshed_at=now, refresh_lock_until=None)
                .execution_options(synchronize_session=False))
            session.commit()

    def _release(self, lock: datetime) -> None:
        model = self._model()
        with self._session_factory() as session:
            session.execute(
                update(model)
                .where(model.appid == self._appid, model.refresh_lock_until == lock)
                .values(refresh_lock_until=None)
                .execution_options(synchronize_session=False))
            session.commit()


_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class RedisTokenStore(_SharedTokenStore):
    """The token in Redis (``<prefix><appid>:token``), lock with SET NX EX.

    The lock value is random and released only by its owner (compare-and-delete
    script), so an expired lock taken over by another process is never freed
    by the first one.
    """

    def __init__(self, redis_client: Any, appid: str, *, prefix: str = "accident_service:wechat:",
                 clock: Clock | None = None, margin: timedelta = SAFETY_MARGIN,
                 lock_seconds: int = LOCK_SECONDS, wait_seconds: float = WAIT_SECONDS,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self._redis = redis_client
        self._token_key = f"{prefix}{appid}:token"
        self._lock_key = f"{prefix}{appid}:lock"
        self._appid = appid
        self._clock = clock or SystemClock()
        self._margin = margin
        self._lock_seconds = int(lock_seconds)
        self._wait_seconds = wait_seconds
        self._poll_seconds = poll_seconds

    def _try_lock(self, now: datetime) -> str | None:
        """Take the refresh lock; return its random value (our ownership mark) or None if taken."""
        owner = secrets.token_hex(16)
        return owner if self._redis.set(self._lock_key, owner, nx=True, ex=self._lock_seconds) else None

    def _read(self) -> _Cached | None:
        raw = self._redis.get(self._token_key)
        if not raw:
            return None
        data = json.loads(raw)
        return _Cached(data["access_token"], datetime.fromtimestamp(data["expires_at"], UTC))

    def _refresh_holding(self, owner: str, fetch: Fetch, stale: str | None) -> _Cached:
        try:
            now = self._clock.now()
            cached = self._read()
            if cached and cached.usable(now, stale, self._margin):
                return cached
            token, expires_in = fetch()
            fresh = _Cached(token, _expiry(now, expires_in))
            payload = json.dumps({"access_token": token, "expires_at": fresh.expires_at.timestamp(),
                                  "refreshed_at": now.timestamp()})
            try:
                self._redis.set(self._token_key, payload, ex=max(int(expires_in), 1))
            except Exception as exc:  # Redis went away after the fetch: the new token is still this process's
                log.warning("token store unavailable (%s): a new token kept by this process only",
                            type(exc).__name__)
            return fresh
        finally:
            try:
                self._redis.eval(_RELEASE_SCRIPT, 1, self._lock_key, owner)
            except Exception as exc:  # it expires on its own (LOCK_SECONDS); the refresh's outcome stands
                log.warning("token store unavailable (%s): the refresh lock is left to expire", type(exc).__name__)
