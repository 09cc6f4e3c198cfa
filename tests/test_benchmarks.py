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


@pytest.mark.postgres_only
@pytest.mark.slow
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
def test_the_webhook_benchmark_drives_all_three_servers_with_wrk_and_loses_nothing():
    """A tiny bounded run (wrk must be installed: .ci/run installs it), on the suite's database."""
    environ = {k: v for k, v in os.environ.items() if k != "BENCH_DATABASE_URL"}
    if conftest.ON_POSTGRES:
        environ["BENCH_DATABASE_URL"] = conftest.POSTGRES_URL
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
def test_the_desk_queue_benchmark_reads_through_indexes_and_prints_its_figures():
    environ = os.environ | {"BENCH_DATABASE_URL": conftest.POSTGRES_URL}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "desk_queue.py"), "--cases", "3000",
                           "--runs", "5"], env=environ, capture_output=True, text=True, timeout=120, check=True)
    figures = json.loads(done.stdout)
    assert figures["rows_on_page"] == 40 and figures["cases"] == 3040
    assert figures["uses_index"] and figures["seq_scans_of_large_tables"] == []
    assert figures["queue_ms_median"] > 0
