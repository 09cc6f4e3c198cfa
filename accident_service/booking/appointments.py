"""Book, reschedule and cancel, each inside the caller's transaction.

The caller holds the case row lock (the conversation loads the case with
``cases.open_case_for(..., for_update=True)``); capacity is enforced by the
conditional UPDATE on the slot row (:mod:`accident_service.booking.writes`).
A booking is written with Core statements (on PostgreSQL a first booking is
one statement), keeping the slot row locked as briefly as possible; the
loaded ORM objects are then brought in line without a second write. A
reschedule books the new seat before it lets the old one go, so a driver who
cannot get the new slot keeps the old appointment untouched.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from accident_service.booking import slots, writes
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
    its offers are cleared and its evidence fingerprint stored, the change is
    audited and both parties get a "booked" or "rescheduled" notice, all in
    the caller's transaction (see booking.writes). Raises sqlalchemy errors only.
    """
    if not can_book(case):
        return None
    current = _current_appointment(case)
    if current is not None and current.slot_id == slot_id:
        return None
    # Pending changes go first, so that nothing stale is flushed over the booking's own writes at commit.
    session.flush()
    status = CaseStatus.RETAKE_REQUESTED if case.status is CaseStatus.RETAKE_REQUESTED else CaseStatus.BOOKED
    return writes.write_booking(session, case, slot_id, moving=current, status=status, actor_type=actor_type,
                                actor=actor, now=now)


def _current_appointment(case: Case) -> Appointment | None:
    """The active appointment; a READY case has none (booking makes it BOOKED), so nothing is loaded.

    The partial unique index would still refuse a second active row.
    """
    if case.status is CaseStatus.READY and "appointments" in sa_inspect(case).unloaded:
        return None
    return active_appointment(case)


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
