"""Rows for booking tests: stations, slots and ready cases. Tests state only what matters."""

from __future__ import annotations

import hashlib
import itertools
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from accident_service.booking import offers as booking
from accident_service.models import (
    Appointment,
    Case,
    CaseStatus,
    Notification,
    Party,
    PartyRole,
    Photo,
    PhotoStatus,
    Slot,
    Station,
)
from accident_service.notify import dispatch
from accident_service.runtime import Runtime

# Tianhe, Guangzhou; the stations below are placed at known distances from it.
ACCIDENT = (23.1291, 113.3270)
WEEKDAYS = {day: ["09:00-12:00", "13:30-17:30"] for day in ("mon", "tue", "wed", "thu", "fri")}
_numbers = itertools.count(1)


def station(session: Session, code: str, *, km_north: float = 0.0, desks: int = 2, name: str | None = None,
            **fields) -> Station:
    """A station ``km_north`` km north of the accident (1 degree of latitude ~ 111.2 km)."""
    row = Station(code=code, name=name or f"{code} 事故处理点", address=f"广州市 {code} 路 1 号",
                  lat=ACCIDENT[0] + km_north / 111.195, lng=ACCIDENT[1], timezone="Asia/Shanghai",
                  opening_hours=WEEKDAYS, holidays=[], closures=[], slot_minutes=30, desks=desks, active=True)
    for key, value in fields.items():
        setattr(row, key, value)
    session.add(row)
    session.flush()
    return row


def slot(session: Session, station_row: Station, starts_at: datetime, *, capacity: int = 2, booked: int = 0,
         minutes: int = 30) -> Slot:
    row = Slot(station_id=station_row.id, starts_at=starts_at, ends_at=starts_at + timedelta(minutes=minutes),
               capacity=capacity, booked=booked)
    session.add(row)
    session.flush()
    return row


def ready_case(session: Session, now: datetime, *, location: tuple[float, float] | None = ACCIDENT,
               languages: tuple[str, str] = ("zh", "zh"), photos: int = 4) -> Case:
    """A READY case with both parties (plates, phones) and ``photos`` accepted photos."""
    n = next(_numbers)
    case = Case(case_no=f"20261125-T{n:04d}", status=CaseStatus.READY, join_code=f"{n % 1_000_000:06d}", version=1,
                location_lat=location[0] if location else None, location_lng=location[1] if location else None,
                created_at=now, updated_at=now, last_activity_at=now, expires_at=now + timedelta(minutes=120))
    for role, language, suffix in ((PartyRole.A, languages[0], "a"), (PartyRole.B, languages[1], "b")):
        case.parties.append(Party(role=role, openid=f"o-{n}-{suffix}", plate=f"粤A{n:04d}{suffix.upper()}",
                                  phone=f"1380000{n:04d}", language=language, case_open=True, joined_at=now))
    for item in range(1, photos + 1):
        case.photos.append(Photo(item=item, kind=f"item{item}", status=PhotoStatus.ACCEPTED, received_at=now,
                                 sha256=hashlib.sha256(f"{n}:{item}".encode()).hexdigest()))
    session.add(case)
    session.flush()
    return case


def offer(runtime: Runtime, case_id: int, *, now: datetime, role: PartyRole = PartyRole.A,
          intro_key: str = "booking.offer_intro") -> str:
    """Run offers.offer_text for the party ``role`` in its own transaction, as the conversation does."""
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id, with_for_update=True)
        return booking.offer_text(session, runtime, case, case.party(role), intro_key=intro_key, now=now)


def choose(runtime: Runtime, case_id: int, number: int, *, now: datetime,
           role: PartyRole = PartyRole.A) -> booking.BookResult:
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id, with_for_update=True)
        return booking.book_choice(session, runtime, case, case.party(role), number, now=now)


def booked_count(runtime: Runtime, slot_id: int) -> int:
    with runtime.unit_of_work() as session:
        return session.scalar(select(Slot.booked).where(Slot.id == slot_id))


def appointments_of(runtime: Runtime, case_id: int) -> list[tuple[int, str]]:
    """(slot_id, status) of the case's appointments, oldest first."""
    with runtime.unit_of_work() as session:
        rows = session.execute(select(Appointment.slot_id, Appointment.status).where(Appointment.case_id == case_id)
                               .order_by(Appointment.id))
        return [(slot_id, status.value) for slot_id, status in rows]


def notices(runtime: Runtime, kind: str | None = None) -> list[Notification]:
    with runtime.unit_of_work() as session:
        query = select(Notification).order_by(Notification.id)
        if kind is not None:
            query = query.where(Notification.kind == kind)
        return list(session.scalars(query))


def text_of(notification: Notification) -> str:
    """The customer-service text the dispatcher sends for this outbox row."""
    return dispatch.message_of(notification).text


def template_of(notification: Notification) -> dict:
    """The template data the dispatcher sends for this outbox row (where a template is configured)."""
    return dispatch.message_of(notification).template_data


def count(runtime: Runtime, model) -> int:
    with runtime.unit_of_work() as session:
        return session.scalar(select(func.count()).select_from(model))
