"""The desk's read side: the day's queue, its counts, and search. Plain functions over a session, no Flask.

A queue row is an appointment held for a slot of the day: booked, confirmed,
checked in, completed or no-show. Moved (rescheduled) and cancelled
appointments are not shown: the case is listed where its appointment is now.
The badge is the case's status, or ``overdue_retake`` when a photo the desk
asked for is past its deadline. Plates are masked here (lists); the case page
shows them in full.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from accident_service.cases.service import mask
from accident_service.clock import HOME_TIMEZONE
from accident_service.models import Appointment, AppointmentStatus, Case, Party, PartyRole, Slot, Station

DEFAULT_TIMEZONE = HOME_TIMEZONE  # a supervisor's "today" when no station is chosen
SHOWN_APPOINTMENTS = (AppointmentStatus.BOOKED, AppointmentStatus.CONFIRMED, AppointmentStatus.CHECKED_IN,
                      AppointmentStatus.COMPLETED, AppointmentStatus.NO_SHOW)
#: What the counts bar shows and the status filter accepts, in the order of a desk's day.
BADGES = ("booked", "confirmed", "retake_requested", "overdue_retake", "checked_in", "completed", "no_show")
SEARCH_DAYS = 30  # search looks this many days either side of the chosen date (bounded, index-driven)
SEARCH_LIMIT = 100
# Stations lie within UTC-12..UTC+14: a day anywhere falls inside these bounds around its UTC midnight.
_ZONE_SLACK = timedelta(hours=14)


@dataclass(frozen=True)
class QueueRow:
    case_no: str
    case_status: str
    version: int
    station_code: str
    starts_at: datetime  # UTC
    ends_at: datetime
    local_start: datetime  # the station's wall time
    local_end: datetime
    plate_a: str | None  # masked
    plate_b: str | None
    retake_due_at: datetime | None  # the earliest photo the desk is waiting for
    retake_overdue: bool

    @property
    def badge(self) -> str:
        return "overdue_retake" if self.retake_overdue else self.case_status

    @property
    def can_confirm(self) -> bool:
        return self.case_status == "booked"

    @property
    def can_check_in(self) -> bool:
        return self.case_status in ("booked", "confirmed", "retake_requested")


@dataclass(frozen=True)
class SlotGroup:
    local_start: datetime
    local_end: datetime
    rows: tuple[QueueRow, ...]


@dataclass(frozen=True)
class Queue:
    day: date
    rows: tuple[QueueRow, ...]

    @property
    def counts(self) -> dict[str, int]:
        """Rows per badge; ``retake_requested`` includes the overdue ones (they are requested too)."""
        counts = dict.fromkeys(BADGES, 0)
        for row in self.rows:
            counts[row.case_status] = counts.get(row.case_status, 0) + 1
            if row.retake_overdue:
                counts["overdue_retake"] += 1
        return counts

    def filtered(self, status: str | None) -> list[QueueRow]:
        if not status:
            return list(self.rows)
        if status == "overdue_retake":
            return [row for row in self.rows if row.retake_overdue]
        return [row for row in self.rows if row.case_status == status]

    def groups(self, status: str | None = None) -> list[SlotGroup]:
        """The rows shown for ``status`` (all when None), grouped by slot time in start order."""
        return group_by_slot(self.filtered(status))


def group_by_slot(rows: Iterable[QueueRow]) -> list[SlotGroup]:
    groups: dict[tuple[datetime, datetime], list[QueueRow]] = {}
    for row in rows:
        groups.setdefault((row.local_start, row.local_end), []).append(row)
    return [SlotGroup(start, end, tuple(members)) for (start, end), members in groups.items()]


def day_bounds(day: date, timezone: str) -> tuple[datetime, datetime]:
    """The UTC instants at which ``day`` starts and ends in ``timezone`` (DST-safe)."""
    zone = ZoneInfo(timezone)
    start = datetime.combine(day, time(), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def local_today(now: datetime, timezone: str) -> date:
    return now.astimezone(ZoneInfo(timezone)).date()


def station_timezone(session: Session, station_id: int | None) -> str:
    """The zone a station's days are counted in (supervisors without a station: DEFAULT_TIMEZONE)."""
    if station_id is None:
        return DEFAULT_TIMEZONE
    return session.scalar(select(Station.timezone).where(Station.id == station_id)) or DEFAULT_TIMEZONE


def day_queue(session: Session, *, day: date, station_id: int | None, now: datetime) -> Queue:
    """The appointments held for ``day`` at ``station_id`` (every station for None), in slot order.

    For one station the day is bounded exactly in its zone, so the query is a
    range on the (station_id, starts_at) unique index; across stations each
    row is kept if it falls on ``day`` in its own station's zone.
    """
    if station_id is not None:
        start, end = day_bounds(day, station_timezone(session, station_id))
        query = queue_statement(station_id=station_id, start=start, end=end)
    else:
        start, end = day_bounds(day, "UTC")
        query = _queue_query().where(Slot.starts_at >= start - _ZONE_SLACK, Slot.starts_at < end + _ZONE_SLACK)
    rows = [_row(record, now) for record in session.execute(query)]
    return Queue(day, tuple(row for row in rows if row.local_start.date() == day))


def queue_statement(*, station_id: int, start: datetime, end: datetime) -> Select:
    """The queue's query for one station between two instants (also what the benchmark EXPLAINs)."""
    return _queue_query().where(Slot.station_id == station_id, Slot.starts_at >= start, Slot.starts_at < end)


def search(session: Session, text: str, *, station_id: int | None, around: date, now: datetime) -> list[QueueRow]:
    """Rows whose case number or either plate contains ``text`` (case-insensitive), within SEARCH_DAYS of
    ``around``, newest slot first, at most SEARCH_LIMIT."""
    needle = normalise_search(text)
    if not needle:
        return []
    start = datetime.combine(around - timedelta(days=SEARCH_DAYS), time(), tzinfo=UTC)
    end = datetime.combine(around + timedelta(days=SEARCH_DAYS + 1), time(), tzinfo=UTC)
    pattern = f"%{needle}%"
    query = _queue_query(newest_first=True).where(
        Slot.starts_at >= start - _ZONE_SLACK, Slot.starts_at < end + _ZONE_SLACK,
        or_(func.upper(Case.case_no).like(pattern), func.upper(_PARTY_A.plate).like(pattern),
            func.upper(_PARTY_B.plate).like(pattern))).limit(SEARCH_LIMIT)
    if station_id is not None:
        query = query.where(Slot.station_id == station_id)
    return [_row(record, now) for record in session.execute(query)]


def exact_case_no(session: Session, text: str, *, station_id: int | None) -> str | None:
    """The case number ``text`` names exactly, if that case is in scope (officers: held at their station)."""
    needle = normalise_search(text)
    if not re.fullmatch(r"\d{8}-[0-9A-Z]{5}", needle):
        return None
    query = (select(Case.case_no).join(Appointment, Appointment.case_id == Case.id)
             .join(Slot, Slot.id == Appointment.slot_id).where(Case.case_no == needle))
    if station_id is not None:
        # The station of a case is that of its latest appointment (desk.actions.station_of).
        later = aliased(Appointment)
        latest = select(func.max(later.id)).where(later.case_id == Case.id).scalar_subquery()
        query = query.where(Appointment.id == latest, Slot.station_id == station_id)
    return session.scalar(query.limit(1))


def normalise_search(text: str) -> str:
    """Upper case without blanks; full-width letters and digits read as ASCII (a Chinese IME types them)."""
    folded = "".join(chr(ord(c) - 0xFEE0) if "\uff01" <= c <= "\uff5e" else c for c in text)
    return re.sub(r"\s+", "", folded).upper().replace("%", "").replace("_", "")[:32]


_PARTY_A, _PARTY_B = aliased(Party), aliased(Party)


@functools.cache
def _queue_query(*, newest_first: bool = False) -> Select:
    """Built once: a select is immutable, each request only adds its WHERE clauses to a copy."""
    order = (Slot.starts_at.desc(),) if newest_first else (Slot.starts_at,)
    return (select(Case.case_no, Case.status, Case.version, Station.code, Station.timezone, Slot.starts_at,
                   Slot.ends_at, _PARTY_A.plate, _PARTY_A.retake_item, _PARTY_A.retake_due_at, _PARTY_B.plate,
                   _PARTY_B.retake_item, _PARTY_B.retake_due_at)
            .select_from(Slot)
            .join(Appointment, Appointment.slot_id == Slot.id)
            .join(Case, Case.id == Appointment.case_id)
            .join(Station, Station.id == Slot.station_id)
            .outerjoin(_PARTY_A, and_(_PARTY_A.case_id == Case.id, _PARTY_A.role == PartyRole.A))
            .outerjoin(_PARTY_B, and_(_PARTY_B.case_id == Case.id, _PARTY_B.role == PartyRole.B))
            .where(Appointment.status.in_(SHOWN_APPOINTMENTS))
            .order_by(*order, Station.code, Case.case_no))


def _row(record: Sequence, now: datetime) -> QueueRow:
    (case_no, status, version, station_code, timezone, starts_at, ends_at,
     plate_a, retake_a, due_a, plate_b, retake_b, due_b) = record
    zone = ZoneInfo(timezone)
    dues = [due for item, due in ((retake_a, due_a), (retake_b, due_b)) if item and due is not None]
    due = min(dues, default=None)
    return QueueRow(case_no=case_no, case_status=getattr(status, "value", status), version=version,
                    station_code=station_code, starts_at=starts_at, ends_at=ends_at,
                    local_start=starts_at.astimezone(zone), local_end=ends_at.astimezone(zone),
                    plate_a=mask("plate", plate_a), plate_b=mask("plate", plate_b),
                    retake_due_at=due, retake_overdue=due is not None and due <= now)
