"""Injected faults: errcodes, HTTP statuses and delays for calls whose path ends with a suffix.

Not thread-safe on its own: PlatformApi calls it under its lock.
"""

from __future__ import annotations

from dataclasses import dataclass


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
