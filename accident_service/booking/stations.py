"""Stations in the database: upsert from the stations file, read for availability."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from accident_service.booking.station_file import StationSpec
from accident_service.models import Station


@dataclass(frozen=True)
class ImportCounts:
    """What :func:`import_stations` did, per station."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def __str__(self) -> str:
        return f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged"


def import_stations(session: Session, specs: Iterable[StationSpec]) -> ImportCounts:
    """Insert or update stations by code; running it twice with one file changes nothing.

    Stations missing from ``specs`` are left as they are (deactivate them with
    ``active: false`` in the file: their history stays). Slots are not
    touched here: run :func:`accident_service.booking.slots.reconcile_slots`
    afterwards (``import-stations`` does) so future slots follow the new
    definition. Raises sqlalchemy errors only (the specs are already valid).
    """
    specs = list(specs)
    existing = {station.code: station for station in session.scalars(
        select(Station).where(Station.code.in_([spec.code for spec in specs])).with_for_update())}
    created = updated = unchanged = 0
    for spec in specs:
        record = spec.to_record()
        station = existing.get(spec.code)
        if station is None:
            session.add(Station(**record))
            created += 1
            continue
        changed = {name: value for name, value in record.items() if getattr(station, name) != value}
        for name, value in changed.items():
            setattr(station, name, value)
        if changed:
            updated += 1
        else:
            unchanged += 1
    session.flush()
    return ImportCounts(created, updated, unchanged)


def active_stations(session: Session) -> list[Station]:
    """Every station that takes bookings, in code order."""
    return list(session.scalars(select(Station).where(Station.active.is_(True)).order_by(Station.code)))
