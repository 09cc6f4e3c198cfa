"""Every benchmark in benchmarks/, one after another, each in a process of its own: one JSON document.

    python benchmarks/run_all.py [--quick] [--only NAME ...] [--timeout-factor 1.0]
    BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test python benchmarks/run_all.py

Prints ``{"date": ..., "machine": ..., "database": ..., NAME: {"ok", "seconds", "args", "figures" | "error"}, ...}``
for photo_check, booking, desk_queue, webhook and load. Each script runs with its own default arguments (the
README's figures), or with ``--quick`` a modest run of each (a few minutes in all). ``BENCH_DATABASE_URL``
(default: PostgreSQL on 127.0.0.1:5432, database ``test``) is passed to every script: booking and desk_queue
need PostgreSQL; webhook and load create and drop a database of their own on it (``--sqlite``: a temporary
SQLite file for those two instead). A script that fails, prints no JSON or outlives its time bound (it gets
SIGINT, so it stops its servers and drops its database; its process group is killed 30 s later) is reported
in the document with the end of its error output; the others still run. Exits 1 when any script failed.
Between two scripts the runner settles the machine (a CHECKPOINT on PostgreSQL, its outcome in
``checkpoint_before``, then up to a minute for a quiet second: ``settled_before_s``), so one script's
leftovers do not land on the next one's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
GRACE_SECONDS = 30  # after SIGINT, before the script's process group is killed


@dataclass(frozen=True)
class Benchmark:
    name: str
    full: tuple[str, ...]  # the script's defaults: what the README's figures come from
    quick: tuple[str, ...]
    seconds: float  # the time bound of the full run (the quick run gets half, at least 120 s)
    database: str  # "none"; "either" (SQLite without BENCH_DATABASE_URL); "postgresql" (needs it)


BENCHMARKS = (
    Benchmark("photo_check", (), ("--iterations", "3"), 180, "none"),
    Benchmark("booking", (), ("--clients", "8", "--attempts", "200", "--rounds", "2"), 300, "postgresql"),
    Benchmark("desk_queue", (), ("--cases", "20000", "--runs", "10"), 900, "postgresql"),
    Benchmark("webhook", (), ("--seconds", "2", "--rounds", "1", "--warmup", "1"), 300, "either"),
    Benchmark("load", (), ("--drivers", "40", "--paced-drivers", "10"), 700, "either"),  # its --seconds: 600
)


def main() -> None:
    names = [benchmark.name for benchmark in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=names, help="run only this one (repeatable)")
    parser.add_argument("--quick", action="store_true", help="modest arguments instead of each script's defaults")
    parser.add_argument("--sqlite", action="store_true", help="webhook and load on a temporary SQLite file")
    parser.add_argument("--timeout-factor", type=float, default=1.0, help="scales every script's time bound")
    args = parser.parse_args()
    database_url = os.environ.get("BENCH_DATABASE_URL") or DEFAULT_URL
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    document: dict = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": _machine(database_url),
                      "database": _safe_url(database_url), "quick": args.quick}
    for number, benchmark in enumerate(chosen):
        settled = _settle(database_url) if number else None  # (seconds, the CHECKPOINT's outcome)
        environ = {**os.environ, "BENCH_DATABASE_URL": database_url}
        if args.sqlite and benchmark.database == "either":
            environ.pop("BENCH_DATABASE_URL")
        bound = (max(120.0, benchmark.seconds / 2) if args.quick else benchmark.seconds) * args.timeout_factor
        document[benchmark.name] = _run(benchmark, benchmark.quick if args.quick else benchmark.full, environ, bound)
        if settled is not None:
            document[benchmark.name]["settled_before_s"], checkpoint = settled
            if checkpoint is not None:
                document[benchmark.name]["checkpoint_before"] = checkpoint
    document["load_average_after"] = list(os.getloadavg())
    document["failed"] = [b.name for b in chosen if not document[b.name]["ok"]]
    print(json.dumps(document, indent=2, ensure_ascii=False))
    if document["failed"]:
        raise SystemExit(1)


def _run(benchmark: Benchmark, arguments: tuple[str, ...], environ: dict[str, str], bound: float) -> dict:
    command = [sys.executable, str(HERE / f"{benchmark.name}.py"), *arguments]
    result: dict = {"args": list(arguments), "time_bound_s": bound}
    if benchmark.database != "none":
        result["database"] = "postgresql" if "BENCH_DATABASE_URL" in environ else "sqlite"
    started = time.monotonic()
    # A session of its own: on a timeout the whole group (its gunicorn, moto, scheduler) can be stopped.
    process = subprocess.Popen(command, env=environ, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        timed_out = True
        stdout, stderr = _interrupt(process)
    except BaseException:
        _interrupt(process)
        raise
    result["seconds"] = round(time.monotonic() - started, 1)
    result["returncode"] = process.returncode
    figures = _last_json(stdout)
    if figures is not None:
        result["figures"] = figures
    result["ok"] = process.returncode == 0 and figures is not None and not timed_out
    if not result["ok"]:
        reason = f"no answer within {bound:.0f} s" if timed_out else f"exit status {process.returncode}"
        if figures is None:
            reason += "; no JSON on stdout"
        result["error"] = reason
        result["stderr_tail"] = (stderr or "")[-2000:]
    return result


#: The machine counts as quiet when at least this share of a one-second sample is idle.
QUIET_IDLE_SHARE = 0.9
SETTLE_BOUND_SECONDS = 60.0


def _settle(database_url: str) -> tuple[float, str | None]:
    """Let what the last script left behind finish before the next one measures: the seconds it took, and
    on PostgreSQL the CHECKPOINT's outcome ("done", or "failed: " and the error's type, reported in the JSON
    as ``checkpoint_before`` so a figure measured without it can be told apart).

    desk_queue writes a million rows: PostgreSQL flushes them for minutes after it has finished (its
    checkpointer, autovacuum), and the commits of the next script wait on that disk. A CHECKPOINT writes
    them out now; then this waits (bounded) for a second of an idle machine."""
    started = time.monotonic()
    checkpoint = None
    if database_url.startswith("postgresql"):
        try:
            from sqlalchemy import create_engine, text

            engine = create_engine(database_url, connect_args={"connect_timeout": 5})
            try:
                with engine.connect() as connection:
                    connection.execute(text("CHECKPOINT"))
                checkpoint = "done"
            finally:
                engine.dispose()
        except Exception as exc:  # noqa: BLE001 - a role that may not CHECKPOINT still gets the wait below
            checkpoint = f"failed: {type(exc).__name__}"
    while time.monotonic() - started < SETTLE_BOUND_SECONDS:
        before = _cpu_ticks()
        time.sleep(1.0)
        after = _cpu_ticks()
        total = sum(after) - sum(before)
        idle = after[3] - before[3]  # iowait is not quiet: the flush this waits out is disk work
        if total <= 0 or idle / total >= QUIET_IDLE_SHARE:
            break
    return round(time.monotonic() - started, 1), checkpoint


def _cpu_ticks() -> list[int]:
    """user, nice, system, idle, iowait, irq, softirq, steal (guest time is counted in user already)."""
    with open("/proc/stat") as stat:
        return [int(value) for value in stat.readline().split()[1:9]]


def _interrupt(process: subprocess.Popen) -> tuple[str, str]:
    """SIGINT to the script (its ``with`` blocks stop its servers), then SIGKILL to its group if it lingers."""
    try:
        process.send_signal(signal.SIGINT)
        return process.communicate(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the group this script started (start_new_session)
        except ProcessLookupError:
            pass
        return process.communicate(timeout=10)


def _last_json(stdout: str) -> dict | None:
    """The script's JSON object: the whole output, else the last line that parses."""
    text = (stdout or "").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else {"value": value}
    except json.JSONDecodeError:
        pass
    start = text.rfind("\n{")
    while start != -1:
        try:
            return json.loads(text[start + 1:])
        except json.JSONDecodeError:
            start = text.rfind("\n{", 0, start)
    return None


def _machine(database_url: str) -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(), "memory_gib": _memory_gib(), "load_average_before": list(os.getloadavg()),
            "commit": _git("rev-parse", "--short", "HEAD"),
            "uncommitted_changes": bool(_git("status", "--porcelain")), "wrk": _wrk_version(),
            "postgresql": _postgres_version(database_url)}


def _cpu_model() -> str | None:
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return None
    return found.group(1).strip() if found else platform.processor() or None


def _memory_gib() -> float | None:
    try:
        found = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return round(int(found.group(1)) / 2**20, 1) if found else None


def _git(*arguments: str) -> str | None:
    try:
        done = subprocess.run(["git", *arguments], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _wrk_version() -> str | None:
    wrk = shutil.which("wrk")
    if not wrk:
        return None
    try:
        done = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else None


def _postgres_version(database_url: str) -> str | None:
    if not database_url.startswith("postgresql"):
        return None
    sys.path.insert(0, str(REPO))
    try:
        from sqlalchemy import create_engine, text

        engine = create_engine(database_url, connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as connection:
                return connection.execute(text("SHOW server_version")).scalar_one()
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - reported, the benchmarks say the rest
        return f"unreachable: {type(exc).__name__}"


def _safe_url(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


if __name__ == "__main__":
    main()
