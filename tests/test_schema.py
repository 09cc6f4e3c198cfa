"""Alembic migrations create the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

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
