"""Book, reschedule, cancel: booking.offers (the conversation's interface) and booking.appointments."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from accident_service.booking import appointments
from accident_service.booking import offers as booking
from accident_service.cases.lifecycle import Actor, RequirementMissing, WrongState, active_appointment
from accident_service.cases.service import evidence_fingerprint
from accident_service.models import (
    Appointment,
    AppointmentStatus,
    AuditEvent,
    Case,
    CaseStatus,
    PartyRole,
    Slot,
)
from tests.booking import factories as make
from tests.conftest import T0

H = timedelta(hours=1)
STALE = booking.BookResult(False, None, "booking.stale_offer")


@pytest.fixture
def world(runtime):
    """Two stations, three slots each (14:00, 14:30, 15:00 local), one ready case (A zh, B en)."""
    with runtime.unit_of_work() as session:
        tianhe = make.station(session, "GZ-TH", km_north=2.3, name="天河事故处理点", desks=2)
        yuexiu = make.station(session, "GZ-YX", km_north=4.0, name="越秀事故处理点", desks=2)
        slots = {(s.code, i): make.slot(session, s, T0 + 4 * H + i * timedelta(minutes=30), capacity=2).id
                 for s in (tianhe, yuexiu) for i in range(3)}
        case = make.ready_case(session, T0, languages=("zh", "en"))
        return {"case": case.id, "slots": slots, "openids": [p.openid for p in case.parties]}


def case_state(runtime, case_id):
    """(status, the reporter's slot list, join code)."""
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id)
        return case.status, case.party(PartyRole.A).offered_slot_ids, case.join_code


def give_list(runtime, case_id, slot_ids, role=PartyRole.A):
    with runtime.unit_of_work() as session:
        party = session.get(Case, case_id).party(role)
        party.offered_slot_ids, party.offered_at = slot_ids, T0


def test_booking_a_choice(runtime, world):
    make.offer(runtime, world["case"], now=T0)  # 1 = 天河 14:00, 2 = 越秀 14:00, 3 = 天河 14:30
    result = make.choose(runtime, world["case"], 2, now=T0)
    assert result.booked and result.reason_key is None
    yuexiu_1400 = world["slots"][("GZ-YX", 0)]
    assert make.appointments_of(runtime, world["case"]) == [(yuexiu_1400, "booked")]
    assert make.booked_count(runtime, yuexiu_1400) == 1
    status, offered, join_code = case_state(runtime, world["case"])
    assert (status, offered) == (CaseStatus.BOOKED, None) and join_code is not None
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"])
        assert case.evidence_fingerprint == evidence_fingerprint(case) and len(case.evidence_fingerprint) == 16
        assert case.expires_at is None
        assert booking.appointment_summary(case, "zh") == \
            "预约：越秀事故处理点 11月25日 14:00-14:30，地址：广州市 GZ-YX 路 1 号"
        assert booking.appointment_summary(case, "en").startswith("Appointment: 越秀事故处理点, 25 Nov 14:00-14:30")
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "case.book")).one()
        assert (audit.actor_type, audit.actor, audit.after) == ("party", "A", {"status": "booked",
                                                                               "slot_id": yuexiu_1400})


def test_both_parties_get_the_booking_notice_in_their_language(runtime, world):
    make.offer(runtime, world["case"], now=T0)
    make.choose(runtime, world["case"], 1, now=T0)
    sent = make.notices(runtime, "booked")
    assert [(n.openid, n.language, n.dedupe_key.split(":")[::2]) for n in sent] == [
        (world["openids"][0], "zh", ["booked", "A"]),
        (world["openids"][1], "en", ["booked", "B"]),
    ]
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"])
        case_no, fingerprint = case.case_no, case.evidence_fingerprint
    zh, en = (make.text_of(n) for n in sent)
    evidence_no = f"{fingerprint[:4].upper()}-{fingerprint[4:8].upper()}"
    for fact in (case_no, "天河事故处理点", "广州市 GZ-TH 路 1 号", "11月25日 14:00-14:30", "驾驶证", "行驶证",
                 "身份证", "保险单", "可以撤离现场", evidence_no):
        assert fact in zh
    for fact in (case_no, "25 Nov 14:00-14:30", "driving licence", "vehicle licence", "ID card", "insurance policy",
                 "leave the scene", evidence_no):
        assert fact in en
    data = make.template_of(sent[0])
    assert data["character_string1"] == {"value": case_no} and data["thing5"] == {"value": f"证据编号{evidence_no}"}
    assert data["time4"] == {"value": "2026-11-25 14:00"} and data["thing2"] == {"value": "预约成功，可撤离现场"}
    assert all(set(v) == {"value"} and len(v["value"]) <= 20 and "\n" not in v["value"] for v in data.values())


def test_capacity_is_respected(runtime, world):
    slot_id = world["slots"][("GZ-TH", 0)]
    with runtime.unit_of_work() as session:
        session.get(Slot, slot_id).capacity = 1
        others = [make.ready_case(session, T0).id for _ in range(2)]
    for case_id in (world["case"], *others):
        give_list(runtime, case_id, [slot_id])
    results = [make.choose(runtime, case_id, 1, now=T0) for case_id in (world["case"], *others)]
    assert [r.booked for r in results] == [True, False, False]
    assert results[1] == STALE
    assert make.booked_count(runtime, slot_id) == 1
    assert make.appointments_of(runtime, others[0]) == []
    assert case_state(runtime, others[0])[0] is CaseStatus.READY


def test_a_second_booking_moves_the_appointment(runtime, world):
    make.offer(runtime, world["case"], now=T0)
    first = make.choose(runtime, world["case"], 1, now=T0).appointment
    text = make.offer(runtime, world["case"], now=T0, intro_key="booking.reschedule_offer")
    assert "天河事故处理点 11月25日 14:00-14:30" not in text  # the current slot is not offered again
    moved = make.choose(runtime, world["case"], 1, now=T0)  # now 越秀 14:00
    assert moved.booked and moved.appointment.id != first.id
    old_slot, new_slot = world["slots"][("GZ-TH", 0)], world["slots"][("GZ-YX", 0)]
    assert make.appointments_of(runtime, world["case"]) == [(old_slot, "rescheduled"), (new_slot, "booked")]
    assert (make.booked_count(runtime, old_slot), make.booked_count(runtime, new_slot)) == (0, 1)
    assert case_state(runtime, world["case"])[0] is CaseStatus.BOOKED
    sent = make.notices(runtime, "rescheduled")
    assert [n.dedupe_key.split(":")[::2] for n in sent] == [["rescheduled", "A"], ["rescheduled", "B"]]
    assert make.text_of(sent[0]).startswith("改约成功") and "越秀事故处理点" in make.text_of(sent[0])
    # The party who did not move it reads that the other driver did, and the new time.
    assert make.text_of(sent[1]).startswith("The other driver moved") and "25 Nov 14:00-14:30" in \
        make.text_of(sent[1])


def test_either_party_books_from_the_list_it_asked_for(runtime, world):
    make.offer(runtime, world["case"], now=T0, role=PartyRole.B)
    assert make.choose(runtime, world["case"], 1, now=T0) == STALE  # A saw no list: B's is not A's
    result = make.choose(runtime, world["case"], 1, now=T0, role=PartyRole.B)
    assert result.booked
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"])
        assert [p.offered_slot_ids for p in case.parties] == [None, None]  # every list is spent by a booking
        audit = session.scalars(select(AuditEvent).where(AuditEvent.action == "case.book")).one()
        assert audit.actor == "B"


@pytest.mark.parametrize("target", [("GZ-YX", 0), ("GZ-TH", 0)], ids=["new-slot-higher-id", "new-slot-lower-id"])
def test_a_move_to_a_slot_that_filled_up_keeps_the_old_appointment(runtime, world, target):
    start = ("GZ-TH", 1) if target == ("GZ-TH", 0) else ("GZ-TH", 0)
    old_slot, new_slot = world["slots"][start], world["slots"][target]
    give_list(runtime, world["case"], [old_slot])
    assert make.choose(runtime, world["case"], 1, now=T0).booked
    give_list(runtime, world["case"], [new_slot])
    with runtime.unit_of_work() as session:
        session.get(Slot, new_slot).booked = 2  # filled by others after the list was shown
    assert make.choose(runtime, world["case"], 1, now=T0) == STALE
    assert make.appointments_of(runtime, world["case"]) == [(old_slot, "booked")]
    assert (make.booked_count(runtime, old_slot), make.booked_count(runtime, new_slot)) == (1, 2)
    assert make.notices(runtime, "rescheduled") == []
    # The conversation answers a stale choice with a fresh list.
    fresh = make.offer(runtime, world["case"], now=T0, intro_key="booking.stale_offer")
    assert fresh.startswith("该时段已满或选项已过期") and "回复 1-3 选择" in fresh


@pytest.mark.parametrize("number", [0, 4, 9])
def test_a_number_not_on_the_list_is_stale(runtime, world, number):
    make.offer(runtime, world["case"], now=T0)
    assert make.choose(runtime, world["case"], number, now=T0) == STALE
    assert make.appointments_of(runtime, world["case"]) == []


def test_an_old_list_is_stale(runtime, world):
    make.offer(runtime, world["case"], now=T0)
    assert make.choose(runtime, world["case"], 1, now=T0 + booking.OFFER_TTL + timedelta(seconds=1)) == STALE
    assert make.appointments_of(runtime, world["case"]) == []
    assert make.choose(runtime, world["case"], 1, now=T0 + booking.OFFER_TTL).booked


def cancel(runtime, case_id, actor=Actor.B, **options):
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id, with_for_update=True)
        party = case.party(PartyRole(actor.value)) if actor in (Actor.A, Actor.B) else None
        appointments.cancel(session, case, actor=actor, party=party, settings=runtime.settings, now=T0, **options)


def test_cancel_frees_the_seat_keeps_the_case_and_tells_both_who_cancelled(runtime, world):
    make.offer(runtime, world["case"], now=T0)
    make.choose(runtime, world["case"], 1, now=T0)
    with pytest.raises(RequirementMissing) as refused:
        cancel(runtime, world["case"])  # a party confirms first
    assert refused.value.reason == "needs_confirmation"
    cancel(runtime, world["case"], confirmed=True)
    assert make.booked_count(runtime, world["slots"][("GZ-TH", 0)]) == 0
    assert make.appointments_of(runtime, world["case"]) == [(world["slots"][("GZ-TH", 0)], "cancelled")]
    status, _, join_code = case_state(runtime, world["case"])
    assert status is CaseStatus.READY and join_code is not None  # kept for rebooking, evidence and parties too
    sent = make.notices(runtime, "cancelled")
    assert [n.dedupe_key.split(":")[::2] for n in sent] == [["cancelled", "A"], ["cancelled", "B"]]
    assert make.text_of(sent[0]).startswith("对方司机取消了") and "11月25日 14:00-14:30" in make.text_of(sent[0])
    assert make.text_of(sent[1]).startswith("You cancelled")
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"])
        assert booking.appointment_summary(case, "zh") is None
    with pytest.raises(WrongState):
        cancel(runtime, world["case"], actor=Actor.A, confirmed=True)  # nothing left to cancel
    make.offer(runtime, world["case"], now=T0)
    assert make.choose(runtime, world["case"], 1, now=T0).booked  # rebooked from the kept case


def test_the_desk_cancels_with_a_reason_both_read(runtime, world):
    make.offer(runtime, world["case"], now=T0)
    make.choose(runtime, world["case"], 1, now=T0)
    with pytest.raises(RequirementMissing):
        cancel(runtime, world["case"], actor=Actor.STAFF, by="officer1", reason="  ")
    cancel(runtime, world["case"], actor=Actor.STAFF, by="officer1", reason="处理点临时关闭")
    zh, en = (make.text_of(n) for n in make.notices(runtime, "cancelled"))
    assert "民警取消了" in zh and "处理点临时关闭" in zh and en.startswith("The desk cancelled")


def test_a_move_while_a_retake_is_pending_keeps_the_retake_and_a_confirmed_move_needs_confirming(runtime, world):
    make.offer(runtime, world["case"], now=T0)
    make.choose(runtime, world["case"], 1, now=T0)
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"])
        case.status = CaseStatus.RETAKE_REQUESTED
    make.offer(runtime, world["case"], now=T0, intro_key="booking.reschedule_offer")
    assert make.choose(runtime, world["case"], 1, now=T0).booked
    assert case_state(runtime, world["case"])[0] is CaseStatus.RETAKE_REQUESTED
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"])
        case.status = CaseStatus.CONFIRMED
        active_appointment(case).status = AppointmentStatus.CONFIRMED
    make.offer(runtime, world["case"], now=T0, intro_key="booking.reschedule_offer")
    assert make.choose(runtime, world["case"], 1, now=T0).booked
    assert case_state(runtime, world["case"])[0] is CaseStatus.BOOKED


def test_a_checked_in_appointment_cannot_move(runtime, world):
    make.offer(runtime, world["case"], now=T0)
    make.choose(runtime, world["case"], 1, now=T0)
    with runtime.unit_of_work() as session:
        case = session.get(Case, world["case"])
        active_appointment(case).status = AppointmentStatus.CHECKED_IN
        case.status = CaseStatus.CHECKED_IN
    give_list(runtime, world["case"], [world["slots"][("GZ-YX", 0)]])
    with pytest.raises(WrongState):
        make.choose(runtime, world["case"], 1, now=T0)
    assert "不能预约或改约" in make.offer(runtime, world["case"], now=T0, intro_key="booking.reschedule_offer")
    with runtime.unit_of_work() as session:
        assert session.scalars(select(Appointment.status)).all() == [AppointmentStatus.CHECKED_IN]


def test_no_reminder_for_a_slot_booked_within_the_reminder_lead(runtime, world):
    soon = world["slots"][("GZ-TH", 0)]  # starts 4 h after T0
    with runtime.unit_of_work() as session:
        session.get(Slot, soon).starts_at = T0 + timedelta(minutes=runtime.settings.REMINDER_MINUTES - 1)
    give_list(runtime, world["case"], [soon])
    appointment = make.choose(runtime, world["case"], 1, now=T0).appointment
    with runtime.unit_of_work() as session:
        assert session.get(Appointment, appointment.id).reminded_at == T0
