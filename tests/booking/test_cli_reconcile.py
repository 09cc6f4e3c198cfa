"""import-stations and generate-slots bring existing future slots in line with a changed stations file.

The commands run against the real clock, so the dates below are relative to today in Guangzhou.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select, update

from accident_service.cli_stations import generate_slots_command, import_stations_command
from accident_service.models import Slot, Station
from tests.booking.test_cli import EXAMPLE, RUNNER

GUANGZHOU = ZoneInfo("Asia/Shanghai")
EXAMPLE_STATIONS = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["stations"]
WEEKDAY_WINDOWS = 14  # 09:00-12:00 and 13:30-17:30 in half hours, at GZ-TH


@pytest.fixture
def cli_env(tmp_path, database_url):
    return {"DATA_DIR": str(tmp_path), "DATABASE_URL": database_url, "APP_ENV": "test", "AUTO_MIGRATE": "false",
            "SLOT_GENERATION_DAYS": "7"}


def a_coming_weekday() -> date:
    """A working weekday at least two days ahead (nothing on it has started), within the 7 generated days."""
    day = datetime.now(GUANGZHOU).date() + timedelta(days=2)
    holidays = set(EXAMPLE_STATIONS[0]["holidays"])
    while day.weekday() > 4 or day in holidays:
        day += timedelta(days=1)
    return day


def local(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), GUANGZHOU)


def stations_file(tmp_path: Path, **gz_th_changes) -> Path:
    """The example stations with GZ-TH changed, as JSON (dates as strings)."""
    stations = [dict(station) for station in EXAMPLE_STATIONS]
    stations[0] = {**stations[0], **gz_th_changes}
    path = tmp_path / f"stations-{len(list(tmp_path.glob('stations-*')))}.json"
    path.write_text(json.dumps({"stations": stations}, default=str), encoding="utf-8")
    return path


def invoke(command, *args: str, env: dict[str, str]):
    result = CliRunner().invoke(command, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def gz_th_future_slots(runtime) -> list[Slot]:
    with runtime.unit_of_work() as session:
        return list(session.scalars(select(Slot).join(Station).where(
            Station.code == "GZ-TH", Slot.starts_at > datetime.now(UTC)).order_by(Slot.starts_at)))


def set_booked(runtime, starts_at: datetime, booked: int) -> int:
    with runtime.unit_of_work() as session:
        station_id = session.scalar(select(Station.id).where(Station.code == "GZ-TH"))
        return session.execute(update(Slot).where(Slot.station_id == station_id, Slot.starts_at == starts_at)
                               .values(booked=booked).returning(Slot.id)).scalar_one()


def test_fewer_desks_lower_capacity_but_not_below_booked(cli_env, runtime, tmp_path):
    first = invoke(import_stations_command, str(EXAMPLE), env=cli_env)
    assert "stations: 4 created" in first and " 0 updated, 0 removed, 0 kept with appointments" in first
    day = a_coming_weekday()
    full = set_booked(runtime, local(day, 9), 3)  # 3 of GZ-TH's 4 desks

    changed = invoke(import_stations_command, str(stations_file(tmp_path, desks=1)), env=cli_env)

    assert "stations: 0 created, 1 updated, 3 unchanged" in changed
    assert "slots: 0 created," in changed and " 0 removed, 1 kept with appointments" in changed
    assert f"kept GZ-TH {day:%Y-%m-%d} 09:00-09:30 Asia/Shanghai (slot {full}): 3 booked, more booked than desks" \
        in changed
    capacities = {slot.id: slot.capacity for slot in gz_th_future_slots(runtime)}
    assert capacities.pop(full) == 3 and set(capacities.values()) == {1}

    again = invoke(import_stations_command, str(stations_file(tmp_path, desks=1)), env=cli_env)
    assert "slots: 0 created, 0 updated, 0 removed, 1 kept with appointments" in again


def test_a_new_holiday_removes_free_slots_and_keeps_the_booked_one(cli_env, runtime, tmp_path):
    invoke(import_stations_command, str(EXAMPLE), env=cli_env)
    day = a_coming_weekday()
    booked = set_booked(runtime, local(day, 14), 1)
    holidays = [*EXAMPLE_STATIONS[0]["holidays"], day]

    changed = invoke(import_stations_command, str(stations_file(tmp_path, holidays=holidays)), env=cli_env)

    assert f"slots: 0 created, 0 updated, {WEEKDAY_WINDOWS - 1} removed, 1 kept with appointments" in changed
    assert f"kept GZ-TH {day:%Y-%m-%d} 14:00-14:30 Asia/Shanghai (slot {booked}): 1 booked, no longer offered" \
        in changed
    on_the_day = [(slot.id, slot.capacity) for slot in gz_th_future_slots(runtime)
                  if slot.starts_at.astimezone(GUANGZHOU).date() == day]
    assert on_the_day == [(booked, 1)]  # kept for its driver, closed to anyone else

    nightly = invoke(generate_slots_command, env=cli_env)
    assert "slots: 0 created, 0 updated, 0 removed, 1 kept with appointments" in nightly


def test_a_new_slot_length_leaves_no_overlapping_slots(cli_env, runtime, tmp_path):
    invoke(import_stations_command, str(EXAMPLE), env=cli_env)
    before = len(gz_th_future_slots(runtime))

    changed = invoke(import_stations_command, str(stations_file(tmp_path, slot_minutes=7)), env=cli_env)
    generated = invoke(generate_slots_command, env=cli_env)

    assert f"{before} removed" in changed and "0 kept" in changed
    assert "slots: 0 created, 0 updated, 0 removed, 0 kept with appointments" in generated
    rows = gz_th_future_slots(runtime)
    assert rows and {slot.ends_at - slot.starts_at for slot in rows} == {timedelta(minutes=7)}
    assert all(earlier.ends_at <= later.starts_at for earlier, later in pairwise(rows))


def run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The console script in a fresh process, without the test run's DATABASE_URL."""
    inherited = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-c", RUNNER, *args], env={**inherited, **env}, capture_output=True,
                          text=True, timeout=120)


def test_a_fresh_data_dir_is_migrated_first(tmp_path):
    env = {"DATA_DIR": str(tmp_path / "fresh"), "APP_ENV": "test", "SLOT_GENERATION_DAYS": "2"}

    imported = run_script("import-stations", str(EXAMPLE), env=env)
    generated = run_script("generate-slots", env=env)

    assert imported.returncode == 0, imported.stderr
    assert "stations: 4 created" in imported.stdout
    assert generated.returncode == 0 and "slots: 0 created, 0 updated, 0 removed" in generated.stdout


def test_without_auto_migrate_a_missing_schema_is_a_clean_error(tmp_path):
    env = {"DATA_DIR": str(tmp_path / "fresh"), "APP_ENV": "test", "AUTO_MIGRATE": "false"}

    for args in (("import-stations", str(EXAMPLE)), ("generate-slots",)):
        result = run_script(*args, env=env)
        assert result.returncode == 1
        assert "Error: database: no such table: station" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("entry", "field"), [
    ("holidays: [2026-10-01, 2026-02-30]", "holidays[1] '2026-02-30'"),
    ("closures: [{start: 2026-02-30T13:30:00, end: 2026-03-01T10:00:00}]", "closures[0].start"),
])
def test_an_impossible_date_is_refused_naming_station_and_field(cli_env, runtime, tmp_path, entry, field):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stations:\n  - code: GZ-X\n    name: x\n    address: y\n    lat: 23\n    lng: 113\n"
                   f"    opening_hours: {{mon: ['09:00-12:00']}}\n    {entry}\n", encoding="utf-8")

    result = run_script("import-stations", str(bad), env=cli_env)

    assert result.returncode == 1
    assert "station #1 (GZ-X)" in result.stderr and field in result.stderr
    assert "Traceback" not in result.stderr
    with runtime.unit_of_work() as session:
        assert session.scalars(select(Station)).all() == []


def test_generate_slots_for_no_days_creates_none_and_brings_the_existing_ones_in_line(cli_env, runtime):
    """``--days 0``, as its help says: nothing created, the future slots there are fitted to the stations."""
    invoke(import_stations_command, str(EXAMPLE), env=cli_env)
    before = len(gz_th_future_slots(runtime))
    with runtime.unit_of_work() as session:
        session.execute(update(Station).where(Station.code == "GZ-TH").values(desks=1))

    generated = invoke(generate_slots_command, "--days", "0", env=cli_env)

    assert "slots: 0 created," in generated and " 0 removed," in generated
    rows = gz_th_future_slots(runtime)
    assert len(rows) == before and {slot.capacity for slot in rows} == {1}
