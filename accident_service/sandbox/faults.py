"""Injected faults: errcodes, HTTP statuses, delays and holds for calls whose path ends with a suffix.

``Faults`` is not thread-safe on its own: PlatformApi calls it under its lock. ``Holds`` keeps its own lock, as
held calls wait on it outside the platform's.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

HOLD_MAX_SECONDS = 60.0  # a hold a test forgot to release lets its calls through after this


@dataclass
class Fault:
    path_suffix: str
    remaining: int | None  # None: forever
    errcode: int | None = None
    http_status: int = 200


class Faults:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._delays: dict[str, float] = {}

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def set_delay(self, path_suffix: str, seconds: float) -> None:
        if seconds > 0:
            self._delays[path_suffix] = seconds
        else:
            self._delays.pop(path_suffix, None)

    def clear(self) -> None:
        self._faults.clear()
        self._delays.clear()

    def delay_for(self, path: str) -> float:
        return max((s for suffix, s in self._delays.items() if path.endswith(suffix)), default=0.0)

    def take(self, path: str) -> Fault | None:
        """The first fault for ``path``, used up once (unless it lasts forever)."""
        for fault in self._faults:
            if path.endswith(fault.path_suffix):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return fault
        return None


class Holds:
    """Calls held until a test releases them: a window as long as the test needs, where a delay is a guess that
    a slow machine can overrun (the test's own steps taking longer than the delay). A held call is neither
    handled nor answered until its release (or the server's stop, or ``HOLD_MAX_SECONDS``)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._holds: dict[str, int] = {}  # path suffix -> the hold's number (a hold set again is a new one)
        self._numbers = itertools.count(1)
        self._held_calls: dict[str, int] = {}  # path suffix given to hold() -> calls waiting on it
        self._expired = 0

    @property
    def expired(self) -> int:
        """Calls let through at ``HOLD_MAX_SECONDS``, not by a release: a test that held them then saw an order it
        did not arrange, and checked less than it says (the tests' fixtures fail on any)."""
        with self._changed:
            return self._expired

    def hold(self, path_suffix: str) -> None:
        with self._changed:
            self._holds[path_suffix] = next(self._numbers)

    def release(self, path_suffix: str) -> None:
        with self._changed:
            self._holds.pop(path_suffix, None)
            self._changed.notify_all()

    def release_all(self) -> None:
        with self._changed:
            self._holds.clear()
            self._changed.notify_all()

    def wait_until_held(self, path_suffix: str, count: int, timeout: float) -> None:
        """Block until ``count`` calls are held by the hold on ``path_suffix`` (the suffix given to :meth:`hold`).
        Raises TimeoutError. A call whose client gave up meanwhile still counts until it is released."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._held_calls.get(path_suffix, 0) >= count, timeout):
                raise TimeoutError(f"{self._held_calls.get(path_suffix, 0)} of {count} calls held at {path_suffix}")

    def pass_through(self, path: str, stopping: threading.Event) -> bool:
        """Wait while a hold matches ``path``; False if the server stops meanwhile."""
        deadline = time.monotonic() + HOLD_MAX_SECONDS
        with self._changed:
            holding = {suffix: number for suffix, number in self._holds.items() if path.endswith(suffix)}
            if not holding:
                return True
            for suffix in holding:
                self._held_calls[suffix] = self._held_calls.get(suffix, 0) + 1
            self._changed.notify_all()
            try:
                # Until each of these holds is released: the same suffix held again later is another hold.
                while any(self._holds.get(suffix) == number for suffix, number in holding.items()):
                    remaining = deadline - time.monotonic()
                    if stopping.is_set():
                        break
                    if remaining <= 0:
                        self._expired += 1
                        break
                    self._changed.wait(min(remaining, 0.1))  # 0.1: stop() sets its event, not this condition
            finally:
                for suffix in holding:
                    self._held_calls[suffix] -= 1
            return not stopping.is_set()
