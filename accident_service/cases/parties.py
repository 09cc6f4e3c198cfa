"""The two drivers of a case: starting one, joining one, and what each gives of their own.

A WeChat user is party to at most one open case (a unique index on the open
parties' openids). Joining another case while in one is refused with a reason
that says how to leave the first, except for an own draft with no photos and
nobody joined, which is closed (``abandon``) so the join can go ahead.
Plain functions over a session; callers own the transaction and hold the
locks (the conversation loads the sender's case FOR UPDATE).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from accident_service.cases import lifecycle
from accident_service.cases.lifecycle import Actor
from accident_service.cases.service import mask, new_case_no, new_join_code, open_case_for, record_audit
from accident_service.errors import ServiceError
from accident_service.models import AuditEvent, Case, CaseStatus, Party, PartyRole
from accident_service.settings import Settings

JOIN_SCENE_PREFIX = "join:"  # the scene of a case's join QR code: "join:<join code>"
JOIN_GUESS_LIMIT = 5
JOIN_GUESS_WINDOW = timedelta(minutes=15)


class JoinRefused(ServiceError):
    """A join code or QR scene that cannot be used; ``code`` says why, ``case_no`` names the case in the way."""

    http_status = 409

    def __init__(self, code: str, *, case_no: str | None = None, role: PartyRole | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.case_no = case_no
        self.role = role


@dataclass(frozen=True)
class Joined:
    case: Case
    party: Party
    newly: bool  # False: they were in it already
    closed_draft: str | None = None  # the case number of the empty draft closed to make way


def start_case(session, *, openid: str, language: str, settings: Settings, now: datetime) -> tuple[Case, Party, bool]:
    """Resume the caller's open case, or start one with them as party A. Returns (case, party, created)."""
    existing = open_case_for(session, openid, for_update=True)
    if existing:
        return existing[0], existing[1], False
    case = Case(case_no=new_case_no(session, now), status=CaseStatus.DRAFT, join_code=new_join_code(session),
                version=1, created_at=now, updated_at=now, last_activity_at=now,
                expires_at=now + timedelta(minutes=settings.DRAFT_EXPIRY_MINUTES))
    party = Party(role=PartyRole.A, openid=openid, language=language, case_open=True, joined_at=now)
    case.parties.append(party)
    session.add(case)
    session.flush()
    record_audit(session, actor_type="party", actor=party.role.value, action="case.started", case_id=case.id,
                 after={"status": case.status.value, "case_no": case.case_no}, now=now)
    return case, party, True


def join_case(session, *, code: str, openid: str, language: str, settings: Settings, now: datetime,
              typed: bool = True, asked_at: datetime | None = None) -> Joined:
    """Join the case with ``code`` as party B, as asked at ``asked_at`` (when their message came; ``now`` if not
    given), which is when they joined for what they send after it (``lifecycle.closed_after``): a message
    processed late, behind the closing of their other case, must not move what they sent after it elsewhere.

    Raises JoinRefused: unknown_code, own_case, taken (another B joined),
    closed, in_other_case (the driver is party to another open case that is
    not an empty own draft; ``case_no``/``role`` name it), too_many_attempts
    (JOIN_GUESS_LIMIT unknown codes within JOIN_GUESS_WINDOW: six digits must
    not be guessable by trying them). A scanned QR code (``typed=False``) is
    neither limited nor counted: its scene cannot be guessed.
    """
    if typed:
        since = now - JOIN_GUESS_WINDOW
        wrong = session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "case.join_unknown_code", AuditEvent.actor == openid[:64], AuditEvent.at > since))
        if wrong >= JOIN_GUESS_LIMIT:
            raise JoinRefused("too_many_attempts")
    current = open_case_for(session, openid, for_update=True)
    case = session.scalar(select(Case).where(Case.join_code == code).with_for_update())
    if case is not None and asked_at is not None and case.created_at > asked_at:
        case = None  # a released code that a newer case took while the message waited: not the case they meant
    if case is None:
        if typed:
            record_audit(session, actor_type="wechat", actor=openid[:64], action="case.join_unknown_code",
                         case_id=None, now=now)
        raise JoinRefused("unknown_code")
    party_b = case.party(PartyRole.B)
    if party_b is not None and party_b.openid == openid:
        return Joined(case, party_b, False)
    if case.party(PartyRole.A).openid == openid:
        raise JoinRefused("own_case")
    if party_b is not None:
        raise JoinRefused("taken")
    if lifecycle.refusal(case, "join", actor=Actor.B, settings=settings, now=now) is not None:
        raise JoinRefused("closed")
    closed_draft = None
    if current is not None:
        other, mine = current
        if mine.role is not PartyRole.A or lifecycle.refusal(other, "abandon", actor=Actor.A, settings=settings,
                                                             now=now, party=mine) is not None:
            raise JoinRefused("in_other_case", case_no=other.case_no, role=mine.role)
        lifecycle.apply(session, other, "abandon", actor=Actor.A, party=mine, settings=settings, now=now,
                        after={"joined": case.case_no})
        session.flush()  # the abandoned draft lets go of the driver before they join (one open case each)
        closed_draft = other.case_no
    party = Party(role=PartyRole.B, openid=openid, language=language, case_open=True,
                  joined_at=min(asked_at or now, now))
    lifecycle.apply(session, case, "join", actor=Actor.B, party=party, settings=settings, now=now)
    case.parties.append(party)
    session.flush()
    return Joined(case, party, True, closed_draft)


def set_party_detail(session, case: Case, party: Party, *, field: str, value: str, settings: Settings,
                     now: datetime) -> None:
    """Set a party's own plate or phone (``field``), audited. Raises TransitionRefused once sealed."""
    if field not in ("plate", "phone"):
        raise ValueError(field)
    before = getattr(party, field)
    lifecycle.apply(session, case, "set_detail", actor=Actor.of(party), party=party, settings=settings, now=now,
                    details={field: value}, before={field: mask(field, before)}, after={field: mask(field, value)})
    setattr(party, field, value)


def set_location(session, case: Case, party: Party, *, lat: float, lng: float, label: str | None,
                 settings: Settings, now: datetime) -> None:
    """The accident's location, from the reporter. Raises TransitionRefused (party B, or sealed)."""
    lifecycle.apply(session, case, "set_location", actor=Actor.of(party), party=party, settings=settings, now=now,
                    after={"lat": round(lat, 5), "lng": round(lng, 5)})
    case.location_lat, case.location_lng, case.location_label = lat, lng, (label or None)
