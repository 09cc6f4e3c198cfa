"""Desk staff actions on an appointment: confirm it, or ask a party to retake a photo.

Each action is one plain function over the caller's transaction: it changes
the case, writes an audit event naming the officer, and writes the notice for
both parties to the outbox (so the desk UI and the JSON API, when they come,
only parse and call these).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from accident_service import messages
from accident_service.booking.appointments import active_appointment, visit_of
from accident_service.booking.notices import visit_window
from accident_service.cases import service as cases
from accident_service.errors import Conflict
from accident_service.models import AppointmentStatus, Case, CaseStatus, PhotoStatus
from accident_service.notify.outbox import enqueue
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
    visit = visit_of(appointment)
    for party in case.parties:
        language = messages.normalise_language(party.language)
        enqueue(session, openid=party.openid, kind="confirmed", case_id=case.id, language=language, now=now,
                dedupe_key=f"confirmed:{appointment.id}:{party.role.value}",
                text=messages.text("staff.notice.confirmed", language, case_no=case.case_no,
                                   station=visit.station_name, time=visit_window(visit, language)),
                template_data={"case_no": {"value": case.case_no}, "station": {"value": visit.station_name},
                               "time": {"value": visit_window(visit, language)}})


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
    for party in case.parties:
        language = messages.normalise_language(party.language)
        key = "staff.notice.retake_you" if party is taker else "staff.notice.retake_other"
        enqueue(session, openid=party.openid, kind="retake", case_id=case.id, language=language, now=now,
                dedupe_key=f"retake:{request.id}:{party.role.value}",
                text=messages.text(key, language, case_no=case.case_no, n=item, reason=reason),
                template_data={"case_no": {"value": case.case_no}, "item": {"value": str(item)},
                               "reason": {"value": reason}})


def _who_took(case: Case, item: int):
    """The party who sent the accepted photo for ``item`` (the reporter when unknown)."""
    photo = next((p for p in case.photos if p.item == item and p.status is PhotoStatus.ACCEPTED), None)
    if photo is not None:
        for party in case.parties:
            if party.id == photo.party_id:
                return party
    return case.parties[0]

