"""Book, reschedule and cancel, each inside the caller's transaction.

The caller holds the case row lock (the conversation loads the case with
``cases.open_case_for(..., for_update=True)``); capacity is enforced by the
conditional UPDATE in :mod:`accident_service.booking.slots`. A reschedule
books the new seat before it lets the old one go, so a driver who cannot get
the new slot keeps the old appointment untouched.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from accident_service.booking import slots
from accident_service.booking.notices import Visit, notify_parties
from accident_service.cases import service as cases
from accident_service.errors import Conflict
from accident_service.models import (
    ACTIVE_APPOINTMENT_STATUSES,
    Appointment,
    AppointmentStatus,
    Case,
    CaseStatus,
)

# A case in these states may take a (first) appointment or move its current one.
BOOKABLE_STATUSES = (CaseStatus.READY, CaseStatus.BOOKED, CaseStatus.CONFIRMED, CaseStatus.RETAKE_REQUESTED)
MOVABLE_APPOINTMENT_STATUSES = (AppointmentStatus.BOOKED, AppointmentStatus.CONFIRMED)


class NoActiveAppointment(Conflict):
    """The case has no appointment to cancel or change."""

    code = "no_active_appointment"


def active_appointment(case: Case) -> Appointment | None:
    """The case's booked, confirmed or checked-in appointment, if any (at most one: a DB constraint)."""
    return next((a for a in case.appointments if a.status in ACTIVE_APPOINTMENT_STATUSES), None)


def can_book(case: Case) -> bool:
    """Whether the case may book now: ready, or holding an appointment that has not started (checked in)."""
    if case.status not in BOOKABLE_STATUSES:
        return False
    current = _current_appointment(case)
    return current is None or current.status in MOVABLE_APPOINTMENT_STATUSES


def book_slot(session: Session, case: Case, slot_id: int, *, actor_type: str, actor: str | None,
              now: datetime) -> Appointment | None:
    """Book ``slot_id`` for the case, or move its active appointment there; None when not possible.

    None means: the slot is full, already started, unknown, is the current
    slot, or the case cannot book (see :func:`can_book`); nothing was changed
    then. On success the old appointment (if any) is ``rescheduled`` and its
    seat freed, the case is BOOKED (a pending retake stays RETAKE_REQUESTED),
    the change is audited and both parties get a "booked" or "rescheduled"
    notice. Raises sqlalchemy errors only.
    """
    if not can_book(case):
        return None
    # Read everything the notices need before the seat is taken: the slot row
    # stays locked until commit, so the work after the UPDATE is kept short.
    current = _current_appointment(case)
    if current is not None and current.slot_id == slot_id:
        return None
    fingerprint = cases.evidence_fingerprint(case)
    parties = list(case.parties)  # loaded now, not while the slot row is locked
    seat = _take_seat_for(session, slot_id, freeing=current.slot_id if current else None, now=now)
    if seat is None:
        return None
    before = {"status": case.status.value, "slot_id": current.slot_id if current else None}
    appointment = Appointment(case_id=case.id, slot_id=slot_id, status=AppointmentStatus.BOOKED, created_at=now,
                              updated_at=now)
    if current is not None:
        current.status = AppointmentStatus.RESCHEDULED
        current.updated_at = now
        session.flush()  # leave the one-active-appointment index before the new row enters it
        case.appointments.append(appointment)
    else:
        session.add(appointment)
    if case.status is not CaseStatus.RETAKE_REQUESTED:
        case.status = CaseStatus.BOOKED
    case.offered_slot_ids = None
    case.offered_at = None
    case.expires_at = None  # a booked case is no longer an idle draft
    case.updated_at = now
    case.evidence_fingerprint = fingerprint
    session.flush()  # the appointment id names the notices
    kind = "rescheduled" if current is not None else "booked"
    visit = Visit(seat.station_name, seat.station_address, seat.station_timezone, seat.starts_at, seat.ends_at)
    with session.no_autoflush:  # audit and notices go out in one flush at commit
        cases.record_audit(session, actor_type=actor_type, actor=actor, action=f"appointment.{kind}",
                           case_id=case.id, before=before, now=now,
                           after={"status": case.status.value, "slot_id": slot_id, "appointment_id": appointment.id})
        notify_parties(session, case, kind, ref=appointment.id, now=now, visit=visit, parties=parties)
    return appointment


def _current_appointment(case: Case) -> Appointment | None:
    """The active appointment; a READY case has none (booking makes it BOOKED), so nothing is loaded.

    The partial unique index would still refuse a second active row.
    """
    if case.status is CaseStatus.READY and "appointments" in sa_inspect(case).unloaded:
        return None
    return active_appointment(case)


def _take_seat_for(session: Session, slot_id: int, *, freeing: int | None, now: datetime) -> slots.TakenSeat | None:
    """Take a seat in ``slot_id`` and, when moving, free one in ``freeing``.

    The two slot rows are locked in id order, so two drivers swapping slots
    in opposite directions cannot deadlock. When the old slot comes first
    its seat is freed before the new one is tried, and given back if the new
    one is full (we still hold its lock, so nobody took it meanwhile).
    """
    if freeing is None:
        return slots.take_seat(session, slot_id, now=now)
    if freeing < slot_id:
        freed = slots.free_seat(session, freeing)
        seat = slots.take_seat(session, slot_id, now=now)
        if seat is None and freed:
            slots.restore_seat(session, freeing)
        return seat
    seat = slots.take_seat(session, slot_id, now=now)
    if seat is not None:
        slots.free_seat(session, freeing)
    return seat


def cancel_appointment(session: Session, case: Case, *, actor_type: str, actor: str | None,
                       now: datetime) -> Appointment:
    """Cancel the active appointment, free its seat, close the case as cancelled, tell both parties.

    Raises NoActiveAppointment when there is none.
    """
    appointment = active_appointment(case)
    if appointment is None:
        raise NoActiveAppointment(f"case {case.case_no} has no active appointment")
    appointment.status = AppointmentStatus.CANCELLED
    appointment.updated_at = now
    slots.free_seat(session, appointment.slot_id)
    cases.record_audit(session, actor_type=actor_type, actor=actor, action="appointment.cancelled",
                       case_id=case.id, before={"slot_id": appointment.slot_id}, now=now)
    cases.close_case(session, case, CaseStatus.CANCELLED, actor_type=actor_type, actor=actor, now=now)
    notify_parties(session, case, "cancelled", ref=appointment.id, now=now, visit=visit_of(appointment))
    return appointment


def visit_of(appointment: Appointment) -> Visit:
    slot = appointment.slot
    return Visit.at(slot.station, slot.starts_at, slot.ends_at)
