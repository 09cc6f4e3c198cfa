"""Token stores: one shared token, one refresh at a time, across separate connections.

Each store instance gets its own engine or Redis connection, as separate
processes would. The database backend is SQLite by default and PostgreSQL
when TEST_DATABASE_URL is set (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis

import accident_service.models  # noqa: F401  (registers wechat_token for the database fixture)
from accident_service.clock import ControlledClock
from accident_service.db import make_engine, make_session_factory
from accident_service.sandbox.emulator import WeChatEmulator
from accident_service.wechat_api.client import FORCED_REFRESH_MIN_AGE_SECONDS, GatewayClient, WeChatApi
from accident_service.wechat_api.tokens import DatabaseTokenStore, RedisTokenStore, TokenStore, TokenUnavailable

APPID = "wx-token-test"
SECRET = "token-secret"
THREADS = 8


class DatabaseBackend:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engines: list[Any] = []

    def make_store(self, clock: ControlledClock, **options: Any) -> TokenStore:
        engine = make_engine(self.url)
        self.engines.append(engine)
        return DatabaseTokenStore(make_session_factory(engine), APPID, clock, **options)

    def close(self) -> None:
        for engine in self.engines:
            engine.dispose()


class RedisBackend:
    def __init__(self) -> None:
        self.prefix = f"test:{uuid.uuid4().hex}:"
        self.clients: list[redis.Redis] = []

    def make_store(self, clock: ControlledClock, **options: Any) -> TokenStore:
        client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5, socket_connect_timeout=2)
        self.clients.append(client)
        return RedisTokenStore(client, APPID, prefix=self.prefix, clock=clock, **options)

    def close(self) -> None:
        if self.clients:
            keys = list(self.clients[0].scan_iter(self.prefix + "*", count=100))
            if keys:
                self.clients[0].delete(*keys)
        for client in self.clients:
            client.close()


@pytest.fixture(params=["database", "redis"])
def backend(request) -> Iterator[DatabaseBackend | RedisBackend]:
    if request.param == "database":
        made: DatabaseBackend | RedisBackend = DatabaseBackend(request.getfixturevalue("database_url"))
    else:
        try:
            redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            pytest.skip(f"Redis not reachable on 127.0.0.1:6379: {exc}")
        made = RedisBackend()
    yield made
    made.close()


class CountingFetch:
    def __init__(self, prefix: str = "tok", expires_in: int = 7200) -> None:
        self.calls = 0
        self.prefix = prefix
        self.expires_in = expires_in
        self._lock = threading.Lock()

    def __call__(self) -> tuple[str, int]:
        with self._lock:
            self.calls += 1
            return f"{self.prefix}-{self.calls}", self.expires_in


def must_not_fetch() -> tuple[str, int]:
    raise AssertionError("this caller must not fetch a token")


def run_together(count: int, target: Callable[[int], Any]) -> list[Any]:
    """Run ``target(i)`` in ``count`` threads released at once; return results (exceptions re-raised)."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = target(index)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a worker hung"
    if errors:
        raise errors[0]
    return results


def test_token_is_fetched_once_and_shared(backend, clock) -> None:
    fetch = CountingFetch()

    first = backend.make_store(clock).get_token(fetch)
    second = backend.make_store(clock).get_token(must_not_fetch)

    assert first == second == "tok-1"


def test_stale_token_is_replaced_once(backend, clock) -> None:
    fetch = CountingFetch()
    store = backend.make_store(clock)
    stale = store.get_token(fetch)

    fresh = store.get_token(fetch, stale=stale)

    assert fresh == "tok-2"
    assert backend.make_store(clock).get_token(must_not_fetch, stale=stale) == "tok-2"
    assert store.get_token(must_not_fetch, stale="some-older-token") == "tok-2"


def test_token_is_refreshed_within_the_safety_margin(backend, clock) -> None:
    fetch = CountingFetch()
    store = backend.make_store(clock)
    store.get_token(fetch)

    clock.advance(seconds=7200 - 6 * 60)
    assert store.get_token(fetch) == "tok-1"
    clock.advance(seconds=2 * 60)
    assert store.get_token(fetch) == "tok-2"


def test_a_process_trusts_the_token_it_read_for_30_seconds(backend, clock) -> None:
    """Not read from the shared store on every call; a token replaced elsewhere still works ~5 min (WECHAT.md §4)."""
    backend.make_store(clock).get_token(CountingFetch("first"))
    mine = backend.make_store(clock)
    assert mine.get_token(must_not_fetch) == "first-1"
    backend.make_store(clock).get_token(CountingFetch("second"), stale="first-1")  # another process replaced it

    clock.advance(seconds=29)
    assert mine.get_token(must_not_fetch) == "first-1"
    clock.advance(seconds=2)
    assert mine.get_token(must_not_fetch) == "second-1"


@contextlib.contextmanager
def store_through_a_proxy(clock, *, timeout: float = 2.0) -> Iterator[tuple[RedisTokenStore, Any]]:
    """A Redis store (its client as build_wechat_api makes it) reaching Redis through a proxy on loopback; Redis is
    gone for it once the block ends (the proxy closed). Its keys are deleted after."""
    from tests.support.pg_cut import CuttingProxy

    prefix = f"test:{uuid.uuid4().hex}:"
    try:
        with CuttingProxy(("127.0.0.1", 6379)) as proxy:
            client = redis.Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=timeout,
                                          socket_connect_timeout=timeout)
            yield RedisTokenStore(client, APPID, prefix=prefix, clock=clock), proxy
    finally:
        redis.Redis(host="127.0.0.1", port=6379).delete(f"{prefix}{APPID}:token", f"{prefix}{APPID}:lock")


@pytest.fixture
def store_whose_redis_went_down(clock) -> Iterator[RedisTokenStore]:
    """A Redis store that fetched and holds "held-1", then lost Redis."""
    with store_through_a_proxy(clock) as (store, _proxy):
        assert store.get_token(CountingFetch("held")) == "held-1"
    yield store


def test_while_redis_is_down_a_process_sends_with_the_token_it_holds(store_whose_redis_went_down, clock) -> None:
    """The token this process read serves until it expires, and then TokenUnavailable, retried like the platform's
    outage (acceptance pass: every send failed as "wechat: network", its attempts spent, a notice lost in a
    ten-minute outage)."""
    from accident_service.wechat_api.tokens import TokenUnavailable

    store = store_whose_redis_went_down
    clock.advance(minutes=30)  # past the local trust: the store is asked, and does not answer
    assert store.get_token(must_not_fetch) == "held-1"
    clock.advance(minutes=30)
    assert store.get_token(must_not_fetch) == "held-1"
    clock.advance(hours=2)  # the token has run out meanwhile
    with pytest.raises(TokenUnavailable, match="token store is unavailable"):
        store.get_token(must_not_fetch)


def test_while_redis_is_down_a_token_the_platform_rejected_is_not_handed_out_again(store_whose_redis_went_down,
                                                                                   clock) -> None:
    from accident_service.wechat_api.tokens import TokenUnavailable

    store = store_whose_redis_went_down
    with pytest.raises(TokenUnavailable):  # rejected by the platform, and no store to refresh through
        store.get_token(must_not_fetch, stale="held-1")
    clock.advance(seconds=1)
    with pytest.raises(TokenUnavailable):  # the next send does not try it again
        store.get_token(must_not_fetch)


def test_a_token_fetched_as_redis_goes_away_is_kept_and_sent_with(clock) -> None:
    """Redis stops answering between the refresh's fetch and its write (the write's answer lost, through a proxy
    on loopback): the new token, which has just started the end of every other one, is not lost (review)."""
    with store_through_a_proxy(clock, timeout=1.0) as (store, proxy):
        proxy.arm(b"fresh-1")  # the SET carrying the new token
        assert store.get_token(CountingFetch("fresh")) == "fresh-1"
    clock.advance(minutes=30)  # Redis gone (the proxy closed), the trust window past
    assert store.get_token(must_not_fetch) == "fresh-1"


def test_a_wall_clock_set_back_ends_the_trust_at_once(backend, clock) -> None:
    """The trust window is 30 s from the reading: after the clock is stepped back an hour, the store is read again."""
    backend.make_store(clock).get_token(CountingFetch("first"))
    mine = backend.make_store(clock)
    assert mine.get_token(must_not_fetch) == "first-1"
    backend.make_store(clock).get_token(CountingFetch("second"), stale="first-1")  # another process replaced it

    clock.advance(hours=-1)
    assert mine.get_token(must_not_fetch) == "second-1"


def test_a_token_the_platform_rejected_is_read_again_at_once(backend, clock) -> None:
    mine = backend.make_store(clock)
    assert mine.get_token(CountingFetch("first")) == "first-1"
    backend.make_store(clock).get_token(CountingFetch("second"), stale="first-1")  # another process replaced it

    assert mine.get_token(must_not_fetch, stale="first-1") == "second-1"


def test_after_refreshing_it_itself_a_process_hands_out_the_new_token(backend, clock) -> None:
    mine = backend.make_store(clock)
    mine.get_token(CountingFetch("first"))
    assert mine.get_token(must_not_fetch) == "first-1"  # read from the store: trusted
    assert mine.get_token(CountingFetch("second"), stale="first-1") == "second-1"  # rejected: this one refreshes

    assert mine.get_token(must_not_fetch) == "second-1"


def test_failed_fetch_releases_the_lock(backend, clock) -> None:
    def failing() -> tuple[str, int]:
        raise RuntimeError("platform down")

    store = backend.make_store(clock, wait_seconds=0.5)
    with pytest.raises(RuntimeError):
        store.get_token(failing)

    assert backend.make_store(clock, wait_seconds=0.5).get_token(CountingFetch()) == "tok-1"


class BlockedRefresher:
    """A refresher holding the lock until released: a slow or stuck process."""

    def __init__(self, store: TokenStore, token: str = "from-holder", stale: str | None = None) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.result: list[str] = []
        self._thread = threading.Thread(target=lambda: self.result.append(store.get_token(self._fetch, stale=stale)))
        self._token = token

    def _fetch(self) -> tuple[str, int]:
        self.started.set()
        self.release.wait(timeout=10)
        return self._token, 7200

    def __enter__(self) -> BlockedRefresher:
        self._thread.start()
        assert self.started.wait(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self._thread.join(timeout=10)


def test_old_token_is_served_while_another_process_refreshes(backend, clock) -> None:
    backend.make_store(clock).get_token(CountingFetch("old"))
    clock.advance(seconds=7200 - 60)  # inside the margin, still valid

    with BlockedRefresher(backend.make_store(clock)) as holder:
        assert backend.make_store(clock).get_token(must_not_fetch) == "old-1"

    assert holder.result == ["from-holder"]
    assert backend.make_store(clock).get_token(must_not_fetch) == "from-holder"


def test_waiting_for_another_refresher_is_bounded(backend, clock) -> None:
    with BlockedRefresher(backend.make_store(clock)):
        with pytest.raises(TokenUnavailable):
            backend.make_store(clock, wait_seconds=0.3).get_token(must_not_fetch)


def test_waiter_gets_the_refreshers_token(backend, clock) -> None:
    waiter = backend.make_store(clock)
    got: list[str] = []

    with BlockedRefresher(backend.make_store(clock)):
        thread = threading.Thread(target=lambda: got.append(waiter.get_token(must_not_fetch)))
        thread.start()
    thread.join(timeout=10)

    assert got == ["from-holder"]


def test_concurrent_callers_fetch_exactly_once(backend, clock) -> None:
    fetch = CountingFetch()
    stores = [backend.make_store(clock) for _ in range(THREADS)]

    tokens = run_together(THREADS, lambda i: stores[i].get_token(fetch))

    assert fetch.calls == 1
    assert set(tokens) == {"tok-1"}


def test_concurrent_callers_with_the_same_stale_token_refresh_once(backend, clock) -> None:
    fetch = CountingFetch()
    stale = backend.make_store(clock).get_token(fetch)
    stores = [backend.make_store(clock) for _ in range(THREADS)]

    tokens = run_together(THREADS, lambda i: stores[i].get_token(fetch, stale=stale))

    assert fetch.calls == 2
    assert set(tokens) == {"tok-2"}


def test_a_crashed_refreshers_lock_expires(clock, database_url) -> None:
    backend = DatabaseBackend(database_url)
    try:
        with BlockedRefresher(backend.make_store(clock), token="late") as holder:
            clock.advance(seconds=31)  # past the 30 s lock
            assert backend.make_store(clock).get_token(CountingFetch("takeover")) == "takeover-1"
        # The late refresher still hands its token to its caller but does not overwrite the newer one.
        assert holder.result == ["late"]
        assert backend.make_store(clock).get_token(must_not_fetch) == "takeover-1"
    finally:
        backend.close()


# -- end to end: separate clients and stores against the emulator ---------------


@pytest.fixture
def emulator(clock) -> Iterator[WeChatEmulator]:
    with WeChatEmulator(APPID, SECRET, "token", clock=lambda: clock.now().timestamp()) as running:  # one time
        for openid in ["o-warm", *(f"o-{i}" for i in range(THREADS))]:
            running.note_user_activity(openid)  # each has just written to the account (WECHAT.md §5)
        yield running


def make_apis(backend, clock, emulator: WeChatEmulator) -> list[WeChatApi]:
    return [WeChatApi(GatewayClient(APPID, SECRET, api_base_url=emulator.api_base_url, timeout=5,
                                    token_store=backend.make_store(clock))) for _ in range(THREADS)]


def test_processes_refreshing_an_expired_token_cause_one_token_request(backend, clock, emulator) -> None:
    apis = make_apis(backend, clock, emulator)
    apis[0].send_text("o-warm", "warm up")
    clock.advance(timedelta(hours=2))  # every store now considers the token expired

    run_together(THREADS, lambda i: apis[i].send_text(f"o-{i}", "hi"))

    assert emulator.stable_token_requests == 2
    assert len(emulator.sent) == THREADS + 1


def test_processes_hit_by_42001_together_cause_one_token_request(backend, clock, emulator) -> None:
    apis = make_apis(backend, clock, emulator)
    apis[0].send_text("o-warm", "warm up")
    emulator.expire_tokens()  # the platform rejects the stored token; stores still trust it

    run_together(THREADS, lambda i: apis[i].send_text(f"o-{i}", "hi"))

    assert emulator.stable_token_requests == 2
    assert sorted(m["touser"] for m in emulator.sent[1:]) == sorted(f"o-{i}" for i in range(THREADS))


def test_a_process_still_trusting_a_token_another_forced_out_recovers_at_its_next_call(backend, clock,
                                                                                      emulator) -> None:
    """The platform rejects the token for one process, which forces a new one (the old one dies at once,
    WECHAT.md §4); another process that trusts the old one for 30 s gets 40001 once, reads the new one, sends."""
    first, second = make_apis(backend, clock, emulator)[:2]
    first.send_text("o-warm", "warm up")
    second.send_text("o-0", "both trust the token now")
    clock.advance(timedelta(seconds=FORCED_REFRESH_MIN_AGE_SECONDS))  # old enough to be replaced by force
    emulator.inject_error("message/custom/send", 40001, times=1)

    first.send_text("o-1", "after the platform rejected its token")
    assert emulator.force_refreshes == 1
    second.send_text("o-2", "with the token it still trusted")

    assert [m["touser"] for m in emulator.sent] == ["o-warm", "o-0", "o-1", "o-2"]


def test_the_token_held_for_an_outage_is_the_newest_whatever_order_threads_come_back_in(clock) -> None:
    """A thread that read the old token before another thread's forced refresh may finish after it (review)."""
    from datetime import timedelta

    from accident_service.wechat_api.tokens import _Cached

    store = RedisTokenStore(redis.Redis(host="127.0.0.1", port=6379), APPID, prefix=f"test:{uuid.uuid4().hex}:",
                            clock=clock)
    newer, older = (_Cached(name, clock.now() + timedelta(hours=hours)) for name, hours in (("new", 2), ("old", 1)))
    store._hold(newer)
    store._hold(older)
    assert store._held is newer
