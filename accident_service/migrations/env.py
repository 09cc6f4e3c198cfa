"""Alembic environment; run through ``accident-service db upgrade`` (see accident_service/schema.py)."""

from alembic import context

from accident_service import models  # noqa: F401  (registers the tables)
from accident_service.db import Base, make_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


#: The PostgreSQL advisory lock every upgrade holds (any bigint of our own; zlib.crc32(b"accident-service schema")).
SCHEMA_LOCK = 3_682_635_715


def _run(connection) -> None:
    # One transaction around the whole upgrade, the process's own: processes starting together (gunicorn's workers
    # with AUTO_MIGRATE, several instances) upgrade one at a time, the others waiting, then reading the revision
    # the first committed. Left to Alembic, SQLite (no transactional DDL in its book) had a transaction per
    # migration: a process that had read an empty database ran a migration another had committed meanwhile
    # ("table push_signature already exists"). SQLite's BEGIN IMMEDIATE (db.make_engine) takes the write lock
    # before the revision is read; PostgreSQL's lock is an advisory one, as its DDL takes its locks table by table.
    with connection.begin():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
