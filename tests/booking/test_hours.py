from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accident_service.booking.hours import (
    WEEKDAYS,
    Closure,
    HoursError,
    Schedule,
    TimeRange,
    as_schedule,
    parse_closures,
    parse_holidays,
    parse_weekly_hours,
    slot_windows,
)
from accident_service.booking.station_file import load_station_file

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "stations.example.yaml"
BERLIN = ZoneInfo("Europe/Berlin")
SPRING_FORWARD = date(2026, 3, 29)  # Berlin: 02:00 CET -> 03:00 CEST
FALL_BACK = date(2026, 10, 25)  # Berlin: 03:00 CEST -> 02:00 CET


def example(code: str):
    return next(s for s in load_station_file(EXAMPLE) if s.code == code)


def schedule(hours: dict, *, tz: str = "Asia/Shanghai", slot: int = 30, holidays=(), closures=()) -> Schedule:
    return Schedule(parse_weekly_hours(hours), tz, slot, parse_holidays(holidays), parse_closures(closures))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local_starts(windows, zone=BERLIN) -> list[str]:
    return [start.astimezone(zone).strftime("%H:%M%z") for start, _ in windows]


# --- parsing -------------------------------------------------------------------------------------

def test_time_range_parses_and_prints():
    assert TimeRange.parse("09:00-12:00") == TimeRange(540, 720)
    assert TimeRange.parse(" 9:05 - 17:30 ") == TimeRange(545, 1050)
    assert str(TimeRange.parse("13:30-24:00")) == "13:30-24:00"


@pytest.mark.parametrize("text, problem", [
    ("18:00-09:00", "start must be before end"),
    ("09:00-09:00", "start must be before end"),
    ("9-12", "must look like 'HH:MM-HH:MM'"),
    ("09:00-24:30", "not a valid time of day"),
    ("25:00-26:00", "not a valid time of day"),
    ("09:60-10:00", "not a valid time of day"),
    (900, "must be a string"),
])
def test_time_range_rejects(text, problem):
    with pytest.raises(HoursError, match=problem) as caught:
        TimeRange.parse(text, "opening_hours.mon[0]")
    assert caught.value.path == "opening_hours.mon[0]"


def test_weekly_hours_sorts_days_allows_touching_and_leaves_missing_days_closed():
    weekly = parse_weekly_hours({"tue": ["13:00-14:00", "09:00-12:00", "12:00-13:00"], "sun": None})
    assert [str(r) for r in weekly["tue"]] == ["09:00-12:00", "12:00-13:00", "13:00-14:00"]
    assert weekly["mon"] == () and weekly["sun"] == () and weekly[1] == weekly["tue"]
    assert weekly.to_record() == {"tue": ["09:00-12:00", "12:00-13:00", "13:00-14:00"]}


def test_weekly_hours_errors_name_the_field():
    with pytest.raises(HoursError) as caught:
        parse_weekly_hours({"mon": ["09:00-12:00", "11:00-14:00"]})
    assert str(caught.value) == "opening_hours.mon[1] '11:00-14:00': overlaps '09:00-12:00'"
    with pytest.raises(HoursError, match=r"^opening_hours\.monday: unknown weekday"):
        parse_weekly_hours({"monday": ["09:00-12:00"]})
    with pytest.raises(HoursError, match=r"^opening_hours\.fri: must be a list"):
        parse_weekly_hours({"fri": "09:00-12:00"})


def test_closures_are_local_wall_time_without_offset():
    (closure,) = parse_closures([{"start": "2026-10-08T13:30", "end": "2026-10-08 17:30", "reason": " training "}])
    assert closure == Closure(datetime(2026, 10, 8, 13, 30), datetime(2026, 10, 8, 17, 30), "training")
    with pytest.raises(HoursError, match=r"^closures\[0\]\.start .*without a UTC offset"):
        parse_closures([{"start": "2026-10-08T13:30+08:00", "end": "2026-10-08T17:30"}])
    with pytest.raises(HoursError, match=r"^closures\[0\]: start must be before end"):
        parse_closures([{"start": "2026-10-08T17:30", "end": "2026-10-08T13:30"}])


# --- slot windows, Asia/Shanghai ----------------------------------------------------------------

def test_a_normal_week_at_the_example_desk():
    windows = slot_windows(example("GZ-TH"), start_date=date(2026, 9, 21), days=7)
    # Mon-Fri 6 + 8 slots, Sat 6, Sun closed.
    assert len(windows) == 5 * 14 + 6
    assert windows[0] == (utc(2026, 9, 21, 1, 0), utc(2026, 9, 21, 1, 30))  # 09:00 in Guangzhou
    assert windows[-1] == (utc(2026, 9, 26, 3, 30), utc(2026, 9, 26, 4, 0))  # Sat 11:30-12:00
    assert all(end - start == timedelta(minutes=30) and start.tzinfo is UTC for start, end in windows)
    assert windows == sorted(windows)
    afternoon = [s for s, _ in windows if s.date() == date(2026, 9, 21) and s.hour >= 5]
    assert afternoon[0] == utc(2026, 9, 21, 5, 30)  # 13:30 local: the lunch break has no slots


def test_holidays_are_skipped():
    station = example("GZ-TH")
    assert slot_windows(station, start_date=date(2026, 10, 1), days=1) == []
    # Week of National Day: Mon-Wed open, Thu-Sat holidays, Sun closed.
    assert len(slot_windows(station, start_date=date(2026, 9, 28), days=7)) == 3 * 14


def test_closures_remove_only_the_windows_they_touch():
    assert len(slot_windows(example("GZ-HZ"), start_date=date(2026, 10, 8), days=1)) == 6
    partial = schedule({"mon": ["09:00-12:00"]}, closures=[{"start": "2026-09-21T10:15", "end": "2026-09-21T10:45"}])
    starts = [s.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%H:%M")
              for s, _ in slot_windows(partial, start_date=date(2026, 9, 21), days=1)]
    assert starts == ["09:00", "09:30", "11:00", "11:30"]


@pytest.mark.parametrize("slot, expected", [(30, 6), (45, 4), (40, 4), (180, 1), (240, 0)])
def test_a_trailing_partial_window_is_dropped(slot, expected):
    hours = schedule({"mon": ["09:00-12:00"]}, slot=slot)
    windows = slot_windows(hours, start_date=date(2026, 9, 21), days=1)
    assert len(windows) == expected
    assert all(end <= utc(2026, 9, 21, 4, 0) for _, end in windows)


def test_a_raw_row_like_object_works_like_a_spec():
    spec = example("GZ-YX")
    row = SimpleNamespace(**spec.to_record())  # the JSON shapes stored on models.Station
    assert slot_windows(row, start_date=date(2026, 9, 28), days=14) == \
        slot_windows(spec, start_date=date(2026, 9, 28), days=14)
    assert as_schedule(row) == spec.schedule


def test_deterministic_and_argument_checks():
    spec = example("GZ-BY")
    assert slot_windows(spec, start_date=date(2026, 9, 21), days=3) == \
        slot_windows(spec, start_date=date(2026, 9, 21), days=3)
    assert slot_windows(spec, start_date=date(2026, 9, 21), days=0) == []
    with pytest.raises(ValueError):
        slot_windows(spec, start_date=date(2026, 9, 21), days=-1)
    with pytest.raises(TypeError):
        slot_windows(spec, start_date=datetime(2026, 9, 21), days=1)
    with pytest.raises(HoursError, match="^timezone 'Mars/Olympus'"):
        slot_windows(SimpleNamespace(opening_hours={}, timezone="Mars/Olympus"), start_date=date(2026, 9, 21), days=1)


# --- DST (Europe/Berlin) ------------------------------------------------------------------------

def test_business_hours_keep_their_wall_time_across_spring_forward():
    hours = schedule({day: ["09:00-10:00"] for day in WEEKDAYS}, tz="Europe/Berlin")
    windows = slot_windows(hours, start_date=SPRING_FORWARD - timedelta(days=1), days=2)
    assert windows == [
        (utc(2026, 3, 28, 8, 0), utc(2026, 3, 28, 8, 30)), (utc(2026, 3, 28, 8, 30), utc(2026, 3, 28, 9, 0)),
        (utc(2026, 3, 29, 7, 0), utc(2026, 3, 29, 7, 30)), (utc(2026, 3, 29, 7, 30), utc(2026, 3, 29, 8, 0)),
    ]


def test_windows_in_the_missing_hour_are_skipped():
    hours = schedule({"sun": ["01:00-04:00"]}, tz="Europe/Berlin")
    windows = slot_windows(hours, start_date=SPRING_FORWARD, days=1)
    # 02:00 and 02:30 do not exist; 01:30-02:00 ends exactly when the clocks jump and is whole.
    assert local_starts(windows) == ["01:00+0100", "01:30+0100", "03:00+0200", "03:30+0200"]
    assert windows[1] == (utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 0))
    assert windows[2] == (utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 1, 30))


def test_a_window_running_into_the_missing_hour_is_skipped():
    hours = schedule({"sun": ["00:45-04:00"]}, tz="Europe/Berlin", slot=45)
    windows = slot_windows(hours, start_date=SPRING_FORWARD, days=1)
    # 01:30-02:15 would end at a wall time that does not exist; 02:15 starts in the gap.
    assert local_starts(windows) == ["00:45+0100", "03:00+0200"]


def test_ambiguous_hour_uses_its_first_occurrence():
    hours = schedule({"sun": ["01:00-04:00", "09:00-10:00"]}, tz="Europe/Berlin")
    windows = slot_windows(hours, start_date=FALL_BACK, days=1)
    assert local_starts(windows) == ["01:00+0200", "01:30+0200", "02:00+0200", "02:30+0200",
                                     "03:00+0100", "03:30+0100", "09:00+0100", "09:30+0100"]
    assert windows[2] == (utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 0, 30))  # 02:00 fold=0, CEST
    assert windows[4] == (utc(2026, 10, 25, 2, 0), utc(2026, 10, 25, 2, 30))  # 03:00 CET
    assert windows[6][0] == utc(2026, 10, 25, 8, 0)


# --- properties over zones with DST (incl. Lord Howe's 30-minute shift) --------------------------

ZONES = ["Asia/Shanghai", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/St_Johns"]
TRANSITION_DAYS = [date(2026, 3, 8), date(2026, 3, 29), date(2026, 4, 5), date(2026, 10, 4), date(2026, 10, 25),
                   date(2026, 11, 1), date(2026, 9, 21)]


@settings(max_examples=150, deadline=None)
@given(zone_name=st.sampled_from(ZONES), day=st.sampled_from(TRANSITION_DAYS),
       start=st.integers(0, 23 * 60), span=st.integers(5, 8 * 60), slot=st.integers(5, 240))
def test_windows_keep_wall_times_never_overlap_and_are_complete_on_plain_days(zone_name, day, start, span, slot):
    end = min(start + span, 24 * 60)
    text = f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
    hours = schedule({name: [text] for name in WEEKDAYS}, tz=zone_name, slot=slot)
    windows = slot_windows(hours, start_date=day - timedelta(days=1), days=3)
    zone = ZoneInfo(zone_name)
    for (_, e1), (s2, _) in pairwise(windows):
        assert e1 <= s2
    for s, e in windows:
        assert e - s == timedelta(minutes=slot)
        wall = s.astimezone(zone).replace(tzinfo=None)
        minute = wall.hour * 60 + wall.minute
        assert start <= minute and minute + slot <= end and (minute - start) % slot == 0
        # The last instant, not the end: a window may end exactly when the clocks jump.
        last = timedelta(microseconds=1)
        assert (e - last).astimezone(zone).replace(tzinfo=None) == wall + timedelta(minutes=slot) - last
    per_day = (end - start) // slot
    for offset in range(3):
        local_day = day + timedelta(days=offset - 1)
        midnight = datetime.combine(local_day, datetime.min.time())
        on_day = [s for s, _ in windows if s.astimezone(zone).date() == local_day]
        plain = midnight.replace(tzinfo=zone).utcoffset() == (midnight + timedelta(days=1)).replace(
            tzinfo=zone).utcoffset()
        assert len(on_day) == per_day if plain else len(on_day) <= per_day
