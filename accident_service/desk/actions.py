"""What desk staff do to a case: each action one lifecycle transition, audited, both parties told.

The desk UI and the JSON API only parse a request, load the case (scoped to
the officer's station, locked FOR UPDATE: :func:`lock_case`) and call one of
these. ``expected_version`` is the case version the officer was shown: an
action on a case that changed meanwhile is refused (StaleCase), never
applied to something the officer did not see, and never applied twice.
Every function raises TransitionRefused when the lifecycle does not allow it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from accident_service.booking import appointments
from accident_service.cases import lifecycle
from accident_service.cases.facts import Visit, utc_text
from accident_service.cases.lifecycle import Actor, active_appointment
from accident_service.cases.service import item_code, taker_of_item
from accident_service.errors import CaseNotFound
from accident_service.models import Appointment, Case, PartyRole, Slot
from accident_service.settings import Settings

STAFF = Actor.STAFF


def lock_case(session: Session, case_no: str, *, station_id: int | None = None) -> Case:
    """The case ``case_no`` locked for an action; with ``station_id``, only if it is handled there.

    Raises NotFound (also for another station's case: an officer cannot tell it exists).
    """
    query = (select(Case).where(Case.case_no == case_no).with_for_update(of=Case)
             .options(selectinload(Case.parties), selectinload(Case.photos),
                      selectinload(Case.appointments).selectinload(Appointment.slot).selectinload(Slot.station)))
    case = session.scalar(query)
    if case is None or (station_id is not None and station_of(case) != station_id):
        raise CaseNotFound(case_no)
    return case


def station_of(case: Case) -> int | None:
    """The station a case is handled at: that of its latest appointment (None before its first booking)."""
    latest = max(case.appointments, key=lambda a: a.id, default=None)
    return latest.slot.station_id if latest is not None else None


def _visit(case: Case) -> Visit | None:
    appointment = active_appointment(case)
    return Visit.of(appointment) if appointment is not None else None


def confirm(session: Session, case: Case, *, staff: str, settings: Settings, now: datetime,
            expected_version: int | None = None) -> None:
    """Confirm the booked appointment."""
    lifecycle.apply(session, case, "confirm", actor=STAFF, by=staff, settings=settings, now=now,
                    visit=_visit(case), expected_version=expected_version)


def reschedule(session: Session, case: Case, slot_id: int, *, staff: str, settings: Settings, now: datetime,
               expected_version: int | None = None) -> Appointment:
    """Move the appointment to a free slot (of the same station, for an officer: the view picks from those).

    Raises SlotUnavailable too.
    """
    return appointments.book(session, case, slot_id, actor=STAFF, by=staff, settings=settings, now=now,
                             expected_version=expected_version, moving=True)


def check_in(session: Session, case: Case, *, staff: str, settings: Settings, now: datetime,
             expected_version: int | None = None) -> None:
    """Both drivers are at the desk (a pending retake is moot then: the desk sees the cars)."""
    lifecycle.apply(session, case, "check_in", actor=STAFF, by=staff, settings=settings, now=now,
                    visit=_visit(case), expected_version=expected_version)


def complete(session: Session, case: Case, *, liability: str, note: str, staff: str, settings: Settings,
             now: datetime, expected_version: int | None = None) -> None:
    """Close the case with its outcome: liability ("A", "B", "shared", "none") and a note (the case sheet's; each
    party's outcome notice carries it where a text can reach them)."""
    note = note.strip()
    lifecycle.apply(session, case, "complete", actor=STAFF, by=staff, settings=settings, now=now,
                    details={"liability": liability, "note": note}, visit=_visit(case),
                    expected_version=expected_version, notice={"liability": liability, "note": note},
                    after={"liability": liability})
    case.liability, case.outcome_note, case.handled_by = liability, note or None, staff


def mark_no_show(session: Session, case: Case, *, staff: str, settings: Settings, now: datetime,
                 expected_version: int | None = None) -> None:
    """Nobody came (once the slot has started); the seat stays used."""
    lifecycle.apply(session, case, "no_show", actor=STAFF, by=staff, settings=settings, now=now,
                    visit=_visit(case), expected_version=expected_version)


def request_retake(session: Session, case: Case, *, item: int, reason: str, staff: str, settings: Settings,
                   now: datetime, deadline: timedelta | None = None, expected_version: int | None = None) -> None:
    """Ask the party who photographs checklist ``item`` to send it again, with a reason and a deadline.

    The slot is kept; the default deadline is RETAKE_DEADLINE_MINUTES. The
    party asked reads what to send; the other party reads that it was asked.
    """
    reason = reason.strip()
    due = now + (deadline or timedelta(minutes=settings.RETAKE_DEADLINE_MINUTES))
    visit = _visit(case)
    lifecycle.apply(session, case, "request_retake", actor=STAFF, by=staff, settings=settings, now=now,
                    details={"item": item, "reason": reason}, visit=visit, expected_version=expected_version,
                    notice={"item": item, "item_code": item_code(settings, item), "reason": reason,
                            "due_at": utc_text(due)},
                    after={"item": item, "reason": reason, "due_at": utc_text(due)},
                    variants={role: _retake_variant(case, settings, item, role) for role in PartyRole})
    taker = taker_of_item(case, settings, item)
    assert taker is not None  # a booked case has both parties
    taker.retake_item, taker.retake_due_at = item, due


def _retake_variant(case: Case, settings: Settings, item: int, role: PartyRole) -> str:
    taker = taker_of_item(case, settings, item)
    return "taker" if taker is not None and taker.role is role else "desk"


def cancel_appointment(session: Session, case: Case, *, reason: str, staff: str, settings: Settings, now: datetime,
                       expected_version: int | None = None) -> None:
    """Cancel the appointment with a reason: the seat is freed, the case stays for the drivers to rebook."""
    appointments.cancel(session, case, actor=STAFF, by=staff, reason=reason, settings=settings, now=now,
                        expected_version=expected_version)


def close_case(session: Session, case: Case, *, reason: str, staff: str, settings: Settings, now: datetime,
               expected_version: int | None = None) -> None:
    """End the case with a reason (not for self-handling, settled elsewhere); any appointment is cancelled."""
    appointments.withdraw(session, case, actor=STAFF, by=staff, reason=reason, settings=settings, now=now,
                          expected_version=expected_version)
