import copy
import json
from datetime import date, datetime
from pathlib import Path

import pytest
import yaml

from accident_service.booking.hours import Closure, TimeRange, slot_windows
from accident_service.booking.station_file import (
    StationFileError,
    StationSpec,
    load_station_file,
    parse_station,
)
from accident_service.errors import ServiceError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "stations.example.yaml"

VALID = {
    "code": "GZ-TH",
    "name": "天河交通事故快处快赔服务点",
    "address": "广州市天河区黄埔大道西 668 号",
    "lat": 23.1307,
    "lng": 113.3442,
    "opening_hours": {"mon": ["09:00-12:00", "13:30-17:30"], "sat": ["09:00-12:00"]},
    "holidays": ["2026-10-01"],
    "slot_minutes": 30,
    "desks": 4,
}
OTHER = {**VALID, "code": "GZ-YX", "name": "越秀", "address": "广州市越秀区"}


def write(tmp_path: Path, data, name: str = "stations.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data, allow_unicode=True),
                    encoding="utf-8")
    return path


def error_for(tmp_path: Path, station: dict) -> StationFileError:
    """The error from a file whose second station is ``station``."""
    with pytest.raises(StationFileError) as caught:
        load_station_file(write(tmp_path, {"stations": [OTHER, station]}))
    return caught.value


def test_the_example_file_loads():
    stations = load_station_file(EXAMPLE)
    assert [s.code for s in stations] == ["GZ-TH", "GZ-YX", "GZ-HZ", "GZ-BY"]
    tianhe = stations[0]
    assert tianhe.timezone == "Asia/Shanghai" and tianhe.slot_minutes == 30 and 2 <= tianhe.desks <= 4
    assert tianhe.opening_hours["mon"] == (TimeRange.parse("09:00-12:00"), TimeRange.parse("13:30-17:30"))
    assert tianhe.opening_hours["sat"] == (TimeRange.parse("09:00-12:00"),) and tianhe.opening_hours["sun"] == ()
    assert date(2026, 10, 1) in tianhe.holidays and list(tianhe.holidays) == sorted(tianhe.holidays)
    assert all(23 < s.lat < 23.5 and 113 < s.lng < 113.6 for s in stations)
    assert stations[2].closures == (Closure(datetime(2026, 10, 8, 13, 30), datetime(2026, 10, 8, 17, 30),
                                            "staff training"),)


def test_the_json_equivalent_loads_the_same(tmp_path):
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    path = tmp_path / "stations.json"
    path.write_text(json.dumps(data, default=str, ensure_ascii=False), encoding="utf-8")
    assert load_station_file(path) == load_station_file(EXAMPLE)


def test_yml_extension_and_a_bare_list(tmp_path):
    (spec,) = load_station_file(write(tmp_path, [VALID], "stations.YML"))
    assert spec == StationSpec(
        code="GZ-TH", name=VALID["name"], address=VALID["address"], lat=23.1307, lng=113.3442,
        opening_hours=spec.opening_hours, holidays=(date(2026, 10, 1),), slot_minutes=30, desks=4,
    )


def test_defaults_apply_when_optional_fields_are_missing():
    spec = parse_station({k: v for k, v in VALID.items() if k not in {"holidays", "slot_minutes", "desks"}})
    assert (spec.timezone, spec.slot_minutes, spec.desks, spec.holidays, spec.closures, spec.active) == \
        ("Asia/Shanghai", 30, 1, (), (), True)


def test_record_matches_the_station_model_and_round_trips():
    from accident_service.models import Station

    for spec in load_station_file(EXAMPLE):
        record = spec.to_record()
        json.dumps(record)  # what the JSON columns will hold
        row = Station(**record)
        reparsed = parse_station(record)
        assert reparsed == spec
        assert row.closures == [closure.to_record() for closure in spec.closures]
        # 2026-10-05..11 holds both a holiday and GZ-HZ's training closure.
        for start in (date(2026, 9, 28), date(2026, 10, 5)):
            assert slot_windows(row, start_date=start, days=7) == slot_windows(reparsed, start_date=start, days=7)


def test_the_documented_message_format(tmp_path):
    error = error_for(tmp_path, {**VALID, "opening_hours": {"mon": ["18:00-09:00"]}})
    assert str(error) == "station #2 (GZ-TH): opening_hours.mon[0] '18:00-09:00': start must be before end"
    assert isinstance(error, ServiceError) and error.code == "station_file_invalid"
    assert error.details == {"station": 2, "code": "GZ-TH", "field": "opening_hours.mon[0]",
                             "path": str(tmp_path / "stations.yaml")}


@pytest.mark.parametrize("change, field, problem", [
    ({"opening_hours": {"mon": ["09:00-12:00", "11:30-13:00"]}}, "opening_hours.mon[1]", "overlaps '09:00-12:00'"),
    ({"opening_hours": {"mon": ["9-12"]}}, "opening_hours.mon[0]", "HH:MM-HH:MM"),
    ({"opening_hours": {"mon": ["09:00-25:00"]}}, "opening_hours.mon[0]", "not a valid time"),
    ({"opening_hours": {"monday": ["09:00-12:00"]}}, "opening_hours.monday", "unknown weekday"),
    ({"opening_hours": {"mon": "09:00-12:00"}}, "opening_hours.mon", "must be a list"),
    ({"opening_hours": {"sun": []}}, "opening_hours", "no opening interval"),
    ({"opening_hours": ["09:00-12:00"]}, "opening_hours", "must be a mapping"),
    ({"code": "gz th"}, "code", "A-Z, 0-9"),
    ({"code": "X"}, "code", "2-32 characters"),
    ({"code": 12345}, "code", "2-32 characters"),
    ({"name": "  "}, "name", "non-empty"),
    ({"address": "x" * 401}, "address", "at most 400"),
    ({"lat": 91}, "lat", "between -90 and 90"),
    ({"lng": -180.5}, "lng", "between -180 and 180"),
    ({"lat": "23.1"}, "lat", "number of degrees"),
    ({"lng": True}, "lng", "number of degrees"),
    ({"timezone": "Mars/Olympus"}, "timezone", "unknown IANA time zone"),
    ({"timezone": "../../etc/passwd"}, "timezone", "unknown IANA time zone"),
    ({"timezone": 8}, "timezone", "IANA time zone name"),
    ({"holidays": ["2026-13-01"]}, "holidays[0]", "must be a date"),
    ({"holidays": "2026-10-01"}, "holidays", "must be a list"),
    ({"holidays": [datetime(2026, 10, 1, 9, 0)]}, "holidays[0]", "without a time"),
    ({"closures": [{"start": "2026-10-08T13:30"}]}, "closures[0].end", "local date and time"),
    ({"closures": [{"start": "2026-10-08T13:30", "end": "2026-10-08T17:30", "why": "x"}]}, "closures[0].why",
     "unknown field"),
    ({"slot_minutes": 4}, "slot_minutes", "between 5 and 240"),
    ({"slot_minutes": 241}, "slot_minutes", "between 5 and 240"),
    ({"slot_minutes": 30.5}, "slot_minutes", "whole number"),
    ({"desks": 0}, "desks", "at least 1"),
    ({"desks": "2"}, "desks", "at least 1"),
    ({"active": "yes"}, "active", "true or false"),
    ({"slot_minute": 30}, "slot_minute", "unknown field"),
])
def test_each_invalid_field_is_named(tmp_path, change, field, problem):
    station = {**copy.deepcopy(VALID), **change}
    error = error_for(tmp_path, station)
    label = f"station #2 ({station['code']})" if isinstance(station["code"], str) else "station #2"
    assert str(error).startswith(f"{label}: {field}")
    assert problem in str(error)
    assert error.details["field"] == field and error.details["station"] == 2


@pytest.mark.parametrize("missing", ["code", "name", "address", "lat", "lng", "opening_hours"])
def test_required_fields(tmp_path, missing):
    error = error_for(tmp_path, {k: v for k, v in VALID.items() if k != missing})
    assert f": {missing}: is required" in str(error)


def test_duplicate_codes_are_refused(tmp_path):
    error = error_for(tmp_path, {**VALID, "code": "GZ-YX"})
    assert str(error) == "station #2 (GZ-YX): code: duplicate of station #1"


@pytest.mark.parametrize("name, content, problem", [
    ("stations.txt", "stations: []", "unsupported extension '.txt'"),
    ("stations.yaml", "stations: [ {code: GZ", "not valid YAML"),
    ("stations.json", '{"stations": [', "not valid JSON"),
    ("stations.yaml", "", "non-empty list of stations"),
    ("stations.yaml", "stations: []", "non-empty list of stations"),
    ("stations.yaml", "just a string", "non-empty list of stations"),
    ("stations.yaml", "stations: [1]", "station #1: must be a mapping"),
    ("stations.yaml", "station: []", "unknown top-level key 'station'"),
])
def test_file_level_problems(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(StationFileError, match=problem):
        load_station_file(path)


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(StationFileError, match="cannot read"):
        load_station_file(tmp_path / "absent.yaml")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: caf\xe9".encode("latin-1"))
    with pytest.raises(StationFileError, match="cannot read"):
        load_station_file(latin1)


def test_x_keys_hold_shared_anchors(tmp_path):
    text = "x-hours: &h {mon: ['09:00-12:00']}\nstations:\n" + \
        "".join(f"  - {{code: {c}, name: n, address: a, lat: 23, lng: 113, opening_hours: *h}}\n" for c in ("A1", "B2"))
    path = tmp_path / "anchors.yaml"
    path.write_text(text, encoding="utf-8")
    first, second = load_station_file(path)
    assert [str(r) for r in first.opening_hours["mon"]] == ["09:00-12:00"]
    assert first.opening_hours == second.opening_hours
