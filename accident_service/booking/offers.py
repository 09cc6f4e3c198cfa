"""Slot lists for a party and the numbered replies that book from them (what the conversation calls).

Whoever asks gets the list and books from it: offers are kept per party, so
one driver's "1" never books from a list only the other driver saw. Every
function works inside the caller's unit of work and expects the case row to
be locked by the caller (the conversation loads it FOR UPDATE).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from accident_service import messages
from accident_service.booking import appointments
from accident_service.booking.availability import Offer, find_offers
from accident_service.cases import lifecycle
from accident_service.cases.facts import Visit
from accident_service.cases.lifecycle import Actor, active_appointment
from accident_service.models import Appointment, Case, Party
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


def offer_text(session: Session, runtime: Runtime, case: Case, party: Party, *, intro_key: str,
               now: datetime) -> str:
    """Compute fresh offers for ``party``, remember them (numbering order) and return the numbered list.

    ``intro_key`` is one of INTRO_KEYS. With nothing free, or a case that cannot
    book now (not ready, already checked in), the party's offers are cleared
    and the text says so. Raises KeyError for an unknown intro key.
    """
    language = messages.normalise_language(party.language)
    intro = messages.text(intro_key, language)
    bookable = lifecycle.refusal(case, "offer", actor=Actor.of(party), party=party, settings=runtime.settings,
                                 now=now) is None
    offers: list[Offer] = []
    if bookable:
        current = active_appointment(case)
        offers = find_offers(session, runtime.settings, lat=case.location_lat, lng=case.location_lng, now=now,
                             exclude_slot_ids={current.slot_id} if current else ())
    party.offered_slot_ids = [offer.slot_id for offer in offers] or None
    party.offered_at = now if offers else None
    if not bookable:
        return messages.text("booking.not_bookable", language)
    if not offers:
        return messages.text("booking.no_slots", language)
    lines = [intro, *(_offer_line(number, offer, language) for number, offer in enumerate(offers, start=1))]
    reply_key = "booking.offer_reply_one" if len(offers) == 1 else "booking.offer_reply"
    lines.append(messages.text(reply_key, language, count=len(offers)))
    return "\n".join(lines)


def _offer_line(number: int, offer: Offer, language: str) -> str:
    when = messages.time_window(offer.starts_at, offer.ends_at, offer.station.timezone, language)
    if offer.distance_km is None:
        return messages.text("booking.offer_line_no_distance", language, n=number, station=offer.station.name,
                             when=when)
    return messages.text("booking.offer_line", language, n=number, station=offer.station.name, when=when,
                         km=f"{offer.distance_km:.1f}")


def book_choice(session: Session, runtime: Runtime, case: Case, party: Party, number: int, *,
                now: datetime) -> BookResult:
    """Book offer ``number`` (1-based) of ``party``'s own list; a second booking moves the appointment.

    Not booked (``reason_key`` "booking.stale_offer") when the number is not on
    the party's list, the list is older than OFFER_TTL, or the slot filled up
    meanwhile; nothing changes then. Booked: both parties are told.
    Raises TransitionRefused when the case cannot book now.
    """
    offered = party.offered_slot_ids or []
    fresh = party.offered_at is not None and now - party.offered_at <= OFFER_TTL
    if not fresh or not 1 <= number <= len(offered):
        return BookResult(False, None, STALE_OFFER)
    try:
        appointment = appointments.book(session, case, int(offered[number - 1]), actor=Actor.of(party), party=party,
                                        settings=runtime.settings, now=now)
    except appointments.SlotUnavailable:
        return BookResult(False, None, STALE_OFFER)
    return BookResult(True, appointment, None)


def appointment_summary(case: Case, language: str) -> str | None:
    """The active appointment in one line ("预约：<station> <time window>，地址：<address>"), or None."""
    appointment = active_appointment(case)
    if appointment is None:
        return None
    visit = Visit.of(appointment)
    language = messages.normalise_language(language)
    return messages.text("booking.summary", language, station=visit.station_name, address=visit.address,
                         time=visit.window(language))
