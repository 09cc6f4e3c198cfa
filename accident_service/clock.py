"""The clock is passed in, never read deep down, so tests can move time."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol

#: The service's home time zone: a station's unless its file names another, the day a case number carries, the
#: nightly jobs' hours, a supervisor's "today" across stations.
HOME_TIMEZONE = "Asia/Shanghai"


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, aware UTC."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ControlledClock:
    """A clock tests set and advance; thread-safe for concurrent workers."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ControlledClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when.astimezone(UTC)

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        with self._lock:
            self._now += delta if delta is not None else timedelta(**kwargs)
            return self._now
