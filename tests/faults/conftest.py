"""Real processes for fault tests: web servers under gunicorn, schedulers, signed pushes.

Each test works on a database of its own (``private_database_url``): the processes it
starts see no other test's rows, and on PostgreSQL ending their connections disturbs
nobody else.
Every test here stops what it starts, bounds its loops in count and time, and ends by
checking that nothing was lost and nothing duplicated.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from sqlalchemy import text

from accident_service.db import make_engine
from accident_service.sandbox.push_messages import message_fields, new_nonce, render_xml, sha1_signature
from tests.support.servers import free_port, serving
from tests.test_jobs import private_database_url, scheduler_env, start_scheduler  # noqa: F401  (scheduler fixtures)

REPO = Path(__file__).resolve().parents[2]
TOKEN = "faults-token"


def column(database_url: str, sql: str) -> list:
    """The first column of ``sql``'s rows, on an engine of its own (the web's processes hold theirs)."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(sql)).scalars())
    finally:
        engine.dispose()


def web_env(database_url: str, tmp_path: Path, **settings: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("WECHAT_", "PROMETHEUS_"))}
    return {**inherited, "DATABASE_URL": database_url, "APP_ENV": "test", "AUTO_MIGRATE": "false",
            "DATA_DIR": str(tmp_path / "var"), "STORAGE_URL": f"file://{tmp_path}/objects", "SECRET_KEY": "x",
            "REDIS_URL": "", "LOG_LEVEL": "WARNING", "WECHAT_TOKEN": TOKEN, "INBOX_PROCESS_INLINE": "false",
            "WECHAT_API_BASE_URL": "http://127.0.0.1:9/cgi-bin/", **settings}


@contextmanager
def gunicorn(env: dict[str, str], log_path: Path, *, workers: int = 2) -> Iterator[str]:
    """The production gunicorn config (gthread workers), on a free loopback port; yields its URL."""
    port = free_port()
    with serving([sys.executable, "-m", "gunicorn", "-c", str(REPO / "config" / "gunicorn.conf.py"),
                  "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--chdir", str(REPO), "wsgi:app"],
                 env=env, port=port, log_path=log_path) as url:
        yield url


class Push:
    """One signed plain-mode text push, sent again as it is (the platform's retry) until it is answered."""

    def __init__(self, openid: str, content: str, msg_id: int, token: str = TOKEN) -> None:
        import time

        self.openid, self.msg_id = openid, msg_id
        self.body = render_xml(message_fields("gh_0123456789ab", openid, int(time.time()), "text",
                                              {"Content": content}, msg_id)).encode()
        timestamp, nonce = str(int(time.time())), new_nonce()
        self.query = {"signature": sha1_signature(token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce,
                      "openid": openid}

    def post(self, url: str, session: requests.Session | None = None) -> tuple[int, str]:
        response = (session or requests).post(url + "/wechat", params=self.query, data=self.body, timeout=15,
                                              headers={"Content-Type": "text/xml"})
        return response.status_code, response.text
