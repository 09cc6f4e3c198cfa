"""``accident-service import-stations`` and ``generate-slots`` (registered on the main CLI group).

Thin: parse options, open the units of work, call the plain functions in
stations.py and slots.py, print what changed. Like the other commands they
use the runtime of the app the console script built once (the schema upgraded
first when AUTO_MIGRATE is on); only its database is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from accident_service.booking.slots import SlotReport, StationHoursError, reconcile_station_by_station
from accident_service.booking.station_file import StationFileError, load_station_file
from accident_service.booking.stations import import_stations
from accident_service.cli_runtime import command_runtime
from accident_service.db import unit_of_work
from accident_service.runtime import Runtime


@contextmanager
def _database(runtime: Runtime) -> Iterator[sessionmaker[Session]]:
    """Sessions on the configured database; any database failure becomes a one-line ``Error: ...``."""
    try:
        yield runtime.session_factory
    except SQLAlchemyError as exc:
        # The driver's own message ("no such table: station") without SQLAlchemy's SQL dump and link.
        reason = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"database: {str(reason).strip().splitlines()[0]}") from exc


def _reconcile(sessions: sessionmaker[Session], codes: Iterable[str] | None, *, days: int, now: datetime,
               start_date: date | None = None) -> SlotReport:
    try:
        return reconcile_station_by_station(lambda: unit_of_work(sessions), codes, days=days, now=now,
                                            start_date=start_date)
    except StationHoursError as exc:
        raise click.ClickException(str(exc)) from exc


def _echo_slots(report: SlotReport) -> None:
    click.echo(f"slots: {report}")
    for kept in report.kept:
        click.echo(f"  kept {kept}")


@click.command("import-stations")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def import_stations_command(file: str) -> None:
    """Create or update stations from a YAML or JSON FILE (by code; running it again changes nothing).

    Then their future slots are brought in line with the file (capacity,
    hours, holidays, slot length) and the missing ones created for
    SLOT_GENERATION_DAYS; slots holding appointments are kept and listed.
    """
    try:
        specs = load_station_file(file)
    except StationFileError as exc:
        raise click.ClickException(exc.message) from exc
    runtime = command_runtime()
    with _database(runtime) as sessions:
        with unit_of_work(sessions) as session:
            counts = import_stations(session, specs)
        click.echo(f"stations: {counts}")
        report = _reconcile(sessions, [spec.code for spec in specs], days=runtime.settings.SLOT_GENERATION_DAYS,
                            now=runtime.clock.now())
    _echo_slots(report)


@click.command("generate-slots")
@click.option("--days", type=click.IntRange(min=0, max=366), default=None,
              help="Local days to cover (default SLOT_GENERATION_DAYS); 0 creates no slots and only brings the "
                   "existing future ones in line.")
@click.option("--start-date", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="First local day, YYYY-MM-DD (default: today at each station; past times are skipped).")
def generate_slots_command(days: int | None, start_date) -> None:
    """Bring every station's future slots in line with its definition, then create the missing ones.

    Capacity follows desks (never below what is booked), slots that no longer
    fit are removed unless booked (then kept and listed). Running it again
    changes nothing.
    """
    runtime = command_runtime()
    first: date | None = start_date.date() if start_date is not None else None
    with _database(runtime) as sessions:
        report = _reconcile(sessions, None, days=runtime.settings.SLOT_GENERATION_DAYS if days is None else days,
                            now=runtime.clock.now(), start_date=first)
    _echo_slots(report)
