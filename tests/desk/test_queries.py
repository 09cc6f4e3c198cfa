"""The queue's read side: days counted in each station's zone, search text, counts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from accident_service.desk import queries
from accident_service.models import PartyRole
from tests.booking import factories as make
from tests.conftest import T0


def test_a_day_is_bounded_in_the_stations_zone():
    assert queries.day_bounds(date(2026, 11, 25), "Asia/Shanghai") == (
        datetime(2026, 11, 24, 16, tzinfo=UTC), datetime(2026, 11, 25, 16, tzinfo=UTC))
    start, end = queries.day_bounds(date(2026, 3, 29), "Europe/Berlin")  # the day clocks go forward: 23 hours
    assert end - start == timedelta(hours=23)


def test_search_text_is_folded_like_an_officer_types_it():
    assert queries.normalise_search(" 粤ａ 12３45 ") == "粤A12345"
    assert queries.normalise_search("20261125-t%_x") == "20261125-TX"  # no LIKE wildcards from the box


def test_across_stations_each_row_keeps_to_its_own_local_day(runtime):
    """A supervisor's queue: a station in another zone shows the appointments of its own calendar day."""
    with runtime.unit_of_work() as session:
        here = make.station(session, "GZ-TH")
        far = make.station(session, "UR-01", km_north=1, timezone="Asia/Urumqi")  # UTC+6
        # 23:30 in Urumqi on the 24th is 01:30 in Guangzhou on the 25th: it belongs to the 24th there.
        late = make.slot(session, far, datetime(2026, 11, 24, 17, 30, tzinfo=UTC))
        noon = make.slot(session, here, T0 + timedelta(hours=2))
        ids = []
        for slot in (late, noon):
            case = make.ready_case(session, T0 - timedelta(days=1))
            case.party(PartyRole.A).offered_slot_ids, case.party(PartyRole.A).offered_at = [slot.id], T0
            ids.append((case.id, case.case_no))
    for case_id, _ in ids:
        assert make.choose(runtime, case_id, 1, now=T0 - timedelta(days=1)).booked
    with runtime.unit_of_work() as session:
        on_25th = queries.day_queue(session, day=date(2026, 11, 25), station_id=None, now=T0)
        on_24th = queries.day_queue(session, day=date(2026, 11, 24), station_id=None, now=T0)
        only_here = queries.day_queue(session, day=date(2026, 11, 25), station_id=here.id, now=T0)
    assert [row.case_no for row in on_25th.rows] == [ids[1][1]]
    assert [row.case_no for row in on_24th.rows] == [ids[0][1]]
    assert [row.case_no for row in only_here.rows] == [ids[1][1]]
    assert on_25th.counts["booked"] == 1 and on_25th.rows[0].plate_a.count("*") == 3
