"""Slots in the database: generation from opening hours, and taking/freeing a seat.

Capacity is only ever enforced by one conditional UPDATE
(``booked = booked + 1 WHERE booked < capacity``) in the caller's transaction:
the row lock it takes (PostgreSQL) or the write lock of ``BEGIN IMMEDIATE``
(SQLite) serialises competing bookings, and the rowcount says who won.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from accident_service.booking.hours import slot_windows
from accident_service.db import is_postgres
from accident_service.models import Slot, Station

# Seats are counted with Core statements on the tables: no ORM bookkeeping on the hot path.
_SLOT = Slot.__table__
_STATION = Station.__table__
_STATION_FIELDS = tuple(select(column).where(_STATION.c.id == _SLOT.c.station_id).scalar_subquery()
                        for column in (_STATION.c.name, _STATION.c.address, _STATION.c.timezone))


@dataclass(frozen=True)
class TakenSeat:
    """The slot a seat was just taken in, with what a notice shows of its station.

    All of it comes back from the UPDATE's RETURNING: no SELECT before or after.
    """

    slot_id: int
    station_id: int
    starts_at: datetime
    ends_at: datetime
    station_name: str
    station_address: str
    station_timezone: str


def generate_slots(session: Session, *, start_date: date | None = None, days: int,
                   now: datetime | None = None, station_codes: Iterable[str] | None = None) -> int:
    """Create the missing slots of every active station for ``days`` local days; returns how many.

    ``start_date`` None means each station's own local date of ``now``.
    Windows starting at or before ``now`` (when given) are skipped. Existing
    slots are never touched (their booked count and capacity stay), and two
    generators running at once are safe: the insert skips rows that appeared
    meanwhile (``ON CONFLICT DO NOTHING`` on the unique (station, starts_at)).
    New slots get ``capacity = station.desks``.

    Raises ValueError for negative ``days`` or when both ``start_date`` and
    ``now`` are None; HoursError for a station with invalid stored hours.
    """
    if days < 0:
        raise ValueError("days must not be negative")
    if start_date is None and now is None:
        raise ValueError("give start_date or now")
    query = select(Station).where(Station.active.is_(True)).order_by(Station.id)
    if station_codes is not None:
        query = query.where(Station.code.in_(list(station_codes)))
    created = 0
    for station in session.scalars(query):
        first_day = start_date or now.astimezone(ZoneInfo(station.timezone)).date()
        windows = slot_windows(station, start_date=first_day, days=days)
        if now is not None:
            windows = [window for window in windows if window[0] > now]
        if not windows:
            continue
        existing = set(session.scalars(select(Slot.starts_at).where(
            Slot.station_id == station.id, Slot.starts_at >= windows[0][0], Slot.starts_at <= windows[-1][0])))
        rows = [{"station_id": station.id, "starts_at": starts_at, "ends_at": ends_at, "capacity": station.desks,
                 "booked": 0} for starts_at, ends_at in windows if starts_at not in existing]
        if rows:
            created += _insert_missing(session, rows)
    return created


def _insert_missing(session: Session, rows: list[dict]) -> int:
    dialect = postgresql if is_postgres(session) else sqlite
    statement = (dialect.insert(Slot).on_conflict_do_nothing(index_elements=["station_id", "starts_at"])
                 .returning(Slot.id))
    return len(session.execute(statement, rows).all())


def take_seat(session: Session, slot_id: int, *, now: datetime) -> TakenSeat | None:
    """Book one seat in a slot that starts after ``now``; None when it is full, past or unknown.

    The conditional UPDATE is the whole capacity check: no SELECT before it.
    """
    row = session.connection().execute(
        update(_SLOT)
        .where(_SLOT.c.id == slot_id, _SLOT.c.booked < _SLOT.c.capacity, _SLOT.c.starts_at > now)
        .values(booked=_SLOT.c.booked + 1)
        .returning(_SLOT.c.id, _SLOT.c.station_id, _SLOT.c.starts_at, _SLOT.c.ends_at, *_STATION_FIELDS)
    ).first()
    forget_booked_count(session, slot_id)
    return TakenSeat(*row) if row is not None else None


def free_seat(session: Session, slot_id: int) -> bool:
    """Give one seat back; False if the slot had none booked (never goes below zero)."""
    result = session.connection().execute(
        update(_SLOT).where(_SLOT.c.id == slot_id, _SLOT.c.booked > 0).values(booked=_SLOT.c.booked - 1))
    forget_booked_count(session, slot_id)
    return result.rowcount == 1


def restore_seat(session: Session, slot_id: int) -> None:
    """Undo :func:`free_seat` in the same transaction (the row is still locked by us)."""
    session.connection().execute(update(_SLOT).where(_SLOT.c.id == slot_id).values(booked=_SLOT.c.booked + 1))
    forget_booked_count(session, slot_id)


def forget_booked_count(session: Session, slot_id: int) -> None:
    """A Slot already loaded in this session now holds a stale count: reload it on next access."""
    loaded = session.identity_map.get(identity_key(Slot, slot_id))
    if loaded is not None:
        session.expire(loaded, ["booked"])

