"""Slot generation (idempotent, never touching booked counts) and the seat counter."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError

from accident_service.booking import slots
from accident_service.booking.scheduled import generate_upcoming_slots
from accident_service.models import Slot, Station
from accident_service.runtime import build_runtime
from accident_service.settings import load_settings
from tests.booking import factories as make
from tests.conftest import T0

# Wed 2026-11-25 .. Sun 11-29: 3 weekdays x 14 half-hour windows (09:00-12:00, 13:30-17:30).
WEEKDAY_WINDOWS = 14


def slot_rows(session):
    return session.execute(select(Slot.station_id, Slot.starts_at, Slot.capacity, Slot.booked)
                           .order_by(Slot.station_id, Slot.starts_at)).all()


def test_generate_twice_creates_once_and_keeps_booked_counts(runtime):
    with runtime.unit_of_work() as session:
        make.station(session, "GZ-A", desks=3)
        make.station(session, "GZ-B", desks=1)
        created = slots.generate_slots(session, start_date=date(2026, 11, 25), days=5)
    assert created == 2 * 3 * WEEKDAY_WINDOWS
    with runtime.unit_of_work() as session:
        first = session.scalars(select(Slot).order_by(Slot.starts_at, Slot.station_id)).first()
        first.booked = 2
        first_id = first.id
        before = slot_rows(session)
    with runtime.unit_of_work() as session:
        assert slots.generate_slots(session, start_date=date(2026, 11, 25), days=5) == 0
        assert slot_rows(session) == before
        assert session.get(Slot, first_id).booked == 2
        capacities = dict(session.execute(select(Slot.station_id, func.max(Slot.capacity)).group_by(Slot.station_id))
                          .all())
    assert sorted(capacities.values()) == [1, 3]  # capacity = the station's desks


def test_generate_extends_a_longer_range_with_only_the_missing_days(runtime):
    with runtime.unit_of_work() as session:
        make.station(session, "GZ-A")
        assert slots.generate_slots(session, start_date=date(2026, 11, 25), days=1) == WEEKDAY_WINDOWS
        assert slots.generate_slots(session, start_date=date(2026, 11, 25), days=3) == 2 * WEEKDAY_WINDOWS


def test_generation_uses_local_hours_skips_the_past_and_inactive_stations(runtime):
    with runtime.unit_of_work() as session:
        make.station(session, "GZ-A", closures=[{"start": "2026-11-26T09:00", "end": "2026-11-26T12:00"}])
        make.station(session, "GZ-OFF", active=False)
        # T0 is 10:00 in Guangzhou: today's 09:00 and 09:30 windows are gone (10:00 has started too).
        created = slots.generate_slots(session, days=2, now=T0)
        starts = session.scalars(select(Slot.starts_at).order_by(Slot.starts_at)).all()
    assert created == (WEEKDAY_WINDOWS - 3) + (WEEKDAY_WINDOWS - 6)
    assert starts[0] == T0 + timedelta(minutes=30)  # 10:30 local = 02:30 UTC
    assert starts[-1] == T0 + timedelta(days=1, hours=7)  # Thu 17:00 local


def test_generate_upcoming_slots_covers_the_configured_days(runtime):
    with runtime.unit_of_work() as session:
        make.station(session, "GZ-A")
    created = generate_upcoming_slots(runtime)  # SLOT_GENERATION_DAYS = 14, from Wed 10:00 local
    assert created == 10 * WEEKDAY_WINDOWS - 3
    assert generate_upcoming_slots(runtime) == 0


@pytest.mark.postgres_only
def test_the_nightly_job_fits_a_station_a_transaction_so_a_locked_one_holds_back_only_itself(settings_overrides,
                                                                                             clock, database_url):
    """Review: one transaction over every station meant a second scheduler (or import-stations) waited for the
    whole run on the first station's lock, and its statement's deadline (DATABASE_ANSWER_TIMEOUT_SECONDS) threw
    every station's work away. Now each station commits on its own: one held elsewhere fails alone."""
    runtime = build_runtime(load_settings({**settings_overrides, "DATABASE_ANSWER_TIMEOUT_SECONDS": "1"},
                                          environ={}), clock=clock)
    with runtime.unit_of_work() as session:
        make.station(session, "GZ-A")
        held = make.station(session, "GZ-B", km_north=5).id
    holder = create_engine(database_url)
    try:
        with holder.connect() as other:
            other.execute(select(Station.id).where(Station.id == held).with_for_update())
            with pytest.raises(OperationalError):
                generate_upcoming_slots(runtime)
            other.rollback()
        with runtime.unit_of_work() as session:
            per_station = dict(session.execute(select(Station.code, func.count(Slot.id)).outerjoin(Slot)
                                               .group_by(Station.code)).all())
        assert per_station == {"GZ-A": 10 * WEEKDAY_WINDOWS - 3, "GZ-B": 0}
        assert generate_upcoming_slots(runtime) == 10 * WEEKDAY_WINDOWS - 3  # the next run does GZ-B
    finally:
        holder.dispose()
        runtime.close()


def test_take_seat_stops_at_capacity_and_free_seat_at_zero(runtime):
    with runtime.unit_of_work() as session:
        row = make.slot(session, make.station(session, "GZ-A"), T0 + timedelta(hours=1), capacity=2)
    with runtime.unit_of_work() as session:
        assert slots.take_seat(session, row.id, now=T0)
        assert slots.take_seat(session, row.id, now=T0)
        assert not slots.take_seat(session, row.id, now=T0)
    assert make.booked_count(runtime, row.id) == 2
    with runtime.unit_of_work() as session:
        assert slots.free_seat(session, row.id) and slots.free_seat(session, row.id)
        assert not slots.free_seat(session, row.id)
    assert make.booked_count(runtime, row.id) == 0


def test_a_started_or_unknown_slot_takes_no_seat(runtime):
    with runtime.unit_of_work() as session:
        row = make.slot(session, make.station(session, "GZ-A"), T0, capacity=2)
    with runtime.unit_of_work() as session:
        assert not slots.take_seat(session, row.id, now=T0)
        assert not slots.take_seat(session, row.id + 1000, now=T0)
    assert make.booked_count(runtime, row.id) == 0
