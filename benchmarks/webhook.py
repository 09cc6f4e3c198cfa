"""Webhook throughput and latency under gunicorn, as a ratio to a bare endpoint (DESIGN.md §8).

    python benchmarks/webhook.py [--requests 3000] [--clients 16] [--rounds 3]
    BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test python benchmarks/webhook.py

Two gunicorn servers with the same settings (config/gunicorn.conf.py: gthread
workers) run on loopback: the service (``wsgi:app``) and a bare Flask app
whose only view answers "success" to ``POST /wechat``. Concurrent clients
post signed plain-mode image messages, each with a MsgId of its own, so every
request to the service verifies the signature, checks and parses the XML,
records the signature and commits the message to the inbox before it
answers; processing happens elsewhere (``INBOX_PROCESS_INLINE=false``, as
with a scheduler doing the work). The two servers take turns in ``--rounds``
slices, so load drift on a shared machine hits both alike.

Prints one JSON object: requests/s and p50/p99 latency of each, their
ratios, and ``stored``/``lost`` (every answered message must be in the inbox).
The database is a temporary SQLite file, or, with ``BENCH_DATABASE_URL``, a
PostgreSQL database created for the run and dropped after it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import requests
from flask import Flask

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.servers import free_port, serving  # noqa: E402

TOKEN = "bench-token"

bare_app = Flask("bare")


@bare_app.post("/wechat")
def _bare_success():
    return "success"


@bare_app.get("/healthz")
def _bare_health():
    return "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per server")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per server (WEB_CONCURRENCY)")
    args = parser.parse_args()
    with ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        database_url = stack.enter_context(_database(data_dir))
        env = {**os.environ, "APP_ENV": "development", "DATA_DIR": str(data_dir), "DATABASE_URL": database_url,
               "STORAGE_URL": f"file://{data_dir}/objects", "SECRET_KEY": "bench", "WECHAT_TOKEN": TOKEN,
               "INBOX_PROCESS_INLINE": "false", "AUTO_MIGRATE": "false", "LOG_LEVEL": "WARNING",
               "WEB_CONCURRENCY": str(args.workers)}
        subprocess.run([str(Path(sys.executable).with_name("accident-service")), "db", "upgrade"], env=env,
                       check=True, cwd=REPO, capture_output=True, timeout=120)
        servers = {"service": stack.enter_context(_gunicorn("wsgi:app", env, data_dir)),
                   "bare": stack.enter_context(_gunicorn("webhook:bare_app", env, data_dir))}
        msg_ids = itertools.count(int(time.time()) * 1000)
        for url in servers.values():  # warm up: connections, imports, prepared statements
            _drive(url, 200, args.clients, msg_ids)
        latencies: dict[str, list[float]] = {name: [] for name in servers}
        seconds = dict.fromkeys(servers, 0.0)
        per_round = -(-args.requests // args.rounds)
        for _ in range(args.rounds):
            for name, url in servers.items():
                started = time.perf_counter()
                latencies[name] += _drive(url, per_round, args.clients, msg_ids)
                seconds[name] += time.perf_counter() - started
        stored = _count_stored(database_url)
    answered = 200 + per_round * args.rounds  # the warm-up's messages are stored too
    figures = {name: _figures(latencies[name], seconds[name]) for name in servers}
    print(json.dumps({
        "clients": args.clients, "requests_per_server": per_round * args.rounds, "workers": args.workers,
        "database": database_url.split(":", 1)[0],
        "service": figures["service"], "bare": figures["bare"],
        "throughput_ratio": round(figures["service"]["requests_per_s"] / figures["bare"]["requests_per_s"], 3),
        "p99_ratio": round(figures["service"]["p99_ms"] / figures["bare"]["p99_ms"], 2),
        "stored": stored, "lost": answered - stored,
    }, indent=2))


def _drive(url: str, count: int, clients: int, msg_ids) -> list[float]:
    """POST ``count`` image messages from ``clients`` threads; returns each request's seconds."""
    lock = threading.Lock()
    remaining = [count]
    latencies: list[float] = []
    failures: list[str] = []

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    if remaining[0] == 0 or failures:
                        return
                    remaining[0] -= 1
                    msg_id = next(msg_ids)
                body, params = _signed_image(msg_id)
                started = time.perf_counter()
                response = session.post(url + "/wechat", params=params, data=body, timeout=30,
                                        headers={"Content-Type": "text/xml"})
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code != 200 or response.text != "success":
                        failures.append(f"{response.status_code} {response.text[:200]}")
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if failures:
        raise SystemExit(f"{url}: {failures[0]}")
    return latencies


def _signed_image(msg_id: int) -> tuple[bytes, dict[str, str]]:
    openid = f"oBench{msg_id % 97:04d}"
    body = (f"<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[image]]></MsgType>"
            f"<PicUrl><![CDATA[http://127.0.0.1/{msg_id}.jpg]]></PicUrl><MediaId><![CDATA[m{msg_id}]]></MediaId>"
            f"<MsgId>{msg_id}</MsgId></xml>").encode()
    timestamp, nonce = str(int(time.time())), str(secrets.randbelow(10**10))
    signature = hashlib.sha1("".join(sorted([TOKEN, timestamp, nonce])).encode()).hexdigest()
    return body, {"signature": signature, "timestamp": timestamp, "nonce": nonce, "openid": openid}


def _figures(latencies: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"requests_per_s": round(len(ordered) / seconds, 1),
            "p50_ms": round(1000 * statistics.median(ordered), 2),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2)}


@contextmanager
def _database(data_dir: Path):
    base = os.environ.get("BENCH_DATABASE_URL")
    if not base:
        yield f"sqlite:///{data_dir}/bench.db"
        return
    from sqlalchemy import create_engine, make_url, text

    name = f"bench_webhook_{os.getpid()}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _gunicorn(app: str, env: dict[str, str], log_dir: Path):
    port = free_port()
    return serving([sys.executable, "-m", "gunicorn", "-c", str(REPO / "config" / "gunicorn.conf.py"), "--bind",
                    f"127.0.0.1:{port}", "--access-logfile", "/dev/null", "--chdir", str(REPO),
                    "--pythonpath", str(REPO / "benchmarks"), app],
                   env=env, port=port, log_path=log_dir / f"{app.split(':')[0]}.log")


def _count_stored(database_url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT count(*) FROM inbound_message")).scalar_one()
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
