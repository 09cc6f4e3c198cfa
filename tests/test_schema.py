"""Alembic migrations create the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from accident_service.db import Base, make_engine
from accident_service.schema import upgrade_database
from tests.conftest import ON_POSTGRES, POSTGRES_URL


def test_upgrade_matches_models_and_is_idempotent(tmp_path):
    url = POSTGRES_URL if ON_POSTGRES else f"sqlite:///{tmp_path}/migrated.db"
    upgrade_database(url)  # on PostgreSQL the session fixture already migrated: a no-op then
    upgrade_database(url)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            assert diff == [], diff
            assert "alembic_version" in inspect(connection).get_table_names()
    finally:
        engine.dispose()


def test_timestamps_come_back_aware_utc(runtime, clock):
    from accident_service.models import WechatToken

    with runtime.unit_of_work() as session:
        session.add(WechatToken(appid="wx1", access_token="t", expires_at=clock.now()))
    with runtime.unit_of_work() as session:
        row = session.get(WechatToken, "wx1")
        assert row.expires_at == clock.now()
        assert row.expires_at.utcoffset().total_seconds() == 0


@pytest.mark.timeout(300)  # its processes' own bounds exceed the suite's 120 s
def test_processes_starting_together_on_an_empty_database_each_find_the_schema_made_once(tmp_path):
    """gunicorn's workers (AUTO_MIGRATE, the image's own command) and several web instances upgrade at once:
    one makes the schema, the others wait for it and find it at head (acceptance pass: on PostgreSQL most
    workers failed to boot, "alembic_version already exists")."""
    import subprocess
    import sys

    from tests.conftest import BASE_POSTGRES_URL, _create_run_database, _drop_database

    url = _create_run_database(BASE_POSTGRES_URL) if ON_POSTGRES else f"sqlite:///{tmp_path}/together.db"
    try:
        # Processes (Alembic's context is one per process), each starting once all four have imported the service
        # (a moment fixed in advance was missed by slow imports, which staggered the starts).
        barrier = tmp_path / "barrier"
        barrier.mkdir()
        code = ("import pathlib, sys, time\n"
                "from accident_service.schema import upgrade_database\n"
                "barrier = pathlib.Path(sys.argv[2])\n"
                "(barrier / sys.argv[3]).touch()\n"
                "deadline = time.monotonic() + 60\n"
                "while not (barrier / 'go').exists() and time.monotonic() < deadline:\n"
                "    time.sleep(0.001)\n"
                "upgrade_database(sys.argv[1])\n")
        workers = [subprocess.Popen([sys.executable, "-c", code, url, str(barrier), f"ready-{n}"],
                                    stderr=subprocess.PIPE) for n in range(4)]
        deadline = time.monotonic() + 60
        while len(list(barrier.glob("ready-*"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        (barrier / "go").touch()
        assert len(list(barrier.glob("ready-*"))) == 4, "the processes did not all start together"
        failures = []
        for worker in workers:
            _, stderr = worker.communicate(timeout=120)
            if worker.returncode:
                failures.append(stderr.decode()[-400:])
        assert failures == []
        engine = make_engine(url)
        try:
            with engine.connect() as connection:
                assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
        finally:
            engine.dispose()
    finally:
        if ON_POSTGRES:
            _drop_database(url)


def test_on_sqlite_an_upgrade_is_one_transaction_that_no_one_sees_part_way(tmp_path):
    """Left to Alembic, SQLite had a transaction per migration: between two of them another process could take
    the write lock and run the next migration itself, and the first then failed on a table already there (CI,
    "table push_signature already exists"). One transaction from the revision's read to the last migration: a
    reader sees the empty database or the head, nothing between."""
    import sqlite3
    import subprocess
    import sys

    from alembic.script import ScriptDirectory

    from accident_service.schema import alembic_config

    path = tmp_path / "watched.db"
    url = f"sqlite:///{path}"
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    upgrade = subprocess.Popen([sys.executable, "-c", "import sys; from accident_service.schema import "
                                "upgrade_database; upgrade_database(sys.argv[1])", url])
    seen = set()
    deadline = time.monotonic() + 120
    try:
        while upgrade.poll() is None and time.monotonic() < deadline:
            if not path.exists():
                time.sleep(0.001)  # not spinning: the upgrade it waits for shares two cores
                continue
            try:
                with sqlite3.connect(path, timeout=0) as reader:
                    seen.update(row[0] for row in reader.execute("SELECT version_num FROM alembic_version"))
            except sqlite3.OperationalError:  # no table yet, or the file being set up
                pass
            time.sleep(0.001)
    finally:
        upgrade.wait(timeout=120)
    assert upgrade.returncode == 0
    with sqlite3.connect(path) as reader:
        seen.update(row[0] for row in reader.execute("SELECT version_num FROM alembic_version"))
    assert seen == {head}
