"""Desk staff actions on an appointment: confirm it, or ask a party to retake a photo.

Each action is one plain function over the caller's transaction: it changes
the case, writes an audit event naming the officer, and writes the notice for
both parties to the outbox (so the desk UI and the JSON API, when they come,
only parse and call these).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from accident_service.booking.appointments import active_appointment, visit_of
from accident_service.booking.notices import notice_facts, notify_parties, notify_party
from accident_service.cases import service as cases
from accident_service.errors import Conflict
from accident_service.models import AppointmentStatus, Case, CaseStatus, PhotoStatus
from accident_service.settings import Settings


class NotConfirmable(Conflict):
    code = "not_confirmable"


class RetakeRefused(Conflict):
    code = "retake_refused"


def confirm_appointment(session: Session, case: Case, *, staff: str, now: datetime) -> None:
    """BOOKED → CONFIRMED for the case and its appointment; both parties told. Raises NotConfirmable."""
    appointment = active_appointment(case)
    if appointment is None or appointment.status is not AppointmentStatus.BOOKED \
            or case.status is not CaseStatus.BOOKED:
        raise NotConfirmable(f"case {case.case_no} has no booked appointment to confirm")
    appointment.status = AppointmentStatus.CONFIRMED
    appointment.updated_at = case.updated_at = now
    case.status = CaseStatus.CONFIRMED
    cases.record_audit(session, actor_type="staff", actor=staff, action="appointment.confirmed", case_id=case.id,
                       before={"status": "booked"}, after={"status": "confirmed"}, now=now)
    notify_parties(session, case, "confirmed", ref=appointment.id, now=now, visit=visit_of(appointment))


def request_retake(session: Session, case: Case, *, item: int, reason: str, staff: str, settings: Settings,
                   now: datetime) -> None:
    """Ask for checklist photo ``item`` again; the slot is kept. Both parties told. Raises RetakeRefused."""
    if case.status not in (CaseStatus.BOOKED, CaseStatus.CONFIRMED, CaseStatus.RETAKE_REQUESTED):
        raise RetakeRefused(f"case {case.case_no} is {case.status.value}; retakes are asked of booked cases")
    if not 1 <= item <= len(settings.PHOTO_CHECKLIST):
        raise RetakeRefused(f"photo {item} is not on the checklist (1-{len(settings.PHOTO_CHECKLIST)})")
    reason = reason.strip()[:200]
    if not reason:
        raise RetakeRefused("say why the photo must be retaken")
    taker = _who_took(case, item)
    if taker.retake_item:
        # One photo at a time per driver: their next photo answers the pending request.
        raise RetakeRefused(f"party {taker.role.value} has yet to retake photo {taker.retake_item}")
    before = case.status.value
    case.status = CaseStatus.RETAKE_REQUESTED
    case.updated_at = now
    taker.retake_item = item
    request = cases.record_audit(session, actor_type="staff", actor=staff, action="photo.retake_requested",
                                 case_id=case.id, before={"status": before}, after={"item": item, "reason": reason},
                                 now=now)
    session.flush()  # the audit row's id names this request in the notices' dedupe keys
    request_facts = notice_facts(case.case_no, case.evidence_fingerprint, None) | {"item": item, "reason": reason}
    for party in case.parties:
        facts = request_facts if party is taker else request_facts | {"variant": "other"}
        notify_party(session, case, party, "retake", ref=request.id, now=now, facts=facts)


def _who_took(case: Case, item: int):
    """The party who sent the accepted photo for ``item`` (the reporter when unknown)."""
    photo = next((p for p in case.photos if p.item == item and p.status is PhotoStatus.ACCEPTED), None)
    if photo is not None:
        for party in case.parties:
            if party.id == photo.party_id:
                return party
    return case.parties[0]

