"""Opening hours → slot windows: pure, no database, no clock.

A station's weekly hours are wall-clock intervals in its own time zone
("mon": ["09:00-12:00", "13:30-17:30"]). :func:`slot_windows` turns them into
aware UTC windows for a run of local days, so the slot table can store UTC
while drivers and desks keep seeing the wall times they expect, DST included.

The parsers here accept the raw JSON shapes stored on ``models.Station`` as
well as the parsed values, so a database row, a :class:`Schedule` or a
``StationSpec`` all work as the source of :func:`slot_windows`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from accident_service.clock import HOME_TIMEZONE

WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_TIMEZONE = HOME_TIMEZONE
MIN_SLOT_MINUTES = 5
MAX_SLOT_MINUTES = 240
_TICK = timedelta(microseconds=1)
_RANGE_RE = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")


class HoursError(ValueError):
    """Invalid opening-hours data; ``path`` names the field ("opening_hours.mon[0]")."""

    def __init__(self, path: str, problem: str, value: Any = None) -> None:
        self.path = path
        self.problem = problem
        self.value = value
        shown = f"{path} {value!r}" if value is not None else path
        super().__init__(f"{shown}: {problem}")


@dataclass(frozen=True, order=True)
class TimeRange:
    """A wall-clock interval within one day, in minutes after midnight (end may be 1440)."""

    start_minute: int
    end_minute: int

    @classmethod
    def parse(cls, text: Any, path: str = "interval") -> TimeRange:
        """Parse "HH:MM-HH:MM" ("24:00" allowed as the end). Raises HoursError."""
        if isinstance(text, TimeRange):
            return text
        if not isinstance(text, str):
            raise HoursError(path, "must be a string like '09:00-12:00'", text)
        match = _RANGE_RE.fullmatch(text)
        if match is None:
            raise HoursError(path, "must look like 'HH:MM-HH:MM'", text)
        sh, sm, eh, em = (int(part) for part in match.groups())
        if sh > 23 or sm > 59 or em > 59 or eh > 24 or (eh == 24 and em != 0):
            raise HoursError(path, "not a valid time of day", text)
        start, end = sh * 60 + sm, eh * 60 + em
        if start >= end:
            raise HoursError(path, "start must be before end", text)
        return cls(start, end)

    def __str__(self) -> str:
        return f"{_hhmm(self.start_minute)}-{_hhmm(self.end_minute)}"


@dataclass(frozen=True)
class WeeklyHours:
    """Opening intervals per weekday, Monday first; each day sorted and non-overlapping."""

    days: tuple[tuple[TimeRange, ...], ...]

    def __post_init__(self) -> None:
        if len(self.days) != 7:
            raise ValueError("WeeklyHours needs exactly 7 days")

    def __getitem__(self, weekday: str | int) -> tuple[TimeRange, ...]:
        return self.days[weekday if isinstance(weekday, int) else WEEKDAYS.index(weekday)]

    def is_empty(self) -> bool:
        return not any(self.days)

    def to_record(self) -> dict[str, list[str]]:
        """The JSON shape stored on ``models.Station.opening_hours`` (closed days omitted)."""
        return {name: [str(r) for r in ranges] for name, ranges in zip(WEEKDAYS, self.days, strict=True) if ranges}


@dataclass(frozen=True)
class Closure:
    """An extra closed period in local wall time, e.g. a training afternoon."""

    start: datetime  # naive, station-local
    end: datetime
    reason: str = ""

    def to_record(self) -> dict[str, str]:
        record = {"start": self.start.isoformat(timespec="minutes"), "end": self.end.isoformat(timespec="minutes")}
        return record | ({"reason": self.reason} if self.reason else {})


@dataclass(frozen=True)
class Schedule:
    """Everything slot generation needs from a station."""

    weekly: WeeklyHours
    timezone: str = DEFAULT_TIMEZONE
    slot_minutes: int = 30
    holidays: frozenset[date] = frozenset()
    closures: tuple[Closure, ...] = ()


def parse_weekly_hours(raw: Any, path: str = "opening_hours") -> WeeklyHours:
    """Parse {"mon": ["09:00-12:00", ...], ...}; missing days are closed. Raises HoursError."""
    if isinstance(raw, WeeklyHours):
        return raw
    if not isinstance(raw, Mapping):
        raise HoursError(path, "must be a mapping of weekday (mon..sun) to a list of 'HH:MM-HH:MM'")
    days: list[tuple[TimeRange, ...]] = [() for _ in WEEKDAYS]
    for key, entries in raw.items():
        if key not in WEEKDAYS:
            raise HoursError(f"{path}.{key}", "unknown weekday (use mon, tue, wed, thu, fri, sat, sun)")
        days[WEEKDAYS.index(key)] = _parse_day(entries, f"{path}.{key}")
    return WeeklyHours(tuple(days))


def _parse_day(entries: Any, path: str) -> tuple[TimeRange, ...]:
    if entries is None:
        return ()
    if isinstance(entries, str) or not isinstance(entries, Iterable):
        raise HoursError(path, "must be a list of 'HH:MM-HH:MM' intervals")
    parsed = [(TimeRange.parse(text, f"{path}[{i}]"), i, text) for i, text in enumerate(entries)]
    ordered = sorted(parsed, key=lambda item: item[0])
    for (previous, _, previous_text), (current, index, text) in pairwise(ordered):
        if current.start_minute < previous.end_minute:  # touching intervals are fine
            raise HoursError(f"{path}[{index}]", f"overlaps '{previous_text}'", text)
    return tuple(item[0] for item in ordered)


def parse_holidays(raw: Any, path: str = "holidays") -> frozenset[date]:
    """Parse a list of ISO dates (strings or date objects). Raises HoursError."""
    if raw is None:
        return frozenset()
    if isinstance(raw, str) or not isinstance(raw, Iterable):
        raise HoursError(path, "must be a list of dates (YYYY-MM-DD)")
    return frozenset(parse_date(value, f"{path}[{i}]") for i, value in enumerate(raw))


def parse_date(value: Any, path: str) -> date:
    """Parse one ISO date; datetimes are refused (a holiday is a whole day). Raises HoursError."""
    if isinstance(value, datetime):
        raise HoursError(path, "must be a date without a time", value.isoformat())
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise HoursError(path, "must be a date (YYYY-MM-DD)", value)


def parse_closures(raw: Any, path: str = "closures") -> tuple[Closure, ...]:
    """Parse [{"start": "2026-10-08T13:30", "end": "...", "reason": "..."}]. Raises HoursError."""
    if raw is None:
        return ()
    if isinstance(raw, str) or not isinstance(raw, Iterable):
        raise HoursError(path, "must be a list of {start, end, reason}")
    closures = []
    for i, item in enumerate(raw):
        item_path = f"{path}[{i}]"
        if isinstance(item, Closure):
            closures.append(item)
            continue
        if not isinstance(item, Mapping):
            raise HoursError(item_path, "must be a mapping with start, end and an optional reason")
        unknown = set(item) - {"start", "end", "reason"}
        if unknown:
            raise HoursError(f"{item_path}.{sorted(map(str, unknown))[0]}", "unknown field")
        start = _parse_local_datetime(item.get("start"), f"{item_path}.start")
        end = _parse_local_datetime(item.get("end"), f"{item_path}.end")
        if start >= end:
            raise HoursError(item_path, "start must be before end")
        reason = item.get("reason") or ""
        if not isinstance(reason, str):
            raise HoursError(f"{item_path}.reason", "must be a string", reason)
        closures.append(Closure(start, end, reason.strip()))
    return tuple(closures)


def _parse_local_datetime(value: Any, path: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise HoursError(path, "must be a local date and time like '2026-10-08T13:30'", value) from None
    if not isinstance(value, datetime):
        raise HoursError(path, "must be a local date and time like '2026-10-08T13:30'", value)
    if value.tzinfo is not None:
        raise HoursError(path, "must be station-local wall time, without a UTC offset", value.isoformat())
    return value


def load_zone(name: Any, path: str = "timezone") -> ZoneInfo:
    """Return the IANA zone called ``name``. Raises HoursError for unknown names."""
    if not isinstance(name, str) or not name.strip():
        raise HoursError(path, "must be an IANA time zone name like 'Asia/Shanghai'", name)
    try:
        return _zone(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise HoursError(path, "unknown IANA time zone", name) from None


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def check_slot_minutes(value: Any, path: str = "slot_minutes") -> int:
    """Return ``value`` if it is an integer within 5..240. Raises HoursError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise HoursError(path, "must be a whole number of minutes", value)
    if not MIN_SLOT_MINUTES <= value <= MAX_SLOT_MINUTES:
        raise HoursError(path, f"must be between {MIN_SLOT_MINUTES} and {MAX_SLOT_MINUTES}", value)
    return value


def as_schedule(source: Any) -> Schedule:
    """A :class:`Schedule` from itself, a ``StationSpec`` or a ``models.Station`` row.

    Reads ``opening_hours``, ``timezone``, ``slot_minutes``, ``holidays`` and,
    when present, ``closures``. Raises HoursError if any of them is invalid.
    """
    if isinstance(source, Schedule):
        return source
    zone_name = getattr(source, "timezone", None) or DEFAULT_TIMEZONE
    load_zone(zone_name)
    return Schedule(
        weekly=parse_weekly_hours(source.opening_hours),
        timezone=zone_name,
        slot_minutes=check_slot_minutes(getattr(source, "slot_minutes", 30)),
        holidays=parse_holidays(getattr(source, "holidays", None)),
        closures=parse_closures(getattr(source, "closures", None)),
    )


def slot_windows(source: Any, *, start_date: date, days: int) -> list[tuple[datetime, datetime]]:
    """Slot windows (aware UTC start, end) for local days [start_date, start_date + days).

    Each opening interval is cut into consecutive ``slot_minutes`` windows; a
    trailing partial window is dropped. Holidays give no windows; windows
    overlapping a closure are skipped. Every window lasts exactly
    ``slot_minutes`` of real time and starts and ends at the advertised wall
    times, so around DST changes: a window in (or running into) the spring gap
    is skipped, an ambiguous wall time means its first occurrence (fold=0),
    and the repeated autumn hour's second pass gets no windows. Windows never
    overlap; the list is sorted by start.

    ``source`` is a Schedule, StationSpec or models.Station (see :func:`as_schedule`).
    Raises HoursError for invalid station data, ValueError for negative ``days``,
    TypeError when ``start_date`` is a datetime.
    """
    if isinstance(start_date, datetime):
        raise TypeError("start_date must be a date, not a datetime")
    if days < 0:
        raise ValueError("days must not be negative")
    schedule = as_schedule(source)
    zone = load_zone(schedule.timezone)
    closed = [(_wall_to_utc(c.start, zone), _wall_to_utc(c.end, zone)) for c in schedule.closures]
    windows = [
        (starts_at, ends_at)
        for day in (start_date + timedelta(days=offset) for offset in range(days))
        if day not in schedule.holidays
        for starts_at, ends_at in _day_windows(schedule, day, zone)
        if not any(starts_at < c_end and c_start < ends_at for c_start, c_end in closed)
    ]
    windows.sort()
    return windows


def _day_windows(schedule: Schedule, day: date, zone: ZoneInfo) -> list[tuple[datetime, datetime]]:
    midnight = datetime.combine(day, time())
    length = timedelta(minutes=schedule.slot_minutes)
    windows = []
    for opening in schedule.weekly[day.weekday()]:
        last_start = opening.end_minute - schedule.slot_minutes  # a trailing partial window is dropped
        for start_minute in range(opening.start_minute, last_start + 1, schedule.slot_minutes):
            wall_start = midnight + timedelta(minutes=start_minute)
            starts_at = _wall_to_utc(wall_start, zone)
            if _keeps_wall_times(starts_at, starts_at + length, wall_start, length, zone):
                windows.append((starts_at, starts_at + length))
    return windows


def _wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _keeps_wall_times(starts_at: datetime, ends_at: datetime, wall_start: datetime, length: timedelta,
                      zone: ZoneInfo) -> bool:
    """True when the window's first and last instants show the promised wall times.

    False when the start falls in a DST gap (02:30 comes back as 03:30), or the
    window runs into a gap or across the autumn repeat, where a real
    ``slot_minutes`` would end at a different wall time than the one advertised.
    The last instant, not the end, is checked: a window ending exactly when the
    clocks jump (01:30-02:00 before 02:00→03:00) is whole and kept.
    """

    def wall(utc: datetime) -> datetime:
        return utc.astimezone(zone).replace(tzinfo=None)

    return wall(starts_at) == wall_start and wall(ends_at - _TICK) == wall_start + length - _TICK


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"
