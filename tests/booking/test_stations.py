"""Stations in the database: import from the stations file, by code, idempotent."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sqlalchemy import select

from accident_service.booking.station_file import load_station_file
from accident_service.booking.stations import ImportCounts, active_stations, import_stations
from accident_service.models import Station

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "stations.example.yaml"


def test_import_creates_then_changes_nothing(runtime):
    specs = load_station_file(EXAMPLE)
    with runtime.unit_of_work() as session:
        assert import_stations(session, specs) == ImportCounts(created=4)
    with runtime.unit_of_work() as session:
        assert import_stations(session, specs) == ImportCounts(unchanged=4)
        rows = {s.code: s for s in session.scalars(select(Station))}
    assert set(rows) == {"GZ-TH", "GZ-YX", "GZ-HZ", "GZ-BY"}
    haizhu = rows["GZ-HZ"]
    assert haizhu.closures == [{"start": "2026-10-08T13:30", "end": "2026-10-08T17:30", "reason": "staff training"}]
    assert haizhu.opening_hours["mon"] == ["09:00-12:00", "13:30-17:30"] and "sun" not in haizhu.opening_hours
    assert "2026-10-01" in haizhu.holidays and haizhu.desks == 3


def test_import_updates_by_code_and_keeps_the_id(runtime):
    specs = load_station_file(EXAMPLE)
    with runtime.unit_of_work() as session:
        import_stations(session, specs)
        first_id = session.scalar(select(Station.id).where(Station.code == "GZ-TH"))
    changed = [dataclasses.replace(specs[0], desks=9, address="新地址 1 号", active=False), *specs[1:]]
    with runtime.unit_of_work() as session:
        assert import_stations(session, changed) == ImportCounts(updated=1, unchanged=3)
    with runtime.unit_of_work() as session:
        tianhe = session.scalar(select(Station).where(Station.code == "GZ-TH"))
        assert (tianhe.id, tianhe.desks, tianhe.address, tianhe.active) == (first_id, 9, "新地址 1 号", False)
        assert [s.code for s in active_stations(session)] == ["GZ-BY", "GZ-HZ", "GZ-YX"]


def test_stations_missing_from_the_file_are_left_alone(runtime):
    specs = load_station_file(EXAMPLE)
    with runtime.unit_of_work() as session:
        import_stations(session, specs)
    with runtime.unit_of_work() as session:
        assert import_stations(session, specs[:1]) == ImportCounts(unchanged=1)
        assert len(active_stations(session)) == 4
