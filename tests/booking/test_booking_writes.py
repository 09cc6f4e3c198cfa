"""What one booking writes, how it leaves the session, and how few statements it takes."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import event, select, text, update

from accident_service.booking import api as booking
from accident_service.booking import writes
from accident_service.booking.notices import render_notices
from accident_service.cases import service as cases
from accident_service.models import (
    Appointment,
    AppointmentStatus,
    AuditEvent,
    Case,
    CaseStatus,
    Notification,
    Party,
    PartyRole,
    Slot,
    Station,
    WorkStatus,
)
from tests.booking import factories as make
from tests.conftest import T0

H = timedelta(hours=1)


@pytest.fixture
def world(runtime):
    """One station, two slots (14:00 and 14:30 local, capacity 2), one ready case offered both."""
    with runtime.unit_of_work() as session:
        station = make.station(session, "GZ-TH", km_north=2.3, name="天河事故处理点")
        slots = [make.slot(session, station, T0 + 4 * H + i * timedelta(minutes=30)).id for i in range(2)]
        case = make.ready_case(session, T0, languages=("zh", "en"))
        case.offered_slot_ids, case.offered_at = slots, T0
        return {"case": case.id, "slots": slots, "openids": [p.openid for p in case.parties]}


def test_a_booking_writes_every_effect_in_its_transaction(runtime, world):
    result = make.choose(runtime, world["case"], 1, now=T0)
    assert result.booked
    appointment_id, slot_id = result.appointment.id, world["slots"][0]
    with runtime.unit_of_work() as session:
        assert session.get(Slot, slot_id).booked == 1
        appointment = session.get(Appointment, appointment_id)
        assert (appointment.case_id, appointment.slot_id, appointment.status) == \
            (world["case"], slot_id, AppointmentStatus.BOOKED)
        assert appointment.created_at == appointment.updated_at == T0 and appointment.reminded_at is None
        case = session.get(Case, world["case"])
        assert (case.status, case.offered_slot_ids, case.offered_at, case.expires_at, case.updated_at) == \
            (CaseStatus.BOOKED, None, None, None, T0)
        assert case.evidence_fingerprint == cases.evidence_fingerprint(case)
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "appointment.booked")).one()
        assert (audit.at, audit.case_id, audit.actor_type, audit.actor) == (T0, world["case"], "party", "A")
        assert audit.before == {"status": "ready", "slot_id": None}
        assert audit.after == {"status": "booked", "slot_id": slot_id, "appointment_id": appointment_id}
        sent = session.scalars(select(Notification).order_by(Notification.id)).all()
        assert [(n.openid, n.kind, n.language, n.dedupe_key, n.case_id, n.status, n.attempts, n.next_attempt_at,
                 n.created_at) for n in sent] == [
            (world["openids"][0], "booked", "zh", f"booked:{appointment_id}:A", world["case"], WorkStatus.PENDING, 0,
             T0, T0),
            (world["openids"][1], "booked", "en", f"booked:{appointment_id}:B", world["case"], WorkStatus.PENDING, 0,
             T0, T0),
        ]
        assert "天河事故处理点" in sent[0].payload["text"] and case.evidence_fingerprint in sent[1].payload["text"]
        assert sent[1].payload["template_data"]["time"] == {"value": "25 Nov 14:00-14:30"}


def test_the_session_shows_the_booking_without_writing_it_again(runtime, world):
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"], with_for_update=True)
        assert case.appointments == []  # loaded: the new row must join the collection
        slot = session.get(Slot, world["slots"][1])
        assert slot.booked == 0
        result = booking.book_choice(session, runtime, case, case.party(PartyRole.A), 2, now=T0)
        assert slot.booked == 1
        assert result.booked and booking.active_appointment(case) is result.appointment
        assert case.status is CaseStatus.BOOKED and case.offered_slot_ids is None
        assert result.appointment.slot.id == world["slots"][1] and result.appointment.case is case
        assert not session.dirty and not session.new
        emitted: list[str] = []

        def count(_conn, _cursor, statement, *_args) -> None:
            emitted.append(statement)

        event.listen(runtime.engine, "before_cursor_execute", count)
        try:
            session.flush()
        finally:
            event.remove(runtime.engine, "before_cursor_execute", count)
        assert emitted == []


def test_changes_pending_before_the_booking_are_kept(runtime, world):
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"], with_for_update=True)
        case.location_label = "天河路口"  # not flushed yet
        assert booking.book_choice(session, runtime, case, case.party(PartyRole.A), 1, now=T0).booked
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"])
        assert (case.location_label, case.status) == ("天河路口", CaseStatus.BOOKED)


def test_a_first_booking_while_a_retake_is_pending_keeps_the_retake(runtime, world):
    with runtime.unit_of_work() as session:
        session.get(Case, world["case"]).status = CaseStatus.RETAKE_REQUESTED
    assert make.choose(runtime, world["case"], 1, now=T0).booked
    with runtime.unit_of_work() as session:
        assert session.get(Case, world["case"]).status is CaseStatus.RETAKE_REQUESTED
        after = session.scalars(select(AuditEvent.after).where(AuditEvent.action == "appointment.booked")).one()
        assert after["status"] == "retake_requested"


@pytest.mark.parametrize("case_fix", ["started", "full", "unknown"])
def test_a_slot_that_cannot_be_booked_changes_nothing(runtime, world, case_fix):
    now = T0
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"])
        if case_fix == "started":
            now = session.get(Slot, world["slots"][0]).starts_at
            case.offered_at = now
        elif case_fix == "full":
            session.get(Slot, world["slots"][0]).booked = 2
        else:
            case.offered_slot_ids = [world["slots"][1] + 1000]
    assert make.choose(runtime, world["case"], 1, now=now) == booking.BookResult(False, None, "booking.stale_offer")
    assert make.appointments_of(runtime, world["case"]) == []
    assert make.count(runtime, Notification) == make.count(runtime, AuditEvent) == 0
    with runtime.unit_of_work() as session:
        assert session.get(Case, world["case"]).status is CaseStatus.READY


@pytest.mark.parametrize("old_index", [0, 1], ids=["old-slot-lower-id", "old-slot-higher-id"])
def test_a_move_that_loses_the_race_for_the_new_seat_gives_the_old_one_back(runtime, world, old_index):
    """The read saw a free seat, but the slot filled before the UPDATE: nothing may change."""
    old_slot, new_slot = world["slots"][old_index], world["slots"][1 - old_index]
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"])
        case.offered_slot_ids = [old_slot]
    current = make.choose(runtime, world["case"], 1, now=T0).appointment
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"], with_for_update=True)
        facts = writes.read_facts(session, case.id, new_slot, now=T0)
        assert facts is not None
        session.get(Slot, new_slot).booked = 2  # another driver was faster
        session.flush()
        plan = writes.BookingPlan(
            case_id=case.id, slot_id=new_slot, moving=(current.id, old_slot),
            case_values={"status": CaseStatus.BOOKED, "offered_slot_ids": None, "offered_at": None,
                         "expires_at": None, "updated_at": T0, "evidence_fingerprint": case.evidence_fingerprint},
            kind="rescheduled", actor_type="party", actor="A", audit_before={}, audit_after={},
            notices=render_notices("rescheduled", case_no=case.case_no, fingerprint=case.evidence_fingerprint,
                                   visit=facts.visit, recipients=facts.recipients),
            now=T0)
        assert writes.write_booking(session, plan) is None
    assert (make.booked_count(runtime, old_slot), make.booked_count(runtime, new_slot)) == (1, 2)
    assert make.appointments_of(runtime, world["case"]) == [(old_slot, "booked")]
    assert make.notices(runtime, "rescheduled") == []


def _statements_of_a_booking(runtime, session, case, party) -> list[str]:
    emitted: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        emitted.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        assert booking.book_choice(session, runtime, case, party, 1, now=T0).booked
        session.flush()
    finally:
        event.remove(runtime.engine, "before_cursor_execute", count)
    return emitted


@pytest.mark.postgres_only
def test_a_first_booking_on_postgres_is_one_read_and_one_write(runtime, world):
    """The slot row stays locked from the seat's UPDATE to COMMIT: nothing else may run in between.

    A case loaded without its booking facts (here by ``session.get``) reads them first.
    """
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"], with_for_update=True)
        emitted = _statements_of_a_booking(runtime, session, case, case.party(PartyRole.A))
    assert len(emitted) == 2
    assert emitted[0].lstrip().startswith("SELECT") and "UPDATE slot" in emitted[1]
    assert make.count(runtime, Notification) == 2 and make.count(runtime, AuditEvent) == 1


@pytest.mark.postgres_only
def test_a_first_booking_of_a_case_loaded_by_open_case_for_is_one_write(runtime, world):
    """The conversation's locked SELECT brings the facts along: no read between it and the write."""
    with runtime.unit_of_work() as session:
        case, party = cases.open_case_for(session, world["openids"][0], for_update=True, for_booking=True)
        emitted = _statements_of_a_booking(runtime, session, case, party)
    assert len(emitted) == 1
    assert emitted[0].lstrip().startswith("WITH") and "UPDATE slot" in emitted[0]
    assert make.count(runtime, Notification) == 2 and make.count(runtime, AuditEvent) == 1


@pytest.mark.postgres_only
def test_facts_loaded_with_the_case_are_the_facts_a_read_finds(runtime, world):
    with runtime.unit_of_work() as session:
        case, _ = cases.open_case_for(session, world["openids"][0], for_update=True, for_booking=True)
        for slot_id in world["slots"]:
            loaded, _ = writes.facts_loaded_with(case, slot_id)
            read = writes.read_facts(session, case.id, slot_id, now=T0)
            assert (loaded.visit, loaded.recipients) == (read.visit, read.recipients)
            assert sorted(loaded.photo_hashes) == sorted(read.photo_hashes) and len(loaded.photo_hashes) == 4
        assert writes.facts_loaded_with(case, world["slots"][1] + 1000) is None  # not offered


@pytest.mark.postgres_only
def test_facts_committed_while_the_booking_waited_for_the_case_lock_are_the_ones_written(runtime, world):
    """The locked SELECT's subqueries see the snapshot from before the wait; the write must not trust it."""
    holder = runtime.session_factory()
    try:
        holder.get(Case, world["case"], with_for_update=True)
        holder.execute(update(Station).where(Station.code == "GZ-TH").values(name="天河新址"))
        holder.execute(update(Party).where(Party.case_id == world["case"], Party.role == PartyRole.B)
                       .values(language="zh"))
        outcome: dict[str, object] = {}

        def choose() -> None:
            with runtime.unit_of_work() as session:
                case, party = cases.open_case_for(session, world["openids"][0], for_update=True, for_booking=True)
                outcome["result"] = booking.book_choice(session, runtime, case, party, 1, now=T0)

        chooser = threading.Thread(target=choose)
        chooser.start()
        _wait_until_a_backend_waits_for_a_lock(runtime)
        holder.commit()
        chooser.join(timeout=30)
    finally:
        holder.close()
    assert outcome["result"].booked
    sent = make.notices(runtime, "booked")
    assert [n.language for n in sent] == ["zh", "zh"]
    assert all("天河新址" in n.payload["text"] for n in sent)


def _wait_until_a_backend_waits_for_a_lock(runtime) -> None:
    deadline = time.monotonic() + 10
    with runtime.engine.connect() as connection:
        while connection.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")) == 0:
            assert time.monotonic() < deadline, "the booking never waited for the case lock"
            time.sleep(0.01)
            connection.rollback()
