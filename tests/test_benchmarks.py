"""The benchmarks stay runnable: each prints its JSON (figures are read by people; only correctness is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conftest

ROOT = Path(__file__).resolve().parents[1]


def on_the_suites_database() -> dict[str, str]:
    """The environment for a benchmark that makes its own database: on PostgreSQL when the suite runs there."""
    environ = {k: v for k, v in os.environ.items() if k != "BENCH_DATABASE_URL"}
    if conftest.ON_POSTGRES:
        environ["BENCH_DATABASE_URL"] = conftest.POSTGRES_URL
    return environ


@pytest.mark.postgres_only
@pytest.mark.slow
@pytest.mark.timeout(180)  # above the test's bound on the script (120 s)
def test_the_booking_benchmark_books_every_seat_once_and_prints_its_figures():
    environ = os.environ | {"BENCH_DATABASE_URL": conftest.POSTGRES_URL}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "booking.py"), "--clients", "4",
                           "--attempts", "50", "--rounds", "2"],
                          env=environ, capture_output=True, text=True, timeout=120, check=True)
    figures = json.loads(done.stdout)
    assert figures["overbookings"] == 0 and figures["count_mismatches"] == 0
    for path in ("floor", "service"):
        assert figures["outcomes"][path] == {"booked": 40, "full": 10, "errors": 0}
    assert figures["booked_notices"] == 2 * (40 + 8)  # both parties, the measured bookings and the warm-up's
    statements = figures["statements_per_booking"]
    assert figures["ratio"] > 0 and statements["floor"] == 4 and statements["service"] > 4


@pytest.mark.slow
@pytest.mark.timeout(240)  # above the test's bound on the script (180 s)
def test_the_webhook_benchmark_drives_all_three_servers_with_wrk_and_loses_nothing():
    """A tiny bounded run (wrk must be installed: .ci/run installs it), on the suite's database."""
    environ = on_the_suites_database()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "webhook.py"), "--seconds", "1", "--rounds", "1",
                           "--warmup", "1", "--connections", "4", "--workers", "1"],
                          env=environ, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures["database"].startswith("postgresql" if conftest.ON_POSTGRES else "sqlite")
    for server in ("service", "floor", "bare"):
        assert figures[server]["requests_per_s"] > 0 and 0 < figures[server]["p50_ms"] <= figures[server]["p99_ms"]
    assert figures["answered"] > 0 and figures["lost"] == 0 and figures["floor_lost"] == 0
    assert figures["unanswered_stored"] <= 4 * 2  # in flight when a run's time was up: warm-up and measured run
    assert figures["throughput_ratio_floor"] > 0 and figures["p99_ratio_floor"] > 0


@pytest.mark.postgres_only
@pytest.mark.slow
@pytest.mark.timeout(180)  # above the test's bound on the script (120 s)
def test_the_desk_queue_benchmark_reads_through_indexes_and_prints_its_figures():
    environ = os.environ | {"BENCH_DATABASE_URL": conftest.POSTGRES_URL}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "desk_queue.py"), "--cases", "3000",
                           "--runs", "5"], env=environ, capture_output=True, text=True, timeout=120, check=True)
    figures = json.loads(done.stdout)
    assert figures["rows_on_page"] == 40 and figures["cases"] == 3040
    assert figures["uses_index"] and figures["seq_scans_of_large_tables"] == []
    assert figures["queue_ms_median"] > 0


@pytest.mark.slow
@pytest.mark.timeout(300)  # above the test's bound on the script (240 s)
def test_the_load_benchmark_stores_every_photo_once_overbooks_nothing_and_is_refused_nothing():
    """A tiny bounded run of the whole topology (gunicorn, scheduler, moto, the strict emulator), on the suite's
    database: 2 cases in the burst and 1 paced, 3 photos per driver."""
    environ = on_the_suites_database()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load.py"), "--drivers", "4", "--photos", "3",
                           "--paced-drivers", "2", "--rate", "10", "--seconds", "120"],
                          env=environ, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    figures = json.loads(done.stdout)
    assert figures["database"].startswith("postgresql" if conftest.ON_POSTGRES else "sqlite")
    checks = figures["checks"]
    assert checks["passed"]
    assert checks["photos_sent"] == checks["photo_rows"] == checks["photo_rows_accepted"] == 6 * 3
    assert checks["objects_in_bucket"] == 2 * 6 * 3  # an original and a thumbnail per photo, nothing else
    assert checks["duplicate_photo_rows"] == checks["photos_not_stored"] == 0
    assert checks["objects_missing"] == checks["objects_extra"] == 0
    assert checks["overbooked_slots"] == 0 and checks["cases_booked"] == checks["cases"] == 3
    assert checks["refused_sends"] == {} and checks["refused_45047_45015_47003"] == 0
    assert checks["driver_errors"] == 0 and checks["unreadable_answers"] == 0
    summary = figures["summary"]
    assert summary["photos_stored_once"] and summary["overbooked_slots"] == 0 and summary["refused_sends"] == 0
    assert summary["pushes"] == figures["burst"]["pushes"] + figures["paced"]["pushes"] > 0
    assert 0 < summary["webhook_p50_ms"] <= summary["webhook_p99_ms"]
    assert summary["photos_per_s"] > 0 and summary["floor_photos_per_s"] > 0
    assert summary["photo_throughput_ratio_floor"] > 0
    assert summary["paced_photo_reply_p95_ms"] > 0 and summary["last_input_to_both_notices_p95_ms"] > 0
    assert set(summary["targets_met"]) == set(summary["targets"])
    assert figures["burst"]["cpu"]["seconds"]["web"] > 0


@pytest.mark.slow
@pytest.mark.timeout(300)  # above the test's bound on the script (240 s)
def test_run_all_prints_one_document_and_reports_a_failing_script_without_stopping():
    """photo_check runs (no database); booking is given a database nobody answers on: it fails, and is reported,
    as is the CHECKPOINT before it."""
    environ = os.environ | {"BENCH_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--only",
                           "photo_check", "--only", "booking"],
                          env=environ, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stderr[-3000:]
    document = json.loads(done.stdout)
    assert document["date"] and document["machine"]["cpus"] >= 1
    assert document["photo_check"]["ok"] and document["photo_check"]["figures"]["ratio"] > 0
    assert not document["booking"]["ok"] and document["booking"]["returncode"] != 0
    assert "figures" not in document["booking"] and document["booking"]["stderr_tail"]
    assert document["booking"]["checkpoint_before"].startswith("failed: ")  # the settling said so, too
    assert document["failed"] == ["booking"]
    assert "webhook" not in document and "load" not in document
