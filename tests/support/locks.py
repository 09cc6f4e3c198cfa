"""Waiting for a PostgreSQL backend to wait on a lock: the moment a concurrency test's second client is blocked."""

from __future__ import annotations

import time

from sqlalchemy import text
from sqlalchemy.engine import Engine


def wait_until_a_backend_waits_for_a_lock(engine: Engine, timeout: float = 10.0) -> None:
    """Block until a backend of ``engine``'s database waits for a lock (other tests' databases are not counted).

    A fixed sleep or a thread still alive after a second proves nothing on a slow machine: the other client may
    not have reached its statement yet, and the test then passes without the wait it is about."""
    deadline = time.monotonic() + timeout
    with engine.connect() as connection:
        while not connection.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND datname = current_database()")):
            assert time.monotonic() < deadline, "no client waited for the lock"
            time.sleep(0.01)
            connection.rollback()  # a fresh snapshot of pg_stat_activity
