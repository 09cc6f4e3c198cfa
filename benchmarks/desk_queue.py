"""The desk queue's server time with 1,000,000 historical cases on PostgreSQL (DESIGN.md §8).

Rows are generated in SQL (``generate_series``) in a schema of their own
(``bench_desk``, dropped at the end): 20 stations, about three years of
office days of 16 half-hour slots, three cases per slot (each with its two
parties and its appointment), then today's queue at the measured station
(40 cases in every state the queue shows). The tables are analysed once filled.

Measured: ``GET /desk/?date=<today>`` for a signed-in officer of that station,
through the whole Flask app in this process (session, user loading, the
query, rendering), as the median of ``--runs`` requests after a warm-up; and
the plan of the queue's query (EXPLAIN ANALYZE): whether it reads through
indexes, and any sequential scan of a large table. Target: under 50 ms.
Prints one JSON object. Usage::

    BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test python benchmarks/desk_queue.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.dialects import postgresql  # noqa: E402

from accident_service import create_app  # noqa: E402
from accident_service.db import Base  # noqa: E402
from accident_service.desk import queries  # noqa: E402
from accident_service.desk.accounts import create_staff  # noqa: E402
from accident_service.settings import load_settings  # noqa: E402

SCHEMA = "bench_desk"
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_MS = 50.0
STATIONS, SLOTS_PER_DAY, PER_SLOT, TODAY_CASES = 20, 16, 3, 40
LARGE_TABLES = {"accident_case", "party", "appointment", "slot"}
PASSWORD = "bench-password-1"


def _engine_url(base_url: str) -> str:
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}options={quote(f'-csearch_path={SCHEMA}')}"


def _fill(engine, cases: int, today: str) -> None:
    days = -(-cases // (STATIONS * SLOTS_PER_DAY * PER_SLOT))
    slots = STATIONS * days * SLOTS_PER_DAY
    with engine.begin() as connection:
        run = connection.exec_driver_sql
        run("""INSERT INTO station (id, code, name, address, lat, lng, timezone, opening_hours, holidays, closures,
                                    slot_minutes, desks, active)
               SELECT s, 'ST-' || lpad(s::text, 2, '0'), 'Station ' || s, 'Road ' || s, 23.1 + s / 100.0, 113.3,
                      'Asia/Shanghai', '{}', '[]', '[]', 30, %(per_slot)s, true
               FROM generate_series(1, %(stations)s) AS s""", {"stations": STATIONS, "per_slot": PER_SLOT})
        # Slot ids follow (station, day, slot): case i sits in slot (i - 1) / PER_SLOT + 1.
        run("""INSERT INTO slot (id, station_id, starts_at, ends_at, capacity, booked)
               SELECT n + 1, n / (%(days)s * %(per_day)s) + 1, start, start + interval '30 minutes', %(per_slot)s,
                      %(per_slot)s
               FROM generate_series(0, %(slots)s - 1) AS n,
                    LATERAL (SELECT ((%(today)s::date - (n / %(per_day)s %% %(days)s + 1)) + time '09:00'
                                     + (n %% %(per_day)s) * interval '30 minutes')
                                    AT TIME ZONE 'Asia/Shanghai' AS start) AS t""",
            {"days": days, "per_day": SLOTS_PER_DAY, "per_slot": PER_SLOT, "slots": slots, "today": today})
        run("""INSERT INTO accident_case (id, case_no, status, version, liability, handled_by, created_at, updated_at,
                                          last_activity_at, closed_at, evidence_fingerprint)
               SELECT i, 'H' || lpad(i::text, 9, '0'),
                      CASE WHEN i %% 25 = 0 THEN 'no_show' ELSE 'completed' END, 6, 'shared', 'officer', now(),
                      now(), now(), now(), md5(i::text)
               FROM generate_series(1, %(cases)s) AS i""", {"cases": cases})
        run("""INSERT INTO appointment (id, case_id, slot_id, status, created_at, updated_at, checked_in_at,
                                        completed_at)
               SELECT i, i, (i - 1) / %(per_slot)s + 1, CASE WHEN i %% 25 = 0 THEN 'no_show' ELSE 'completed' END,
                      now(), now(), now(), now()
               FROM generate_series(1, %(cases)s) AS i""", {"cases": cases, "per_slot": PER_SLOT})
        run("""INSERT INTO party (case_id, role, openid, plate, phone, language, case_open, joined_at)
               SELECT i, r.role, 'o' || r.role || lpad(i::text, 26, '0'), '粤' || r.role || lpad(i::text, 5, '0'),
                      '138' || lpad(i::text, 8, '0'), 'zh', false, now()
               FROM generate_series(1, %(cases)s) AS i, (VALUES ('A'), ('B')) AS r(role)""", {"cases": cases})
        _fill_today(run, cases, slots, today)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("ANALYZE")


def _fill_today(run, cases: int, slots: int, today: str) -> None:
    """Today's queue at station 1: its 16 slots and TODAY_CASES open cases in the states a desk sees."""
    run("""INSERT INTO slot (id, station_id, starts_at, ends_at, capacity, booked)
           SELECT %(slots)s + k + 1, 1, start, start + interval '30 minutes', %(per_slot)s, 0
           FROM generate_series(0, %(per_day)s - 1) AS k,
                LATERAL (SELECT (%(today)s::date + time '09:00' + k * interval '30 minutes')
                                AT TIME ZONE 'Asia/Shanghai' AS start) AS t""",
        {"slots": slots, "per_slot": PER_SLOT, "per_day": SLOTS_PER_DAY, "today": today})
    states = "(ARRAY['booked','confirmed','checked_in','completed','retake_requested','no_show'])"
    run(f"""INSERT INTO accident_case (id, case_no, status, version, created_at, updated_at, last_activity_at)
            SELECT %(cases)s + j, 'T' || lpad(j::text, 9, '0'), {states}[j %% 6 + 1], 3, now(), now(), now()
            FROM generate_series(1, %(today_cases)s) AS j""", {"cases": cases, "today_cases": TODAY_CASES})
    run(f"""INSERT INTO appointment (id, case_id, slot_id, status, created_at, updated_at)
            SELECT %(cases)s + j, %(cases)s + j, %(slots)s + (j - 1) %% %(per_day)s + 1,
                   CASE {states}[j %% 6 + 1] WHEN 'retake_requested' THEN 'booked' ELSE {states}[j %% 6 + 1] END,
                   now(), now()
            FROM generate_series(1, %(today_cases)s) AS j""",
        {"cases": cases, "slots": slots, "per_day": SLOTS_PER_DAY, "today_cases": TODAY_CASES})
    run("""INSERT INTO party (case_id, role, openid, plate, phone, language, case_open, joined_at, retake_item,
                              retake_due_at)
           SELECT %(cases)s + j, r.role, 'oT' || r.role || lpad(j::text, 25, '0'), '粤T' || lpad(j::text, 5, '0'),
                  '139' || lpad(j::text, 8, '0'), 'zh', true, now(),
                  CASE WHEN j %% 6 = 4 AND r.role = 'A' THEN 2 END,
                  CASE WHEN j %% 6 = 4 AND r.role = 'A' THEN now() - interval '1 hour' END
           FROM generate_series(1, %(today_cases)s) AS j, (VALUES ('A'), ('B')) AS r(role)""",
        {"cases": cases, "today_cases": TODAY_CASES})


def _plan(engine, start: datetime, end: datetime) -> dict:
    """EXPLAIN ANALYZE of the queue's query for station 1 and today: index use and sequential scans."""
    statement = queries.queue_statement(station_id=1, start=start, end=end)
    compiled = statement.compile(dialect=postgresql.dialect(), compile_kwargs={"render_postcompile": True})
    with engine.connect() as connection:
        plan = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}", compiled.params).scalar()
    nodes = []

    def walk(node: dict) -> None:
        nodes.append((node["Node Type"], node.get("Relation Name"), node.get("Index Name")))
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan[0]["Plan"])
    return {"uses_index": any("Index" in kind for kind, _, _ in nodes),
            "seq_scans_of_large_tables": sorted({rel for kind, rel, _ in nodes
                                                 if kind == "Seq Scan" and rel in LARGE_TABLES}),
            "indexes": sorted({index for _, _, index in nodes if index}),
            "query_ms": round(plan[0]["Execution Time"], 2)}


def _measure(url: str, runs: int, today: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-desk-") as data_dir:  # removed after: stop what you start
        return _measure_in(url, runs, today, data_dir)


def _measure_in(url: str, runs: int, today: str, data_dir: str) -> dict:
    settings = load_settings({"DATABASE_URL": url, "AUTO_MIGRATE": False, "DATA_DIR": data_dir,
                              "SECRET_KEY": "bench-secret", "APP_ENV": "test",
                              "STORAGE_URL": f"file://{data_dir}/objects"}, environ={})
    app = create_app(settings)
    runtime = app.extensions["accident_service"]
    with runtime.unit_of_work() as session:
        create_staff(session, username="bench.officer", password=PASSWORD, role="officer", station_code="ST-01",
                     clock=runtime.clock)
    client = app.test_client()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', client.get("/desk/login").get_data(as_text=True))
    client.post("/desk/login", data={"csrf_token": token.group(1), "username": "bench.officer", "password": PASSWORD})
    timings, shown = [], 0
    for attempt in range(runs + 3):
        began = time.perf_counter()
        response = client.get(f"/desk/?date={today}")
        elapsed = (time.perf_counter() - began) * 1000
        assert response.status_code == 200, response.status_code
        shown = response.get_data(as_text=True).count('class="queue-row')
        if attempt >= 3:  # the first requests compile templates and fill caches
            timings.append(elapsed)
    runtime.close()
    return {"queue_ms_median": round(statistics.median(timings), 2),
            "queue_ms_p95": round(sorted(timings)[int(len(timings) * 0.95) - 1], 2),
            "queue_ms_min": round(min(timings), 2), "rows_on_page": shown}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    base_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    admin = create_engine(base_url)
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        connection.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    url = _engine_url(base_url)
    engine = create_engine(url)
    try:
        Base.metadata.create_all(engine)
        now = datetime.now(UTC)
        today = queries.local_today(now, "Asia/Shanghai")
        began = time.perf_counter()
        _fill(engine, args.cases, today.isoformat())
        fill_seconds = time.perf_counter() - began
        start, end = queries.day_bounds(today, "Asia/Shanghai")
        figures = {"cases": args.cases + TODAY_CASES, "fill_seconds": round(fill_seconds, 1),
                   **_measure(url, args.runs, today.isoformat()), **_plan(engine, start, end),
                   "target_ms": TARGET_MS}
        figures["within_target"] = figures["queue_ms_median"] < TARGET_MS
        print(json.dumps(figures))
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        admin.dispose()


if __name__ == "__main__":
    main()
