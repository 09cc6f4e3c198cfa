"""Supervisors' figures: a day's summary per station, and appointments of a date range as CSV rows.

Plain functions over a session, no Flask. Days are counted in each station's
own zone. Plates are masked in the export, as in every list.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, aliased

from accident_service.cases.service import mask
from accident_service.desk.queries import SHOWN_APPOINTMENTS
from accident_service.models import Appointment, AppointmentStatus, Case, Party, PartyRole, Slot, Station

MAX_EXPORT_DAYS = 92  # a quarter: an export is a report, not a database dump
_ZONE_SLACK = timedelta(hours=14)
CSV_HEADER = ("station", "date", "slot", "case_no", "case_status", "appointment_status", "plate_a", "plate_b",
              "liability", "handled_by", "checked_in_at", "completed_at", "minutes_to_complete")


class ExportRangeInvalid(ValueError):
    """The range is reversed or longer than MAX_EXPORT_DAYS."""


@dataclass(frozen=True)
class StationDay:
    code: str
    name: str
    booked: int  # appointments held for the day (moved and cancelled ones not counted)
    handled: int  # completed
    no_shows: int
    waiting: int  # booked, confirmed or checked in: not done yet
    median_minutes: float | None  # from check-in to completion, over the completed ones

    @property
    def median_label(self) -> str:
        return "-" if self.median_minutes is None else f"{self.median_minutes:.0f}"


@dataclass(frozen=True)
class _Visit:
    station: Station
    starts_at: datetime
    status: AppointmentStatus
    checked_in_at: datetime | None
    completed_at: datetime | None
    case_no: str
    case_status: str
    liability: str | None
    handled_by: str | None
    plate_a: str | None
    plate_b: str | None

    @property
    def local_start(self) -> datetime:
        return self.starts_at.astimezone(ZoneInfo(self.station.timezone))

    @property
    def minutes(self) -> float | None:
        if self.checked_in_at is None or self.completed_at is None:
            return None
        return (self.completed_at - self.checked_in_at).total_seconds() / 60


def day_summary(session: Session, day: date) -> list[StationDay]:
    """Every active station (and any other with appointments that day), in code order."""
    visits = _visits(session, day, day)
    stations = {s.id: s for s in session.scalars(select(Station).where(Station.active.is_(True)))}
    stations |= {v.station.id: v.station for v in visits}
    summary = []
    for station in sorted(stations.values(), key=lambda s: s.code):
        mine = [v for v in visits if v.station.id == station.id]
        minutes = [m for v in mine if v.status is AppointmentStatus.COMPLETED and (m := v.minutes) is not None]
        summary.append(StationDay(
            code=station.code, name=station.name, booked=len(mine),
            handled=sum(v.status is AppointmentStatus.COMPLETED for v in mine),
            no_shows=sum(v.status is AppointmentStatus.NO_SHOW for v in mine),
            waiting=sum(v.status in (AppointmentStatus.BOOKED, AppointmentStatus.CONFIRMED,
                                     AppointmentStatus.CHECKED_IN) for v in mine),
            median_minutes=statistics.median(minutes) if minutes else None))
    return summary


def export_rows(session: Session, first: date, last: date) -> Iterator[tuple[str, ...]]:
    """CSV_HEADER, then one row per appointment held from ``first`` to ``last`` (inclusive), in slot order.

    Raises ExportRangeInvalid.
    """
    if last < first or (last - first).days + 1 > MAX_EXPORT_DAYS:
        raise ExportRangeInvalid(f"a range of 1 to {MAX_EXPORT_DAYS} days, first day first")
    yield CSV_HEADER
    for visit in _visits(session, first, last):
        zone = ZoneInfo(visit.station.timezone)
        minutes = visit.minutes
        yield (visit.station.code, visit.local_start.date().isoformat(), f"{visit.local_start:%H:%M}",
               visit.case_no, visit.case_status, visit.status.value, visit.plate_a or "", visit.plate_b or "",
               visit.liability or "", visit.handled_by or "", _local_text(visit.checked_in_at, zone),
               _local_text(visit.completed_at, zone), "" if minutes is None else f"{minutes:.0f}")


def _local_text(moment: datetime | None, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M") if moment is not None else ""


def _visits(session: Session, first: date, last: date) -> list[_Visit]:
    """Appointments held for ``first``..``last``, each day taken in its station's zone."""
    start = datetime.combine(first, time(), tzinfo=UTC) - _ZONE_SLACK
    end = datetime.combine(last + timedelta(days=1), time(), tzinfo=UTC) + _ZONE_SLACK
    party_a, party_b = aliased(Party), aliased(Party)
    query = (select(Station, Slot.starts_at, Appointment.status, Appointment.checked_in_at,
                    Appointment.completed_at, Case.case_no, Case.status, Case.liability, Case.handled_by,
                    party_a.plate, party_b.plate)
             .select_from(Slot).join(Station, Station.id == Slot.station_id)
             .join(Appointment, Appointment.slot_id == Slot.id).join(Case, Case.id == Appointment.case_id)
             .outerjoin(party_a, and_(party_a.case_id == Case.id, party_a.role == PartyRole.A))
             .outerjoin(party_b, and_(party_b.case_id == Case.id, party_b.role == PartyRole.B))
             .where(Slot.starts_at >= start, Slot.starts_at < end, Appointment.status.in_(SHOWN_APPOINTMENTS))
             .order_by(Slot.starts_at, Station.code, Case.case_no))
    visits = [_Visit(station, starts_at, status, checked_in, completed, case_no, case_status.value, liability,
                     handled_by, mask("plate", plate_a), mask("plate", plate_b))
              for (station, starts_at, status, checked_in, completed, case_no, case_status, liability, handled_by,
                   plate_a, plate_b) in session.execute(query)]
    return [v for v in visits if first <= v.local_start.date() <= last]
