"""Desk staff notices: stored as facts like every notice about a case, rendered per party and language."""

from __future__ import annotations

from datetime import timedelta

import pytest

from accident_service.booking.staff import confirm_appointment, request_retake
from accident_service.models import Case, PartyRole
from tests.booking import factories as make
from tests.conftest import T0


@pytest.fixture
def booked(runtime):
    """A case booked at 14:00 Guangzhou time; party A reads Chinese, party B English."""
    with runtime.unit_of_work() as session:
        station = make.station(session, "GZ-TH", name="天河事故处理点")
        slot = make.slot(session, station, T0 + timedelta(hours=4))
        case = make.ready_case(session, T0, languages=("zh", "en"))
        case.offered_slot_ids, case.offered_at = [slot.id], T0
        case_id = case.id
    assert make.choose(runtime, case_id, 1, now=T0).booked
    return case_id


def test_a_confirmation_tells_both_parties_in_their_language_with_a_framed_template(runtime, booked):
    with runtime.unit_of_work() as session:
        confirm_appointment(session, session.get(Case, booked), staff="officer1", now=T0)
    zh, en = make.notices(runtime, "confirmed")
    assert "已由民警确认" in make.text_of(zh) and "11月25日 14:00-14:30" in make.text_of(zh)
    assert "is confirmed" in make.text_of(en) and "25 Nov 14:00-14:30" in make.text_of(en)
    assert "广州市 GZ-TH 路 1 号" in make.text_of(zh)
    data = make.template_of(en)
    assert data["first"] == {"value": "Appointment confirmed"} and data["station"] == {"value": "天河事故处理点"}
    assert data["time"] == {"value": "25 Nov 14:00-14:30"} and "on time" in data["remark"]["value"]
    assert make.template_of(zh)["first"] == {"value": "事故快处预约已确认"}


def test_a_retake_request_reads_differently_to_the_party_asked_and_to_the_other(runtime, booked):
    with runtime.unit_of_work() as session:
        case = session.get(Case, booked)
        request_retake(session, case, item=2, reason="碰撞部位看不清 blurry", staff="officer1",
                       settings=runtime.settings, now=T0)
        taker = next(p.role for p in case.parties if p.retake_item == 2)
    assert taker is PartyRole.A  # the reporter, who sent the photo
    to_a, to_b = make.notices(runtime, "retake")
    assert "请您重拍第2张" in make.text_of(to_a) and "碰撞部位看不清 blurry" in make.text_of(to_a)
    assert "asked the other driver to retake photo 2" in make.text_of(to_b)
    asked, other = make.template_of(to_a), make.template_of(to_b)
    assert asked["first"] == {"value": "事故快处照片需重拍"} and other["first"] == {"value": "Photo to retake"}
    assert asked["item"] == other["item"] == {"value": "2"}
    assert "请直接发送新照片" in asked["remark"]["value"] and "nothing to do for you" in other["remark"]["value"]
