"""What the benchmarks start on loopback: a database of their own and the app under gunicorn.

* ``temporary_database(data_dir, name)``: a temporary SQLite file, or, with ``BENCH_DATABASE_URL``,
  a PostgreSQL database created for the run and dropped after it (by name, with the pid in it).
* ``gunicorn(app, env, log_dir)``: ``app`` (a WSGI target) under the production gunicorn settings
  (config/gunicorn.conf.py) on a free port, until the block ends; yields its URL.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.support.servers import free_port, serving  # noqa: E402


@contextmanager
def temporary_database(data_dir: Path, name: str) -> Iterator[str]:
    base = os.environ.get("BENCH_DATABASE_URL")
    if not base:
        yield f"sqlite:///{data_dir}/{name}.db"
        return
    from sqlalchemy import create_engine, make_url, text

    database = f"bench_{name}_{os.getpid()}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    try:
        yield make_url(base).set(database=database).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def gunicorn(app: str, env: dict[str, str], log_dir: Path) -> AbstractContextManager[str]:
    port = free_port()
    return serving([sys.executable, "-m", "gunicorn", "-c", str(REPO / "config" / "gunicorn.conf.py"), "--bind",
                    f"127.0.0.1:{port}", "--access-logfile", "/dev/null", "--chdir", str(REPO),
                    "--pythonpath", str(HERE), app],
                   env=env, port=port, log_path=log_dir / f"{app.split(':')[1]}.log")
