"""The API's lists: cases and audit events paged by cursor, stations and their free slots.

Free of Flask. Pages are keyset pages, stable under inserts: cases in
(updated_at, id) order, so a case changed while a client pages through
comes again later (a change feed: keep paging with ``updated_since``),
and audit events in id order. A cursor is opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, false, or_, select
from sqlalchemy.orm import Session, aliased, selectinload

from accident_service.api.queries import audit_event, summary
from accident_service.errors import NotFound, ServiceError
from accident_service.models import Appointment, AuditEvent, Case, CaseStatus, Party, Slot, Station
from accident_service.wechat.parsing import parse_plate


class InvalidCursor(ServiceError):
    code = "invalid_cursor"
    http_status = 400


@dataclass(frozen=True)
class CaseFilters:
    station: str | None = None  # station code
    day: date | None = None  # the appointment's day at its station
    statuses: tuple[CaseStatus, ...] = ()
    plate: str | None = None  # either party's
    updated_since: datetime | None = None


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None = None


def encode_cursor(values: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *keys: str) -> dict[str, Any]:
    """The values of a cursor this module made; InvalidCursor for anything else."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("cursor is not one this API gave out") from exc
    if not isinstance(values, dict) or set(values) != set(keys):
        raise InvalidCursor("cursor is not one this API gave out")
    return values


def _station_of_case():
    """(appointment, slot) aliases joined to the case's latest appointment: the SQL form of
    ``desk.actions.station_of`` (the station a case is handled at), for scoping lists."""
    latest = aliased(Appointment)
    slot = aliased(Slot)
    latest_id = (select(Appointment.id).where(Appointment.case_id == Case.id).order_by(Appointment.id.desc())
                 .limit(1).correlate(Case).scalar_subquery())
    return latest, slot, latest_id


def _scoped(query: Select, scope: int | None, station_code: str | None = None,
            windows: list[tuple[str, datetime, datetime]] | None = None) -> Select:
    """``query`` over cases narrowed to those handled in ``scope`` (and at ``station_code``, and with their
    appointment inside one of the per-time-zone ``windows``)."""
    latest, slot, latest_id = _station_of_case()
    query = query.outerjoin(latest, latest.id == latest_id).outerjoin(slot, slot.id == latest.slot_id)
    if scope is not None:
        query = query.where(slot.station_id == scope)
    if station_code is not None:
        query = query.where(slot.station_id == select(Station.id).where(Station.code == station_code)
                            .scalar_subquery())
    if windows is not None:
        station = aliased(Station)
        query = query.outerjoin(station, station.id == slot.station_id).where(or_(false(), *(
            and_(station.timezone == zone, slot.starts_at >= start, slot.starts_at < end)
            for zone, start, end in windows)))
    return query


def day_window(day: date, zone: str) -> tuple[datetime, datetime]:
    """The UTC start and end of ``day`` at a station in ``zone`` (the first and last representable days are
    taken as their neighbours: no slot is that old or new, and their UTC bounds would overflow)."""
    tz = ZoneInfo(zone)
    day = days_after(day, 0)
    start = datetime.combine(day, time(0), tz).astimezone(UTC)
    return start, datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(UTC)


def days_after(day: date, days: int) -> date:
    """``day`` + ``days``, kept a day inside the calendar a date can hold (any date is a valid filter)."""
    return date.fromordinal(min(max(day.toordinal() + days, 2), date.max.toordinal() - 1))


def list_cases(session: Session, *, scope: int | None, filters: CaseFilters, cursor: str | None,
               limit: int) -> Page:
    """A page of cases in (updated_at, id) order. Raises InvalidCursor."""
    windows = None
    if filters.day is not None:  # the day at each station's own wall clock: one UTC window per time zone
        windows = [(zone, *day_window(filters.day, zone))
                   for zone in session.scalars(select(Station.timezone).distinct())]
    query = _scoped(select(Case), scope, filters.station, windows)
    if filters.statuses:
        query = query.where(Case.status.in_(filters.statuses))
    if filters.plate:
        plate = parse_plate(filters.plate) or filters.plate.strip().upper()
        query = query.where(Case.id.in_(select(Party.case_id).where(Party.plate == plate)))
    if filters.updated_since is not None:
        query = query.where(Case.updated_at >= filters.updated_since)
    if cursor:
        after = decode_cursor(cursor, "u", "i")
        try:
            at, case_id = datetime.fromisoformat(after["u"]), int(after["i"])
        except (TypeError, ValueError) as exc:
            raise InvalidCursor("cursor is not one this API gave out") from exc
        query = query.where(or_(Case.updated_at > at, and_(Case.updated_at == at, Case.id > case_id)))
    query = (query.order_by(Case.updated_at, Case.id).limit(limit + 1)
             .options(selectinload(Case.parties),
                      selectinload(Case.appointments).selectinload(Appointment.slot).selectinload(Slot.station)))
    cases = session.scalars(query).all()
    page, more = cases[:limit], len(cases) > limit
    last = page[-1] if page else None
    return Page([summary(case) for case in page],
                encode_cursor({"u": last.updated_at.isoformat(), "i": last.id}) if more and last else None)


def list_audit_events(session: Session, *, scope: int | None, case_no: str | None, action: str | None,
                      since: datetime | None, cursor: str | None, limit: int) -> Page:
    """A page of audit events about cases in scope, oldest first. Raises InvalidCursor."""
    query = _scoped(select(AuditEvent, Case.case_no).join(Case, Case.id == AuditEvent.case_id), scope)
    if case_no is not None:
        query = query.where(Case.case_no == case_no)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if cursor:
        after = decode_cursor(cursor, "i")
        if not isinstance(after["i"], int):
            raise InvalidCursor("cursor is not one this API gave out")
        query = query.where(AuditEvent.id > after["i"])
    rows = session.execute(query.order_by(AuditEvent.id).limit(limit + 1)).all()
    page, more = rows[:limit], len(rows) > limit
    return Page([audit_event(event, number) for event, number in page],
                encode_cursor({"i": page[-1][0].id}) if more else None)


def list_stations(session: Session, *, scope: int | None) -> list[Station]:
    query = select(Station).order_by(Station.code)
    if scope is not None:
        query = query.where(Station.id == scope)
    return list(session.scalars(query))


def free_slots(session: Session, code: str, *, scope: int | None, day: date | None, days: int,
               now: datetime) -> tuple[Station, list[dict[str, Any]]]:
    """The station ``code`` and its slots with a free seat from ``day`` (its today by default) for ``days``
    days, not yet started. NotFound for an unknown station or one outside ``scope``."""
    station = session.scalar(select(Station).where(Station.code == code))
    if station is None or (scope is not None and station.id != scope):
        raise NotFound(f"There is no station {code} that you may see: check its code.", station=code)
    first = day or now.astimezone(ZoneInfo(station.timezone)).date()
    start, _ = day_window(first, station.timezone)
    _, end = day_window(days_after(first, days - 1), station.timezone)
    slots = session.scalars(select(Slot).where(Slot.station_id == station.id, Slot.booked < Slot.capacity,
                                               Slot.starts_at > now, Slot.starts_at >= start, Slot.starts_at < end)
                            .order_by(Slot.starts_at))
    return station, [{"id": slot.id, "starts_at": slot.starts_at, "ends_at": slot.ends_at, "capacity": slot.capacity,
                      "booked": slot.booked, "free": slot.capacity - slot.booked} for slot in slots]
