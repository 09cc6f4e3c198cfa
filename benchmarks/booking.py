"""Booking throughput on PostgreSQL: the service path against a bare SQL floor (DESIGN.md §8).

32 clients (threads by default, or processes; one connection each) book at
the same time. Every slot has capacity 4 and receives 5 consecutive
attempts, so the clients collide on the same row like drivers offered the
same earliest slot, and one attempt in five finds it full. Every path makes
the same number of attempts, on rows of its own:

* floor: one transaction per attempt with the conditional
  ``UPDATE slot SET booked = booked + 1 WHERE id = :id AND booked < capacity``
  and, when it wins, an INSERT into appointment (SQLAlchemy Core);
* service: one unit of work per attempt as the conversation's ``choose``
  runs it: ``cases.open_case_for(openid, for_update=True)`` (the case row
  locked, the sender's party), then ``booking.offers.book_choice``: the one
  booking path of both databases (the appointment, the case's lifecycle
  transition with its audit event and both parties' notices, then the seat's
  conditional UPDATE as the last statement before COMMIT, in a savepoint).

Target: ``ratio`` at least 0.6. Real load (a province: about 0.4 cases a
second) is three orders of magnitude below either figure; one readable path
is worth more than the last factor.

The paths take turns in ``--rounds`` slices so that drift in the load of a
shared machine hits them alike; compare the ratio, measured in one run.
``client_cpu_ms_per_booking`` (threads) is the benchmark process's CPU time
per booking: with the GIL, Python work per booking bounds the throughput.

Tables live in a schema of their own (``bench_booking``), analysed once filled
(see ``_analyze``) and dropped at the end.
Prints one JSON object. Usage::

    BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test python benchmarks/booking.py
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, create_engine, event, func, insert, select, text, update  # noqa: E402

from accident_service.booking import offers as booking  # noqa: E402
from accident_service.cases import service as cases  # noqa: E402
from accident_service.clock import SystemClock  # noqa: E402
from accident_service.db import Base, make_session_factory  # noqa: E402
from accident_service.models import (  # noqa: E402
    Appointment,
    AppointmentStatus,
    Case,
    CaseStatus,
    Notification,
    Party,
    PartyRole,
    Photo,
    PhotoStatus,
    Slot,
    Station,
)
from accident_service.runtime import Runtime  # noqa: E402
from accident_service.settings import load_settings  # noqa: E402
from accident_service.storage import make_store  # noqa: E402

SCHEMA = "bench_booking"
TARGET_RATIO = 0.6
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CAPACITY = 4
ATTEMPTS_PER_SLOT = CAPACITY + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--attempts", type=int, default=2000, help="per path")
    parser.add_argument("--rounds", type=int, default=4,
                        help="the paths take turns, each round a slice of every plan, so drift in the shared "
                             "machine's load hits all paths alike")
    parser.add_argument("--mode", choices=("threads", "processes"), default="threads",
                        help="threads: one interpreter, like a worker's pool; processes: forked clients")
    args = parser.parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    admin = create_engine(url)
    _reset_schema(admin)
    engine = create_engine(url, connect_args={"options": f"-csearch_path={SCHEMA}"},
                           pool_size=args.clients + 2, max_overflow=0)
    try:
        Base.metadata.create_all(engine)
        print(json.dumps(run(engine, url, clients=args.clients, attempts=args.attempts, mode=args.mode,
                                    rounds=args.rounds), indent=2))
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        admin.dispose()


def _reset_schema(admin: Engine) -> None:
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        connection.execute(text(f"CREATE SCHEMA {SCHEMA}"))


def run(engine: Engine, url: str, *, clients: int, attempts: int, mode: str, rounds: int) -> dict:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings({"APP_ENV": "test", "DATA_DIR": data_dir, "DATABASE_URL": url,
                                  "STORAGE_URL": f"file://{data_dir}/objects", "AUTO_MIGRATE": False,
                                  "SECRET_KEY": "bench"}, environ={})
        runtime = Runtime(settings=settings, engine=engine, session_factory=make_session_factory(engine),
                          store=make_store(settings), clock=SystemClock())
        paths: dict[str, Callable[[int, int], bool]] = {
            "floor": lambda case_id, slot_id: _floor_attempt(engine, case_id, slot_id),
            "service": lambda case_id, _slot_id: _service_attempt(runtime, case_id),
        }
        plans = {name: _prepare(engine, now, attempts, name.upper(),
                                with_parties=name != "floor") for name in paths}
        _analyze(engine)
        statements = _warm_up(engine, runtime, now, paths)
        measured = _measure_interleaved(clients, plans, paths, rounds=rounds, mode=mode, engine=engine)
    rates = {name: result["booked"] / result["seconds"] for name, result in measured.items()}
    cpu = {name: result.pop("client_cpu_seconds") for name, result in measured.items()}
    return {
        "clients": clients,
        "client_mode": mode,
        "attempts_per_path": attempts,
        "rounds": rounds,
        "slot_capacity": CAPACITY,
        "attempts_per_slot": ATTEMPTS_PER_SLOT,
        "service_bookings_per_s": round(rates["service"], 1),
        "floor_bookings_per_s": round(rates["floor"], 1),
        "ratio": round(rates["service"] / rates["floor"], 3),
        "target_ratio": TARGET_RATIO,
        "statements_per_booking": statements,
        **({"client_cpu_ms_per_booking": {name: round(1000 * cpu[name] / measured[name]["booked"], 2)
                                          for name in measured}} if mode == "threads" else {}),
        "outcomes": {name: {k: v for k, v in result.items() if k != "seconds"} for name, result in measured.items()},
        **_check(engine),
    }


def _prepare(engine: Engine, now: datetime, attempts: int, code: str, *, with_parties: bool) -> list[tuple[int, int]]:
    """Slots (capacity 4) and one case per attempt; returns (case_id, slot_id) in attempt order."""
    slot_count = -(-attempts // ATTEMPTS_PER_SLOT)
    first = now + timedelta(days=1)
    with engine.begin() as connection:
        station_id = connection.execute(insert(Station).returning(Station.id), {
            "code": code, "name": f"{code} 事故处理点", "address": "广州市天河区 1 号", "lat": 23.13, "lng": 113.33,
            "timezone": "Asia/Shanghai", "opening_hours": {"mon": ["09:00-17:00"]}, "holidays": [], "closures": [],
            "slot_minutes": 30, "desks": CAPACITY, "active": True}).scalar_one()
        slot_ids = connection.execute(insert(Slot).returning(Slot.id, sort_by_parameter_order=True), [
            {"station_id": station_id, "starts_at": first + timedelta(minutes=30 * i),
             "ends_at": first + timedelta(minutes=30 * i + 30), "capacity": CAPACITY, "booked": 0}
            for i in range(slot_count)]).scalars().all()
        plan_slots = [slot_ids[k // ATTEMPTS_PER_SLOT] for k in range(attempts)]
        case_ids = connection.execute(insert(Case).returning(Case.id, sort_by_parameter_order=True), [
            {"case_no": f"{code}-{k:06d}", "status": CaseStatus.READY, "location_lat": 23.13, "location_lng": 113.33,
             "version": 1, "created_at": now, "updated_at": now, "last_activity_at": now,
             "expires_at": now + timedelta(hours=2)}
            for k in range(attempts)]).scalars().all()
        if with_parties:
            connection.execute(insert(Party), [
                {"case_id": case_id, "role": role, "openid": _openid(case_id, role), "plate": "粤A12345",
                 "phone": "13800000000", "language": "zh", "case_open": True, "joined_at": now,
                 "offered_slot_ids": [slot_id] if role is PartyRole.A else None,
                 "offered_at": now if role is PartyRole.A else None}
                for case_id, slot_id in zip(case_ids, plan_slots, strict=True) for role in (PartyRole.A, PartyRole.B)])
            connection.execute(insert(Photo), [
                {"case_id": case_id, "item": item, "kind": f"item{item}", "status": PhotoStatus.ACCEPTED,
                 "sha256": hashlib.sha256(f"{case_id}:{item}".encode()).hexdigest(), "received_at": now,
                 "warnings": [], "capture_time_known": False}
                for case_id in case_ids for item in range(1, 5)])
    return list(zip(case_ids, plan_slots, strict=True))


def _analyze(engine: Engine) -> None:
    """Give the planner statistics on the filled tables, as autovacuum does in a running database.

    Without them (a server with autovacuum off, or a run shorter than its
    naptime) the planner takes the new tables for nearly empty, and the
    service's case lookup by openid becomes a scan of every open case, its
    cost growing with the rows the run itself adds: the figure would measure
    the missing statistics, not the booking. The floor reads by primary key
    only and is unaffected.
    """
    with engine.begin() as connection:
        # The names resolve in the benchmark's schema (the engine's search_path).
        connection.execute(text("ANALYZE " + ", ".join(table.name for table in Base.metadata.sorted_tables)))


def _warm_up(engine: Engine, runtime: Runtime, now: datetime,
             paths: dict[str, Callable[[int, int], bool]]) -> dict[str, int]:
    """Open the pooled connections, compile every statement, and count the statements of one booking."""
    counts: dict[str, int] = {}
    for name, attempt in paths.items():
        plan = _prepare(engine, now, 2 * ATTEMPTS_PER_SLOT, f"WARM-{len(counts)}", with_parties=name != "floor")
        attempt(*plan[0])  # compiles; the second booking of the slot is counted
        seen: list[str] = []

        def count(*args, seen=seen) -> None:
            seen.append(args[2])

        event.listen(engine, "before_cursor_execute", count)
        try:
            attempt(*plan[1])
        finally:
            event.remove(engine, "before_cursor_execute", count)
        counts[name] = len(seen) + 2  # + BEGIN and COMMIT, which psycopg sends without a cursor
        for case_id, slot_id in plan[2:]:
            attempt(case_id, slot_id)
    with ThreadPoolExecutor(max_workers=engine.pool.size()) as pool:  # every pooled connection opened once
        list(pool.map(lambda _: engine.connect().close(), range(engine.pool.size())))
    return counts


def _floor_attempt(engine: Engine, case_id: int, slot_id: int) -> bool:
    with engine.begin() as connection:
        won = connection.execute(
            update(Slot).where(Slot.id == slot_id, Slot.booked < Slot.capacity).values(booked=Slot.booked + 1)
        ).rowcount == 1
        if won:
            at = datetime.now(UTC)
            connection.execute(insert(Appointment).values(case_id=case_id, slot_id=slot_id,
                                                          status=AppointmentStatus.BOOKED, created_at=at,
                                                          updated_at=at))
        return won


def _service_attempt(runtime: Runtime, case_id: int) -> bool:
    """As the conversation's ``choose``: the sender's case and party, the case locked, then book_choice."""
    now = runtime.clock.now()
    with runtime.unit_of_work() as session:
        case, party = cases.open_case_for(session, _openid(case_id, PartyRole.A), for_update=True)
        return booking.book_choice(session, runtime, case, party, 1, now=now).booked


def _openid(case_id: int, role: PartyRole) -> str:
    return f"o{case_id}{role.value}"


def _measure_interleaved(clients: int, plans: dict[str, list[tuple[int, int]]],
                         paths: dict[str, Callable[[int, int], bool]], *, rounds: int, mode: str,
                         engine: Engine) -> dict[str, dict]:
    """Run every plan in ``rounds`` slices, the paths taking turns (the order rotating each round).

    Slices end on slot boundaries, so a slot's five attempts always compete
    with each other within one round. Returns the summed outcomes and times.
    """
    names = list(paths)
    totals = {name: {"booked": 0, "full": 0, "errors": 0, "seconds": 0.0, "client_cpu_seconds": 0.0}
              for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            plan = plans[name]
            slots_in_plan = -(-len(plan) // ATTEMPTS_PER_SLOT)
            first, last = (slots_in_plan * k // rounds * ATTEMPTS_PER_SLOT for k in (r, r + 1))
            if first >= min(last, len(plan)):
                continue
            cpu_before = time.process_time()
            result = _measure(clients, plan[first:last], paths[name], mode=mode, engine=engine)
            totals[name]["client_cpu_seconds"] += time.process_time() - cpu_before
            for key, value in result.items():
                totals[name][key] += value
    return totals


def _measure(clients: int, plan: list[tuple[int, int]], attempt: Callable[[int, int], bool], *, mode: str,
             engine: Engine) -> dict:
    """Run every attempt of ``plan`` on ``clients`` threads or processes, taking attempts in order."""
    if mode == "threads":
        return _measure_threads(clients, plan, attempt)
    return _measure_processes(clients, plan, attempt, engine)


def _client_loop(plan: list[tuple[int, int]], attempt: Callable[[int, int], bool], take: Callable[[], int],
                 tally: dict[str, int]) -> None:
    while (k := take()) < len(plan):
        try:
            outcome = "booked" if attempt(*plan[k]) else "full"
        except Exception:  # noqa: BLE001 - counted and reported, never hidden
            outcome = "errors"
        tally[outcome] += 1


def _measure_threads(clients: int, plan: list[tuple[int, int]], attempt: Callable[[int, int], bool]) -> dict:
    counter = itertools.count()
    lock = threading.Lock()
    tallies = [{"booked": 0, "full": 0, "errors": 0} for _ in range(clients)]
    barrier = threading.Barrier(clients + 1, timeout=60)

    def take() -> int:
        with lock:
            return next(counter)

    def client(tally: dict[str, int]) -> None:
        barrier.wait()
        _client_loop(plan, attempt, take, tally)

    threads = [threading.Thread(target=client, args=(tally,), daemon=True) for tally in tallies]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join(timeout=600)
    seconds = time.perf_counter() - started
    return {key: sum(t[key] for t in tallies) for key in tallies[0]} | {"seconds": seconds}


def _measure_processes(clients: int, plan: list[tuple[int, int]], attempt: Callable[[int, int], bool],
                       engine: Engine) -> dict:
    context = multiprocessing.get_context("fork")  # children inherit the plan and the compiled statements
    counter = context.Value("i", 0)
    barrier = context.Barrier(clients + 1, timeout=60)
    results = context.Queue()

    def take() -> int:
        with counter.get_lock():
            k = counter.value
            counter.value += 1
            return k

    def client() -> None:
        engine.dispose(close=False)  # a pool of its own; the parent's connections stay the parent's
        with engine.connect():
            pass
        tally = {"booked": 0, "full": 0, "errors": 0}
        barrier.wait()
        _client_loop(plan, attempt, take, tally)
        results.put(tally)

    engine.dispose()
    processes = [context.Process(target=client, daemon=True) for _ in range(clients)]
    for process in processes:
        process.start()
    barrier.wait()
    started = time.perf_counter()
    tallies = [results.get(timeout=600) for _ in processes]
    seconds = time.perf_counter() - started
    for process in processes:
        process.join(timeout=60)
    return {key: sum(t[key] for t in tallies) for key in tallies[0]} | {"seconds": seconds}


def _check(engine: Engine) -> dict:
    with engine.connect() as connection:
        per_slot = select(Appointment.slot_id, func.count().label("n")).where(
            Appointment.status == AppointmentStatus.BOOKED).group_by(Appointment.slot_id).subquery()
        rows = connection.execute(select(Slot.capacity, Slot.booked, func.coalesce(per_slot.c.n, 0))
                                  .outerjoin(per_slot, per_slot.c.slot_id == Slot.id)).all()
        notices = connection.scalar(select(func.count()).select_from(Notification)
                                    .where(Notification.kind == "booked"))
    return {
        "overbookings": sum(max(0, appointments - capacity) for capacity, _, appointments in rows),
        "count_mismatches": sum(1 for _, booked, appointments in rows if booked != appointments),
        "booked_notices": notices,
    }


if __name__ == "__main__":
    main()
