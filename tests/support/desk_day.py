"""A desk's morning in rows: cases booked at one station today in every state the queue shows."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from accident_service.desk import actions
from accident_service.models import Case, PartyRole, Slot, Station
from accident_service.runtime import Runtime
from tests.booking import factories as make
from tests.conftest import T0

# (slot start, Guangzhou time; what the desk did since)
MORNING = (("09:00", "completed"), ("09:00", "no_show"), ("09:30", "checked_in"), ("10:00", "confirmed"),
           ("10:30", "booked"), ("11:00", "retake_overdue"), ("11:30", "confirmed"), ("14:00", "booked"))


def seed_day(runtime: Runtime, station_id: int) -> list[str]:
    """Book one case per MORNING entry at ``station_id`` on T0's day and bring it to its state; their numbers."""
    early = T0 - timedelta(hours=4)  # 06:00: every slot of the day is still ahead when they book
    with runtime.unit_of_work() as session:
        station = session.get(Station, station_id)
        slots = {f"{(s.starts_at + timedelta(hours=8)):%H:%M}": s.id for s in session.scalars(
            select(Slot).where(Slot.station_id == station_id, Slot.starts_at >= T0 - timedelta(hours=2),
                               Slot.starts_at < T0 + timedelta(hours=10)))}
        for start, _ in MORNING:  # slots already past when the test's stations were set up are not generated
            if start not in slots:
                hour, minute = map(int, start.split(":"))
                starts_at = T0.replace(hour=hour - 8, minute=minute)
                slots[start] = make.slot(session, station, starts_at, capacity=station.desks).id
        cases = []
        for start, _ in MORNING:
            case = make.ready_case(session, early)
            case.party(PartyRole.A).offered_slot_ids, case.party(PartyRole.A).offered_at = [slots[start]], early
            cases.append((case.id, case.case_no))
    for (case_id, _), (_, state) in zip(cases, MORNING, strict=True):
        assert make.choose(runtime, case_id, 1, now=early).booked
        _bring_to(runtime, case_id, state)
    return [case_no for _, case_no in cases]


def _bring_to(runtime: Runtime, case_id: int, state: str) -> None:
    steps = {"completed": ("check_in", "complete"), "no_show": ("no_show",), "checked_in": ("confirm", "check_in"),
             "confirmed": ("confirm",), "booked": (), "retake_overdue": ("retake",)}[state]
    for step in steps:
        with runtime.unit_of_work() as session:
            case = session.scalar(select(Case.case_no).where(Case.id == case_id))
            locked = actions.lock_case(session, case)
            options = {"staff": "officer.li", "settings": runtime.settings, "now": T0}
            if step == "complete":
                actions.complete(session, locked, liability="shared", note="双方同意", **options)
            elif step == "retake":
                actions.request_retake(session, locked, item=2, reason="看不清", deadline=timedelta(minutes=60),
                                       **options | {"now": T0 - timedelta(hours=3)})
            elif step == "no_show":
                actions.mark_no_show(session, locked, **options)
            else:
                getattr(actions, step)(session, locked, **options)
