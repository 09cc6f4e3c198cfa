"""import-stations and generate-slots, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from accident_service.models import Slot, Station

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "stations.example.yaml"
# The main console script when the commands are registered on it; otherwise the
# same command objects in a bare click group, so the test does not depend on wiring.
RUNNER = """
import sys
from accident_service import cli
if "import-stations" in cli.cli.commands:
    cli.main()
else:
    import click
    from accident_service.cli_stations import generate_slots_command, import_stations_command
    group = click.Group("accident-service", commands=[import_stations_command, generate_slots_command])
    group.main(prog_name="accident-service")
"""


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUNNER, *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def cli_env(tmp_path, database_url):
    # The test database is already at head (SQLite: create_all, which Alembic would not recognise).
    return {"DATA_DIR": str(tmp_path), "DATABASE_URL": database_url, "APP_ENV": "test", "AUTO_MIGRATE": "false",
            "SLOT_GENERATION_DAYS": "1"}


def coming_tuesday(weeks_ahead: int = 3) -> date:
    """A Tuesday after the import's own generation horizon: the command is run against the real clock."""
    later = datetime.now(UTC).date() + timedelta(weeks=weeks_ahead)
    return later + timedelta(days=(1 - later.weekday()) % 7)


def test_import_and_generate_are_idempotent(cli_env, runtime, tmp_path):
    as_json = tmp_path / "stations.json"
    import yaml

    as_json.write_text(json.dumps(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")), default=str),
                       encoding="utf-8")
    first = run_cli("import-stations", str(EXAMPLE), env=cli_env)
    assert first.returncode == 0, first.stderr
    assert "4 created, 0 updated, 0 unchanged" in first.stdout
    again = run_cli("import-stations", str(as_json), env=cli_env)  # same stations, JSON this time
    assert again.returncode == 0, again.stderr
    assert "0 created, 0 updated, 4 unchanged" in again.stdout

    tuesday = coming_tuesday()
    in_range = Slot.starts_at >= datetime.combine(tuesday, time(), ZoneInfo("Asia/Shanghai"))
    generated = run_cli("generate-slots", "--days", "3", "--start-date", tuesday.isoformat(), env=cli_env)
    assert generated.returncode == 0, generated.stderr
    # Tue-Thu, 14 half-hour windows a day, at each of the 4 stations.
    assert "slots: 168 created, 0 updated, 0 removed" in generated.stdout
    with runtime.unit_of_work() as session:
        first_slot = session.scalars(select(Slot).where(in_range).order_by(Slot.id)).first()
        first_slot.booked = 1
    repeat = run_cli("generate-slots", "--days", "3", "--start-date", tuesday.isoformat(), env=cli_env)
    assert repeat.returncode == 0 and "slots: 0 created, 0 updated, 0 removed" in repeat.stdout
    with runtime.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(Slot).where(in_range)) == 168
        assert session.scalar(select(func.sum(Slot.booked))) == 1
        desks = dict(session.execute(select(Station.code, Station.desks)).all())
        capacity = dict(session.execute(select(Station.code, func.max(Slot.capacity)).join(Slot).group_by(Station.code))
                        .all())
    assert capacity == desks


def test_a_bad_file_is_refused_naming_station_and_field(cli_env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stations:\n  - {code: GZ-X, name: x, address: y, lat: 95, lng: 113, "
                   "opening_hours: {mon: ['09:00-12:00']}}\n", encoding="utf-8")
    result = run_cli("import-stations", str(bad), env=cli_env)
    assert result.returncode == 1
    assert "station #1 (GZ-X)" in result.stderr and "lat" in result.stderr
    assert "Traceback" not in result.stderr
