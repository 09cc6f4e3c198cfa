"""Which slots are offered, and the numbered list the reporter sees."""

from __future__ import annotations

from datetime import timedelta

import pytest

from accident_service.booking.availability import find_offers
from accident_service.models import Case, CaseStatus, PartyRole
from tests.booking import factories as make
from tests.conftest import T0

H = timedelta(hours=1)


def offered_ids(runtime, case_id, role=PartyRole.A):
    with runtime.unit_of_work() as session:
        party = session.get(Case, case_id).party(role)
        return party.offered_slot_ids, party.offered_at


def test_earliest_slots_at_the_nearest_stations_nearer_first_on_ties(runtime):
    with runtime.unit_of_work() as session:
        near, mid, far = (make.station(session, code, km_north=km) for code, km in
                          (("GZ-N", 1.0), ("GZ-M", 2.0), ("GZ-F", 3.0)))
        farthest = make.station(session, "GZ-X", km_north=4.0)  # 4th nearest: not searched
        make.slot(session, farthest, T0 + H)
        later_near = make.slot(session, near, T0 + 3 * H)
        tie_far = make.slot(session, far, T0 + 2 * H)
        tie_near = make.slot(session, near, T0 + 2 * H)
        tie_mid = make.slot(session, mid, T0 + 2 * H)
        make.slot(session, mid, T0 + 4 * H)
        offers = find_offers(session, runtime.settings, lat=make.ACCIDENT[0], lng=make.ACCIDENT[1], now=T0)
    assert [o.slot_id for o in offers] == [tie_near.id, tie_mid.id, tie_far.id]
    assert [round(o.distance_km, 1) for o in offers] == [1.0, 2.0, 3.0]
    assert later_near.id not in [o.slot_id for o in offers]


def test_lead_time_search_window_and_full_slots(runtime):
    lead = timedelta(minutes=runtime.settings.BOOKING_LEAD_MINUTES)
    with runtime.unit_of_work() as session:
        station = make.station(session, "GZ-A", km_north=1)
        make.slot(session, station, T0 + lead - timedelta(minutes=1))  # too soon to get there
        at_lead = make.slot(session, station, T0 + lead)
        make.slot(session, station, T0 + 2 * H, capacity=2, booked=2)  # full
        room = make.slot(session, station, T0 + 3 * H, capacity=2, booked=1)
        make.slot(session, station, T0 + timedelta(days=runtime.settings.BOOKING_SEARCH_DAYS))  # beyond the search
        offers = find_offers(session, runtime.settings, lat=make.ACCIDENT[0], lng=make.ACCIDENT[1], now=T0)
    assert [o.slot_id for o in offers] == [at_lead.id, room.id]


def test_offer_text_numbers_the_slots_and_remembers_them(runtime):
    with runtime.unit_of_work() as session:
        station = make.station(session, "GZ-TH", km_north=2.3, name="天河事故处理点")
        ids = [make.slot(session, station, T0 + timedelta(hours=4, minutes=30 * i)).id for i in range(4)]
        case_id = make.ready_case(session, T0, languages=("zh", "en")).id
    text = make.offer(runtime, case_id, now=T0)
    assert text.splitlines() == [
        "资料已齐。请选择到事故处理点的时段：",
        "1. 天河事故处理点 11月25日 14:00-14:30（2.3公里）",
        "2. 天河事故处理点 11月25日 14:30-15:00（2.3公里）",
        "3. 天河事故处理点 11月25日 15:00-15:30（2.3公里）",
        "回复 1-3 选择",
    ]
    assert offered_ids(runtime, case_id) == (ids[:3], T0)
    english = make.offer(runtime, case_id, now=T0, role=PartyRole.B, intro_key="booking.stale_offer")
    assert english.splitlines()[1] == "1. 天河事故处理点, 25 Nov 14:00-14:30 (2.3 km)"
    assert english.splitlines()[-1] == "Reply 1-3 to choose."
    assert offered_ids(runtime, case_id, PartyRole.B) == (ids[:3], T0)  # each party books from its own list


def test_one_slot_and_no_location(runtime):
    with runtime.unit_of_work() as session:
        only = make.slot(session, make.station(session, "GZ-A", name="甲处理点"), T0 + 4 * H)
        case_id = make.ready_case(session, T0, location=None).id
    assert make.offer(runtime, case_id, now=T0).splitlines()[1:] == ["1. 甲处理点 11月25日 14:00-14:30", "回复 1 选择"]
    assert offered_ids(runtime, case_id)[0] == [only.id]


def test_nothing_free_says_so_and_clears_the_offer(runtime):
    with runtime.unit_of_work() as session:
        station = make.station(session, "GZ-A")
        free = make.slot(session, station, T0 + 4 * H, capacity=1)
        case_id = make.ready_case(session, T0).id
    make.offer(runtime, case_id, now=T0)
    with runtime.unit_of_work() as session:
        session.get(type(free), free.id).booked = 1
    text = make.offer(runtime, case_id, now=T0)
    assert "暂无空余时段" in text and "1." not in text
    assert offered_ids(runtime, case_id) == (None, None)


@pytest.mark.parametrize("status", [CaseStatus.DRAFT, CaseStatus.CANCELLED, CaseStatus.COMPLETED])
def test_a_case_that_cannot_book_gets_no_list(runtime, status):
    with runtime.unit_of_work() as session:
        make.slot(session, make.station(session, "GZ-A"), T0 + 4 * H)
        case = make.ready_case(session, T0)
        case.status = status
        case_id = case.id
    assert "不能预约" in make.offer(runtime, case_id, now=T0)
    assert offered_ids(runtime, case_id) == (None, None)
