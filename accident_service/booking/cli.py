"""``accident-service import-stations`` and ``generate-slots`` (registered on the main CLI group).

Thin: parse options, open the units of work, call the plain functions in
stations.py and slots.py, print what changed. Only the database is needed,
so no app, storage or WeChat client is built; like the other commands, the
schema is upgraded first when AUTO_MIGRATE is on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime

import click
from alembic.util import CommandError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from accident_service.booking.hours import HoursError
from accident_service.booking.slots import SlotReport, reconcile_slots
from accident_service.booking.station_file import StationFileError, load_station_file
from accident_service.booking.stations import import_stations
from accident_service.clock import SystemClock
from accident_service.db import make_engine, make_session_factory, unit_of_work
from accident_service.models import Station
from accident_service.settings import Settings, load_settings


@contextmanager
def _database(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the configured database; any database failure becomes a one-line ``Error: ...``."""
    engine = None
    try:
        if settings.AUTO_MIGRATE:
            from accident_service.schema import upgrade_database

            upgrade_database(settings.DATABASE_URL)
        engine = make_engine(settings.DATABASE_URL)
        yield make_session_factory(engine)
    except SQLAlchemyError as exc:
        # The driver's own message ("no such table: station") without SQLAlchemy's SQL dump and link.
        reason = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"database: {str(reason).strip().splitlines()[0]}") from exc
    except CommandError as exc:
        raise click.ClickException(f"schema upgrade: {exc}") from exc
    finally:
        if engine is not None:
            engine.dispose()


def _reconcile(sessions: sessionmaker[Session], codes: Iterable[str], *, days: int, now: datetime,
               start_date: date | None = None) -> SlotReport:
    """One transaction per station: a failure leaves the stations done so far consistent and committed."""
    report = SlotReport()
    for code in codes:
        try:
            with unit_of_work(sessions) as session:
                report += reconcile_slots(session, start_date=start_date, days=days, now=now, station_codes=[code])
        except HoursError as exc:
            raise click.ClickException(f"station {code}: stored {exc}") from exc
    return report


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
    settings = load_settings()
    with _database(settings) as sessions:
        with unit_of_work(sessions) as session:
            counts = import_stations(session, specs)
        click.echo(f"stations: {counts}")
        report = _reconcile(sessions, [spec.code for spec in specs], days=settings.SLOT_GENERATION_DAYS,
                            now=SystemClock().now())
    _echo_slots(report)


@click.command("generate-slots")
@click.option("--days", type=click.IntRange(min=0, max=366), default=None,
              help="Local days to cover (default SLOT_GENERATION_DAYS).")
@click.option("--start-date", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="First local day, YYYY-MM-DD (default: today at each station; past times are skipped).")
def generate_slots_command(days: int | None, start_date) -> None:
    """Bring every station's future slots in line with its definition, then create the missing ones.

    Capacity follows desks (never below what is booked), slots that no longer
    fit are removed unless booked (then kept and listed). Running it again
    changes nothing.
    """
    settings = load_settings()
    first: date | None = start_date.date() if start_date is not None else None
    with _database(settings) as sessions:
        with unit_of_work(sessions) as session:
            codes = list(session.scalars(select(Station.code).order_by(Station.code)))
        report = _reconcile(sessions, codes, days=settings.SLOT_GENERATION_DAYS if days is None else days,
                            now=SystemClock().now(), start_date=first)
    _echo_slots(report)
