"""Waiting for a PostgreSQL backend to wait on a lock: the moment a concurrency test's second client is blocked."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tests.support.live import wait_until


def backend_pid(session: Session) -> int:
    """The server process behind ``session`` (its transaction begins here if it had not)."""
    return session.scalar(text("SELECT pg_backend_pid()"))


def wait_until_blocked_by(engine: Engine, holder_pid: int, timeout: float = 10.0) -> None:
    """Block until another backend waits for a lock that ``holder_pid`` holds.

    A fixed sleep, or a thread still alive after a second, proves nothing on a slow machine: the other client may
    not have reached its statement yet, and the test then passes without the wait it is about."""
    with engine.connect() as connection:
        def blocked() -> bool:
            connection.rollback()  # a fresh snapshot of pg_stat_activity
            return bool(connection.scalar(text("SELECT count(*) FROM pg_stat_activity "
                                               "WHERE :holder = ANY(pg_blocking_pids(pid))"), {"holder": holder_pid}))

        wait_until(blocked, timeout=timeout, interval=0.01)
