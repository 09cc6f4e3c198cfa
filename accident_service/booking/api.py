"""What the conversation (wechat/conversation.py) calls: offers, choices, cancel, summaries.

Every function works inside the caller's unit of work and expects the case
row to be locked by the caller (the conversation loads it FOR UPDATE).
Booking functions write the notices for both parties themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from accident_service import messages
from accident_service.booking import appointments
from accident_service.booking.availability import Offer, find_offers
from accident_service.booking.notices import notify_parties, time_window, visit_window
from accident_service.cases import service as cases
from accident_service.metrics import BOOKINGS
from accident_service.models import Appointment, AppointmentStatus, Case, CaseStatus, Party
from accident_service.runtime import Runtime

# A numbered list older than this is not booked from: the driver may have
# looked at it long ago, and fresh times are one message away.
OFFER_TTL = timedelta(minutes=30)
INTRO_KEYS = ("booking.offer_intro", "booking.reschedule_offer", "booking.stale_offer")
STALE_OFFER = "booking.stale_offer"


@dataclass(frozen=True)
class BookResult:
    """The outcome of a numbered reply; ``reason_key`` is the intro of the fresh list when not booked."""

    booked: bool
    appointment: Appointment | None = None
    reason_key: str | None = None


def active_appointment(case: Case) -> Appointment | None:
    """The case's booked, confirmed or checked-in appointment, or None."""
    return appointments.active_appointment(case)


def offer_text(session: Session, runtime: Runtime, case: Case, language: str, *, intro_key: str,
               now: datetime) -> str:
    """Compute fresh offers, remember them on the case (numbering order) and return the numbered list.

    ``intro_key`` is one of INTRO_KEYS. With nothing free, or a case that cannot
    book (not ready, already checked in), the offers are cleared and the text
    says so. Raises KeyError for an unknown intro key.
    """
    language = messages.normalise_language(language)
    intro = messages.text(intro_key, language)
    bookable = appointments.can_book(case)
    offers: list[Offer] = []
    if bookable:
        current = active_appointment(case)
        offers = find_offers(session, runtime.settings, lat=case.location_lat, lng=case.location_lng, now=now,
                             exclude_slot_ids={current.slot_id} if current else ())
    case.offered_slot_ids = [offer.slot_id for offer in offers] or None
    case.offered_at = now if offers else None
    if not bookable:
        return messages.text("booking.not_bookable", language)
    if not offers:
        return messages.text("booking.no_slots", language)
    lines = [intro, *(_offer_line(number, offer, language) for number, offer in enumerate(offers, start=1))]
    reply_key = "booking.offer_reply_one" if len(offers) == 1 else "booking.offer_reply"
    lines.append(messages.text(reply_key, language, count=len(offers)))
    return "\n".join(lines)


def _offer_line(number: int, offer: Offer, language: str) -> str:
    when = time_window(offer.starts_at, offer.ends_at, offer.station.timezone, language)
    if offer.distance_km is None:
        return messages.text("booking.offer_line_no_distance", language, n=number, station=offer.station.name,
                             when=when)
    return messages.text("booking.offer_line", language, n=number, station=offer.station.name, when=when,
                         km=f"{offer.distance_km:.1f}")


def book_choice(session: Session, runtime: Runtime, case: Case, party: Party, number: int, *,
                now: datetime) -> BookResult:
    """Book offer ``number`` (1-based) for the case; a second booking moves the active appointment.

    Not booked (``reason_key`` "booking.stale_offer") when the number is not
    on the list, the list is older than OFFER_TTL, or the slot filled up
    meanwhile; nothing changes then. Booked: both parties are notified.
    """
    offered = case.offered_slot_ids or []
    fresh = case.offered_at is not None and now - case.offered_at <= OFFER_TTL
    if not fresh or not 1 <= number <= len(offered):
        return BookResult(False, None, STALE_OFFER)
    rescheduling = case.status is not CaseStatus.READY  # only a booked case can book again
    appointment = appointments.book_slot(session, case, int(offered[number - 1]), actor_type="party",
                                         actor=party.role.value, now=now)
    if appointment is None:
        return BookResult(False, None, STALE_OFFER)
    BOOKINGS.labels(action="rescheduled" if rescheduling else "booked").inc()
    return BookResult(True, appointment, None)


def cancel(session: Session, runtime: Runtime, case: Case, *, actor_type: str, actor: str | None,
           now: datetime) -> None:
    """Cancel the active appointment: seat freed, case cancelled, both parties told.

    Raises appointments.NoActiveAppointment (a Conflict) when there is none.
    """
    appointments.cancel_appointment(session, case, actor_type=actor_type, actor=actor, now=now)
    BOOKINGS.labels(action="cancelled").inc()


def appointment_summary(case: Case, language: str) -> str | None:
    """The active appointment in one line ("预约：<station> <time window>，地址：<address>"), or None."""
    appointment = active_appointment(case)
    if appointment is None:
        return None
    visit = appointments.visit_of(appointment)
    language = messages.normalise_language(language)
    return messages.text("booking.summary", language, station=visit.station_name, address=visit.address,
                         time=visit_window(visit, language))


def retake_done(session: Session, runtime: Runtime, case: Case, *, now: datetime, photo_id: int | None = None) -> None:
    """A retaken photo came in: once no party owes a requested photo, a RETAKE_REQUESTED case
    returns to BOOKED (CONFIRMED if its appointment is confirmed; READY if it has none), its
    evidence fingerprint is renewed and both parties are told the new one (``photo_id``, the
    last new photo, names the notice). Other states are left alone.
    """
    if case.status is not CaseStatus.RETAKE_REQUESTED:
        return
    if any(party.retake_item for party in case.parties):
        return  # the other party's requested photo is still to come
    appointment = active_appointment(case)
    if appointment is None:
        status = CaseStatus.READY
    elif appointment.status is AppointmentStatus.CONFIRMED:
        status = CaseStatus.CONFIRMED
    else:
        status = CaseStatus.BOOKED
    before = {"status": case.status.value, "fingerprint": case.evidence_fingerprint}
    case.status = status
    case.evidence_fingerprint = cases.evidence_fingerprint(case)
    case.updated_at = now
    cases.record_audit(session, actor_type="system", actor=None, action="case.retake_done", case_id=case.id,
                       before=before, after={"status": status.value, "fingerprint": case.evidence_fingerprint},
                       now=now)
    notify_parties(session, case, "evidence_updated", ref=photo_id or 0, now=now)
