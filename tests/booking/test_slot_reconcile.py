"""Future slots follow a changed station: capacity, holidays, hours, slot length, deactivation.

Every test starts at T0 (Wed 2026-11-25 10:00 in Guangzhou) with the factory
hours: weekdays 09:00-12:00 and 13:30-17:30, 30-minute slots.
"""

from __future__ import annotations

import threading
from datetime import date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from accident_service.booking import slots
from accident_service.booking.scheduled import generate_upcoming_slots
from accident_service.booking.slots import MORE_BOOKED_THAN_DESKS, NO_LONGER_OFFERED, reconcile_slots
from accident_service.models import Appointment, AppointmentStatus, Slot, Station
from tests.booking import factories as make
from tests.conftest import T0
from tests.support.locks import backend_pid, wait_until_blocked_by

GUANGZHOU = ZoneInfo("Asia/Shanghai")
THURSDAY = date(2026, 11, 26)
# Wed from 10:30 (11 windows), Thu and Fri (14 each): the 3 local days from T0.
WINDOWS_IN_3_DAYS = 11 + 14 + 14


def local(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), GUANGZHOU)


def set_up(runtime, **station_fields) -> int:
    """A station GZ-A with its slots for 3 days from T0; returns the station id."""
    with runtime.unit_of_work() as session:
        station = make.station(session, "GZ-A", **station_fields)
        assert reconcile_slots(session, days=3, now=T0).created == WINDOWS_IN_3_DAYS
        return station.id


def change_station(runtime, **fields) -> None:
    with runtime.unit_of_work() as session:
        station = session.scalars(select(Station).where(Station.code == "GZ-A")).one()
        for name, value in fields.items():
            setattr(station, name, value)


def reconcile(runtime, *, days: int = 3, now: datetime = T0) -> slots.SlotReport:
    with runtime.unit_of_work() as session:
        return reconcile_slots(session, days=days, now=now)


def slot_at(runtime, starts_at: datetime) -> Slot | None:
    with runtime.unit_of_work() as session:
        return session.scalars(select(Slot).where(Slot.starts_at == starts_at)).one_or_none()


def book(runtime, starts_at: datetime, seats: int = 1, *, with_appointment: bool = False) -> int:
    """Take ``seats`` seats in the slot starting at ``starts_at`` as bookings do; returns its id."""
    with runtime.unit_of_work() as session:
        slot_id = session.scalar(select(Slot.id).where(Slot.starts_at == starts_at))
        for _ in range(seats):
            assert slots.take_seat(session, slot_id, now=T0)
            if with_appointment:
                case = make.ready_case(session, T0)
                session.add(Appointment(case_id=case.id, slot_id=slot_id, status=AppointmentStatus.BOOKED,
                                        created_at=T0, updated_at=T0))
        return slot_id


def all_slots(runtime) -> list[Slot]:
    with runtime.unit_of_work() as session:
        return list(session.scalars(select(Slot).order_by(Slot.starts_at)))


def test_lower_desks_lower_capacity_but_never_below_booked(runtime):
    set_up(runtime, desks=4)
    full = book(runtime, local(THURSDAY, 9), seats=3)
    book(runtime, local(THURSDAY, 9, 30), seats=1)
    change_station(runtime, desks=1)

    report = reconcile(runtime)

    assert (report.created, report.updated, report.removed) == (0, WINDOWS_IN_3_DAYS, 0)  # 4 -> 1, or 4 -> 3
    assert [(kept.slot_id, kept.booked, kept.reason) for kept in report.kept] == [(full, 3, MORE_BOOKED_THAN_DESKS)]
    capacities = {slot.id: (slot.capacity, slot.booked) for slot in all_slots(runtime)}
    assert capacities.pop(full) == (3, 3)
    assert set(capacities.values()) == {(1, 0), (1, 1)}
    with runtime.unit_of_work() as session:
        assert not slots.take_seat(session, full, now=T0)  # still full: nobody overbooked

    again = reconcile(runtime)
    assert (again.created, again.updated, again.removed, again.closed) == (0, 0, 0, 0)
    assert len(again.kept) == 1  # still reported: the operator has to deal with it

    change_station(runtime, desks=4)
    assert reconcile(runtime).updated == WINDOWS_IN_3_DAYS
    assert {slot.capacity for slot in all_slots(runtime)} == {4}


def test_a_new_holiday_removes_its_free_slots_and_keeps_a_booked_one(runtime):
    set_up(runtime)
    booked = book(runtime, local(THURSDAY, 14), with_appointment=True)
    change_station(runtime, holidays=[THURSDAY.isoformat()])

    report = reconcile(runtime)

    assert (report.created, report.updated, report.removed) == (0, 0, 13)
    assert [(kept.slot_id, kept.reason) for kept in report.kept] == [(booked, NO_LONGER_OFFERED)]
    assert "GZ-A 2026-11-26 14:00-14:30 Asia/Shanghai" in str(report.kept[0])
    thursday = [slot for slot in all_slots(runtime) if slot.starts_at.astimezone(GUANGZHOU).date() == THURSDAY]
    assert [(slot.id, slot.capacity, slot.booked) for slot in thursday] == [(booked, 1, 1)]  # closed to others
    assert len(all_slots(runtime)) == WINDOWS_IN_3_DAYS - 13

    again = reconcile(runtime)
    assert (again.created, again.updated, again.removed, len(again.kept)) == (0, 0, 0, 1)

    change_station(runtime, holidays=[])  # the holiday was a mistake: the day comes back, the booked slot reopens
    back = reconcile(runtime)
    assert (back.created, back.updated, back.removed, back.kept) == (13, 1, 0, ())
    assert slot_at(runtime, local(THURSDAY, 14)).capacity == 2


def test_closures_and_shorter_hours_remove_the_slots_they_cover(runtime):
    set_up(runtime)
    change_station(runtime, closures=[{"start": "2026-11-26T09:00", "end": "2026-11-26T10:00"}],
                   opening_hours={day: ["09:00-12:00"] for day in ("mon", "tue", "wed", "thu", "fri")})

    report = reconcile(runtime)

    afternoons = 8 * 3
    assert (report.created, report.removed, report.kept) == (0, afternoons + 2, ())
    starts = [slot.starts_at.astimezone(GUANGZHOU) for slot in all_slots(runtime)]
    assert all(start.hour < 12 for start in starts)
    assert local(THURSDAY, 9) not in starts and local(THURSDAY, 9, 30) not in starts and local(THURSDAY, 10) in starts


def test_a_new_slot_length_replaces_the_free_slots_without_overlaps(runtime):
    set_up(runtime)
    kept = book(runtime, local(THURSDAY, 9, 30))
    change_station(runtime, slot_minutes=60)

    report = reconcile(runtime)

    assert [slot.slot_id for slot in report.kept] == [kept]
    rows = all_slots(runtime)
    for earlier, later in pairwise(rows):
        assert earlier.ends_at <= later.starts_at, (earlier.starts_at, later.starts_at)
    # Thursday: the booked 09:30-10:00 stays; 09:00-10:00 would run across it, so it waits.
    thursday = [(slot.starts_at.astimezone(GUANGZHOU).strftime("%H:%M"), slot.ends_at - slot.starts_at)
                for slot in rows if slot.starts_at.astimezone(GUANGZHOU).date() == THURSDAY]
    assert thursday[:3] == [("09:30", timedelta(minutes=30)), ("10:00", timedelta(hours=1)),
                            ("11:00", timedelta(hours=1))]
    assert all(length == timedelta(hours=1) for start, length in thursday[1:])
    assert (reconcile(runtime).created, reconcile(runtime).removed) == (0, 0)

    with runtime.unit_of_work() as session:  # the appointment moves away: its window can now be offered
        assert slots.free_seat(session, kept)
    freed = reconcile(runtime)
    assert (freed.removed, freed.created) == (1, 1)
    assert slot_at(runtime, local(THURSDAY, 9)).ends_at == local(THURSDAY, 10)


def test_started_slots_are_never_touched(runtime):
    station_id = None
    with runtime.unit_of_work() as session:
        station_id = make.station(session, "GZ-A", desks=3).id
        reconcile_slots(session, days=1, now=T0 - timedelta(hours=2))  # from 08:00: 09:00 .. 17:00 exist
    change_station(runtime, desks=1, holidays=[date(2026, 11, 25).isoformat()])

    report = reconcile(runtime, days=1)

    assert report.removed == 14 - 3  # from 10:30 on; 09:00, 09:30 and 10:00 (starting now) have started
    with runtime.unit_of_work() as session:
        left = session.execute(select(Slot.starts_at, Slot.capacity).where(Slot.station_id == station_id)
                               .order_by(Slot.starts_at)).all()
    assert left == [(T0 - timedelta(hours=1), 3), (T0 - timedelta(minutes=30), 3), (T0, 3)]


def test_a_deactivated_station_keeps_only_its_booked_future_slots(runtime):
    set_up(runtime)
    booked = book(runtime, local(THURSDAY, 11))
    change_station(runtime, active=False)

    report = reconcile(runtime)

    assert (report.removed, [slot.slot_id for slot in report.kept]) == (WINDOWS_IN_3_DAYS - 1, [booked])
    assert [(slot.id, slot.capacity) for slot in all_slots(runtime)] == [(booked, 1)]


def test_a_slot_only_past_appointments_refer_to_is_closed_or_reshaped_not_deleted(runtime):
    set_up(runtime)
    thursday_nine = book(runtime, local(THURSDAY, 9), with_appointment=True)
    friday_nine = book(runtime, local(THURSDAY + timedelta(days=1), 9), with_appointment=True)
    with runtime.unit_of_work() as session:  # both cancelled: seats given back, the rows stay as history
        for appointment in session.scalars(select(Appointment)):
            appointment.status = AppointmentStatus.CANCELLED
            assert slots.free_seat(session, appointment.slot_id)
    change_station(runtime, holidays=[THURSDAY.isoformat()], slot_minutes=60)

    report = reconcile(runtime)

    assert report.kept == () and report.closed == 1
    closed = slot_at(runtime, local(THURSDAY, 9))
    assert (closed.id, closed.capacity, closed.booked) == (thursday_nine, 0, 0)  # on the holiday: not offered
    reshaped = slot_at(runtime, local(THURSDAY + timedelta(days=1), 9))
    assert (reshaped.id, reshaped.ends_at, reshaped.capacity) == (friday_nine, local(THURSDAY + timedelta(days=1), 10),
                                                                  2)
    again = reconcile(runtime)
    assert (again.created, again.updated, again.removed, again.closed) == (0, 0, 0, 0)


def test_a_booking_landing_before_the_delete_keeps_its_slot(runtime, monkeypatch):
    set_up(runtime)
    change_station(runtime, holidays=[THURSDAY.isoformat()])
    late = local(THURSDAY, 15)
    real_delete = slots._delete_unbooked

    def booking_sneaks_in(session, slot_ids):
        # The plan was made from rows read earlier; the booking commits its seat just before the DELETE runs.
        late_id = session.scalar(select(Slot.id).where(Slot.starts_at == late))
        assert late_id in slot_ids and slots.take_seat(session, late_id, now=T0)
        return real_delete(session, slot_ids)

    monkeypatch.setattr(slots, "_delete_unbooked", booking_sneaks_in)
    report = reconcile(runtime)

    assert report.removed == 13 and [(kept.starts_at, kept.booked) for kept in report.kept] == [(late, 1)]
    assert (slot_at(runtime, late).capacity, slot_at(runtime, late).booked) == (1, 1)


def test_the_nightly_generation_reconciles_too(runtime):
    set_up(runtime, desks=3)
    change_station(runtime, desks=1, holidays=[THURSDAY.isoformat()])

    generate_upcoming_slots(runtime)  # SLOT_GENERATION_DAYS = 14 from T0

    rows = all_slots(runtime)
    assert {slot.capacity for slot in rows} == {1}
    assert not [slot for slot in rows if slot.starts_at.astimezone(GUANGZHOU).date() == THURSDAY]


@pytest.mark.postgres_only
def test_a_booking_in_flight_on_postgres_keeps_its_slot_and_seat(runtime):
    set_up(runtime, desks=4)
    late = local(THURSDAY, 15)
    booking = runtime.session_factory()
    try:
        slot_id = booking.scalar(select(Slot.id).where(Slot.starts_at == late))
        assert slots.take_seat(booking, slot_id, now=T0)  # row locked, not committed yet
        change_station(runtime, desks=1, holidays=[THURSDAY.isoformat()])
        reports: list[slots.SlotReport] = []
        reconciler = threading.Thread(target=lambda: reports.append(reconcile(runtime)))
        reconciler.start()
        wait_until_blocked_by(runtime.engine, backend_pid(booking))  # its DELETE waits for the booking's row lock
        booking.commit()
    finally:
        booking.close()
    reconciler.join(timeout=60)
    [report] = reports
    assert report.removed == 13 and [(kept.slot_id, kept.booked) for kept in report.kept] == [(slot_id, 1)]
    assert (slot_at(runtime, late).capacity, slot_at(runtime, late).booked) == (1, 1)


def test_a_history_slot_is_not_reshaped_across_a_booked_one(runtime):
    set_up(runtime)
    history = book(runtime, local(THURSDAY, 9), with_appointment=True)
    booked = book(runtime, local(THURSDAY, 9, 30))
    with runtime.unit_of_work() as session:
        appointment = session.scalars(select(Appointment).where(Appointment.slot_id == history)).one()
        appointment.status = AppointmentStatus.CANCELLED
        assert slots.free_seat(session, history)
    change_station(runtime, slot_minutes=60)

    report = reconcile(runtime)

    assert [slot.slot_id for slot in report.kept] == [booked] and report.closed == 1
    nine = slot_at(runtime, local(THURSDAY, 9))
    assert (nine.id, nine.ends_at, nine.capacity) == (history, local(THURSDAY, 9, 30), 0)  # not 09:00-10:00
