"""What one booking writes, how it leaves the session, and that the seat is taken last before COMMIT."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import event, select, update

from accident_service.booking import appointments
from accident_service.booking import offers as booking
from accident_service.cases import service as cases
from accident_service.cases.facts import Visit, case_facts
from accident_service.cases.lifecycle import Actor, active_appointment
from accident_service.models import (
    Appointment,
    AppointmentStatus,
    AuditEvent,
    Case,
    CaseStatus,
    Notification,
    PartyRole,
    Slot,
    Station,
    WorkStatus,
)
from tests.booking import factories as make
from tests.conftest import T0
from tests.support.locks import backend_pid, wait_until_blocked_by

H = timedelta(hours=1)


@pytest.fixture
def world(runtime):
    """One station, two slots (14:00 and 14:30 local, capacity 2), one ready case offered both."""
    with runtime.unit_of_work() as session:
        station = make.station(session, "GZ-TH", km_north=2.3, name="天河事故处理点")
        slots = [make.slot(session, station, T0 + 4 * H + i * timedelta(minutes=30)).id for i in range(2)]
        case = make.ready_case(session, T0, languages=("zh", "en"))
        case.party(PartyRole.A).offered_slot_ids, case.party(PartyRole.A).offered_at = slots, T0
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
        assert (case.status, case.expires_at, case.updated_at, case.version) == (CaseStatus.BOOKED, None, T0, 2)
        assert [(p.offered_slot_ids, p.offered_at) for p in case.parties] == [(None, None)] * 2
        assert case.evidence_fingerprint == cases.evidence_fingerprint(case)
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "case.book")).one()
        assert (audit.at, audit.case_id, audit.actor_type, audit.actor) == (T0, world["case"], "party", "A")
        assert audit.before == {"status": "ready", "slot_id": None}
        assert audit.after == {"status": "booked", "slot_id": slot_id}
        sent = session.scalars(select(Notification).order_by(Notification.id)).all()
        assert [(n.openid, n.kind, n.language, n.dedupe_key, n.case_id, n.status, n.attempts, n.next_attempt_at,
                 n.created_at) for n in sent] == [
            (world["openids"][0], "booked", "zh", f"booked:{world['case']}.2:A", world["case"], WorkStatus.PENDING, 0,
             T0, T0),
            (world["openids"][1], "booked", "en", f"booked:{world['case']}.2:B", world["case"], WorkStatus.PENDING, 0,
             T0, T0),
        ]
        # Stored as facts, in no language: who acted, who reads, and the visit.
        slot = session.get(Slot, slot_id)
        facts = case_facts(case, Visit.at(slot.station, slot.starts_at, slot.ends_at)) | {"by": "A"}
        assert [n.payload for n in sent] == [{"notice": facts | {"variant": "self", "to": "A"}},
                                             {"notice": facts | {"variant": "other", "to": "B"}}]
        # Rendered when sent, each in the party's language.
        assert "天河事故处理点" in make.text_of(sent[0]) and "11月25日 14:00-14:30" in make.text_of(sent[0])
        assert case.evidence_fingerprint[:4].upper() in make.text_of(sent[1]) and "Booked." in make.text_of(sent[1])
        assert make.template_of(sent[1])["time4"] == {"value": "2026-11-25 14:00"}


def test_the_session_shows_the_booking_without_writing_it_again(runtime, world):
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"], with_for_update=True)
        assert case.appointments == []  # loaded: the new row must join the collection
        slot = session.get(Slot, world["slots"][1])
        assert slot.booked == 0
        result = booking.book_choice(session, runtime, case, case.party(PartyRole.A), 2, now=T0)
        assert slot.booked == 1
        assert result.booked and active_appointment(case) is result.appointment
        assert case.status is CaseStatus.BOOKED and case.party(PartyRole.A).offered_slot_ids is None
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


def test_the_seat_is_taken_by_the_last_statement_before_commit(runtime, world):
    """Competing drivers wait for the slot row from the seat's UPDATE to COMMIT: nothing else runs in between."""
    emitted: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        emitted.append(" ".join(statement.split()))

    event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        with runtime.unit_of_work() as session:
            case, party = cases.open_case_for(session, world["openids"][0], for_update=True)
            assert booking.book_choice(session, runtime, case, party, 1, now=T0).booked
            emitted.clear()  # from here on: what runs after the booking until COMMIT
            session.flush()
    finally:
        event.remove(runtime.engine, "before_cursor_execute", record)
    assert emitted == []  # the booking left nothing to write after its seat


def test_the_seat_update_closes_the_booking_inside_a_savepoint(runtime, world):
    emitted: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        emitted.append(" ".join(statement.split()))

    with runtime.unit_of_work() as session:
        case, party = cases.open_case_for(session, world["openids"][0], for_update=True)
        event.listen(runtime.engine, "before_cursor_execute", record)
        try:
            assert booking.book_choice(session, runtime, case, party, 1, now=T0).booked
        finally:
            event.remove(runtime.engine, "before_cursor_execute", record)
    writes = [s for s in emitted if not s.startswith("SELECT")]
    assert writes[0].startswith("SAVEPOINT") and writes[-1].startswith("RELEASE SAVEPOINT")
    seat = writes[-2]
    assert seat.startswith("UPDATE slot SET booked=(slot.booked + ") and "slot.booked < slot.capacity" in seat
    assert any(s.startswith("INSERT INTO appointment") for s in writes[:-2])
    assert any(s.startswith("INSERT INTO notification") for s in writes[:-2])


@pytest.mark.parametrize("case_fix", ["started", "full", "unknown"])
def test_a_slot_that_cannot_be_booked_changes_nothing(runtime, world, case_fix):
    now = T0
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"])
        if case_fix == "started":
            now = session.get(Slot, world["slots"][0]).starts_at
            case.party(PartyRole.A).offered_at = now
        elif case_fix == "full":
            session.get(Slot, world["slots"][0]).booked = 2
        else:
            case.party(PartyRole.A).offered_slot_ids = [world["slots"][1] + 1000]
    assert make.choose(runtime, world["case"], 1, now=now) == booking.BookResult(False, None, "booking.stale_offer")
    assert make.appointments_of(runtime, world["case"]) == []
    assert make.count(runtime, Notification) == make.count(runtime, AuditEvent) == 0
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"])
        assert (case.status, case.version, case.evidence_fingerprint) == (CaseStatus.READY, 1, None)


@pytest.mark.parametrize("old_index", [0, 1], ids=["old-slot-lower-id", "old-slot-higher-id"])
def test_a_move_that_loses_the_race_for_the_new_seat_gives_the_old_one_back(runtime, world, old_index):
    """The offer showed a free seat, but the slot filled before the UPDATE: nothing may change."""
    old_slot, new_slot = world["slots"][old_index], world["slots"][1 - old_index]
    with runtime.unit_of_work() as session:
        session.get(Case, world["case"]).party(PartyRole.A).offered_slot_ids = [old_slot]
    current = make.choose(runtime, world["case"], 1, now=T0).appointment
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"], with_for_update=True)
        assert active_appointment(case).id == current.id
        session.get(Slot, new_slot).booked = 2  # another driver was faster
        with pytest.raises(appointments.SlotUnavailable):
            appointments.book(session, case, new_slot, actor=Actor.A, party=case.party(PartyRole.A),
                              settings=runtime.settings, now=T0)
        assert case.status is CaseStatus.BOOKED and active_appointment(case).id == current.id
    assert (make.booked_count(runtime, old_slot), make.booked_count(runtime, new_slot)) == (1, 2)
    assert make.appointments_of(runtime, world["case"]) == [(old_slot, "booked")]
    assert make.notices(runtime, "rescheduled") == []


@pytest.mark.postgres_only
@pytest.mark.parametrize("kind", ["booked", "rescheduled"])
def test_facts_committed_while_the_booking_waited_for_the_case_lock_are_the_ones_written(runtime, world, kind):
    """The locked SELECT's joined rows come from the snapshot before the wait; the notices must not use them.

    The booking reads the slot and its station after the caller took the case lock.
    """
    if kind == "rescheduled":
        assert make.choose(runtime, world["case"], 1, now=T0).booked
        with runtime.unit_of_work() as session:
            party = session.get(Case, world["case"]).party(PartyRole.A)
            party.offered_slot_ids, party.offered_at = [world["slots"][1]], T0
    holder = runtime.session_factory()
    try:
        holder.get(Case, world["case"], with_for_update=True)
        holder.execute(update(Station).where(Station.code == "GZ-TH").values(name="天河新址"))
        outcome: dict[str, object] = {}

        def choose() -> None:
            with runtime.unit_of_work() as session:
                case, party = cases.open_case_for(session, world["openids"][0], for_update=True)
                outcome["result"] = booking.book_choice(session, runtime, case, party, 1, now=T0)

        chooser = threading.Thread(target=choose)
        chooser.start()
        wait_until_blocked_by(runtime.engine, backend_pid(holder))
        holder.commit()
        chooser.join(timeout=30)
    finally:
        holder.close()
    assert outcome["result"].booked
    sent = make.notices(runtime, kind)
    assert len(sent) == 2 and all("天河新址" in make.text_of(n) for n in sent)


def test_a_language_the_service_does_not_speak_gets_the_default(runtime, world):
    with runtime.unit_of_work() as session:
        for party in session.get(Case, world["case"]).parties:
            party.language = "EN" if party.role is PartyRole.A else "fr"
    assert make.choose(runtime, world["case"], 1, now=T0).booked
    assert [n.language for n in make.notices(runtime, "booked")] == ["zh", "zh"]


