"""The case lifecycle: start, join, facts the parties give, readiness, audit.

Plain functions over a session; callers own the transaction.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, func, literal, select
from sqlalchemy.orm import Session, defer

from accident_service.errors import ServiceError
from accident_service.models import (
    OPEN_CASE_STATUSES,
    AuditEvent,
    Case,
    CaseStatus,
    Party,
    PartyRole,
    Photo,
    PhotoStatus,
)
from accident_service.settings import Settings

_CASE_NO_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read over the phone
COLLECTING_STATUSES = (CaseStatus.DRAFT, CaseStatus.READY)
JOIN_GUESS_LIMIT = 5
JOIN_GUESS_WINDOW = timedelta(minutes=15)


class JoinRefused(ServiceError):
    """A join code or QR scene that cannot be used; ``code`` says why."""

    http_status = 409

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Missing:
    """What a case still needs before slots can be offered."""

    photos_received: int
    photos_required: int
    location: bool
    party_b: bool
    details: tuple[tuple[str, str], ...]  # (role, "plate"|"phone") still missing

    @property
    def is_empty(self) -> bool:
        return (self.photos_received >= self.photos_required and not self.location and not self.party_b
                and not self.details)


def open_case_for(session: Session, openid: str, *, for_update: bool = False) -> tuple[Case, Party] | None:
    """The caller's newest open case and their party in it, or None."""
    row = session.execute(_open_case_query(for_update), {"openid": openid}).first()
    return (row[0], row[1]) if row else None


@functools.cache
def _open_case_query(for_update: bool) -> Select:
    """Built once: every inbound message runs it, and building an ORM select costs more than running it."""
    # The statuses as one bound value each, not an "expanding" IN list, which is rendered again at every run.
    open_statuses = [literal(status, Case.status.type) for status in OPEN_CASE_STATUSES]
    stmt = (select(Case, Party).join(Party, Party.case_id == Case.id)
            .where(Party.openid == bindparam("openid"), Case.status.in_(open_statuses))
            .order_by(Case.id.desc()).limit(1))
    if for_update:
        # A conversation writes these columns at most (closing, touching, locating a case) and never reads
        # them: leave them out of the row (fewer values to convert); reading one loads it.
        stmt = stmt.options(defer(Case.join_qr_ticket), defer(Case.join_qr_url), defer(Case.location_label),
                            defer(Case.created_at), defer(Case.last_activity_at), defer(Case.closed_at),
                            defer(Party.joined_at))
    return stmt.with_for_update(of=Case) if for_update else stmt


def start_case(session: Session, *, openid: str, language: str, settings: Settings,
               now: datetime) -> tuple[Case, Party, bool]:
    """Resume the caller's open case, or start one with them as party A. Returns (case, party, created)."""
    existing = open_case_for(session, openid, for_update=True)
    if existing:
        return existing[0], existing[1], False
    case = Case(case_no=_new_case_no(session, now), status=CaseStatus.DRAFT, join_code=_new_join_code(session),
                created_at=now, updated_at=now, last_activity_at=now,
                expires_at=now + timedelta(minutes=settings.DRAFT_EXPIRY_MINUTES))
    party = Party(role=PartyRole.A, openid=openid, language=language, joined_at=now)
    case.parties.append(party)
    session.add(case)
    session.flush()
    record_audit(session, actor_type="party", actor=party.role.value, action="case.started", case_id=case.id,
                 after={"case_no": case.case_no}, now=now)
    return case, party, True


def join_case(session: Session, *, code: str, openid: str, language: str, settings: Settings,
              now: datetime, typed: bool = True) -> tuple[Case, Party, bool]:
    """Join the case with ``code`` as party B. Returns (case, party, newly_joined).

    Raises JoinRefused: unknown_code, own_case, taken (another B joined), closed,
    too_many_attempts (JOIN_GUESS_LIMIT unknown codes within JOIN_GUESS_WINDOW:
    six digits must not be guessable by trying them). A scanned QR code (``typed=False``)
    is neither limited nor counted: its scene cannot be guessed.
    """
    if typed:
        since = now - JOIN_GUESS_WINDOW
        wrong = session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "case.join_unknown_code", AuditEvent.actor == openid[:64], AuditEvent.at > since))
        if wrong >= JOIN_GUESS_LIMIT:
            raise JoinRefused("too_many_attempts")
    case = session.scalar(select(Case).where(Case.join_code == code).with_for_update())
    if case is None:
        if typed:
            record_audit(session, actor_type="wechat", actor=openid[:64], action="case.join_unknown_code",
                         case_id=None, now=now)
        raise JoinRefused("unknown_code")
    if case.status not in OPEN_CASE_STATUSES:
        raise JoinRefused("closed")
    party_b = case.party(PartyRole.B)
    if party_b is not None:
        if party_b.openid == openid:
            return case, party_b, False
        raise JoinRefused("taken")
    if case.party(PartyRole.A).openid == openid:
        raise JoinRefused("own_case")
    other = open_case_for(session, openid)
    if other is not None and other[0].id != case.id and other[0].status in COLLECTING_STATUSES \
            and other[1].role is PartyRole.A and not other[0].photos:
        # An empty draft the second driver started by mistake gives way to the join.
        close_case(session, other[0], CaseStatus.CANCELLED, actor_type="party", actor="A", now=now)
    party = Party(role=PartyRole.B, openid=openid, language=language, joined_at=now)
    case.parties.append(party)
    session.flush()
    touch(case, settings, now)
    record_audit(session, actor_type="party", actor="B", action="case.joined", case_id=case.id, now=now)
    return case, party, True


def set_party_detail(session: Session, case: Case, party: Party, *, field: str, value: str, settings: Settings,
                     now: datetime) -> None:
    """Set a party's plate or phone (``field``), audited."""
    if field not in ("plate", "phone"):
        raise ValueError(field)
    before = getattr(party, field)
    setattr(party, field, value)
    touch(case, settings, now)
    record_audit(session, actor_type="party", actor=party.role.value, action=f"party.{field}", case_id=case.id,
                 before={field: _mask(field, before)}, after={field: _mask(field, value)}, now=now)


def set_location(session: Session, case: Case, party: Party, *, lat: float, lng: float, label: str | None,
                 settings: Settings, now: datetime) -> None:
    case.location_lat, case.location_lng, case.location_label = lat, lng, (label or None)
    touch(case, settings, now)
    record_audit(session, actor_type="party", actor=party.role.value, action="case.location", case_id=case.id,
                 now=now)


def touch(case: Case, settings: Settings, now: datetime) -> None:
    """Note driver activity; an unfinished case expires after a quiet period."""
    case.updated_at = case.last_activity_at = now
    if case.status in COLLECTING_STATUSES:
        case.expires_at = now + timedelta(minutes=settings.DRAFT_EXPIRY_MINUTES)


def accepted_photos(case: Case) -> list[Photo]:
    return [p for p in case.photos if p.status is PhotoStatus.ACCEPTED]


def missing(case: Case, settings: Settings) -> Missing:
    items = {p.item for p in accepted_photos(case) if p.item}
    required = len(settings.PHOTO_CHECKLIST)
    details: list[tuple[str, str]] = []
    for role in (PartyRole.A, PartyRole.B):
        party = case.party(role)
        if party is None:
            continue
        details += [(role.value, f) for f in ("plate", "phone") if not getattr(party, f)]
    return Missing(photos_received=len(items & set(range(1, required + 1))), photos_required=required,
                   location=case.location_lat is None, party_b=case.party(PartyRole.B) is None,
                   details=tuple(details))


#: Once booked, the evidence the notices' fingerprint vouches for is sealed.
SEALED_STATUSES = (CaseStatus.BOOKED, CaseStatus.CONFIRMED, CaseStatus.CHECKED_IN, CaseStatus.RETAKE_REQUESTED)


def evidence_sealed(case: Case, party: Party) -> bool:
    """Whether ``party`` may not add or replace photos: the case is booked and the desk asked them for none."""
    if case.status not in SEALED_STATUSES:
        return False
    return not (case.status is CaseStatus.RETAKE_REQUESTED and party.retake_item)


def evidence_fingerprint(case: Case) -> str:
    """A short hash over the accepted photos' hashes: lets anyone tell the evidence did not change."""
    digests = sorted(f"{p.item}:{p.sha256}" for p in accepted_photos(case))
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]


def close_case(session: Session, case: Case, status: CaseStatus, *, actor_type: str, actor: str | None,
               now: datetime) -> None:
    """Move a case to a final state; its join code is released for reuse."""
    before = case.status.value
    case.status = status
    case.join_code = None
    case.closed_at = case.updated_at = now
    case.expires_at = None
    case.offered_slot_ids = None
    record_audit(session, actor_type=actor_type, actor=actor, action=f"case.{status.value}", case_id=case.id,
                 before={"status": before}, after={"status": status.value}, now=now)


def record_audit(session: Session, *, actor_type: str, actor: str | None, action: str, case_id: int | None,
                 now: datetime, before: dict[str, Any] | None = None,
                 after: dict[str, Any] | None = None) -> AuditEvent:
    event = AuditEvent(at=now, actor_type=actor_type, actor=actor, action=action, case_id=case_id,
                       before=before, after=after)
    session.add(event)
    return event


def _mask(field: str, value: str | None) -> str | None:
    if not value:
        return value
    return value[:3] + "****" + value[-4:] if field == "phone" else value[:2] + "***" + value[-2:]


def _new_case_no(session: Session, now: datetime) -> str:
    for _ in range(20):
        candidate = now.strftime("%Y%m%d") + "-" + "".join(secrets.choice(_CASE_NO_ALPHABET) for _ in range(5))
        if session.scalar(select(Case.id).where(Case.case_no == candidate)) is None:
            return candidate
    raise RuntimeError("could not find a free case number")


def _new_join_code(session: Session) -> str:
    for _ in range(50):
        candidate = f"{secrets.randbelow(1_000_000):06d}"
        if session.scalar(select(Case.id).where(Case.join_code == candidate)) is None:
            return candidate
    raise RuntimeError("could not find a free join code")
