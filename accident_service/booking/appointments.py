"""Book, move, cancel and withdraw: each a lifecycle transition, the seat taken last.

One path on both databases. The caller holds the case row lock (the
conversation loads the case FOR UPDATE; desk actions lock it too). A booking
writes the appointment and the case's transition (audit event and both
parties' notices, through ``cases.lifecycle.apply``) and only then, as the
last statement before COMMIT, takes the seat with the conditional UPDATE
(``booked < capacity``), inside a savepoint: when the slot is full the
savepoint is rolled back and nothing was written. The slot row is locked only
from that UPDATE to the caller's COMMIT, which is what competing drivers wait
for. A move takes the new seat before it lets the old one go, so a driver who
cannot get the new slot keeps the old appointment untouched.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from accident_service import metrics
from accident_service.booking import slots
from accident_service.cases import lifecycle
from accident_service.cases.facts import Visit
from accident_service.cases.lifecycle import Actor, active_appointment
from accident_service.cases.service import stored_fingerprint
from accident_service.errors import Conflict
from accident_service.models import Appointment, AppointmentStatus, Case, Party
from accident_service.outbox import drop_pending
from accident_service.settings import Settings


class SlotUnavailable(Conflict):
    """The slot cannot be taken; nothing was changed. ``details``: ``slot_id`` and ``reason``, one of
    :data:`SLOT_UNAVAILABLE_REASONS`, so a caller can tell a full slot (pick another) from a started one."""

    code = "slot_unavailable"

    def __init__(self, slot_id: int, reason: str, message: str) -> None:
        super().__init__(message, slot_id=slot_id, reason=reason)


#: Why a slot cannot be taken: it names no slot, it has started, the case holds it already, it has no free seat,
#: or it is another station's than the one the caller acts for.
SLOT_UNAVAILABLE_REASONS = ("unknown", "started", "current", "full", "other_station")


class _NoSeat(Exception):
    pass


def book(session: Session, case: Case, slot_id: int, *, actor: Actor, settings: Settings, now: datetime,
         party: Party | None = None, by: str | None = None, expected_version: int | None = None,
         moving: bool = False) -> Appointment:
    """Book ``slot_id`` for the case, or move its active appointment there ("book" or "reschedule").

    ``moving``: the caller asked to move an appointment (the desk's and the API's reschedule), so the transition is
    "reschedule" even when the case has none to move, and a case closed or cancelled meanwhile is refused for its
    state (WrongState), not as a "book" the desk may not make (NotAllowed: acceptance pass).

    On success the old appointment (if any) is ``rescheduled`` and its seat
    freed and its pending reminder dropped; every party's slot list is
    cleared; the evidence fingerprint is stored (the booking notice carries
    it); both parties are told. A slot starting within REMINDER_MINUTES gets
    no reminder: the booking notice is the reminder. Raises SlotUnavailable,
    or TransitionRefused (the case cannot book now, or ``actor`` may not).
    """
    current = active_appointment(case)
    name = "book" if current is None and not moving else "reschedule"
    lifecycle.check(case, name, actor=actor, settings=settings, now=now, party=party,
                    expected_version=expected_version)
    visit = slots.visit_at(session, slot_id)
    if visit is None:
        raise SlotUnavailable(slot_id, "unknown", f"there is no slot {slot_id}")
    if visit.starts_at <= now:
        raise SlotUnavailable(slot_id, "started", f"slot {slot_id} has started")
    if current is not None and current.slot_id == slot_id:
        raise SlotUnavailable(slot_id, "current", f"case {case.case_no} holds slot {slot_id} already")
    session.flush()  # pending changes go first: a full slot rolls back only the booking's own writes
    try:
        with session.begin_nested():
            appointment = _write_booking(session, case, slot_id, visit, current, name, actor=actor,
                                         settings=settings, now=now, party=party, by=by)
            session.flush()
            if not slots.move_seat(session, to=slot_id, away_from=current.slot_id if current else None, now=now):
                raise _NoSeat
    except _NoSeat:
        raise SlotUnavailable(slot_id, "full", f"slot {slot_id} is full") from None
    # Counted here, after the seat was taken: every booking and move (a driver's, the desk's, the API's) comes
    # through, and one refused for a full slot never happened.
    metrics.count_on_commit(session, metrics.BOOKINGS.labels(action="booked" if current is None else "rescheduled"))
    return appointment


def _write_booking(session: Session, case: Case, slot_id: int, visit: Visit, current: Appointment | None,
                   name: str, *, actor: Actor, settings: Settings, now: datetime, party: Party | None,
                   by: str | None) -> Appointment:
    with session.no_autoflush:  # one flush for all of it, after: the photos read here are stored already
        # Read as stored, not loaded as objects: the photos are not needed otherwise.
        case.evidence_fingerprint = stored_fingerprint(session, case.id)
    soon = visit.starts_at - now < timedelta(minutes=settings.REMINDER_MINUTES)
    # Joined through the relationship, so the case's appointments are not loaded for it (a first booking has none).
    appointment = Appointment(case=case, slot_id=slot_id, status=AppointmentStatus.BOOKED, created_at=now,
                              updated_at=now, reminded_at=now if soon else None)
    session.add(appointment)
    if current is not None:
        current.status = AppointmentStatus.RESCHEDULED
        current.updated_at = now
        _drop_reminder(session, current)
    for each in case.parties:
        if each.offered_slot_ids is not None:
            each.offered_slot_ids = each.offered_at = None
    lifecycle.apply(session, case, name, actor=actor, party=party, by=by, settings=settings, now=now, visit=visit,
                    before={"slot_id": current.slot_id if current else None}, after={"slot_id": slot_id})
    return appointment


def cancel(session: Session, case: Case, *, actor: Actor, settings: Settings, now: datetime,
           party: Party | None = None, by: str | None = None, reason: str | None = None,
           confirmed: bool = False, expected_version: int | None = None) -> Appointment:
    """Cancel the active appointment: seat freed, the case back to ready (evidence and parties kept), both told.

    Parties must have ``confirmed``; staff give a ``reason``. Raises TransitionRefused.
    """
    appointment = active_appointment(case)
    lifecycle.apply(session, case, "cancel_appointment", actor=actor, party=party, by=by, settings=settings, now=now,
                    details={"confirmed": confirmed, "reason": reason}, expected_version=expected_version,
                    visit=Visit.of(appointment) if appointment else None, notice=_reason(reason),
                    before={"slot_id": appointment.slot_id if appointment else None}, after=_reason(reason))
    assert appointment is not None  # the transition requires one
    _release(session, appointment)
    return appointment


def withdraw(session: Session, case: Case, *, actor: Actor, settings: Settings, now: datetime,
             party: Party | None = None, by: str | None = None, reason: str | None = None,
             confirmed: bool = False, expected_version: int | None = None,
             requested: tuple[str, datetime] | None = None) -> None:
    """End the whole case (the reporter, confirmed; or the desk, with a reason); any appointment is cancelled.

    ``requested``: the driver who asked for it and when their message came (lifecycle.closed_after).
    Raises TransitionRefused.
    """
    appointment = active_appointment(case)
    lifecycle.apply(session, case, "withdraw", actor=actor, party=party, by=by, settings=settings, now=now,
                    details={"confirmed": confirmed, "reason": reason}, expected_version=expected_version,
                    after={**(lifecycle.requested(*requested) if requested else {}), **_reason(reason)},
                    visit=Visit.of(appointment) if appointment else None, notice=_reason(reason))
    if appointment is not None:
        _release(session, appointment)


def _release(session: Session, appointment: Appointment) -> None:
    """A cancelled appointment's seat and reminder go (a cancellation, or the whole case withdrawn)."""
    slots.free_seat(session, appointment.slot_id)
    _drop_reminder(session, appointment)
    metrics.count_on_commit(session, metrics.BOOKINGS.labels(action="cancelled"))


#: Why an appointment's reminder was dropped: then the appointment's new status (the desk puts it in words).
REMINDER_DROPPED = "appointment "


def _drop_reminder(session: Session, appointment: Appointment) -> None:
    drop_pending(session, dedupe_prefix=f"reminder:{appointment.id}:",
                 reason=f"{REMINDER_DROPPED}{appointment.id} {appointment.status.value}")


def _reason(reason: str | None) -> dict[str, str]:
    return {"reason": reason.strip()} if reason and reason.strip() else {}
