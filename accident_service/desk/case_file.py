"""Everything the case page shows, read in one unit of work: plain functions over a session, no Flask.

Scope is decided here, once: :func:`load_case` raises NotFound for a case an
officer may not see (another station's, or not yet booked anywhere), so a
page never tells an officer that such a case exists.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from accident_service.booking.geo import nearest
from accident_service.booking.stations import active_stations
from accident_service.cases import lifecycle
from accident_service.cases.facts import NOTICE_KINDS
from accident_service.cases.lifecycle import Actor, RequirementMissing, active_appointment
from accident_service.cases.service import evidence_fingerprint, item_code, owner_of_item
from accident_service.desk.actions import station_of
from accident_service.desk.labels import slot_time
from accident_service.desk.queries import DEFAULT_TIMEZONE
from accident_service.errors import CaseNotFound
from accident_service.models import (
    Appointment,
    AuditEvent,
    Case,
    Notification,
    Photo,
    PhotoStatus,
    Slot,
    Station,
)
from accident_service.notify.channels import SMS_CHANNEL
from accident_service.settings import Settings
from accident_service.storage import ObjectStore

#: The lifecycle transitions the case page offers, in the order of the page's buttons.
DESK_TRANSITIONS = ("confirm", "check_in", "complete", "request_retake", "reschedule", "no_show",
                    "cancel_appointment", "withdraw")
# Requirements the page's forms supply (a reason, an outcome, an item): they do not hide a button.
_FORM_SUPPLIED = frozenset({"reason_required", "outcome_required", "no_such_item", "retake_pending"})
FREE_SLOTS_SHOWN = 60


@dataclass(frozen=True)
class PhotoView:
    item: int | None
    code: str
    role: str | None  # the party who photographs this item
    thumb_url: str
    original_url: str
    warnings: tuple[str, ...]
    taken_at: datetime | None
    received_at: datetime
    width: int | None
    height: int | None
    size_bytes: int | None
    sha256: str | None


@dataclass(frozen=True)
class ChecklistItem:
    item: int
    code: str
    role: str


@dataclass(frozen=True)
class SlotChoice:
    slot_id: int
    local_start: datetime
    local_end: datetime
    free: int


@dataclass(frozen=True)
class NoticeView:
    kind: str
    to: str  # "A", "B", or "-" for a message to nobody of the case's parties
    language: str
    status: str
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    last_error: str | None
    channel: str | None = None  # how it went or is going: "wechat", "template" or "sms"
    address: str | None = None  # the mobile number for an SMS (in full: this is the case page)


@dataclass(frozen=True)
class CaseFile:
    case: Case
    timezone: str
    station: Station | None
    appointment: Appointment | None  # the active one, else the latest
    photos: tuple[PhotoView, ...]
    superseded_photos: int
    current_fingerprint: str  # of the accepted photos as recorded now
    nearest_station: tuple[Station, float] | None
    audit: tuple[AuditEvent, ...]
    audit_slots: dict[int, str]  # the slots the audit names (the case's appointments'), by id: their time in words
    notices: tuple[NoticeView, ...]
    free_slots: tuple[SlotChoice, ...]
    checklist: tuple[ChecklistItem, ...]
    actions: frozenset[str]

    @functools.cached_property  # read for every audit row
    def item_codes(self) -> dict[int, str]:
        """The photo items the page may name (the audit's, a retake owed), by number: their checklist codes ("extra"
        beyond the checklist)."""
        return {**{photo.item: photo.code for photo in self.photos if photo.item},
                **{entry.item: entry.code for entry in self.checklist}}

    def local(self, moment: datetime | None) -> datetime | None:
        return moment.astimezone(ZoneInfo(self.timezone)) if moment is not None else None


def _audit_slots(case: Case, station: Station | None) -> dict[int, str]:
    """Every slot the case was booked into, in words for its audit (each booking and move made an appointment)."""
    zone = station.timezone if station else DEFAULT_TIMEZONE
    return {a.slot_id: slot_time(a.slot.starts_at, a.slot.ends_at, zone,
                                 a.slot.station.name if station is not None and a.slot.station_id != station.id
                                 else None)
            for a in case.appointments}


def load_case(session: Session, case_no: str, *, station_id: int | None) -> Case:
    """The case with its parties, photos and appointments, if ``station_id`` (None: any) handles it.

    Raises NotFound otherwise (also for a case never booked, when a station is given).
    """
    case = session.scalar(select(Case).where(Case.case_no == case_no).options(
        selectinload(Case.parties), selectinload(Case.photos),
        selectinload(Case.appointments).selectinload(Appointment.slot).selectinload(Slot.station)))
    if case is None or (station_id is not None and station_of(case) != station_id):
        raise CaseNotFound(case_no)
    return case


def case_file(session: Session, case_no: str, *, station_id: int | None, settings: Settings, store: ObjectStore,
              now: datetime) -> CaseFile:
    """The case page's contents. Raises NotFound (see :func:`load_case`)."""
    case = load_case(session, case_no, station_id=station_id)
    latest = max(case.appointments, key=lambda a: a.id, default=None)
    appointment = active_appointment(case) or latest
    station = latest.slot.station if latest is not None else None
    accepted = sorted((p for p in case.photos if p.status is PhotoStatus.ACCEPTED), key=lambda p: (p.item or 99, p.id))
    return CaseFile(
        case=case, timezone=station.timezone if station else DEFAULT_TIMEZONE, station=station,
        appointment=appointment, photos=tuple(_photo_view(p, case, settings, store) for p in accepted),
        superseded_photos=sum(p.status is PhotoStatus.SUPERSEDED for p in case.photos),
        current_fingerprint=evidence_fingerprint(case), nearest_station=_nearest(session, case),
        audit=tuple(session.scalars(select(AuditEvent).where(AuditEvent.case_id == case.id)
                                    .order_by(AuditEvent.at, AuditEvent.id))),
        audit_slots=_audit_slots(case, station),
        notices=tuple(_notice_view(n) for n in session.scalars(
            select(Notification).where(Notification.case_id == case.id, Notification.kind.in_(NOTICE_KINDS))
            .order_by(Notification.id))),
        free_slots=_free_slots(session, station, appointment, settings, now) if station else (),
        checklist=tuple(ChecklistItem(n, item_code(settings, n), owner_of_item(settings, n).value)
                        for n in range(1, len(settings.PHOTO_CHECKLIST) + 1)),
        actions=available_actions(case, settings, now))


def available_actions(case: Case, settings: Settings, now: datetime) -> frozenset[str]:
    """The DESK_TRANSITIONS the lifecycle lets staff make now (asked of the table, not decided here)."""
    allowed = set()
    for name in DESK_TRANSITIONS:
        refused = lifecycle.refusal(case, name, actor=Actor.STAFF, settings=settings, now=now)
        if refused is None or (isinstance(refused, RequirementMissing) and refused.reason in _FORM_SUPPLIED):
            allowed.add(name)
    return frozenset(allowed)


def _photo_view(photo: Photo, case: Case, settings: Settings, store: ObjectStore) -> PhotoView:
    expires = settings.PRESIGNED_URL_SECONDS
    original = store.presigned_url(photo.object_key, expires_in=expires) if photo.object_key else ""
    thumb = store.presigned_url(photo.thumb_key, expires_in=expires) if photo.thumb_key else original
    owner = owner_of_item(settings, photo.item) if photo.item else None
    return PhotoView(item=photo.item, code=item_code(settings, photo.item or 0), role=owner.value if owner else None,
                     thumb_url=thumb, original_url=original, warnings=tuple(photo.warnings or ()),
                     taken_at=photo.taken_at, received_at=photo.received_at, width=photo.width,
                     height=photo.height, size_bytes=photo.size_bytes, sha256=photo.sha256)


def _nearest(session: Session, case: Case) -> tuple[Station, float] | None:
    if case.location_lat is None or case.location_lng is None:
        return None
    ranked = nearest(active_stations(session), case.location_lat, case.location_lng, limit=1)
    return ranked[0] if ranked else None


def _free_slots(session: Session, station: Station, appointment: Appointment | None, settings: Settings,
                now: datetime) -> tuple[SlotChoice, ...]:
    """Slots of the case's station with a free seat, from now on (the one it holds left out)."""
    zone = ZoneInfo(station.timezone)
    query = (select(Slot).where(Slot.station_id == station.id, Slot.booked < Slot.capacity, Slot.starts_at > now,
                                Slot.starts_at < now + timedelta(days=settings.BOOKING_SEARCH_DAYS))
             .order_by(Slot.starts_at).limit(FREE_SLOTS_SHOWN))
    held = appointment.slot_id if appointment is not None else None
    return tuple(SlotChoice(slot.id, slot.starts_at.astimezone(zone), slot.ends_at.astimezone(zone),
                            slot.capacity - slot.booked)
                 for slot in session.scalars(query) if slot.id != held)


def _notice_view(row: Notification) -> NoticeView:
    payload: dict[str, Any] = row.payload if isinstance(row.payload, dict) else {}
    notice = payload.get("notice")
    to = str(notice.get("to")) if isinstance(notice, dict) and notice.get("to") else "-"
    return NoticeView(kind=row.kind, to=to, language=row.language, status=row.status.value, attempts=row.attempts,
                      created_at=row.created_at, sent_at=row.sent_at,
                      last_error=(row.last_error or "")[:200] or None, channel=row.channel,
                      address=row.address if row.channel == SMS_CHANNEL else None)
