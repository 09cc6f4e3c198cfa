"""``accident-service import-stations`` and ``generate-slots`` (registered on the main CLI group).

Thin: parse options, open one unit of work, call the plain functions in
stations.py and slots.py, print what changed. Only the database is needed,
so no app, storage or WeChat client is built.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import click
from sqlalchemy.orm import Session

from accident_service.booking.slots import generate_slots
from accident_service.booking.station_file import StationFileError, load_station_file
from accident_service.booking.stations import import_stations
from accident_service.clock import SystemClock
from accident_service.db import make_engine, make_session_factory, unit_of_work
from accident_service.settings import Settings, load_settings


@contextmanager
def _database(settings: Settings) -> Iterator[Session]:
    engine = make_engine(settings.DATABASE_URL)
    try:
        with unit_of_work(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


@click.command("import-stations")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def import_stations_command(file: str) -> None:
    """Create or update stations from a YAML or JSON FILE (by code; running it again changes nothing)."""
    try:
        specs = load_station_file(file)
    except StationFileError as exc:
        raise click.ClickException(exc.message) from exc
    with _database(load_settings()) as session:
        counts = import_stations(session, specs)
    click.echo(f"stations: {counts}")


@click.command("generate-slots")
@click.option("--days", type=click.IntRange(min=0, max=366), default=None,
              help="Local days to cover (default SLOT_GENERATION_DAYS).")
@click.option("--start-date", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="First local day, YYYY-MM-DD (default: today at each station; past times are skipped).")
def generate_slots_command(days: int | None, start_date) -> None:
    """Create the missing booking slots from each active station's opening hours.

    Existing slots are left untouched, so running it again creates nothing new.
    """
    settings = load_settings()
    first: date | None = start_date.date() if start_date is not None else None
    with _database(settings) as session:
        created = generate_slots(session, start_date=first, days=settings.SLOT_GENERATION_DAYS if days is None
                                 else days, now=SystemClock().now() if first is None else None)
    click.echo(f"slots: {created} created")
