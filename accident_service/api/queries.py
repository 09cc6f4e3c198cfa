"""The API's read side for one case: summary, detail, dossier and audit trail, as plain dicts.

Free of Flask: each function takes a session and the caller's station scope
(None: every station) and returns what the API's schemas dump. A case the
scope does not cover is NotFound, by the same rule as the desk's
``lock_case`` (:func:`accident_service.desk.actions.station_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urljoin

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from accident_service.cases.service import accepted_photos, evidence_fingerprint
from accident_service.desk.actions import station_of
from accident_service.errors import CaseNotFound
from accident_service.models import Appointment, AuditEvent, Case, Photo, PhotoStatus, Slot
from accident_service.notify.notices import evidence_number
from accident_service.storage import ObjectStore

FINGERPRINT_METHOD = ("the first 16 hex digits of the SHA-256 of the lines '<item>:<sha256>' of the accepted "
                      "photos, sorted and joined with '\\n'")


@dataclass(frozen=True)
class Links:
    """Short-lived links to evidence objects: presigned by the store, absolute against ``base_url``."""

    store: ObjectStore
    seconds: int
    base_url: str  # the local store signs paths on this service; S3 signs whole URLs (kept as they are)
    now: datetime

    def url(self, key: str | None) -> str | None:
        return urljoin(self.base_url, self.store.presigned_url(key, expires_in=self.seconds)) if key else None

    @property
    def expires_at(self) -> datetime:
        return self.now + timedelta(seconds=self.seconds)


def load_case(session: Session, case_no: str, *, scope: int | None) -> Case:
    """The case ``case_no`` with its parties, photos and appointments; NotFound outside ``scope``."""
    case = session.scalar(
        select(Case).where(Case.case_no == case_no)
        .options(selectinload(Case.parties), selectinload(Case.photos),
                 selectinload(Case.appointments).selectinload(Appointment.slot).selectinload(Slot.station)))
    if case is None or (scope is not None and station_of(case) != scope):
        raise CaseNotFound(case_no)
    return case


def summary(case: Case) -> dict[str, Any]:
    """What a list shows of a case, and what an action answers (its state after the action)."""
    appointment = latest_appointment(case)
    return {"case_no": case.case_no, "status": case.status.value, "version": case.version,
            "created_at": case.created_at, "updated_at": case.updated_at, "closed_at": case.closed_at,
            "station": appointment["station"]["code"] if appointment else None, "appointment": appointment,
            "plates": [{"role": p.role.value, "plate": p.plate} for p in case.parties]}


def detail(session: Session, case: Case, links: Links) -> dict[str, Any]:
    """Everything about a case: parties, every photo (with its status and a link), appointment, outcome, audit."""
    roles = {party.id: party.role.value for party in case.parties}
    return summary(case) | {
        "location": _location(case), "parties": [_party(p) for p in case.parties],
        "photos": [_photo(p, roles, links) for p in case.photos],
        "fingerprint": case.evidence_fingerprint, "evidence_number": _evidence_number(case.evidence_fingerprint),
        "outcome": _outcome(case), "audit_events": audit_trail(session, case)}


def dossier(session: Session, case: Case, links: Links) -> dict[str, Any]:
    """What an insurer files: the evidence with every photo's sha256 and the fingerprint they make, the
    parties, the appointment, the outcome and the audit trail."""
    roles = {party.id: party.role.value for party in case.parties}
    evidence = accepted_photos(case)
    return {
        "case_no": case.case_no, "status": case.status.value, "version": case.version, "generated_at": links.now,
        "created_at": case.created_at, "closed_at": case.closed_at, "location": _location(case),
        "parties": [_party(p) for p in case.parties],
        "photos": [_photo(p, roles, links) for p in evidence],
        "superseded_photos": [_photo(p, roles, links) for p in case.photos if p.status is PhotoStatus.SUPERSEDED],
        "fingerprint": evidence_fingerprint(case), "fingerprint_method": FINGERPRINT_METHOD,
        "notified_fingerprint": case.evidence_fingerprint,
        "evidence_number": _evidence_number(case.evidence_fingerprint),
        "appointment": latest_appointment(case), "outcome": _outcome(case),
        "audit_events": audit_trail(session, case)}


def audit_trail(session: Session, case: Case) -> list[dict[str, Any]]:
    """The case's audit events, oldest first."""
    events = session.scalars(select(AuditEvent).where(AuditEvent.case_id == case.id).order_by(AuditEvent.id))
    return [audit_event(event, case.case_no) for event in events]


def audit_event(event: AuditEvent, case_no: str | None) -> dict[str, Any]:
    return {"id": event.id, "at": event.at, "case_no": case_no, "actor_type": event.actor_type,
            "actor": event.actor, "action": event.action, "before": event.before, "after": event.after}


def latest_appointment(case: Case) -> dict[str, Any] | None:
    """The case's latest appointment (the active one, or how the last one ended), with its station."""
    appointment = max(case.appointments, key=lambda a: a.id, default=None)
    if appointment is None:
        return None
    slot, station = appointment.slot, appointment.slot.station
    return {"id": appointment.id, "status": appointment.status.value, "slot_id": slot.id,
            "starts_at": slot.starts_at, "ends_at": slot.ends_at,
            "station": {"code": station.code, "name": station.name, "address": station.address,
                        "timezone": station.timezone},
            "checked_in_at": appointment.checked_in_at, "completed_at": appointment.completed_at}


def _location(case: Case) -> dict[str, Any] | None:
    if case.location_lat is None or case.location_lng is None:
        return None
    return {"lat": case.location_lat, "lng": case.location_lng, "label": case.location_label}


def _party(party) -> dict[str, Any]:
    return {"role": party.role.value, "plate": party.plate, "phone": party.phone, "language": party.language,
            "joined_at": party.joined_at}


def _photo(photo: Photo, roles: dict[int, str], links: Links) -> dict[str, Any]:
    stored = photo.object_key is not None
    return {"id": photo.id, "item": photo.item, "kind": photo.kind, "status": photo.status.value,
            "reject_code": photo.reject_code, "party": roles.get(photo.party_id) if photo.party_id else None,
            "sha256": photo.sha256, "content_type": photo.content_type, "width": photo.width,
            "height": photo.height, "size_bytes": photo.size_bytes, "taken_at": photo.taken_at,
            "received_at": photo.received_at, "url": links.url(photo.object_key),
            "thumbnail_url": links.url(photo.thumb_key), "url_expires_at": links.expires_at if stored else None}


def _outcome(case: Case) -> dict[str, Any] | None:
    if case.liability is None:
        return None
    completed = [a.completed_at for a in case.appointments if a.completed_at is not None]
    return {"liability": case.liability, "note": case.outcome_note, "handled_by": case.handled_by,
            "completed_at": max(completed, default=None)}


def _evidence_number(fingerprint: str | None) -> str | None:
    return evidence_number(fingerprint) if fingerprint else None
