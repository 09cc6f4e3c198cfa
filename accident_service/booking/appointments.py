"""Book, reschedule and cancel, each inside the caller's transaction.

The caller holds the case row lock (the conversation loads the case with
``cases.open_case_for(..., for_update=True)``); capacity is enforced by the
conditional UPDATE on the slot row (:mod:`accident_service.booking.writes`).
A booking decides and renders everything first and then writes with Core
statements (on PostgreSQL a first booking is one statement), keeping the
slot row locked as briefly as possible; the loaded ORM objects are then
brought in line without a second write. A reschedule books the new seat
before it lets the old one go, so a driver who cannot get the new slot
keeps the old appointment untouched.
"""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import cast

from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from accident_service.booking import slots, writes
from accident_service.booking.notices import Visit, notify_parties, render_notices
from accident_service.cases import service as cases
from accident_service.errors import Conflict
from accident_service.models import (
    ACTIVE_APPOINTMENT_STATUSES,
    Appointment,
    AppointmentStatus,
    Case,
    CaseStatus,
    PhotoStatus,
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
    the caller's transaction. Raises sqlalchemy errors only.
    """
    if not can_book(case):
        return None
    current = _current_appointment(case)
    if current is not None and current.slot_id == slot_id:
        return None
    # Pending changes go first, so the facts are read (or checked, see
    # writes.py) with them and nothing stale is flushed over the booking's own
    # writes at commit.
    session.flush()
    # Facts loaded with the case serve a first booking only: a move is written
    # step by step, which does not check them.
    loaded = writes.facts_loaded_with(case, slot_id) if current is None else None
    set_committed_value(case, "booking_facts", None)  # used once: the booking changes them
    if loaded is not None:
        facts, facts_text = loaded
        if facts.visit.starts_at <= now:
            return None
        try:
            return _book(session, case, current, slot_id, facts, facts_text, actor_type=actor_type, actor=actor,
                         now=now)
        except writes.FactsChanged:
            pass  # they changed while this transaction waited for the case lock: read them, now that we hold it
    facts = writes.read_facts(session, case.id, slot_id, now=now)
    if facts is None:
        return None
    return _book(session, case, current, slot_id, facts, None, actor_type=actor_type, actor=actor, now=now)


def _book(session: Session, case: Case, current: Appointment | None, slot_id: int, facts: writes.BookingFacts,
          facts_as_loaded: str | None, *, actor_type: str, actor: str | None, now: datetime) -> Appointment | None:
    """Render and write the booking from ``facts``; see :func:`book_slot`.

    Raises writes.FactsChanged (nothing written) when ``facts_as_loaded`` no longer holds.
    """
    kind = "rescheduled" if current is not None else "booked"
    fingerprint = _fingerprint(facts.photo_hashes)
    status = CaseStatus.RETAKE_REQUESTED if case.status is CaseStatus.RETAKE_REQUESTED else CaseStatus.BOOKED
    plan = writes.BookingPlan(
        case_id=case.id, slot_id=slot_id, moving=(current.id, current.slot_id) if current is not None else None,
        case_values={"status": status, "offered_slot_ids": None, "offered_at": None,
                     "expires_at": None,  # a booked case is no longer an idle draft
                     "updated_at": now, "evidence_fingerprint": fingerprint},
        kind=kind, actor_type=actor_type, actor=actor,
        audit_before={"status": case.status.value, "slot_id": current.slot_id if current is not None else None},
        audit_after={"status": status.value, "slot_id": slot_id},
        notices=render_notices(kind, case_no=case.case_no, fingerprint=fingerprint, visit=facts.visit,
                               recipients=facts.recipients),
        now=now, facts_as_loaded=facts_as_loaded)
    appointment_id = writes.write_booking(session, plan)
    if appointment_id is None:
        return None
    return _mirror_in_session(session, case, current, plan, appointment_id)


def _fingerprint(photo_hashes: list[tuple[int | None, str | None]]) -> str:
    """cases.evidence_fingerprint over the rows read, so the hash keeps its one definition.

    It reads only ``case.photos`` and each photo's item, sha256 and status.
    """
    photos = [SimpleNamespace(item=item, sha256=sha256, status=PhotoStatus.ACCEPTED) for item, sha256 in photo_hashes]
    return cases.evidence_fingerprint(cast(Case, SimpleNamespace(photos=photos)))


def _mirror_in_session(session: Session, case: Case, current: Appointment | None, plan: writes.BookingPlan,
                       appointment_id: int) -> Appointment:
    """Make the loaded objects show what was just written, without writing it again at flush."""
    for key, value in plan.case_values.items():
        set_committed_value(case, key, value)
    slots.forget_booked_count(session, plan.slot_id)
    if current is not None:
        set_committed_value(current, "status", AppointmentStatus.RESCHEDULED)
        set_committed_value(current, "updated_at", plan.now)
    appointment = Appointment(id=appointment_id, case_id=case.id, slot_id=plan.slot_id,
                              status=AppointmentStatus.BOOKED, created_at=plan.now, updated_at=plan.now,
                              reminded_at=None)
    make_transient_to_detached(appointment)
    session.add(appointment)  # persistent and clean: the row exists
    set_committed_value(appointment, "case", case)
    if "appointments" not in sa_inspect(case).unloaded:
        set_committed_value(case, "appointments", [*case.appointments, appointment])
    return appointment


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
