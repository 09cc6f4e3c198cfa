"""What a case is made of: its open case per driver, checklist items by role, what is missing, its audit.

Plain functions over a session; callers own the transaction. Changes to a case
go through ``cases.lifecycle``; starting and joining one through ``cases.parties``.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, bindparam, select, true
from sqlalchemy.orm import Session, aliased, contains_eager, defer

from accident_service.clock import HOME_TIMEZONE
from accident_service.models import AuditEvent, Case, CaseStatus, Party, PartyRole, Photo, PhotoStatus
from accident_service.settings import Settings

_CASE_NO_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read over the phone
COLLECTING_STATUSES = (CaseStatus.DRAFT, CaseStatus.READY)


@dataclass(frozen=True)
class Missing:
    """What a case still needs before slots can be offered."""

    photos: tuple[tuple[PartyRole, int], ...]  # (role, checklist item) without an accepted photo
    location: bool
    party_b: bool
    details: tuple[tuple[PartyRole, str], ...]  # (role, "plate"|"phone") still missing

    @property
    def is_empty(self) -> bool:
        return not (self.photos or self.location or self.party_b or self.details)

    def photos_of(self, role: PartyRole) -> list[int]:
        return [item for owner, item in self.photos if owner is role]

    def details_of(self, role: PartyRole) -> list[str]:
        return [name for owner, name in self.details if owner is role]


def open_case_for(session: Session, openid: str, *, for_update: bool = False) -> tuple[Case, Party] | None:
    """The caller's open case (at most one: a unique index) and their party in it, or None.

    ``for_update`` locks the case first and reads it, with both parties, after: on PostgreSQL a locking
    statement that had to wait returns the rows it joined (the other party) as they were before it
    waited, so two drivers finishing at the same moment would each see the other unfinished and the
    case would never be ready. The statement after the lock sees what the lock's holder committed.
    """
    if for_update and session.execute(_lock_query(), {"openid": openid}).scalar_one_or_none() is None:
        return None
    case = session.execute(_open_case_query(for_update), {"openid": openid}).unique().scalar_one_or_none()
    if case is None:
        return None
    return case, next(party for party in case.parties if party.openid == openid)


def _callers_open_case(stmt: Select) -> Select:
    me = aliased(Party)
    return stmt.join(me, and_(me.case_id == Case.id, me.openid == bindparam("openid"), me.case_open == true()))


@functools.cache
def _lock_query() -> Select:
    return _callers_open_case(select(Case.id)).with_for_update(of=Case)


@functools.cache
def _open_case_query(for_update: bool) -> Select:
    """Built once: every inbound message runs it, and building an ORM select costs more than running it.

    Both parties come with the case, in the same statement: nearly every message tells or checks the other.
    """
    stmt = _callers_open_case(select(Case)).join(Case.parties).options(contains_eager(Case.parties))
    if for_update:
        # A conversation writes these columns at most (closing, touching, locating a case) and never reads
        # them: leave them out of the row (fewer values to convert); reading one loads it. The rows are read
        # afresh even if this session holds them: they were read before the lock.
        stmt = stmt.options(defer(Case.join_qr_ticket), defer(Case.join_qr_url), defer(Case.location_label),
                            defer(Case.created_at), defer(Case.last_activity_at), defer(Case.closed_at)) \
            .execution_options(populate_existing=True)
    return stmt


def touch(case: Case, settings: Settings, now: datetime) -> None:
    """Note driver activity; an unfinished case expires after a quiet period."""
    case.updated_at = case.last_activity_at = now
    if case.status in COLLECTING_STATUSES:
        case.expires_at = now + timedelta(minutes=settings.DRAFT_EXPIRY_MINUTES)


def accepted_photos(case: Case) -> list[Photo]:
    return [p for p in case.photos if p.status is PhotoStatus.ACCEPTED]


def owner_of_item(settings: Settings, item: int) -> PartyRole | None:
    """Which party photographs checklist ``item`` (1-based): B for PHOTO_CHECKLIST_B, else A; None off the list."""
    checklist = settings.PHOTO_CHECKLIST
    if not 1 <= item <= len(checklist):
        return None
    return PartyRole.B if checklist[item - 1] in settings.PHOTO_CHECKLIST_B else PartyRole.A


def items_of(settings: Settings, role: PartyRole) -> list[int]:
    """The checklist items (1-based) ``role`` photographs, in checklist order."""
    return [n for n in range(1, len(settings.PHOTO_CHECKLIST) + 1) if owner_of_item(settings, n) is role]


def taker_of_item(case: Case, settings: Settings, item: int) -> Party | None:
    """The party who photographs ``item`` in this case (None before they joined, or off the list)."""
    role = owner_of_item(settings, item)
    return case.party(role) if role is not None else None


def item_code(settings: Settings, item: int) -> str:
    """The checklist code of ``item`` ("scene", "plate_b"…), "extra" beyond the checklist."""
    checklist = settings.PHOTO_CHECKLIST
    return checklist[item - 1] if 1 <= item <= len(checklist) else "extra"


def missing(case: Case, settings: Settings) -> Missing:
    have = {p.item for p in accepted_photos(case) if p.item}
    photos = tuple((owner_of_item(settings, n), n) for n in range(1, len(settings.PHOTO_CHECKLIST) + 1)
                   if n not in have)
    details: list[tuple[PartyRole, str]] = []
    for party in sorted(case.parties, key=lambda p: p.role.value):  # A's before B's, each plate before phone
        details += [(party.role, name) for name in ("plate", "phone") if not getattr(party, name)]
    return Missing(photos=photos, location=case.location_lat is None, party_b=case.party(PartyRole.B) is None,
                   details=tuple(details))


def evidence_fingerprint(case: Case) -> str:
    """A short hash over the accepted photos' hashes: lets anyone tell the evidence did not change."""
    return fingerprint_of((p.item, p.sha256) for p in accepted_photos(case))


def stored_fingerprint(session: Session, case_id: int) -> str:
    """:func:`evidence_fingerprint` of the case's photos as stored, read without loading them as objects."""
    return fingerprint_of(session.connection().execute(_ACCEPTED_PHOTOS, {"case_id": case_id}))


_PHOTO = Photo.__table__
_ACCEPTED_PHOTOS = select(_PHOTO.c.item, _PHOTO.c.sha256).where(
    _PHOTO.c.case_id == bindparam("case_id"), _PHOTO.c.status == PhotoStatus.ACCEPTED.value)


def fingerprint_of(photos: Iterable[tuple[int | None, str | None]]) -> str:
    """The fingerprint of (checklist item, sha256) pairs: the first 16 hex digits of the SHA-256 of their
    sorted "item:sha256" lines."""
    digests = sorted(f"{item}:{sha256}" for item, sha256 in photos)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16]


def record_audit(session: Session, *, actor_type: str, actor: str | None, action: str, case_id: int | None,
                 now: datetime, before: dict[str, Any] | None = None,
                 after: dict[str, Any] | None = None) -> AuditEvent:
    event = AuditEvent(at=now, actor_type=actor_type, actor=actor, action=action, case_id=case_id,
                       before=before, after=after)
    session.add(event)
    return event


def mask(field: str, value: str | None) -> str | None:
    """A plate or phone as the audit trail and lists show it ("138****8000", "粤A***45")."""
    if not value:
        return value
    return value[:3] + "****" + value[-4:] if field == "phone" else value[:2] + "***" + value[-2:]


def new_case_no(session: Session, now: datetime) -> str:
    # The home day, as the queue, the slots and the notices show it: a case reported at 02:30 in Guangzhou is that
    # day's, not the day before's in UTC (an officer's pass met 20261207-… on a case of 12-08).
    day = now.astimezone(ZoneInfo(HOME_TIMEZONE)).strftime("%Y%m%d")
    for _ in range(20):
        candidate = day + "-" + "".join(secrets.choice(_CASE_NO_ALPHABET) for _ in range(5))
        if session.scalar(select(Case.id).where(Case.case_no == candidate)) is None:
            return candidate
    raise RuntimeError("could not find a free case number")


def new_join_code(session: Session) -> str:
    for _ in range(50):
        candidate = f"{secrets.randbelow(1_000_000):06d}"
        if session.scalar(select(Case.id).where(Case.join_code == candidate)) is None:
            return candidate
    raise RuntimeError("could not find a free join code")
