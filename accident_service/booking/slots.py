"""Slots in the database: kept in line with opening hours and desks, and taking/freeing a seat.

Capacity is only ever enforced by one conditional UPDATE
(``booked = booked + 1 WHERE booked < capacity``) in the caller's transaction:
the row lock it takes (PostgreSQL) or the write lock of ``BEGIN IMMEDIATE``
(SQLite) serialises competing bookings, and the rowcount says who won.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import bindparam, case, delete, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from accident_service.booking.hours import HoursError, load_zone, slot_windows
from accident_service.cases.facts import Visit
from accident_service.db import is_postgres
from accident_service.models import Appointment, Slot, Station

log = logging.getLogger(__name__)

# Seats are counted with Core statements on the tables: no ORM bookkeeping on the hot path.
_SLOT = Slot.__table__
_STATION = Station.__table__
_APPOINTMENT = Appointment.__table__
_TICK = timedelta(microseconds=1)


def generate_slots(session: Session, *, start_date: date | None = None, days: int,
                   now: datetime | None = None, station_codes: Iterable[str] | None = None) -> int:
    """Reconcile every station's future slots, then create the missing ones; returns how many were created.

    The nightly job's entry point: see :func:`reconcile_slots`, which does the
    work. Slots kept because they hold appointments the station no longer
    allows are logged as warnings, so the operator sees them every night until
    they are dealt with.
    """
    report = reconcile_slots(session, start_date=start_date, days=days, now=now, station_codes=station_codes)
    warn_of_kept_slots(report)
    return report.created


def warn_of_kept_slots(report: SlotReport) -> None:
    """A warning for each slot kept because it holds appointments the station no longer allows."""
    for kept in report.kept:
        log.warning("slot kept with appointments: %s", kept)


class StationHoursError(ValueError):
    """A station whose stored opening hours are invalid (:class:`HoursError`), named by its code."""

    def __init__(self, code: str, error: HoursError) -> None:
        super().__init__(f"station {code}: stored {error}")


def reconcile_station_by_station(unit_of_work: Callable[[], AbstractContextManager[Session]],
                                 codes: Iterable[str] | None = None, *, days: int, now: datetime,
                                 start_date: date | None = None) -> SlotReport:
    """:func:`reconcile_slots` for each station of ``codes`` (every station when None), a transaction each.

    A failure leaves the stations done before it committed, and a station's row stays locked only while its own
    slots are fitted: a second scheduler running the same job, or ``import-stations``, waits for one station, not
    for the whole run (every statement has the database's deadline, DATABASE_ANSWER_TIMEOUT_SECONDS). Raises
    StationHoursError for a station whose stored hours are invalid.
    """
    if codes is None:
        with unit_of_work() as session:
            codes = list(session.scalars(select(Station.code).order_by(Station.code)))
    report = SlotReport()
    for code in codes:
        try:
            with unit_of_work() as session:
                report += reconcile_slots(session, start_date=start_date, days=days, now=now, station_codes=[code])
        except HoursError as exc:
            raise StationHoursError(code, exc) from exc
    return report


def reconcile_slots(session: Session, *, start_date: date | None = None, days: int, now: datetime | None = None,
                    station_codes: Iterable[str] | None = None) -> SlotReport:
    """Make every future slot of the stations agree with their current definition, then fill the gaps.

    For each station (row-locked, so an import and the nightly job never mix
    two definitions), among slots starting after ``now``:

    * a slot that still fits the hours gets ``capacity = desks``, but never
      below its booked seats (such a slot is reported in ``kept``);
    * a slot that no longer fits (holiday, closure, hours, slot length, station
      inactive) is deleted when nobody booked it. One an appointment holds is
      kept, closed to new bookings (``capacity = booked``) and reported. One only
      a past (cancelled, moved) appointment refers to cannot be deleted (the
      foreign key); it is closed too, or, when a new window starts at the same
      time, reshaped into that window so the start time stays bookable;
    * then the windows of the local days [start_date, start_date + days) that
      have no slot are created with ``capacity = desks``, except those
      overlapping a kept slot, whose appointments already use the desks then.

    Every change is a conditional statement evaluated on the row as it is when
    written (``booked = 0`` for a delete, ``CASE WHEN booked > desks`` for a
    capacity), so a booking landing meanwhile is never lost nor overbooked.
    Running it twice changes nothing the second time.

    ``start_date`` None means each station's local date of ``now``. ``now``
    None (back-fills, tests) treats every slot from ``start_date`` on as
    future. Raises ValueError for negative ``days`` or when both are None;
    HoursError for a station with invalid stored hours.
    """
    if days < 0:
        raise ValueError("days must not be negative")
    if start_date is None and now is None:
        raise ValueError("give start_date or now")
    query = select(Station).order_by(Station.id).with_for_update()
    if station_codes is not None:
        query = query.where(Station.code.in_(list(station_codes)))
    report = SlotReport()
    for station in session.scalars(query):
        report += _reconcile_station(session, station, start_date=start_date, days=days, now=now)
    return report


@dataclass(frozen=True)
class KeptSlot:
    """A future slot left in place although the station's definition no longer allows it as it is."""

    station_code: str
    slot_id: int
    starts_at: datetime
    ends_at: datetime
    booked: int
    timezone: str
    reason: str  # NO_LONGER_OFFERED or MORE_BOOKED_THAN_DESKS

    def __str__(self) -> str:
        zone = ZoneInfo(self.timezone)
        start, end = self.starts_at.astimezone(zone), self.ends_at.astimezone(zone)
        return (f"{self.station_code} {start:%Y-%m-%d %H:%M}-{end:%H:%M} {self.timezone} (slot {self.slot_id}): "
                f"{self.booked} booked, {self.reason}")


NO_LONGER_OFFERED = "no longer offered"
MORE_BOOKED_THAN_DESKS = "more booked than desks"


@dataclass(frozen=True)
class SlotReport:
    """What :func:`reconcile_slots` did; ``kept`` lists slots the operator has to look at."""

    created: int = 0
    updated: int = 0  # capacity changed, or reshaped into a new window
    removed: int = 0
    closed: int = 0  # no longer offered, kept only because past appointments refer to it
    kept: tuple[KeptSlot, ...] = ()

    def __add__(self, other: SlotReport) -> SlotReport:
        return SlotReport(self.created + other.created, self.updated + other.updated, self.removed + other.removed,
                          self.closed + other.closed, self.kept + other.kept)

    def __str__(self) -> str:
        text = (f"{self.created} created, {self.updated} updated, {self.removed} removed, "
                f"{len(self.kept)} kept with appointments")
        return text + (f", {self.closed} closed (kept for appointment history)" if self.closed else "")


_SLOT_FIELDS = (_SLOT.c.id, _SLOT.c.starts_at, _SLOT.c.ends_at, _SLOT.c.booked)
_CHUNK = 500  # ids per IN (...): far below SQLite's bound-parameter limit


def _reconcile_station(session: Session, station: Station, *, start_date: date | None, days: int,
                       now: datetime | None) -> SlotReport:
    zone = load_zone(station.timezone)  # HoursError, naming the field, for a bad stored zone
    first_day = start_date or now.astimezone(zone).date()
    # Slots starting after the cutoff are the station's to change; a started one is never touched.
    cutoff = now if now is not None else datetime.combine(first_day, time(), zone).astimezone(UTC) - _TICK
    future = session.execute(select(*_SLOT_FIELDS).where(_SLOT.c.station_id == station.id,
                                                         _SLOT.c.starts_at > cutoff)).all()
    wanted: dict[datetime, datetime] = {}  # start -> end of every window still offered
    to_create: list[tuple[datetime, datetime]] = []
    if station.active:
        fit_from = min(first_day, cutoff.astimezone(zone).date())
        fit_until = max([first_day + timedelta(days=days)]
                        + [row.starts_at.astimezone(zone).date() + timedelta(days=1) for row in future])
        wanted = {start: end for start, end in slot_windows(station, start_date=fit_from,
                                                           days=(fit_until - fit_from).days) if start > cutoff}
        to_create = [window for window in slot_windows(station, start_date=first_day, days=days)
                     if window[0] > cutoff]
    fitting = [row.id for row in future if wanted.get(row.starts_at) == row.ends_at]
    misfits = [row.id for row in future if wanted.get(row.starts_at) != row.ends_at]

    removed = _delete_unbooked(session, misfits)
    remaining = [slot_id for slot_id in misfits if slot_id not in removed]
    closed = _close_to_new_bookings(session, remaining)
    updated = _follow_desks(session, fitting, station.desks)

    # Read back what is left. The remaining misfits are closed now, so their booked counts can only go down.
    left = session.execute(select(*_SLOT_FIELDS).where(_SLOT.c.station_id == station.id,
                                                       _SLOT.c.starts_at > cutoff)).all()
    remaining_ids, fitting_ids = set(remaining), set(fitting)
    remaining_rows = [row for row in left if row.id in remaining_ids]
    # A kept slot's appointments already sit at the desks then: a window across it would overbook them.
    busy = [(row.starts_at, row.ends_at) for row in remaining_rows if row.booked > 0]

    def overlaps_busy(start: datetime, end: datetime) -> bool:
        return any(start < busy_end and busy_start < end for busy_start, busy_end in busy)

    reshapable = {row.id: wanted[row.starts_at] for row in remaining_rows
                  if row.booked == 0 and row.starts_at in wanted and not overlaps_busy(row.starts_at,
                                                                                       wanted[row.starts_at])}
    reshaped = _reshape_unbooked(session, reshapable, station.desks)
    kept = tuple(
        KeptSlot(station.code, row.id, row.starts_at, row.ends_at, row.booked, station.timezone,
                 MORE_BOOKED_THAN_DESKS if row.id in fitting_ids else NO_LONGER_OFFERED)
        for row in sorted(left, key=lambda row: row.starts_at)
        if (row.id in fitting_ids and row.booked > station.desks)
        or (row.id in remaining_ids and row.booked > 0 and row.id not in reshaped))

    taken_starts = {row.starts_at for row in left}
    rows = [{"station_id": station.id, "starts_at": start, "ends_at": end, "capacity": station.desks, "booked": 0}
            for start, end in to_create if start not in taken_starts and not overlaps_busy(start, end)]
    return SlotReport(created=_insert_missing(session, rows) if rows else 0,
                      updated=len(updated) + len(reshaped), removed=len(removed),
                      closed=len(closed - reshaped - {slot.slot_id for slot in kept}), kept=kept)


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for offset in range(0, len(ids), _CHUNK):
        yield ids[offset:offset + _CHUNK]


def _delete_unbooked(session: Session, slot_ids: list[int]) -> set[int]:
    """Delete the slots nobody holds; the ``booked = 0`` is checked on the row as it is deleted."""
    connection = session.connection()
    no_history = ~select(_APPOINTMENT.c.id).where(_APPOINTMENT.c.slot_id == _SLOT.c.id).exists()
    deleted: set[int] = set()
    for chunk in _chunks(slot_ids):
        deleted.update(connection.execute(
            delete(_SLOT).where(_SLOT.c.id.in_(chunk), _SLOT.c.booked == 0, no_history).returning(_SLOT.c.id)
        ).scalars())
    return deleted


def _reshape_unbooked(session: Session, new_ends: dict[int, datetime], desks: int) -> set[int]:
    """Turn closed, unbooked slots that only history refers to into the new window starting at the same time.

    Such a slot cannot be deleted (the appointment's foreign key), and the
    (station, starts_at) unique key would keep the new window from being
    created: its start time would silently disappear from the offers. The old
    appointment then shows the new end time, which is the lesser harm.
    """
    connection = session.connection()
    reshaped: set[int] = set()
    for slot_id, new_end in new_ends.items():
        reshaped.update(connection.execute(
            update(_SLOT).where(_SLOT.c.id == slot_id, _SLOT.c.booked == 0)
            .values(ends_at=new_end, capacity=desks).returning(_SLOT.c.id)).scalars())
    return reshaped


def _close_to_new_bookings(session: Session, slot_ids: list[int]) -> set[int]:
    """``capacity = booked``: what is booked stays, nothing more can be. Returns the slots changed."""
    connection = session.connection()
    closed: set[int] = set()
    for chunk in _chunks(slot_ids):
        closed.update(connection.execute(
            update(_SLOT).where(_SLOT.c.id.in_(chunk), _SLOT.c.capacity != _SLOT.c.booked)
            .values(capacity=_SLOT.c.booked).returning(_SLOT.c.id)).scalars())
    return closed


def _follow_desks(session: Session, slot_ids: list[int], desks: int) -> set[int]:
    """``capacity = GREATEST(desks, booked)``, portable: a lower desk count never unbooks anyone."""
    connection = session.connection()
    capacity = case((_SLOT.c.booked > desks, _SLOT.c.booked), else_=literal(desks))
    changed: set[int] = set()
    for chunk in _chunks(slot_ids):
        changed.update(connection.execute(
            update(_SLOT).where(_SLOT.c.id.in_(chunk), _SLOT.c.capacity != capacity)
            .values(capacity=capacity).returning(_SLOT.c.id)).scalars())
    return changed


def _insert_missing(session: Session, rows: list[dict]) -> int:
    dialect = postgresql if is_postgres(session) else sqlite
    statement = (dialect.insert(Slot).on_conflict_do_nothing(index_elements=["station_id", "starts_at"])
                 .returning(Slot.id))
    return len(session.execute(statement, rows).all())


def visit_at(session: Session, slot_id: int) -> Visit | None:
    """Where and when slot ``slot_id`` is (its station's name, address and zone), or None if there is no such slot."""
    row = session.connection().execute(_VISIT_AT, {"slot_id": slot_id}).first()
    return Visit(*row) if row is not None else None


_VISIT_AT = (select(_STATION.c.name, _STATION.c.address, _STATION.c.timezone, _SLOT.c.starts_at, _SLOT.c.ends_at)
             .join_from(_SLOT, _STATION, _STATION.c.id == _SLOT.c.station_id)
             .where(_SLOT.c.id == bindparam("slot_id")))


def take_seat(session: Session, slot_id: int, *, now: datetime) -> bool:
    """Book one seat in a slot that starts after ``now``; False when it is full, past or unknown.

    The conditional UPDATE is the whole capacity check: no SELECT before it.
    """
    result = session.connection().execute(
        update(_SLOT).where(_SLOT.c.id == slot_id, _SLOT.c.booked < _SLOT.c.capacity, _SLOT.c.starts_at > now)
        .values(booked=_SLOT.c.booked + 1))
    forget_booked_count(session, slot_id)
    return result.rowcount == 1


def free_seat(session: Session, slot_id: int) -> bool:
    """Give one seat back; False if the slot had none booked (never goes below zero)."""
    result = session.connection().execute(
        update(_SLOT).where(_SLOT.c.id == slot_id, _SLOT.c.booked > 0).values(booked=_SLOT.c.booked - 1))
    forget_booked_count(session, slot_id)
    return result.rowcount == 1


def move_seat(session: Session, *, to: int, away_from: int | None, now: datetime) -> bool:
    """Take a seat in ``to`` and, when moving, give one back in ``away_from``; False (nothing changed) if full.

    The two slot rows are locked in id order, so two drivers swapping slots in
    opposite directions cannot deadlock. The caller runs this inside a
    savepoint and rolls it back on False: a seat freed first is then restored.
    """
    if away_from is None:
        return take_seat(session, to, now=now)
    if away_from < to:
        free_seat(session, away_from)
        return take_seat(session, to, now=now)
    if not take_seat(session, to, now=now):
        return False
    free_seat(session, away_from)
    return True


def forget_booked_count(session: Session, slot_id: int) -> None:
    """A Slot already loaded in this session now holds a stale count: reload it on next access."""
    loaded = session.identity_map.get(identity_key(Slot, slot_id))
    if loaded is not None:
        session.expire(loaded, ["booked"])
