"""PostgreSQL ending the web's connections (a restart, a failover, an operator), between requests and under load.

The web runs under gunicorn; its server processes are ended with ``pg_terminate_backend``.
A push answered 503 is posted again as it is, as the platform does; at the end every push
is answered "success" and stored exactly once.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.faults.conftest import Push, column, gunicorn, web_env

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]


def terminate_web_backends(database_url: str) -> int:
    """End every server process connected to the web's database (not ours); how many were ended."""
    [ended] = column(database_url, "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    return ended


def stored_msg_ids(database_url: str) -> list[int]:
    keys = column(database_url, "SELECT dedupe_key FROM inbound_message")
    return sorted(int(key.removeprefix("msg:")) for key in keys)


@pytest.fixture
def web(private_database_url, tmp_path):
    with gunicorn(web_env(private_database_url, tmp_path), tmp_path / "gunicorn.log") as url:
        yield url


def test_connections_ended_between_requests_cost_no_push(web, private_database_url):
    pushes = [Push(f"oBetween{n % 3}", f"message {n}", 610_000 + n) for n in range(20)]
    answers = [push.post(web) for push in pushes[:10]]
    assert terminate_web_backends(private_database_url) > 0
    answers += [push.post(web) for push in pushes[10:]]

    assert answers == [(200, "success")] * 20  # the dead connections were replaced, not reported
    assert stored_msg_ids(private_database_url) == [push.msg_id for push in pushes]


KILL_EVERY = 12  # answers between two kills of every web connection, under load (8 clients)


@pytest.mark.timeout(240)  # its own bounds (the killer's 60 s, the clients' 90 s, gunicorn's start) exceed 120 s
def test_connections_ended_under_load_lose_and_duplicate_nothing(web, private_database_url):
    clients, per_client = 8, 30
    pushes = [[Push(f"oLoad{c}", f"message {n}", 620_000 + c * 1000 + n) for n in range(per_client)]
              for c in range(clients)]
    statuses: list[int] = []
    unanswered: list[Push] = []
    lock = threading.Lock()
    done = threading.Event()

    def client(own: list[Push]) -> None:
        with requests.Session() as session:
            for push in own:
                for _attempt in range(5):  # the platform pushes a message up to 3 times; allow a little more
                    status, body = push.post(web, session)
                    with lock:
                        statuses.append(status)
                    if (status, body) == (200, "success"):
                        break
                    time.sleep(0.2)
                else:
                    with lock:
                        unanswered.append(push)

    ended = []

    def killer() -> None:
        # Paced by the answers, not by the clock: a kill every KILL_EVERY answers whatever the machine's speed (at
        # a kill every 0.15 s, the slower the requests, the more kills each meets, and the five tries run out).
        deadline, killed_at = time.monotonic() + 60, 0
        while not done.is_set() and time.monotonic() < deadline:
            with lock:
                answers = len(statuses)
            if answers >= killed_at + KILL_EVERY:
                killed_at = answers
                ended.append(terminate_web_backends(private_database_url))
            done.wait(0.01)

    threads = [threading.Thread(target=client, args=(own,)) for own in pushes]
    kill = threading.Thread(target=killer)
    kill.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    done.set()
    kill.join(timeout=10)

    assert not any(thread.is_alive() for thread in threads)
    assert sum(ended) > 0, "no connection was ended: the test proved nothing"
    assert unanswered == []
    assert set(statuses) <= {200, 503}, sorted(set(statuses))  # a fault is a 503 to retry, never a 500
    assert stored_msg_ids(private_database_url) == sorted(push.msg_id for own in pushes for push in own)
    print(f"\n{sum(ended)} connections ended, {statuses.count(503)} of {len(statuses)} answers were 503")
