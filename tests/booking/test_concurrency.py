"""Many drivers booking one slot at the same moment: never more than its capacity.

Each thread has its own session on its own connection and commits for real;
a barrier releases them together.
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from accident_service.booking import offers as booking
from accident_service.db import make_session_factory
from accident_service.models import Appointment, Case, Notification, PartyRole, Slot
from tests.booking import factories as make
from tests.conftest import ON_POSTGRES, POSTGRES_URL, T0


def book_all_at_once(runtime, clients: int, capacity: int) -> tuple[list[booking.BookResult], list[BaseException]]:
    with runtime.unit_of_work() as session:
        slot = make.slot(session, make.station(session, "GZ-A"), T0 + timedelta(hours=4), capacity=capacity)
        case_ids = []
        for _ in range(clients):
            case = make.ready_case(session, T0)
            case.party(PartyRole.A).offered_slot_ids, case.party(PartyRole.A).offered_at = [slot.id], T0
            case_ids.append(case.id)
    barrier = threading.Barrier(clients, timeout=60)
    results: list[booking.BookResult] = []
    errors: list[BaseException] = []

    def client(case_id: int) -> None:
        try:
            barrier.wait()
            with runtime.unit_of_work() as session:
                case = session.get(Case, case_id, with_for_update=True)
                results.append(booking.book_choice(session, runtime, case, case.party(PartyRole.A), 1, now=T0))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(case_id,)) for case_id in case_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    with runtime.unit_of_work() as session:
        assert session.scalar(select(Slot.booked).where(Slot.id == slot.id)) == capacity
        assert session.scalar(select(func.count()).select_from(Appointment)) == capacity
        assert session.scalar(select(func.count()).select_from(Notification)
                              .where(Notification.kind == "booked")) == 2 * capacity
    return results, errors


def test_concurrent_bookings_fill_a_slot_exactly(runtime):
    results, errors = book_all_at_once(runtime, clients=12, capacity=3)
    assert errors == []
    assert sorted(r.booked for r in results) == [False] * 9 + [True] * 3
    assert {r.reason_key for r in results if not r.booked} == {"booking.stale_offer"}


@pytest.mark.postgres_only
def test_64_concurrent_bookings_on_postgres(runtime):
    assert ON_POSTGRES
    # One connection per client (the runtime's pool is smaller than 64).
    engine = create_engine(POSTGRES_URL, poolclass=NullPool)
    try:
        own = dataclasses.replace(runtime, engine=engine, session_factory=make_session_factory(engine))
        results, errors = book_all_at_once(own, clients=64, capacity=3)
    finally:
        engine.dispose()
    assert errors == []
    assert sorted(r.booked for r in results) == [False] * 61 + [True] * 3
