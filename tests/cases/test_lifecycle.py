"""The lifecycle table, walked: every (transition, actor, state) either does what the table says or changes nothing.

For each combination the table allows, a case is built in that state (real
rows) with the transition's requirements met, and the transition is made the
way the service makes it (the feature function where there is one: booking
needs a slot, a cancellation frees a seat). Every other combination goes to
``lifecycle.apply`` and must be refused with the right error and leave the
database as it was, read back after the attempt without any rollback.

Each test runs inside one transaction on a database built once for the
module, rolled back at the end: several hundred combinations stay fast on
SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
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
)
from accident_service.settings import load_settings
from tests.conftest import T0
from tests.support import case_rows
from tests.support.case_rows import RETAKE_ITEM, Place, case_in

S = CaseStatus
STAFF_USER = "officer-7"
OWN_ITEM = {Actor.A: 1, Actor.B: 4}  # default checklist: items 1-3 are A's, item 4 is B's


# -- one database per module, one rolled-back transaction per test ----------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory, _postgres_schema):
    if _postgres_schema is not None:
        yield _postgres_schema  # migrated once per run by tests/conftest.py
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
def connection(engine):
    """One connection in one transaction for the whole module, rolled back at its end: nothing is committed."""
    with engine.connect() as conn:
        outer = conn.begin()
        yield conn
        outer.rollback()


@pytest.fixture(scope="module")
def where(connection) -> Place:
    """The station and slots every test uses, written once (inside the module's transaction)."""
    with Session(bind=connection, join_transaction_mode="create_savepoint") as db:
        made = case_rows.place(db, T0)
        db.commit()  # releases the savepoint only: the module's transaction is still open
    return made


@pytest.fixture
def session(connection, where):
    """A session in a savepoint of the module's transaction; closing it rolls the test's writes back."""
    with Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False) as db:
        yield db


# -- what a database holds about a case ---------------------------------------------------------------------------


def snapshot(session: Session, case_id: int) -> dict[str, Any]:
    """Everything a transition may change, read back from the database (pending changes are flushed first)."""
    one = session.execute(select(Case.status, Case.version, Case.join_code, Case.expires_at, Case.closed_at,
                                 Case.evidence_fingerprint, Case.location_lat, Case.liability)
                          .where(Case.id == case_id)).one()
    return {
        "case": tuple(one),
        "parties": [tuple(row) for row in session.execute(
            select(Party.role, Party.openid, Party.plate, Party.phone, Party.case_open, Party.retake_item,
                   Party.offered_slot_ids, Party.pending_action).order_by(Party.id))],
        "photos": [tuple(row) for row in session.execute(
            select(Photo.id, Photo.item, Photo.status).where(Photo.case_id == case_id).order_by(Photo.id))],
        "appointments": appointment_rows(session, case_id),
        "seats": [tuple(row) for row in session.execute(select(Slot.id, Slot.booked).order_by(Slot.id))],
        "audit": session.scalar(select(func.count()).select_from(AuditEvent)),
        "outbox": [tuple(row) for row in session.execute(
            select(Notification.dedupe_key, Notification.status).order_by(Notification.id))],
    }


def appointment_rows(session: Session, case_id: int) -> list[tuple[int, int, AppointmentStatus]]:
    return [tuple(row) for row in session.execute(
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
    before = snapshot(session, case.id)
    active = lifecycle.active_appointment(case)
    active_before = (active.id, active.slot_id, active.status) if active else None
    told = expected_recipients(transition, list(case.parties), combo.actor)
    audit_mark, outbox_mark = last_id(session, AuditEvent), last_id(session, Notification)

    make(session, case, combo.name, combo.actor, where, settings)

    after = snapshot(session, case.id)
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
    assert events[0].actor_type == ("party" if combo.actor in PARTIES else combo.actor.value)
    assert sorted((n.kind, n.openid) for n in notices) == sorted((transition.notice, o) for o in told)
    assert all(n.dedupe_key.startswith(f"{transition.notice}:{events[0].id}:") for n in notices)
    check_appointments(combo, transition, before, after, active_before, where)
    if target in CLOSED_STATUSES:
        assert after["case"][2] is None, "the join code is released"
        assert [p[4] for p in after["parties"] if p[1] in {x.openid for x in case.parties}] == \
            [False] * len(case.parties), "every party is free to start or join another case"
    else:
        assert after["case"][2] == before["case"][2], "an open case keeps its join code"


def check_appointments(combo: Combination, transition: lifecycle.Transition, before: dict, after: dict,
                       active_before: tuple | None, where: Place) -> None:
    old, new = before["appointments"], after["appointments"]
    seats_before, seats_after = dict(before["seats"]), dict(after["seats"])
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
def test_any_other_combination_is_refused_and_changes_nothing(session, settings, where, combo):
    case = case_in(session, combo.status, now=T0, where=where, settings=settings)
    before = snapshot(session, case.id)
    appointment = lifecycle.active_appointment(case)

    with pytest.raises(TransitionRefused) as refused:
        lifecycle.apply(session, case, combo.name, actor=combo.actor, party=party_of(case, combo.actor),
                        by=STAFF_USER if combo.actor is Actor.STAFF else None, settings=settings, now=T0,
                        details=details_for(combo.name, combo.actor),
                        visit=Visit.of(appointment) if appointment else None)

    expected = NotAllowed if combo.actor not in combo.transition.actors else WrongState
    assert type(refused.value) is expected
    assert refused.value.transition == combo.name
    assert snapshot(session, case.id) == before
