"""Webhook throughput and latency under gunicorn, against a durable floor and a bare endpoint (DESIGN.md §8).

    python benchmarks/webhook.py [--seconds 1] [--rounds 15] [--connections 16] [--workers 2]
    BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test python benchmarks/webhook.py

Three gunicorn servers with the same settings (config/gunicorn.conf.py: gthread workers) run on
loopback, driven by wrk (a compiled load generator: Python clients cap the bare endpoint) with
benchmarks/webhook.lua, which signs a distinct plain-mode image push for every request (MsgId and
nonce of its own, timestamp now):

* ``bare``: Flask answering "success" (benchmarks/webhook_baselines.py);
* ``floor``: Flask, one ``INSERT … ON CONFLICT DO NOTHING`` of the body and COMMIT (SQLAlchemy Core,
  the service's engine settings), on the same database;
* ``service``: ``wsgi:app``: signature and timestamp, body cap, XML gate, parsing, the one-body-per-
  signature record, the inbox insert under its dedupe key, the intake rate limit, metrics, COMMIT.
  Processing happens elsewhere (``INBOX_PROCESS_INLINE=false``, as with a scheduler doing the work).

The servers take turns in ``--rounds`` slices (in a rotating order), so drift in the load of a shared
machine hits them alike: short ones, as this machine's own speed drifts by up to twice over a few
seconds (the same Python loop took 58 to 115 ms on 2026-12-04, the machine idle otherwise), and three
slices of 5 s gave one server a slow phase and another a fast one (0.52 to 0.81 in one hour).
Prints one JSON object: requests/s and p50/p99 of each (latency merged over the rounds from wrk's
quantiles), the ratios service/floor and service/bare, the p99
ratio service/floor, and ``lost``: pushes answered "success" that are not in the inbox (must be 0).
``unanswered_stored`` counts pushes stored whose answer wrk did not wait for (in flight when a run's
time was up; at most the connections per run). The database is a temporary SQLite file, or, with
``BENCH_DATABASE_URL``, a PostgreSQL database created for the run and dropped after it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from processes import gunicorn, temporary_database  # noqa: E402

TOKEN = "bench-token"
SERVERS = {"bare": "webhook_baselines:bare_app", "floor": "webhook_baselines:floor_app", "service": "wsgi:app"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one wrk run (whole seconds)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load per server before measuring")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per server (WEB_CONCURRENCY)")
    parser.add_argument("--openids", type=int, default=10007, help="drivers the pushes come from")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    with ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        database_url = stack.enter_context(temporary_database(data_dir, "webhook"))
        env = {**os.environ, "APP_ENV": "development", "DATA_DIR": str(data_dir), "DATABASE_URL": database_url,
               "STORAGE_URL": f"file://{data_dir}/objects", "SECRET_KEY": "bench", "WECHAT_TOKEN": TOKEN,
               "WECHAT_ENCODING_AES_KEY": "", "INBOX_PROCESS_INLINE": "false", "AUTO_MIGRATE": "false",
               "LOG_LEVEL": "WARNING", "WEB_CONCURRENCY": str(args.workers), "REDIS_URL": ""}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each gunicorn master makes its own
        subprocess.run([str(Path(sys.executable).with_name("accident-service")), "db", "upgrade"], env=env,
                       check=True, cwd=REPO, capture_output=True, timeout=120)
        from webhook_baselines import create_floor_table

        create_floor_table(database_url)
        urls = {name: stack.enter_context(gunicorn(app, env, data_dir)) for name, app in SERVERS.items()}
        runs = iter(range(1, 10**4))
        totals = {name: _Totals() for name in SERVERS}
        load = {"wrk": wrk, "threads": args.threads, "connections": args.connections, "openids": args.openids}
        for name, url in urls.items():  # warm up: connections, imports, statement caches, the planner
            totals[name].add(_wrk(url, args.warmup, next(runs), **load), measured=False)
        order = list(SERVERS)
        for round_no in range(args.rounds):
            for name in order[round_no % 3:] + order[:round_no % 3]:
                totals[name].add(_wrk(urls[name], args.seconds, next(runs), **load))
        stored = _count(database_url, "inbound_message")
        floor_stored = _count(database_url, "bench_webhook_floor")
    figures = {name: totals[name].figures() for name in SERVERS}
    service, floor, bare = figures["service"], figures["floor"], figures["bare"]
    print(json.dumps({
        "database": database_url.split(":", 1)[0], "workers": args.workers, "connections": args.connections,
        "seconds_per_run": args.seconds, "rounds": args.rounds,
        "service": service, "floor": floor, "bare": bare,
        "throughput_ratio_floor": round(service["requests_per_s"] / floor["requests_per_s"], 3),
        "throughput_ratio_bare": round(service["requests_per_s"] / bare["requests_per_s"], 3),
        "p99_ratio_floor": round(service["p99_ms"] / floor["p99_ms"], 2),
        "answered": totals["service"].answered, "stored": stored,
        "lost": max(0, totals["service"].answered - stored),
        "unanswered_stored": max(0, stored - totals["service"].answered),
        "floor_lost": max(0, totals["floor"].answered - floor_stored),
    }, indent=2))


class _Totals:
    """One server's wrk runs added up: answers, measured seconds and the merged latency distribution."""

    def __init__(self) -> None:
        self.answered = 0
        self.measured_answers = 0
        self.seconds = 0.0
        self.latency_mass: list[tuple[int, float]] = []  # (microseconds, answers at or below it)

    def add(self, run: dict, *, measured: bool = True) -> None:
        self.answered += run["answered"]
        if not measured:
            return
        self.measured_answers += run["answered"]
        self.seconds += run["duration_us"] / 1e6
        previous = 0.0
        for percent, micros in sorted((float(p), m) for p, m in run["latency_quantiles_us"].items()):
            self.latency_mass.append((micros, (percent - previous) / 100 * run["answered"]))
            previous = percent

    def figures(self) -> dict[str, float]:
        return {"requests_per_s": round(self.measured_answers / self.seconds, 1),
                "p50_ms": self._percentile(0.50), "p99_ms": self._percentile(0.99)}

    def _percentile(self, fraction: float) -> float:
        """From the runs' quantiles, each weighted by its run's answers (accurate to 0.1 %, 0.01 % above 99 %)."""
        total = sum(mass for _, mass in self.latency_mass)
        seen = 0.0
        for micros, mass in sorted(self.latency_mass):
            seen += mass
            if seen >= fraction * total - 1e-9:
                return round(micros / 1000, 2)
        raise ValueError("no latencies recorded")


def _wrk(url: str, seconds: float, run_no: int, *, wrk: str, threads: int, connections: int, openids: int) -> dict:
    """One wrk run; its result line, or SystemExit when a push was refused or a socket failed."""
    env = {**os.environ, "BENCH_TOKEN": TOKEN, "BENCH_MSG_ID_BASE": str(run_no * 10**10),
           "BENCH_OPENIDS": str(openids)}
    done = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                           "-s", str(HERE / "webhook.lua"), url + "/wechat"],
                          env=env, capture_output=True, text=True, timeout=seconds + 60, check=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if not lines:
        raise SystemExit(f"{url}: wrk printed no result:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    result = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    if result["refused"] or result["socket_errors"]:
        raise SystemExit(f"{url}: {result['refused']} refused ({result['first_refusal']}), "
                         f"{result['socket_errors']} socket errors")
    return result


def _count(database_url: str, table: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
