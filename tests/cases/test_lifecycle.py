"""The lifecycle table, walked: every (transition, actor, state) either does what the table says or changes nothing.

For each combination the table allows, a case is built in that state (real
rows) with the transition's requirements met, and the transition is made the
way the service makes it (the feature function where there is one: booking
needs a slot, a cancellation frees a seat). Every other combination goes to
``lifecycle.apply`` and must be refused with the right error and leave the
database as it was, read back after the attempt without any rollback.

Each test runs inside one transaction, rolled back at its end, on a database
(and a station with its slots) set up once for the module: several hundred
combinations stay fast on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, func, select
from sqlalchemy.orm import Session

from accident_service.booking import appointments
from accident_service.cases import lifecycle, parties
from accident_service.cases.facts import Visit
from accident_service.cases.lifecycle import (
    CLOSED_STATUSES,
    PARTIES,
    RESUME,
    TABLE,
    Actor,
    NotAllowed,
    RequirementMissing,
    StaleCase,
    Tell,
    TransitionRefused,
    WrongState,
)
from accident_service.db import Base, make_engine
from accident_service.desk import actions
from accident_service.models import (
    Appointment,
    AppointmentStatus,
    AuditEvent,
    Case,
    CaseStatus,
    Notification,
    Party,
    PartyRole,
    Photo,
    Slot,
    Station,
    WorkStatus,
)
from accident_service.settings import load_settings
from tests import conftest
from tests.conftest import T0
from tests.support import case_rows
from tests.support.case_rows import RETAKE_ITEM, Place, case_in

pytestmark = pytest.mark.timeout(30)
S = CaseStatus
STAFF_USER = "officer-7"
OWN_ITEM = {Actor.A: 1, Actor.B: 4}  # default checklist: items 1-3 are A's, item 4 is B's


# -- one database per module, one rolled-back transaction per test ----------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory, _postgres_schema):
    if _postgres_schema is not None:  # migrated once per run by tests/conftest.py
        # Without the pool's pre-ping: one round trip less for each of several hundred short tests.
        made = create_engine(conftest.POSTGRES_URL)
        yield made
        made.dispose()
        return
    url = f"sqlite:///{tmp_path_factory.mktemp('lifecycle')}/lifecycle.db"
    made = make_engine(url)
    Base.metadata.create_all(made)
    yield made
    made.dispose()


@pytest.fixture(scope="module")
def settings(tmp_path_factory, engine):
    data = tmp_path_factory.mktemp("lifecycle-data")
    return load_settings({"APP_ENV": "test", "DATA_DIR": str(data), "DATABASE_URL": str(engine.url),
                          "STORAGE_URL": f"file://{data}/objects", "AUTO_MIGRATE": False,
                          "SECRET_KEY": "test-secret-key"}, environ={})


@pytest.fixture(scope="module")
def where(engine) -> Place:
    """The station and slots every test uses: committed once, deleted when the module is done."""
    with Session(bind=engine) as db, db.begin():
        made = case_rows.place(db, T0)
    yield made
    with engine.begin() as connection:
        connection.execute(delete(Slot).where(Slot.station_id == made.station_id))
        connection.execute(delete(Station).where(Station.id == made.station_id))


@pytest.fixture(scope="module")
def pristine(engine, settings):
    """One committed case in each state, left as it is by every test (they all roll back), with its snapshot.

    The refused combinations only read these: a refusal writes nothing, so the case, the counts and the
    snapshot taken once stay true for every attempt. Deleted when the module is done.
    """
    with Session(bind=engine, expire_on_commit=False) as db, db.begin():
        at = case_rows.place(db, T0, capacity=len(CaseStatus))
        ids = {status: case_in(db, status, now=T0, where=at, settings=settings).id for status in CaseStatus}
    with Session(bind=engine) as db, db.begin():
        cases = {status: (case_id, snapshot(db, case_id, at), at) for status, case_id in ids.items()}
    yield cases
    with engine.begin() as connection:
        for model in (Photo, Appointment, Party):
            connection.execute(delete(model).where(model.case_id.in_(ids.values())))
        connection.execute(delete(Case).where(Case.id.in_(ids.values())))
        connection.execute(delete(Slot).where(Slot.station_id == at.station_id))
        connection.execute(delete(Station).where(Station.id == at.station_id))


@pytest.fixture
def session(engine, where):
    """A session in a transaction that is rolled back: nothing a test writes is ever committed.

    One transaction per test, not savepoints in one long transaction: PostgreSQL slows down as
    rolled-back subtransactions and their dead row versions pile up in a single transaction.
    """
    with engine.connect() as connection:
        outer = connection.begin()
        with Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False) as db:
            yield db
        outer.rollback()


# -- what a database holds about a case ---------------------------------------------------------------------------


def snapshot(session: Session, case_id: int, where: Place) -> dict[str, Any]:
    """Everything a transition may change, read back from the database (pending changes are flushed first)."""
    session.flush()
    db = session.connection()  # Core statements: the snapshot needs no ORM objects

    def count(model, *where_clause):
        return select(func.count()).select_from(model).where(*where_clause).scalar_subquery()

    seats = [select(Slot.booked).where(Slot.id == slot_id).scalar_subquery() for slot_id in where.slot_ids]
    row = db.execute(select(Case.status, Case.version, Case.join_code, Case.expires_at, Case.closed_at,
                                 Case.evidence_fingerprint, Case.location_lat, Case.liability, *seats,
                                 count(AuditEvent), count(Notification),
                                 count(Notification, Notification.status == WorkStatus.PENDING))
                          .where(Case.id == case_id)).one()
    return {
        "case": tuple(row[:8]),
        "seats": dict(zip(where.slot_ids, row[8:11], strict=True)),
        "audit": row[11],
        "outbox": tuple(row[12:]),  # how many rows, how many still pending
        "parties": [tuple(party) for party in db.execute(
            select(Party.role, Party.openid, Party.plate, Party.phone, Party.case_open, Party.retake_item,
                   Party.offered_slot_ids, Party.pending_action).where(Party.case_id == case_id)
            .order_by(Party.id))],
        "photos": [tuple(photo) for photo in db.execute(
            select(Photo.id, Photo.item, Photo.status).where(Photo.case_id == case_id).order_by(Photo.id))],
        "appointments": appointment_rows(db, case_id),
    }


def appointment_rows(db, case_id: int) -> list[tuple[int, int, AppointmentStatus]]:
    return [tuple(row) for row in db.execute(
        select(Appointment.id, Appointment.slot_id, Appointment.status)
        .where(Appointment.case_id == case_id).order_by(Appointment.id))]


def new_audit(session: Session, after_id: int) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).where(AuditEvent.id > after_id).order_by(AuditEvent.id)))


def new_notices(session: Session, after_id: int) -> list[Notification]:
    return list(session.scalars(select(Notification).where(Notification.id > after_id).order_by(Notification.id)))


def last_id(session: Session, model) -> int:
    return session.scalar(select(func.coalesce(func.max(model.id), 0)))


# -- each allowed combination: the case it starts from and how the service makes it ------------------------------


def scene(session: Session, name: str, actor: Actor, status: CaseStatus, where: Place, settings) -> Case:
    """A case in ``status`` on which ``actor`` meets every requirement of ``name``."""
    kwargs: dict[str, Any] = {}
    if name == "join":
        kwargs = {"with_b": False}
    elif name == "abandon":
        kwargs = {"with_b": False, "photos": False}
    elif name == "add_photo" and status is S.RETAKE_REQUESTED:
        kwargs = {"retake_owed": (PartyRole(actor.value),)}  # the desk asked this party
    elif name == "retake_done":
        kwargs = {"retake_owed": ()}  # every photo the desk asked for is in
    elif name == "no_show":
        kwargs = {"slot_id": where.started_slot_id}
    elif name == "expire":
        kwargs = {"expires_at": T0 - timedelta(minutes=1)}
    return case_in(session, status, now=T0, where=where, settings=settings, **kwargs)


def party_of(case: Case, actor: Actor) -> Party | None:
    return case.party(PartyRole(actor.value)) if actor in PARTIES else None


def retake_item_to_request(case: Case) -> int:
    """An item whose party owes no photo yet (a retake_requested case: A owes item 2, so B's item 4)."""
    return RETAKE_ITEM[PartyRole.B] if case.party(PartyRole.A).retake_item else RETAKE_ITEM[PartyRole.A]


def make(session: Session, case: Case, name: str, actor: Actor, where: Place, settings) -> None:
    """Make transition ``name`` as the service does: through its feature function, else ``lifecycle.apply``."""
    party = party_of(case, actor)
    by = STAFF_USER if actor is Actor.STAFF else None
    common = {"settings": settings, "now": T0}
    if name == "join":
        parties.join_case(session, code=case.join_code, openid=f"oJoiner-{case.id}", language="zh", **common)
    elif name == "set_detail":
        parties.set_party_detail(session, case, party, field="plate", value="粤C54321", **common)
    elif name == "set_location":
        parties.set_location(session, case, party, lat=23.2, lng=113.4, label="黄埔大道", **common)
    elif name in ("book", "reschedule"):
        appointments.book(session, case, where.free_slot_id, actor=actor, party=party, by=by, **common)
    elif name == "cancel_appointment":
        appointments.cancel(session, case, actor=actor, party=party, by=by, confirmed=actor in PARTIES,
                            reason="事故处理点临时关闭" if actor is Actor.STAFF else None, **common)
    elif name == "withdraw":
        appointments.withdraw(session, case, actor=actor, party=party, by=by, confirmed=actor in PARTIES,
                              reason="双方已自行协商" if actor is Actor.STAFF else None, **common)
    elif name == "confirm":
        actions.confirm(session, case, staff=STAFF_USER, **common)
    elif name == "request_retake":
        actions.request_retake(session, case, item=retake_item_to_request(case), reason="车牌看不清",
                               staff=STAFF_USER, **common)
    elif name == "check_in":
        actions.check_in(session, case, staff=STAFF_USER, **common)
    elif name == "complete":
        actions.complete(session, case, liability="shared", note="双方同等责任", staff=STAFF_USER, **common)
    elif name == "no_show" and actor is Actor.STAFF:
        actions.mark_no_show(session, case, staff=STAFF_USER, **common)
    else:
        appointment = lifecycle.active_appointment(case)
        lifecycle.apply(session, case, name, actor=actor, party=party, by=by, details=details_for(name, actor),
                        visit=Visit.of(appointment) if appointment else None, **common)
    session.flush()


def details_for(name: str, actor: Actor) -> dict[str, Any]:
    """Details that meet every requirement that looks at them (so only actor or state can refuse)."""
    return {"item": OWN_ITEM.get(actor, 2) if name == "choose_retake" else 2, "confirmed": True,
            "reason": "核对信息", "liability": "none"}


# -- the walk -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Combination:
    name: str
    actor: Actor
    status: CaseStatus

    @property
    def transition(self) -> lifecycle.Transition:
        return lifecycle.TRANSITIONS[self.name]

    @property
    def allowed(self) -> bool:
        return self.actor in self.transition.actors and self.status in self.transition.moves

    @property
    def id(self) -> str:
        return f"{self.name}-{self.actor.value}-{self.status.value}"


ALL = [Combination(t.name, actor, status) for t in TABLE for actor in Actor for status in CaseStatus]
ALLOWED = [c for c in ALL if c.allowed]
REFUSED = [c for c in ALL if not c.allowed]


def test_the_walk_covers_every_combination_and_every_transition_is_allowed_somewhere():
    assert len(ALL) == len(TABLE) * len(Actor) * len(CaseStatus)
    assert {c.name for c in ALLOWED} == {t.name for t in TABLE}


def expected_target(transition: lifecycle.Transition, status: CaseStatus,
                    active: AppointmentStatus | None) -> CaseStatus:
    to = transition.moves[status]
    if to == RESUME:
        return S.CONFIRMED if active is AppointmentStatus.CONFIRMED else S.BOOKED
    return CaseStatus(to)


def expected_recipients(transition: lifecycle.Transition, case_parties: list[Party], actor: Actor) -> set[str]:
    if transition.notice is None or transition.tells is Tell.NOBODY:
        return set()
    if transition.tells is Tell.OTHER:
        return {p.openid for p in case_parties if p.role.value != actor.value}
    return {p.openid for p in case_parties}


@pytest.mark.parametrize("combo", ALLOWED, ids=[c.id for c in ALLOWED])
def test_an_allowed_transition_does_what_the_table_says(session, settings, where, combo):
    transition = combo.transition
    case = scene(session, combo.name, combo.actor, combo.status, where, settings)
    before = snapshot(session, case.id, where)
    active = lifecycle.active_appointment(case)
    active_before = (active.id, active.slot_id, active.status) if active else None
    told = expected_recipients(transition, list(case.parties), combo.actor)
    audit_mark, outbox_mark = last_id(session, AuditEvent), last_id(session, Notification)

    make(session, case, combo.name, combo.actor, where, settings)

    after = snapshot(session, case.id, where)
    events, notices = new_audit(session, audit_mark), new_notices(session, outbox_mark)
    if not transition.records:  # a question: checked, nothing written
        assert after == before
        assert events == [] and notices == []
        return
    target = expected_target(transition, combo.status, active_before[2] if active_before else None)
    status, version = after["case"][:2]
    assert (status, version) == (target, before["case"][1] + 1)
    assert [(e.action, e.before["status"], e.after["status"]) for e in events] == \
        [(f"case.{combo.name}", combo.status.value, target.value)]
    assert (events[0].actor_type, events[0].actor) == \
        ("party" if combo.actor in PARTIES else combo.actor.value,
         STAFF_USER if combo.actor is Actor.STAFF else combo.actor.value)
    assert sorted((n.kind, n.openid) for n in notices) == sorted((transition.notice, o) for o in told)
    # The case's new version names the change in the notices' dedupe keys: written once per transition.
    assert all(n.dedupe_key.startswith(f"{transition.notice}:{case.id}.{version}:") for n in notices)
    check_appointments(combo, transition, before, after, active_before, where)
    if target in CLOSED_STATUSES:
        assert after["case"][2] is None, "the join code is released"
        assert [p[4] for p in after["parties"]] == [False] * len(after["parties"]), \
            "every party is free to start or join another case"
    else:
        assert after["case"][2] == before["case"][2], "an open case keeps its join code"


def check_appointments(combo: Combination, transition: lifecycle.Transition, before: dict, after: dict,
                       active_before: tuple | None, where: Place) -> None:
    old, new = before["appointments"], after["appointments"]
    seats_before, seats_after = before["seats"], after["seats"]
    if combo.name in ("book", "reschedule"):
        assert new[-1][1:] == (where.free_slot_id, AppointmentStatus.BOOKED), "a new appointment in the new slot"
        assert seats_after[where.free_slot_id] == seats_before[where.free_slot_id] + 1
        if combo.name == "book":
            assert active_before is None and new[:-1] == old
        else:
            assert new[:-1] == [(a, s, AppointmentStatus.RESCHEDULED if a == active_before[0] else st)
                                for a, s, st in old]
            assert seats_after[active_before[1]] == seats_before[active_before[1]] - 1, "the old seat is freed"
        return
    if transition.appointment is None or active_before is None:  # nothing to move (withdrawing a draft)
        assert new == old
        assert seats_after == seats_before
        return
    assert new == [(a, s, transition.appointment if a == active_before[0] else st) for a, s, st in old]
    freed = transition.appointment is AppointmentStatus.CANCELLED
    assert seats_after[active_before[1]] == seats_before[active_before[1]] - freed


@pytest.mark.parametrize("combo", REFUSED, ids=[c.id for c in REFUSED])
def test_any_other_combination_is_refused_and_changes_nothing(session, settings, pristine, combo):
    case_id, before, at = pristine[combo.status]
    case = session.get(Case, case_id)

    with pytest.raises(TransitionRefused) as refused:
        lifecycle.apply(session, case, combo.name, actor=combo.actor, party=party_of(case, combo.actor),
                        by=STAFF_USER if combo.actor is Actor.STAFF else None, settings=settings, now=T0,
                        details=details_for(combo.name, combo.actor))

    expected = NotAllowed if combo.actor not in combo.transition.actors else WrongState
    assert type(refused.value) is expected
    assert refused.value.transition == combo.name
    assert snapshot(session, case.id, at) == before


# -- requirements -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Missing:
    """A case where ``actor`` may make ``name`` from this state, but one requirement is not met."""

    id: str
    name: str
    actor: Actor
    status: CaseStatus
    reason: str
    scene: dict[str, Any]
    attempt: Any  # (session, case, where, settings) -> None: the call that must be refused


def _apply(name: str, actor: Actor, **details: Any):
    def attempt(session, case, where, settings):
        appointment = lifecycle.active_appointment(case)
        lifecycle.apply(session, case, name, actor=actor, party=party_of(case, actor),
                        by=STAFF_USER if actor is Actor.STAFF else None, settings=settings, now=T0, details=details,
                        visit=Visit.of(appointment) if appointment else None)
    return attempt


def _cancel(actor: Actor, *, confirmed: bool = False, reason: str | None = None):
    def attempt(session, case, where, settings):
        appointments.cancel(session, case, actor=actor, party=party_of(case, actor), confirmed=confirmed,
                            by=STAFF_USER if actor is Actor.STAFF else None, reason=reason, settings=settings, now=T0)
    return attempt


def _withdraw(actor: Actor, *, confirmed: bool = False, reason: str | None = None):
    def attempt(session, case, where, settings):
        appointments.withdraw(session, case, actor=actor, party=party_of(case, actor), confirmed=confirmed,
                              by=STAFF_USER if actor is Actor.STAFF else None, reason=reason, settings=settings,
                              now=T0)
    return attempt


def _retake_request(item: int, reason: str = "车牌看不清"):
    def attempt(session, case, where, settings):
        actions.request_retake(session, case, item=item, reason=reason, staff=STAFF_USER, settings=settings, now=T0)
    return attempt


def _detail(actor: Actor, field: str = "phone", value: str = "13700137000"):
    def attempt(session, case, where, settings):
        parties.set_party_detail(session, case, party_of(case, actor), field=field, value=value, settings=settings,
                                 now=T0)
    return attempt


def _location(session, case, where, settings):
    parties.set_location(session, case, case.party(PartyRole.A), lat=23.2, lng=113.4, label="", settings=settings,
                         now=T0)


def _complete(liability: str):
    def attempt(session, case, where, settings):
        actions.complete(session, case, liability=liability, note="", staff=STAFF_USER, settings=settings, now=T0)
    return attempt


def _no_show_by_staff(session, case, where, settings):
    actions.mark_no_show(session, case, staff=STAFF_USER, settings=settings, now=T0)


def _check_in(session, case, where, settings):
    actions.check_in(session, case, staff=STAFF_USER, settings=settings, now=T0)


A_, B_, STAFF_, SYSTEM_ = Actor.A, Actor.B, Actor.STAFF, Actor.SYSTEM
RESEALED = {"sealed": True}  # ready again after a cancelled booking: sealed all the same
NO_APPOINTMENT = {"appointment": None}  # a state that says "booked" without an active appointment row
MISSING = [
    Missing("abandon-draft-with-a-photo", "abandon", A_, S.DRAFT, "not_empty", {"with_b": False},
            _apply("abandon", A_)),
    Missing("abandon-draft-the-other-joined", "abandon", A_, S.DRAFT, "not_empty", {"photos": False},
            _apply("abandon", A_)),
    Missing("add_photo-A-after-a-cancelled-booking", "add_photo", A_, S.READY, "sealed", RESEALED,
            _apply("add_photo", A_)),
    Missing("add_photo-B-retake-asked-of-A", "add_photo", B_, S.RETAKE_REQUESTED, "sealed",
            {"retake_owed": (PartyRole.A,)}, _apply("add_photo", B_)),
    Missing("choose_retake-A-sealed", "choose_retake", A_, S.READY, "sealed", RESEALED,
            _apply("choose_retake", A_, item=1)),
    Missing("choose_retake-A-item-5", "choose_retake", A_, S.DRAFT, "no_such_item", {},
            _apply("choose_retake", A_, item=5)),
    Missing("choose_retake-A-item-0", "choose_retake", A_, S.DRAFT, "no_such_item", {},
            _apply("choose_retake", A_, item=0)),
    Missing("choose_retake-A-no-item", "choose_retake", A_, S.DRAFT, "no_such_item", {},
            _apply("choose_retake", A_, item=None)),
    Missing("choose_retake-A-item-of-B", "choose_retake", A_, S.DRAFT, "not_own_item", {},
            _apply("choose_retake", A_, item=4)),
    Missing("choose_retake-B-item-of-A", "choose_retake", B_, S.READY, "not_own_item", {},
            _apply("choose_retake", B_, item=1)),
    Missing("set_detail-B-sealed", "set_detail", B_, S.READY, "sealed", RESEALED, _detail(B_)),
    Missing("set_detail-A-the-plate-B-gave", "set_detail", A_, S.DRAFT, "other_party_plate",
            {"details": (PartyRole.B,)}, _detail(A_, "plate", "粤BD12345")),
    Missing("set_detail-B-the-plate-A-gave", "set_detail", B_, S.DRAFT, "other_party_plate",
            {"details": (PartyRole.A,)}, _detail(B_, "plate", "粤A12345")),
    Missing("set_location-A-sealed", "set_location", A_, S.READY, "sealed", RESEALED, _location),
    Missing("become_ready-photos-missing", "become_ready", A_, S.DRAFT, "incomplete", {"photos": False},
            _apply("become_ready", A_)),
    Missing("become_ready-location-missing", "become_ready", B_, S.DRAFT, "incomplete", {"location": False},
            _apply("become_ready", B_)),
    Missing("become_ready-B-not-joined", "become_ready", A_, S.DRAFT, "incomplete", {"with_b": False},
            _apply("become_ready", A_)),
    Missing("become_ready-plates-phones-missing", "become_ready", A_, S.DRAFT, "incomplete", {"details": False},
            _apply("become_ready", A_)),
    Missing("cancel_appointment-A-unconfirmed", "cancel_appointment", A_, S.BOOKED, "needs_confirmation", {},
            _cancel(A_)),
    Missing("cancel_appointment-B-unconfirmed", "cancel_appointment", B_, S.CONFIRMED, "needs_confirmation", {},
            _cancel(B_)),
    Missing("cancel_appointment-staff-blank-reason", "cancel_appointment", STAFF_, S.BOOKED, "reason_required", {},
            _cancel(STAFF_, reason="   ")),
    Missing("cancel_appointment-no-appointment", "cancel_appointment", STAFF_, S.BOOKED, "no_appointment",
            NO_APPOINTMENT, _cancel(STAFF_, reason="关闭")),
    Missing("withdraw-A-unconfirmed", "withdraw", A_, S.READY, "needs_confirmation", {}, _withdraw(A_)),
    Missing("withdraw-staff-no-reason", "withdraw", STAFF_, S.BOOKED, "reason_required", {}, _withdraw(STAFF_)),
    Missing("request_retake-item-5", "request_retake", STAFF_, S.BOOKED, "no_such_item", {}, _retake_request(5)),
    Missing("request_retake-blank-reason", "request_retake", STAFF_, S.CONFIRMED, "reason_required", {},
            _retake_request(2, reason=" ")),
    Missing("request_retake-A-owes-one-already", "request_retake", STAFF_, S.RETAKE_REQUESTED, "retake_pending",
            {"retake_owed": (PartyRole.A,)}, _retake_request(1)),
    Missing("retake_done-A-still-owes", "retake_done", SYSTEM_, S.RETAKE_REQUESTED, "retake_pending",
            {"retake_owed": (PartyRole.A,)}, _apply("retake_done", SYSTEM_)),
    Missing("check_in-no-appointment", "check_in", STAFF_, S.CONFIRMED, "no_appointment", NO_APPOINTMENT,
            _check_in),
    Missing("complete-no-outcome", "complete", STAFF_, S.CHECKED_IN, "outcome_required", {},
            _apply("complete", STAFF_)),
    Missing("complete-unknown-liability", "complete", STAFF_, S.CHECKED_IN, "outcome_required", {},
            _complete("C")),
    Missing("no_show-staff-before-the-slot", "no_show", STAFF_, S.BOOKED, "not_started", {}, _no_show_by_staff),
    Missing("no_show-system-before-the-slot", "no_show", SYSTEM_, S.CONFIRMED, "not_started", {},
            _apply("no_show", SYSTEM_)),
    Missing("no_show-no-appointment", "no_show", SYSTEM_, S.BOOKED, "no_appointment", NO_APPOINTMENT,
            _apply("no_show", SYSTEM_)),
    Missing("expire-not-idle-yet", "expire", SYSTEM_, S.DRAFT, "not_idle", {}, _apply("expire", SYSTEM_)),
    Missing("expire-no-expiry-time", "expire", SYSTEM_, S.READY, "not_idle", {"expires_at": None},
            _apply("expire", SYSTEM_)),
]


def test_every_requirement_in_the_table_has_a_missing_case():
    named = {(t.name, r.__name__) for t in TABLE for r in t.requires}
    covered = {(m.name, r.__name__) for m in MISSING for r in lifecycle.TRANSITIONS[m.name].requires
               if _reason_of(r, m.reason)}
    assert named <= covered, sorted(named - covered)


def _reason_of(requirement, reason: str) -> bool:
    """Whether ``reason`` is one that ``requirement`` gives (read off its source: the table is the truth)."""
    return f'"{reason}"' in inspect.getsource(requirement)


@pytest.mark.parametrize("missing", MISSING, ids=[m.id for m in MISSING])
def test_a_missing_requirement_is_refused_with_its_reason_and_changes_nothing(session, settings, where, missing):
    assert missing.actor in lifecycle.TRANSITIONS[missing.name].actors
    assert missing.status in lifecycle.TRANSITIONS[missing.name].moves
    case = case_in(session, missing.status, now=T0, where=where, settings=settings, **missing.scene)
    before = snapshot(session, case.id, where)

    with pytest.raises(RequirementMissing) as refused:
        missing.attempt(session, case, where, settings)

    assert (refused.value.transition, refused.value.reason) == (missing.name, missing.reason)
    assert snapshot(session, case.id, where) == before


# -- stale versions, resuming after a retake, closing ------------------------------------------------------------------


STALE = [  # (transition, actor, state): through the function the desk or the conversation calls
    ("confirm", STAFF_, S.BOOKED),
    ("check_in", STAFF_, S.CONFIRMED),
    ("complete", STAFF_, S.CHECKED_IN),
    ("request_retake", STAFF_, S.BOOKED),
    ("reschedule", STAFF_, S.CONFIRMED),
    ("cancel_appointment", STAFF_, S.BOOKED),
    ("withdraw", STAFF_, S.READY),
    ("cancel_appointment", A_, S.BOOKED),
    ("become_ready", B_, S.DRAFT),
]


def _with_version(session: Session, case: Case, name: str, actor: Actor, where: Place, settings, version: int):
    party, by = party_of(case, actor), STAFF_USER if actor is Actor.STAFF else None
    common = {"settings": settings, "now": T0, "expected_version": version}
    if name == "confirm":
        actions.confirm(session, case, staff=STAFF_USER, **common)
    elif name == "check_in":
        actions.check_in(session, case, staff=STAFF_USER, **common)
    elif name == "complete":
        actions.complete(session, case, liability="A", note="", staff=STAFF_USER, **common)
    elif name == "request_retake":
        actions.request_retake(session, case, item=2, reason="看不清", staff=STAFF_USER, **common)
    elif name == "reschedule":
        actions.reschedule(session, case, where.free_slot_id, staff=STAFF_USER, **common)
    elif name == "cancel_appointment":
        appointments.cancel(session, case, actor=actor, party=party, by=by, reason="关闭", confirmed=True, **common)
    elif name == "withdraw":
        actions.close_case(session, case, reason="双方和解", staff=STAFF_USER, **common)
    else:
        lifecycle.apply(session, case, name, actor=actor, party=party, **common)
    session.flush()


@pytest.mark.parametrize(("name", "actor", "status"), STALE, ids=[f"{n}-{a.value}-{s.value}" for n, a, s in STALE])
def test_an_action_on_an_older_version_is_refused_as_stale_and_changes_nothing(session, settings, where, name,
                                                                             actor, status):
    case = case_in(session, status, now=T0, where=where, settings=settings)
    case.version = 3  # changed twice since it was created
    before = snapshot(session, case.id, where)

    for shown in (2, 4):
        with pytest.raises(StaleCase) as refused:
            _with_version(session, case, name, actor, where, settings, shown)
        assert refused.value.transition == name
        assert snapshot(session, case.id, where) == before

    _with_version(session, case, name, actor, where, settings, 3)
    assert snapshot(session, case.id, where)["case"][1] == 4


@pytest.mark.parametrize("appointment", [AppointmentStatus.BOOKED, AppointmentStatus.CONFIRMED])
def test_a_case_whose_retakes_are_all_in_resumes_the_state_of_its_appointment(session, settings, where, appointment):
    case = case_in(session, S.RETAKE_REQUESTED, now=T0, where=where, settings=settings, appointment=appointment,
                   retake_owed=())

    make(session, case, "retake_done", Actor.SYSTEM, where, settings)

    assert case.status is (S.CONFIRMED if appointment is AppointmentStatus.CONFIRMED else S.BOOKED)
    assert lifecycle.active_appointment(case).status is appointment


CLOSING = [("abandon", A_, S.DRAFT), ("withdraw", A_, S.READY), ("withdraw", STAFF_, S.CONFIRMED),
           ("complete", STAFF_, S.CHECKED_IN), ("no_show", SYSTEM_, S.BOOKED), ("expire", SYSTEM_, S.READY)]


@pytest.mark.parametrize(("name", "actor", "status"), CLOSING,
                         ids=[f"{n}-{a.value}-{s.value}" for n, a, s in CLOSING])
def test_a_closed_case_releases_its_join_code_and_its_drivers(session, settings, where, name, actor, status):
    case = scene(session, name, actor, status, where, settings)
    code, drivers = case.join_code, [p.openid for p in case.parties]

    make(session, case, name, actor, where, settings)

    assert case.status in CLOSED_STATUSES and case.join_code is None and case.closed_at == T0
    with pytest.raises(parties.JoinRefused) as refused:
        parties.join_case(session, code=code, openid="oSomebodyElse", language="zh", settings=settings, now=T0)
    assert refused.value.code == "unknown_code"
    for openid in drivers:  # each may start a new case now (one open case per driver)
        new_case, _, created = parties.start_case(session, openid=openid, language="zh", settings=settings, now=T0)
        assert created and new_case.id != case.id
        session.flush()
