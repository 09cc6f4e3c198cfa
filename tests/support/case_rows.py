"""Cases in any lifecycle state, as real rows through the ORM (no service call builds them).

A case here looks the way the service leaves it in that state: a draft or a
ready case collects (its expiry ahead, no appointment), a booked case is
sealed (evidence fingerprint) and holds a seat, a closed case has released
its join code and its parties. Tests say only what differs from that.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from accident_service.cases import service as cases
from accident_service.models import (
    Appointment,
    AppointmentStatus,
    Case,
    CaseStatus,
    Party,
    PartyRole,
    Photo,
    PhotoStatus,
    Slot,
    Station,
)
from accident_service.notify import allowance
from accident_service.settings import Settings

S = CaseStatus
ACCIDENT = (23.1291, 113.3270)  # Tianhe, Guangzhou
CLOSED = (S.COMPLETED, S.CANCELLED, S.EXPIRED, S.NO_SHOW)
COLLECTING = (S.DRAFT, S.READY)
#: The appointment a case in each state has (None: no appointment row at all).
APPOINTMENT_OF = {
    S.BOOKED: AppointmentStatus.BOOKED,
    S.CONFIRMED: AppointmentStatus.CONFIRMED,
    S.CHECKED_IN: AppointmentStatus.CHECKED_IN,
    S.RETAKE_REQUESTED: AppointmentStatus.BOOKED,
    S.COMPLETED: AppointmentStatus.COMPLETED,
    S.NO_SHOW: AppointmentStatus.NO_SHOW,
}
#: The checklist item the desk asks each party to retake (default checklist: 1-3 are A's, 4 is B's).
RETAKE_ITEM = {PartyRole.A: 2, PartyRole.B: 4}
SEALED = (S.BOOKED, S.CONFIRMED, S.CHECKED_IN, S.RETAKE_REQUESTED, S.COMPLETED, S.NO_SHOW)
_numbers = itertools.count(1)


@dataclass(frozen=True)
class Place:
    """A station's ids: a slot for the case's appointment, a free one to book or move to, and one that started."""

    station_id: int
    slot_id: int
    free_slot_id: int
    started_slot_id: int

    @property
    def slot_ids(self) -> tuple[int, int, int]:
        return self.slot_id, self.free_slot_id, self.started_slot_id


def place(session: Session, now: datetime, *, code: str | None = None, capacity: int = 2) -> Place:
    """A station with three 30-minute slots (two seats each unless ``capacity``): in 4 h, in 5 h, and one that
    started 10 minutes ago."""
    code = code or f"ST-{next(_numbers)}"
    station = Station(code=code, name=f"{code} 事故处理点", address=f"广州市 {code} 路 1 号", lat=ACCIDENT[0] + 0.01,
                      lng=ACCIDENT[1], timezone="Asia/Shanghai", opening_hours={}, holidays=[], closures=[],
                      slot_minutes=30, desks=2, active=True)
    session.add(station)
    session.flush()
    made = [Slot(station_id=station.id, starts_at=now + offset, ends_at=now + offset + timedelta(minutes=30),
                 capacity=capacity, booked=0)
            for offset in (timedelta(hours=4), timedelta(hours=5), timedelta(minutes=-10))]
    session.add_all(made)
    session.flush()
    return Place(station.id, *(slot.id for slot in made))


def case_in(session: Session, status: CaseStatus, *, now: datetime, where: Place, settings: Settings,
            with_b: bool = True,
            photos: bool | tuple[int, ...] = True, location: bool = True,
            details: bool | tuple[PartyRole, ...] = True,
            appointment: AppointmentStatus | None | str = "default", slot_id: int | None = None,
            retake_owed: tuple[PartyRole, ...] | None = None, sealed: bool | None = None,
            expires_at: datetime | None | str = "default", languages: tuple[str, str] = ("zh", "zh"),
            openids: tuple[str, str] | None = None, acted: bool = True) -> Case:
    """A case in ``status`` as the service leaves it; the keywords change one aspect.

    ``with_b``: party B joined; ``photos``: every checklist photo (of the parties
    present) accepted, or those items only; ``location``: the location given;
    ``details``: plates and phones given (by every party, or by those roles).
    ``appointment``: its status (default: the one of ``status``; None: no row);
    ``slot_id``: its slot (default ``where.slot_id``), whose seat it holds.
    ``retake_owed``: the roles the desk asked a photo of (default in
    retake_requested: party A, item 2). ``sealed``: the evidence fingerprint is
    set (default: once booked). ``expires_at``: default two hours ahead while
    collecting, else none. ``openids``: of A and B (default: unique ones).
    ``acted``: both drivers wrote to the account five minutes ago, as they did to
    get here (the allowance ledger knows; texts to them may go).
    """
    n = next(_numbers)
    closed = status in CLOSED
    openid_a, openid_b = openids or (f"oLifeA{n:06d}", f"oLifeB{n:06d}")
    case = Case(case_no=f"20261125-L{n:05d}", status=status, version=1,
                join_code=None if closed else f"{(900000 + n) % 1_000_000:06d}",
                location_lat=ACCIDENT[0] if location else None, location_lng=ACCIDENT[1] if location else None,
                location_label="天河路" if location else None, created_at=now - timedelta(minutes=30),
                updated_at=now - timedelta(minutes=5), last_activity_at=now - timedelta(minutes=5),
                expires_at=(now + timedelta(minutes=120) if status in COLLECTING else None)
                if expires_at == "default" else expires_at,
                closed_at=now - timedelta(minutes=1) if closed else None,
                parties=[], photos=[], appointments=[])  # empty collections: nothing to load back
    roles = (PartyRole.A, PartyRole.B) if with_b else (PartyRole.A,)
    detailed = roles if details is True else tuple(details or ())
    for role, openid, language, plate, phone in zip(roles, (openid_a, openid_b), languages,
                                                    ("粤A12345", "粤BD12345"), ("13800138000", "13900139000"),
                                                    strict=False):
        case.parties.append(Party(role=role, openid=openid, language=language, case_open=not closed,
                                  plate=plate if role in detailed else None,
                                  phone=phone if role in detailed else None,
                                  joined_at=now - timedelta(minutes=20)))
    session.add(case)
    session.flush()
    if acted and not closed:
        for party in case.parties:
            allowance.record_action(session, party.openid, "message", now - timedelta(minutes=5))
    if photos:
        for party in case.parties:
            for item in cases.items_of(settings, party.role):
                if photos is not True and item not in photos:
                    continue
                case.photos.append(Photo(case_id=case.id, party_id=party.id, item=item,
                                         kind=cases.item_code(settings, item), status=PhotoStatus.ACCEPTED,
                                         sha256=hashlib.sha256(f"{n}:{item}".encode()).hexdigest(),
                                         received_at=now - timedelta(minutes=15), warnings=[],
                                         capture_time_known=False))
    if appointment == "default":
        appointment = APPOINTMENT_OF.get(status)
    if appointment is not None:
        slot_id = slot_id or where.slot_id
        case.appointments.append(Appointment(slot_id=slot_id, status=appointment,
                                             created_at=now - timedelta(minutes=10),
                                             updated_at=now - timedelta(minutes=10)))
        if appointment is not AppointmentStatus.CANCELLED:
            session.execute(update(Slot).where(Slot.id == slot_id).values(booked=Slot.booked + 1))
    if status is S.RETAKE_REQUESTED and retake_owed is None:
        retake_owed = (PartyRole.A,)
    for role in retake_owed or ():
        party = case.party(role)
        party.retake_item = RETAKE_ITEM[role]
        party.retake_due_at = now + timedelta(minutes=120)
    if sealed if sealed is not None else status in SEALED:
        case.evidence_fingerprint = cases.evidence_fingerprint(case)
    session.flush()
    return case
