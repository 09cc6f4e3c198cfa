"""Desk actions (desk/actions.py): each a lifecycle transition, audited, told to both parties in their language."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from accident_service.booking.appointments import SlotUnavailable
from accident_service.cases.lifecycle import RequirementMissing, StaleCase, WrongState
from accident_service.desk import actions
from accident_service.errors import NotFound
from accident_service.models import AppointmentStatus, AuditEvent, Case, CaseStatus, PartyRole, Slot
from tests.booking import factories as make
from tests.conftest import T0

H = timedelta(hours=1)


@pytest.fixture
def booked(runtime):
    """A case booked at 14:00 Guangzhou time at GZ-TH; party A reads Chinese, party B English."""
    with runtime.unit_of_work() as session:
        station = make.station(session, "GZ-TH", name="天河事故处理点")
        make.station(session, "GZ-YX", name="越秀事故处理点")
        slot = make.slot(session, station, T0 + 4 * H)
        make.slot(session, station, T0 + 5 * H)
        case = make.ready_case(session, T0, languages=("zh", "en"))
        case.party(PartyRole.A).offered_slot_ids, case.party(PartyRole.A).offered_at = [slot.id], T0
        case_id = case.id
    assert make.choose(runtime, case_id, 1, now=T0).booked
    return case_id


def act(runtime, case_id, action, *, now=T0, **options):
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id, with_for_update=True)
        return action(session, case, staff="officer1", settings=runtime.settings, now=now, **options)


def state(runtime, case_id):
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id)
        latest = max(case.appointments, key=lambda a: a.id)
        return case.status, latest.status


def test_a_confirmation_tells_both_parties_in_their_language_with_a_framed_template(runtime, booked):
    act(runtime, booked, actions.confirm)
    assert state(runtime, booked) == (CaseStatus.CONFIRMED, AppointmentStatus.CONFIRMED)
    zh, en = make.notices(runtime, "confirmed")
    assert "已由民警确认" in make.text_of(zh) and "11月25日 14:00-14:30" in make.text_of(zh)
    assert "is confirmed" in make.text_of(en) and "25 Nov 14:00-14:30" in make.text_of(en)
    assert "广州市 GZ-TH 路 1 号" in make.text_of(zh)
    data = make.template_of(en)
    assert data["thing2"] == {"value": "Booking confirmed"} and data["thing3"] == {"value": "天河事故处理点"}
    assert data["time4"] == {"value": "2026-11-25 14:00"} and "on time" in data["thing5"]["value"]
    assert make.template_of(zh)["thing2"] == {"value": "预约已确认"}
    assert "first" not in data and "remark" not in data  # the platform no longer shows either
    with runtime.unit_of_work() as session:
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "case.confirm")).one()
        assert (audit.actor_type, audit.actor, audit.before, audit.after) == \
            ("staff", "officer1", {"status": "booked"}, {"status": "confirmed"})


def test_an_action_on_a_case_that_changed_meanwhile_is_refused_and_never_applied_twice(runtime, booked):
    with runtime.unit_of_work() as session:
        seen = session.get(Case, booked).version
    act(runtime, booked, actions.confirm, expected_version=seen)
    with pytest.raises(StaleCase):
        act(runtime, booked, actions.confirm, expected_version=seen)  # the same click again
    with pytest.raises(StaleCase):
        act(runtime, booked, actions.check_in, expected_version=seen)
    assert len(make.notices(runtime, "confirmed")) == 2
    assert state(runtime, booked) == (CaseStatus.CONFIRMED, AppointmentStatus.CONFIRMED)


def test_check_in_then_complete_with_an_outcome_both_parties_receive(runtime, booked):
    with pytest.raises(WrongState):
        act(runtime, booked, actions.complete, liability="A", note="")  # not at the desk yet
    act(runtime, booked, actions.check_in, now=T0 + 4 * H)
    assert state(runtime, booked) == (CaseStatus.CHECKED_IN, AppointmentStatus.CHECKED_IN)
    with pytest.raises(RequirementMissing):
        act(runtime, booked, actions.complete, liability="mostly A", note="")
    act(runtime, booked, actions.complete, now=T0 + 4 * H + 20 * timedelta(minutes=1), liability="B",
        note="B 车变道未让行")
    with runtime.unit_of_work() as session:
        case = session.get(Case, booked)
        latest = case.appointments[-1]
        assert (case.status, case.liability, case.outcome_note, case.handled_by, case.join_code) == \
            (CaseStatus.COMPLETED, "B", "B 车变道未让行", "officer1", None)
        assert (latest.checked_in_at, latest.completed_at) == (T0 + 4 * H, T0 + 4 * H + 20 * timedelta(minutes=1))
        assert not any(p.case_open for p in case.parties)
    to_a, to_b = (make.text_of(n) for n in make.notices(runtime, "completed"))
    assert "对方负全部责任" in to_a and "B 车变道未让行" in to_a
    assert "you are fully liable" in to_b


def test_no_show_only_once_the_slot_has_started(runtime, booked):
    with pytest.raises(RequirementMissing) as early:
        act(runtime, booked, actions.mark_no_show)
    assert early.value.reason == "not_started"
    act(runtime, booked, actions.mark_no_show, now=T0 + 4 * H + timedelta(minutes=10))
    assert state(runtime, booked) == (CaseStatus.NO_SHOW, AppointmentStatus.NO_SHOW)
    assert len(make.notices(runtime, "no_show")) == 2


def test_a_retake_request_goes_to_the_party_who_owns_the_item_with_a_deadline(runtime, booked):
    act(runtime, booked, actions.request_retake, item=4, reason="车牌反光 glare")  # item 4: B's own plate
    with runtime.unit_of_work() as session:
        case = session.get(Case, booked)
        b = case.party(PartyRole.B)
        assert case.status is CaseStatus.RETAKE_REQUESTED and case.appointments[-1].status is AppointmentStatus.BOOKED
        assert (b.retake_item, b.retake_due_at) == (4, T0 + timedelta(minutes=runtime.settings.RETAKE_DEADLINE_MINUTES))
        assert case.party(PartyRole.A).retake_item is None
    to_a, to_b = make.notices(runtime, "retake")
    assert "已请对方补拍照片4" in make.text_of(to_a)
    assert "retake photo 4 (your car's plate): 车牌反光 glare" in make.text_of(to_b) and "before 12:00" in \
        make.text_of(to_b)
    with pytest.raises(RequirementMissing) as twice:  # one photo at a time per driver
        act(runtime, booked, actions.request_retake, item=4, reason="again")
    assert twice.value.reason == "retake_pending"
    for item, reason in ((9, "off the list"), (2, "  ")):
        with pytest.raises(RequirementMissing):
            act(runtime, booked, actions.request_retake, item=item, reason=reason)


def test_reschedule_by_the_desk_moves_the_seat_and_tells_both(runtime, booked):
    with runtime.unit_of_work() as session:
        later = session.scalars(select(Slot.id).order_by(Slot.starts_at.desc())).first()
        first = session.scalars(select(Slot.id).order_by(Slot.starts_at)).first()
    act(runtime, booked, actions.reschedule, slot_id=later)
    assert (make.booked_count(runtime, first), make.booked_count(runtime, later)) == (0, 1)
    zh, en = (make.text_of(n) for n in make.notices(runtime, "rescheduled"))
    assert zh.startswith("民警已调整") and "15:00-15:30" in zh and en.startswith("The desk moved")
    with pytest.raises(SlotUnavailable):
        act(runtime, booked, actions.reschedule, slot_id=later)  # the slot it already holds


def test_cancel_keeps_the_case_and_close_ends_it_both_with_a_reason(runtime, booked):
    with pytest.raises(RequirementMissing):
        act(runtime, booked, actions.cancel_appointment, reason="")
    act(runtime, booked, actions.cancel_appointment, reason="处理点停电")
    assert state(runtime, booked) == (CaseStatus.READY, AppointmentStatus.CANCELLED)
    assert all("处理点停电" in make.text_of(n) for n in make.notices(runtime, "cancelled"))
    act(runtime, booked, actions.close_case, reason="非轻微事故，请拨打122")
    with runtime.unit_of_work() as session:
        case = session.get(Case, booked)
        assert (case.status, case.join_code) == (CaseStatus.CANCELLED, None)
    assert all("非轻微事故" in make.text_of(n) for n in make.notices(runtime, "withdrawn"))
    # Kept for the desk too, in the audit the case page shows (acceptance pass: only the drivers had them).
    with runtime.unit_of_work() as session:
        reasons = [event.after.get("reason") for event in session.scalars(
            select(AuditEvent).where(AuditEvent.case_id == booked, AuditEvent.action.in_(
                ("case.cancel_appointment", "case.withdraw"))).order_by(AuditEvent.id))]
    assert reasons == ["处理点停电", "非轻微事故，请拨打122"]


def test_an_officer_finds_only_cases_handled_at_their_station(runtime, booked):
    with runtime.unit_of_work() as session:
        case_no = session.get(Case, booked).case_no
        station_id = session.get(Case, booked).appointments[-1].slot.station_id
        assert actions.lock_case(session, case_no, station_id=station_id).id == booked
        with pytest.raises(NotFound):
            actions.lock_case(session, case_no, station_id=station_id + 1)
        with pytest.raises(NotFound):
            actions.lock_case(session, "20261125-NOPE1")
        assert actions.lock_case(session, case_no).id == booked  # a supervisor: every station
