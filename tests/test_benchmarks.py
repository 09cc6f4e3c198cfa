"""The benchmarks stay runnable: each prints its JSON (figures are read by people, not asserted here)."""

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
