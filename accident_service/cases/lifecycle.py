"""The case lifecycle: one table of everything that may happen to a case, and one function that does it.

For each transition the table says who may make it (party A the reporter,
party B the other driver, desk staff, the system), from which states and to
which, what it requires, what becomes of the active appointment and whom it
tells. :func:`apply` is the only way a case changes state: it refuses with a
typed error (and changes nothing) what the table does not allow, and
otherwise moves the case, writes one audit event with before/after, and
writes the notices to the outbox, all in the caller's transaction.

A case is created in draft by its reporter (``cases.service.start_case``);
everything after that is here. Entries that change no status (a party's
photo, plate or location) are in the table too, so "who may change what, and
when" has one answer: evidence and details are sealed once a case is booked.
The README ("The case lifecycle and the parties' rights") explains the choices
to a desk officer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from accident_service.cases import service as cases
from accident_service.cases.facts import Visit, case_facts, tell
from accident_service.errors import Conflict
from accident_service.models import (
    ACTIVE_APPOINTMENT_STATUSES,
    Appointment,
    AppointmentStatus,
    AuditEvent,
    Case,
    CaseStatus,
    Party,
    PartyRole,
)
from accident_service.settings import WEEK_MINUTES, Settings

S = CaseStatus
_NO_APPOINTMENT = (S.DRAFT, S.READY)
LIABILITIES = ("A", "B", "shared", "none")  # A or B fully liable, shared, or no liability found
#: The longest reason and outcome note staff may give, in characters: both drivers read it in a message of its own.
REASON_MAX_CHARS = 200
NOTE_MAX_CHARS = 500
#: The longest a party may be given to send a retaken photo (the desk's form and the API take minutes up to it): the
#: bound of the RETAKE_DEADLINE_MINUTES setting, so the default is always one the forms take.
RETAKE_MAX_DEADLINE_MINUTES = WEEK_MINUTES
CLOSED_STATUSES = (S.COMPLETED, S.CANCELLED, S.EXPIRED, S.NO_SHOW)
#: Sent back, from retake_requested, to the state its appointment is in (booked or confirmed).
RESUME = "resume"


class Actor(enum.StrEnum):
    A = "A"  # the reporter
    B = "B"  # the other party
    STAFF = "staff"
    SYSTEM = "system"

    @classmethod
    def of(cls, party: Party) -> Actor:
        return cls(party.role.value)


PARTIES = frozenset({Actor.A, Actor.B})


class Tell(enum.Enum):
    """Whom a transition's notice goes to."""

    NOBODY = "nobody"
    OTHER = "other"  # the party who did not act
    BOTH = "both"


# -- errors -------------------------------------------------------------------


class TransitionRefused(Conflict):
    """The table does not allow this; nothing was changed. ``reason`` says why, for the reply."""

    code = "transition_refused"

    def __init__(self, transition: str, reason: str, message: str = "") -> None:
        super().__init__(message or f"{transition}: {reason}", transition=transition, reason=reason)
        self.transition = transition
        self.reason = reason


class NotAllowed(TransitionRefused):
    """This actor may never make this transition (a party confirming, party B withdrawing the case)."""

    code = "not_allowed"
    http_status = 403


class WrongState(TransitionRefused):
    """Not from the case's current state (photos after booking, confirming a completed case)."""

    code = "wrong_state"


class RequirementMissing(TransitionRefused):
    """The state and actor fit, but something the transition needs is missing (a reason, an outcome)."""

    code = "requirement_missing"


class StaleCase(TransitionRefused):
    """The case changed since the caller looked at it (``expected_version``); nothing was applied."""

    code = "stale_case"


# -- requirements ---------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One try at a transition: what the requirements look at."""

    case: Case
    actor: Actor
    party: Party | None
    now: datetime
    settings: Settings
    details: Mapping[str, Any]


Requirement = Callable[[Attempt], str | None]  # None when met, else the reason it is not


def active_appointment(case: Case) -> Appointment | None:
    """The case's booked, confirmed or checked-in appointment, if any (at most one: a DB constraint)."""
    if case.status in _NO_APPOINTMENT and "appointments" in inspect(case).unloaded:
        return None  # nothing to load: every transition into these states ends the appointment (see TABLE)
    return next((a for a in case.appointments if a.status in ACTIVE_APPOINTMENT_STATUSES), None)


def nothing_missing(attempt: Attempt) -> str | None:
    """Every checklist photo, the location, party B and both parties' plates and phones are in."""
    return None if cases.missing(attempt.case, attempt.settings).is_empty else "incomplete"


def party_confirmed(attempt: Attempt) -> str | None:
    """A party confirmed the command (the conversation asks first); staff confirm by acting."""
    return "needs_confirmation" if attempt.actor in PARTIES and not attempt.details.get("confirmed") else None


def staff_reason(attempt: Attempt) -> str | None:
    """Staff give a reason, which both parties read: one they can read in a message (too long is refused, not cut:
    an officer's pass saw 5,000 characters taken and sent as their first 200)."""
    if attempt.actor is not Actor.STAFF:
        return None
    reason = str(attempt.details.get("reason") or "").strip()
    if not reason:
        return "reason_required"
    return "reason_too_long" if len(reason) > REASON_MAX_CHARS else None


def has_appointment(attempt: Attempt) -> str | None:
    """There is an active appointment to act on."""
    return None if active_appointment(attempt.case) is not None else "no_appointment"


def outcome_given(attempt: Attempt) -> str | None:
    """The outcome: liability A, B, shared or none, and a note of at most NOTE_MAX_CHARS (or none)."""
    if attempt.details.get("liability") not in LIABILITIES:
        return "outcome_required"
    return "note_too_long" if len(str(attempt.details.get("note") or "").strip()) > NOTE_MAX_CHARS else None


def slot_started(attempt: Attempt) -> str | None:
    """The appointment's slot has started (nobody is a no-show before their time)."""
    appointment = active_appointment(attempt.case)
    if appointment is None:
        return "no_appointment"
    return None if appointment.slot.starts_at <= attempt.now else "not_started"


def idle_past_expiry(attempt: Attempt) -> str | None:
    """The case has been idle past its expiry time."""
    expires_at = attempt.case.expires_at
    return None if expires_at is not None and expires_at <= attempt.now else "not_idle"


def empty_own_draft(attempt: Attempt) -> str | None:
    """Nobody joined and no photo was sent: nothing is lost by closing it."""
    case = attempt.case
    return None if not case.photos and case.party(PartyRole.B) is None else "not_empty"


def own_item(attempt: Attempt) -> str | None:
    """The checklist item is one the acting party photographs (items are assigned by role)."""
    item = attempt.details.get("item")
    owner = cases.owner_of_item(attempt.settings, item) if isinstance(item, int) else None
    if owner is None:
        return "no_such_item"
    return None if attempt.party is not None and owner is attempt.party.role else "not_own_item"


def not_the_other_partys_plate(attempt: Attempt) -> str | None:
    """A plate a party gives is not the one the other party gave: two cars, two plates (the other car's plate,
    read off it by mistake, would leave the case with one car twice and the sender's own car unnamed)."""
    plate, party = attempt.details.get("plate"), attempt.party
    if plate is None or party is None:
        return None
    other = attempt.case.party(PartyRole.B if party.role is PartyRole.A else PartyRole.A)
    return "other_party_plate" if other is not None and other.plate == plate else None


def is_sealed(case: Case) -> bool:
    """Once first booked, a case's evidence and details are sealed (the booking notice's fingerprint vouches
    for them), also after a cancellation brings it back to ready: the desk and the drivers saw them."""
    return case.evidence_fingerprint is not None


def not_sealed(attempt: Attempt) -> str | None:
    """Evidence and details change only until the case is first booked."""
    return "sealed" if is_sealed(attempt.case) else None


def photo_welcome(attempt: Attempt) -> str | None:
    """Before the first booking a party adds its photos; after it, only the one the desk asked it for."""
    if not is_sealed(attempt.case) and attempt.case.status is not S.RETAKE_REQUESTED:
        return None
    asked = attempt.case.status is S.RETAKE_REQUESTED and attempt.party is not None and attempt.party.retake_item
    return None if asked else "sealed"


def retakes_answered(attempt: Attempt) -> str | None:
    """No party still owes a photo the desk asked for."""
    return "retake_pending" if any(p.retake_item for p in attempt.case.parties) else None


def retake_request_valid(attempt: Attempt) -> str | None:
    """A checklist item, and its party owes no other photo (one request per driver at a time); the reason is
    :func:`staff_reason`'s."""
    item = attempt.details.get("item")
    owner = cases.owner_of_item(attempt.settings, item) if isinstance(item, int) else None
    if owner is None:
        return "no_such_item"
    taker = cases.taker_of_item(attempt.case, attempt.settings, item)
    return "retake_pending" if taker is not None and taker.retake_item else None


# -- the table ----------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    name: str
    actors: frozenset[Actor]
    moves: Mapping[CaseStatus, CaseStatus | str]  # from -> to; RESUME: the state of its appointment
    requires: tuple[Requirement, ...] = ()
    tells: Tell = Tell.NOBODY
    notice: str | None = None
    appointment: AppointmentStatus | None = None  # what the active appointment becomes
    records: bool = True  # False: a question, not a change (checked, not audited, no version bump)
    doc: str = field(default="", compare=False)

    def target(self, case: Case) -> CaseStatus:
        to = self.moves[case.status]
        if to == RESUME:
            appointment = active_appointment(case)
            return S.CONFIRMED if appointment and appointment.status is AppointmentStatus.CONFIRMED else S.BOOKED
        return CaseStatus(to)


def _stay(*states: CaseStatus) -> dict[CaseStatus, CaseStatus]:
    return {state: state for state in states}


def _all_to(target: CaseStatus, *states: CaseStatus) -> dict[CaseStatus, CaseStatus]:
    return dict.fromkeys(states, target)


A, B, STAFF, SYSTEM = Actor.A, Actor.B, Actor.STAFF, Actor.SYSTEM
COLLECTING = (S.DRAFT, S.READY)
WAITING_AT_DESK = (S.BOOKED, S.CONFIRMED, S.RETAKE_REQUESTED)  # an appointment not yet checked in

TABLE: tuple[Transition, ...] = (
    # Before booking: each party adds its own evidence and details.
    Transition("join", frozenset({B}), _stay(S.DRAFT), tells=Tell.OTHER, notice="joined",
               doc="the other driver joins with the code or the QR; the reporter is told"),
    Transition("abandon", frozenset({A}), _all_to(S.CANCELLED, S.DRAFT), (empty_own_draft,),
               doc="the reporter's empty draft closes when they join another driver's case"),
    Transition("add_photo", PARTIES, _stay(S.DRAFT, S.READY, S.RETAKE_REQUESTED), (photo_welcome,),
               doc="a party's photo fills one of its own checklist items (or the one the desk asked for)"),
    Transition("choose_retake", PARTIES, _stay(*COLLECTING), (not_sealed, own_item), records=False,
               doc="'retake N': the party's next photo replaces its own item N"),
    Transition("set_detail", PARTIES, _stay(*COLLECTING), (not_sealed, not_the_other_partys_plate),
               doc="a party's own plate or phone"),
    Transition("set_location", frozenset({A}), _stay(*COLLECTING), (not_sealed,),
               doc="the reporter shares the location"),
    Transition("become_ready", PARTIES, _all_to(S.READY, S.DRAFT), (nothing_missing,), tells=Tell.OTHER,
               notice="ready", doc="whoever completes the case gets the slot list; the other is told"),
    # Booking: either party books from the list it asked for; the desk may move it too.
    Transition("offer", PARTIES, _stay(S.READY, *WAITING_AT_DESK), records=False,
               doc="a party asks for free slots (first booking or reschedule)"),
    Transition("book", PARTIES, _all_to(S.BOOKED, S.READY), tells=Tell.BOTH, notice="booked",
               doc="a party books from its own list: a new appointment, evidence sealed, both may leave"),
    Transition("reschedule", PARTIES | {STAFF}, {S.BOOKED: S.BOOKED, S.CONFIRMED: S.BOOKED,
                                                 S.RETAKE_REQUESTED: S.RETAKE_REQUESTED},
               tells=Tell.BOTH, notice="rescheduled",
               doc="the appointment moves only once a new slot is taken; the desk confirms the new time"),
    Transition("cancel_appointment", PARTIES | {STAFF}, _all_to(S.READY, *WAITING_AT_DESK),
               (party_confirmed, staff_reason, has_appointment), tells=Tell.BOTH, notice="cancelled",
               appointment=AppointmentStatus.CANCELLED,
               doc="the seat is freed; the case, its evidence and parties stay for rebooking"),
    Transition("withdraw", frozenset({A, STAFF}), _all_to(S.CANCELLED, *COLLECTING, *WAITING_AT_DESK),
               (party_confirmed, staff_reason), tells=Tell.BOTH, notice="withdrawn",
               appointment=AppointmentStatus.CANCELLED, doc="the whole case ends (reporter, confirmed; or desk)"),
    # At the desk.
    Transition("confirm", frozenset({STAFF}), _all_to(S.CONFIRMED, S.BOOKED), tells=Tell.BOTH, notice="confirmed",
               appointment=AppointmentStatus.CONFIRMED),
    Transition("request_retake", frozenset({STAFF}), _all_to(S.RETAKE_REQUESTED, *WAITING_AT_DESK),
               (staff_reason, retake_request_valid), tells=Tell.BOTH, notice="retake",
               doc="one item again, with a reason and a deadline; the slot is kept"),
    Transition("retake_done", frozenset({SYSTEM}), {S.RETAKE_REQUESTED: RESUME}, (retakes_answered,),
               tells=Tell.BOTH, notice="evidence_updated", doc="every requested photo is in: a new fingerprint"),
    Transition("check_in", frozenset({STAFF}), _all_to(S.CHECKED_IN, *WAITING_AT_DESK), (has_appointment,),
               tells=Tell.BOTH, notice="checked_in", appointment=AppointmentStatus.CHECKED_IN),
    Transition("complete", frozenset({STAFF}), _all_to(S.COMPLETED, S.CHECKED_IN), (outcome_given,),
               tells=Tell.BOTH, notice="completed", appointment=AppointmentStatus.COMPLETED,
               doc="with the outcome (liability and a note), which both parties are told"),
    Transition("no_show", frozenset({STAFF, SYSTEM}), _all_to(S.NO_SHOW, *WAITING_AT_DESK), (slot_started,),
               tells=Tell.BOTH, notice="no_show", appointment=AppointmentStatus.NO_SHOW),
    Transition("expire", frozenset({SYSTEM}), _all_to(S.EXPIRED, *COLLECTING), (idle_past_expiry,),
               tells=Tell.BOTH, notice="expired"),
)
TRANSITIONS: dict[str, Transition] = {t.name: t for t in TABLE}
#: The notices that tell the parties their case closed for good (withdrawn, completed, no-show, expired).
CLOSING_NOTICES = frozenset(t.notice for t in TABLE
                            if t.notice and all(to in CLOSED_STATUSES for to in t.moves.values()))


# -- applying -------------------------------------------------------------------


def check(case: Case, name: str, *, actor: Actor, settings: Settings, now: datetime, party: Party | None = None,
          details: Mapping[str, Any] | None = None, expected_version: int | None = None) -> Transition:
    """The transition ``name`` if ``actor`` may make it on ``case`` now; raises TransitionRefused otherwise.

    NotAllowed (wrong actor), WrongState (not from this state), StaleCase
    (``expected_version`` is not the case's), RequirementMissing (``reason``
    names the requirement). KeyError for an unknown name.
    """
    transition = TRANSITIONS[name]
    if actor not in transition.actors:
        raise NotAllowed(name, "actor", f"{actor.value} may not {name}")
    if expected_version is not None and expected_version != case.version:
        raise StaleCase(name, "stale", f"case {case.case_no} changed meanwhile; reload it")
    if case.status not in transition.moves:
        raise WrongState(name, case.status.value, f"case {case.case_no} is {case.status.value}; cannot {name}")
    attempt = Attempt(case, actor, party, now, settings, details or {})
    for requirement in transition.requires:
        reason = requirement(attempt)
        if reason is not None:
            raise RequirementMissing(name, reason, f"cannot {name} case {case.case_no}: {reason}")
    return transition


def refusal(case: Case, name: str, **kwargs: Any) -> TransitionRefused | None:
    """The error :func:`apply` would raise, or None when it would go ahead (arguments as :func:`check`)."""
    try:
        check(case, name, **kwargs)
    except TransitionRefused as refused:
        return refused
    return None


def apply(session: Session, case: Case, name: str, *, actor: Actor, settings: Settings, now: datetime,
          party: Party | None = None, by: str | None = None, details: Mapping[str, Any] | None = None,
          before: Mapping[str, Any] | None = None, after: Mapping[str, Any] | None = None,
          visit: Visit | None = None, notice: Mapping[str, Any] | None = None,
          variants: Mapping[PartyRole, str] | None = None, expected_version: int | None = None) -> AuditEvent | None:
    """Make transition ``name``: check it (see :func:`check`), move the case, audit it, tell whom the table says.

    ``party`` is the acting party (actor A or B); ``by`` names staff in the
    audit. ``before``/``after`` add to the audit's {"status": ...}; ``visit``
    and ``notice`` add to the notice's facts; ``variants`` picks a wording per
    recipient (else "self", "other" or "desk" from who acted). Returns the
    audit event (None for an entry that records nothing). Raises TransitionRefused.
    """
    transition = check(case, name, actor=actor, settings=settings, now=now, party=party, details=details,
                       expected_version=expected_version)
    if not transition.records:
        return None
    was, target = case.status, transition.target(case)
    appointment = active_appointment(case) if transition.appointment is not None else None
    if appointment is not None:
        _move_appointment(appointment, transition.appointment, now)
    case.status = target
    case.version = (case.version or 1) + 1
    case.updated_at = now
    if actor in PARTIES:
        case.last_activity_at = now
    case.expires_at = now + timedelta(minutes=settings.DRAFT_EXPIRY_MINUTES) if target in COLLECTING else None
    if was is S.RETAKE_REQUESTED and target is not S.RETAKE_REQUESTED:
        for each in case.parties:
            each.retake_item = each.retake_due_at = None
    if target in CLOSED_STATUSES:
        _close(case, now)
    event = cases.record_audit(session, actor_type=_actor_type(actor), actor=by or actor.value,
                               action=_audit_action(name), case_id=case.id,
                               before={"status": was.value, **(before or {})},
                               after={"status": target.value, **(after or {})}, now=now)
    if transition.notice is not None and transition.tells is not Tell.NOBODY:
        facts = case_facts(case, visit) | {"by": actor.value} | dict(notice or {})
        readers = []
        for recipient in _recipients(case, transition.tells, party):
            variant = (variants or {}).get(recipient.role) or _variant(actor, recipient)
            readers.append((recipient, facts | ({"variant": variant} if variant else {})))
        # The case's new version names this change: each transition's notices are written once.
        tell(session, case, readers, transition.notice, ref=f"{case.id}.{case.version}", now=now)
    return event


def _move_appointment(appointment: Appointment, status: AppointmentStatus, now: datetime) -> None:
    appointment.status = status
    appointment.updated_at = now
    if status is AppointmentStatus.CHECKED_IN:
        appointment.checked_in_at = now
    elif status is AppointmentStatus.COMPLETED:
        appointment.completed_at = now


def requested(openid: str, at: datetime) -> dict[str, str]:
    """For a closing transition's audit: who asked for it and when, if not when it happened (a driver's
    withdrawal: when their message came, which may be well before it was processed)."""
    return {"requested_by": openid, "requested_at": at.isoformat()}


def _audit_action(transition: str) -> str:
    return f"case.{transition}"


def closed_after(session: Session, openid: str, sent_at: datetime, *, open_case: Case | None) -> Case | None:
    """The case ``openid`` is a party to that closed for good by an action asked for after ``sent_at``: what they
    sent then was for it, not for the case open now nor a new one. None when they were in ``open_case`` (theirs
    now) already at ``sent_at`` (a case opened before it that they joined after does not count), or no such
    case closed.

    The action's time is when it happened, or for ``openid``'s own withdrawal when they asked for it
    (:func:`requested`): the other driver could not know of it before. An empty draft its reporter left to join
    the other driver's case (``abandon``) does not count: what they sent is for the case they joined.
    """
    if open_case is not None and next(p.joined_at for p in open_case.parties if p.openid == openid) <= sent_at:
        return None
    closed = session.scalars(select(Case).join(Party, Party.case_id == Case.id)
                             .where(Party.openid == openid, Case.closed_at > sent_at).order_by(Case.closed_at))
    for case in closed:
        closing = next((event for event in session.scalars(
            select(AuditEvent).where(AuditEvent.case_id == case.id).order_by(AuditEvent.id.desc()))
            if (event.after or {}).get("status") in _CLOSED_VALUES), None)
        if closing is None or closing.action == _audit_action("abandon"):
            continue
        after = closing.after or {}
        asked = after.get("requested_at") if after.get("requested_by") == openid else None
        if (datetime.fromisoformat(asked) if asked else closing.at) > sent_at:
            return case
    return None


_CLOSED_VALUES = frozenset(status.value for status in CLOSED_STATUSES)


def _close(case: Case, now: datetime) -> None:
    """A final state: the join code is released and the parties are free to start or join another case."""
    case.join_code = None
    case.closed_at = now
    case.expires_at = None
    for each in case.parties:
        each.case_open = False
        each.offered_slot_ids = each.offered_at = None
        each.pending_action = each.pending_action_until = None
        each.retake_item = each.retake_due_at = None


def _recipients(case: Case, tells: Tell, actor_party: Party | None) -> list[Party]:
    if tells is Tell.OTHER:
        return [p for p in case.parties if actor_party is None or p.role is not actor_party.role]
    return list(case.parties)


def _variant(actor: Actor, recipient: Party) -> str:
    """How a notice addresses its reader: they acted ("self"), the other driver did ("other"), the desk did."""
    if actor is Actor.STAFF:
        return "desk"
    if actor in PARTIES:
        return "self" if actor.value == recipient.role.value else "other"
    return ""


def _actor_type(actor: Actor) -> str:
    return "party" if actor in PARTIES else actor.value
