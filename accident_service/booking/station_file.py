"""The stations file (YAML or JSON): handling desks, their hours and capacity.

Read by ``accident-service import-stations``. Shape (see config/stations.example.yaml)::

    stations:
      - code: GZ-TH
        name: 天河区交通事故快处点
        address: ...
        lat: 23.1291
        lng: 113.3270
        timezone: Asia/Shanghai      # optional, the default
        opening_hours: {mon: ["09:00-12:00", "13:30-17:30"], ...}
        holidays: [2026-10-01]       # optional, closed all day
        closures:                    # optional, local wall time
          - {start: "2026-10-08T13:30", end: "2026-10-08T17:30", reason: training}
        slot_minutes: 30             # optional, 5..240
        desks: 3                     # optional, bookings per slot
        active: true                 # optional

A bare list of stations is accepted too. Top-level keys starting with "x-"
are ignored, so YAML anchors shared by several stations can live there.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from accident_service.booking.hours import (
    DEFAULT_TIMEZONE,
    Closure,
    HoursError,
    Schedule,
    WeeklyHours,
    check_slot_minutes,
    load_zone,
    parse_closures,
    parse_holidays,
    parse_weekly_hours,
)
from accident_service.errors import ServiceError

CODE_RE = re.compile(r"[A-Z0-9-]{2,32}")
_FIELDS = {"code", "name", "address", "lat", "lng", "timezone", "opening_hours", "holidays", "closures",
           "slot_minutes", "desks", "active"}
_TEXT_LIMITS = {"name": 200, "address": 400}  # the station table's column sizes


class StationFileError(ServiceError):
    """The stations file cannot be used; the message names the station and the field.

    ``details`` holds ``path`` (the file, when known), ``station`` (1-based
    position), ``code`` and ``field`` where they apply.
    """

    code = "station_file_invalid"
    http_status = 400


@dataclass(frozen=True)
class StationSpec:
    """One validated station from the file."""

    code: str
    name: str
    address: str
    lat: float
    lng: float
    opening_hours: WeeklyHours
    timezone: str = DEFAULT_TIMEZONE
    holidays: tuple[date, ...] = ()  # sorted, unique
    closures: tuple[Closure, ...] = ()
    slot_minutes: int = 30
    desks: int = 1
    active: bool = True

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.opening_hours, self.timezone, self.slot_minutes, frozenset(self.holidays),
                        self.closures)

    def to_record(self) -> dict[str, Any]:
        """Column values for ``models.Station`` (JSON-ready)."""
        return {
            "code": self.code, "name": self.name, "address": self.address, "lat": self.lat, "lng": self.lng,
            "timezone": self.timezone, "opening_hours": self.opening_hours.to_record(),
            "holidays": [day.isoformat() for day in self.holidays],
            "closures": [closure.to_record() for closure in self.closures], "slot_minutes": self.slot_minutes,
            "desks": self.desks, "active": self.active,
        }


def load_station_file(path: str | Path) -> list[StationSpec]:
    """Read and validate a stations file (.yaml, .yml or .json).

    Raises StationFileError for an unreadable or malformed file, an invalid
    field (the message names station and field) or a duplicate code.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in {".yaml", ".yml", ".json"}:
        raise StationFileError(f"{path}: unsupported extension {suffix!r} (use .yaml, .yml or .json)", path=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise StationFileError(f"{path}: cannot read: {exc}", path=str(path)) from exc
    try:
        data = json.loads(text) if suffix == ".json" else yaml.load(text, Loader=_StationFileLoader)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise StationFileError(f"{path}: not valid {suffix[1:].upper()}: {exc}", path=str(path)) from exc
    try:
        return parse_stations(data)
    except StationFileError as exc:
        exc.details["path"] = str(path)
        raise


class _StationFileLoader(yaml.SafeLoader):
    """SafeLoader, except that an unquoted timestamp that is no real date stays a string.

    PyYAML would raise a bare ValueError ("day is out of range") for
    ``2026-02-30`` while loading; as a string it reaches the field check, which
    refuses it naming the station and the field, like any other bad value.
    """

    def construct_yaml_timestamp(self, node: yaml.Node) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:
            return self.construct_scalar(node)


_StationFileLoader.add_constructor("tag:yaml.org,2002:timestamp", _StationFileLoader.construct_yaml_timestamp)


def parse_stations(data: Any) -> list[StationSpec]:
    """Validate already-decoded file content: {"stations": [...]} or a bare list.

    Raises StationFileError as :func:`load_station_file` does.
    """
    if isinstance(data, Mapping):
        unknown = sorted(str(key) for key in data if key != "stations" and not str(key).startswith("x-"))
        if unknown:
            raise StationFileError(f"unknown top-level key {unknown[0]!r} (expected 'stations')", field=unknown[0])
        data = data.get("stations")
    if not isinstance(data, list) or not data:
        raise StationFileError("the file must hold a non-empty list of stations under 'stations'")
    specs: list[StationSpec] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(data, start=1):
        spec = parse_station(raw, index)
        if spec.code in first_index:
            raise _station_error(index, raw, "code", f"duplicate of station #{first_index[spec.code]}")
        first_index[spec.code] = index
        specs.append(spec)
    return specs


def parse_station(raw: Any, index: int = 1) -> StationSpec:
    """Validate one station mapping; ``index`` (1-based) appears in error messages.

    Raises StationFileError naming the station and the field.
    """
    if not isinstance(raw, Mapping):
        raise StationFileError(f"station #{index}: must be a mapping of fields", station=index)
    unknown = sorted(str(key) for key in raw if key not in _FIELDS)
    if unknown:
        raise _station_error(index, raw, unknown[0], "unknown field")
    for required in ("code", "name", "address", "lat", "lng", "opening_hours"):
        if raw.get(required) is None:
            raise _station_error(index, raw, required, "is required")
    try:
        opening_hours = parse_weekly_hours(raw["opening_hours"])
        if opening_hours.is_empty():
            raise HoursError("opening_hours", "has no opening interval on any day")
        timezone = raw.get("timezone", DEFAULT_TIMEZONE)
        load_zone(timezone)
        return StationSpec(
            code=_code(raw["code"]),
            name=_text(raw["name"], "name"),
            address=_text(raw["address"], "address"),
            lat=_coordinate(raw["lat"], "lat", 90),
            lng=_coordinate(raw["lng"], "lng", 180),
            opening_hours=opening_hours,
            timezone=timezone.strip(),
            holidays=tuple(sorted(parse_holidays(raw.get("holidays")))),
            closures=parse_closures(raw.get("closures")),
            slot_minutes=check_slot_minutes(raw.get("slot_minutes", 30)),
            desks=_desks(raw.get("desks", 1)),
            active=_flag(raw.get("active", True), "active"),
        )
    except HoursError as exc:
        raise _station_error(index, raw, exc.path, exc.problem, exc.value) from None


def _station_error(index: int, raw: Mapping[str, Any], field: str, problem: str,
                   value: Any = None) -> StationFileError:
    code = raw.get("code")
    label = f"station #{index} ({code})" if isinstance(code, str) and code.strip() else f"station #{index}"
    shown = f"{field} {value!r}" if value is not None else field
    return StationFileError(f"{label}: {shown}: {problem}", station=index,
                            code=code if isinstance(code, str) else None, field=field)


# Field checks raise HoursError, which parse_station turns into a StationFileError.

def _code(value: Any) -> str:
    if not isinstance(value, str) or not CODE_RE.fullmatch(value):
        raise HoursError("code", "must be 2-32 characters of A-Z, 0-9 and '-'", value)
    return value


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise HoursError(field, "must be a non-empty string", value)
    if len(value.strip()) > _TEXT_LIMITS[field]:
        raise HoursError(field, f"must be at most {_TEXT_LIMITS[field]} characters")
    return value.strip()


def _coordinate(value: Any, field: str, bound: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HoursError(field, "must be a number of degrees", value)
    if not -bound <= value <= bound:
        raise HoursError(field, f"must be between -{bound} and {bound}", value)
    return float(value)


def _desks(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HoursError("desks", "must be a whole number of at least 1", value)
    return value


def _flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise HoursError(field, "must be true or false", value)
    return value
