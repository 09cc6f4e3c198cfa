"""Scheduler-facing changes under the controlled clock: reminders, no-shows, idle drafts."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from accident_service.booking import appointments
from accident_service.booking import scheduled as lifecycle
from accident_service.cases.lifecycle import Actor
from accident_service.models import Appointment, AppointmentStatus, Case, CaseStatus, PartyRole, WorkStatus
from tests.booking import factories as make
from tests.conftest import T0

H = timedelta(hours=1)
M = timedelta(minutes=1)


@pytest.fixture
def booked(runtime):
    """A case booked into a slot 14:00-14:30 local (T0 + 4 h); returns (case_id, appointment_id, slot)."""
    with runtime.unit_of_work() as session:
        slot = make.slot(session, make.station(session, "GZ-TH", name="天河事故处理点"), T0 + 4 * H)
        case_id = make.ready_case(session, T0, languages=("zh", "en")).id
    make.offer(runtime, case_id, now=T0)
    appointment = make.choose(runtime, case_id, 1, now=T0).appointment
    return case_id, appointment.id, slot


def test_reminder_once_within_the_reminder_window(runtime, clock, booked):
    case_id, appointment_id, slot = booked
    window = timedelta(minutes=runtime.settings.REMINDER_MINUTES)
    clock.set(slot.starts_at - window - M)
    assert lifecycle.send_due_reminders(runtime) == 0
    clock.set(slot.starts_at - window)
    assert lifecycle.send_due_reminders(runtime) == 1
    assert lifecycle.send_due_reminders(runtime) == 0
    clock.advance(minutes=30)
    assert lifecycle.send_due_reminders(runtime) == 0
    sent = make.notices(runtime, "reminder")
    assert [n.dedupe_key for n in sent] == [f"reminder:{appointment_id}:A", f"reminder:{appointment_id}:B"]
    zh, en = (make.text_of(n) for n in sent)
    assert "改约" in zh and "11月25日 14:00-14:30" in zh and "天河事故处理点" in zh
    assert "reschedule" in en and "25 Nov 14:00-14:30" in en
    with runtime.unit_of_work() as session:
        assert session.get(Appointment, appointment_id).reminded_at == slot.starts_at - window


def test_no_reminder_once_the_slot_has_started(runtime, clock, booked):
    _, _, slot = booked
    clock.set(slot.starts_at)
    assert lifecycle.send_due_reminders(runtime) == 0
    assert make.notices(runtime, "reminder") == []


def cancel(runtime, case_id):
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id)
        appointments.cancel(session, case, actor=Actor.A, party=case.party(PartyRole.A), confirmed=True,
                            settings=runtime.settings, now=T0)


def test_no_reminder_for_a_cancelled_appointment(runtime, clock, booked):
    case_id, _, slot = booked
    cancel(runtime, case_id)
    clock.set(slot.starts_at - 30 * M)
    assert lifecycle.send_due_reminders(runtime) == 0


@pytest.mark.parametrize("change", ["cancelled", "moved"])
def test_a_pending_reminder_of_a_cancelled_or_moved_appointment_is_dropped(runtime, clock, booked, change):
    case_id, appointment_id, slot = booked
    with runtime.unit_of_work() as session:
        later = make.slot(session, session.get(type(slot), slot.id).station, slot.starts_at + 2 * H).id
    clock.set(slot.starts_at - 30 * M)
    assert lifecycle.send_due_reminders(runtime) == 1  # written, not sent yet
    if change == "cancelled":
        cancel(runtime, case_id)
    else:
        with runtime.unit_of_work() as session:
            party = session.get(Case, case_id).party(PartyRole.B)
            party.offered_slot_ids, party.offered_at = [later], clock.now()
        assert make.choose(runtime, case_id, 1, now=clock.now(), role=PartyRole.B).booked
    reminders = make.notices(runtime, "reminder")
    assert [(n.dedupe_key, n.status) for n in reminders] == [
        (f"reminder:{appointment_id}:A", WorkStatus.DROPPED), (f"reminder:{appointment_id}:B", WorkStatus.DROPPED)]


def test_two_schedulers_at_once_remind_once(runtime, clock, booked):
    _, _, slot = booked
    clock.set(slot.starts_at - 30 * M)
    barrier = threading.Barrier(2, timeout=30)
    counts: list[int] = []

    def run() -> None:
        barrier.wait()
        counts.append(lifecycle.send_due_reminders(runtime))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(counts) == [0, 1]
    assert len(make.notices(runtime, "reminder")) == 2


def test_no_show_after_slot_end_plus_grace(runtime, clock, booked):
    case_id, appointment_id, slot = booked
    grace = timedelta(minutes=runtime.settings.NO_SHOW_GRACE_MINUTES)
    clock.set(slot.ends_at + grace)
    assert lifecycle.mark_no_shows(runtime) == 0
    clock.set(slot.ends_at + grace + M)
    assert lifecycle.mark_no_shows(runtime) == 1
    assert lifecycle.mark_no_shows(runtime) == 0
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id)
        assert session.get(Appointment, appointment_id).status is AppointmentStatus.NO_SHOW
        assert (case.status, case.join_code, case.closed_at) == (CaseStatus.NO_SHOW, None, slot.ends_at + grace + M)
    sent = make.notices(runtime, "no_show")
    assert [n.dedupe_key.split(":")[::2] for n in sent] == [["no_show", "A"], ["no_show", "B"]]
    assert make.booked_count(runtime, slot.id) == 1  # a past slot keeps its count


def test_a_checked_in_party_is_not_a_no_show(runtime, clock, booked):
    case_id, appointment_id, slot = booked
    with runtime.unit_of_work() as session:
        session.get(Appointment, appointment_id).status = AppointmentStatus.CHECKED_IN
        session.get(Case, case_id).status = CaseStatus.CHECKED_IN
    clock.set(slot.ends_at + 2 * H)
    assert lifecycle.mark_no_shows(runtime) == 0


def test_idle_drafts_expire_and_both_parties_are_told(runtime, clock):
    with runtime.unit_of_work() as session:
        both = make.ready_case(session, T0)
        alone = make.ready_case(session, T0)
        alone.status = CaseStatus.DRAFT
        session.delete(alone.party(PartyRole.B))
        alone.expires_at = T0 + 3 * H  # active later
        booked_case = make.ready_case(session, T0)
        booked_case.status = CaseStatus.BOOKED
        ids = both.id, alone.id, booked_case.id
    clock.set(T0 + 2 * H)  # ready_case expires at T0 + 120 min: not yet past
    assert lifecycle.expire_idle_drafts(runtime) == 0
    clock.advance(minutes=1)
    assert lifecycle.expire_idle_drafts(runtime) == 1
    clock.set(T0 + 3 * H + M)
    assert lifecycle.expire_idle_drafts(runtime) == 1
    assert lifecycle.expire_idle_drafts(runtime) == 0
    with runtime.unit_of_work() as session:
        states = [(session.get(Case, i).status, session.get(Case, i).join_code) for i in ids]
    assert states[0] == (CaseStatus.EXPIRED, None) and states[1] == (CaseStatus.EXPIRED, None)
    assert states[2][0] is CaseStatus.BOOKED
    sent = make.notices(runtime, "expired")
    assert [(n.case_id, n.dedupe_key.split(":")[2]) for n in sent] == [(ids[0], "A"), (ids[0], "B"), (ids[1], "A")]
    assert "已自动关闭" in make.text_of(sent[0])


def test_limit_bounds_one_run(runtime, clock):
    with runtime.unit_of_work() as session:
        for _ in range(3):
            make.ready_case(session, T0)
    clock.set(T0 + 3 * H)
    assert lifecycle.expire_idle_drafts(runtime, limit=2) == 2
    assert lifecycle.expire_idle_drafts(runtime, limit=2) == 1
