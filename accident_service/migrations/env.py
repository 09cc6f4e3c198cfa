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
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        # Processes starting together (gunicorn's workers with AUTO_MIGRATE, several instances) upgrade one at a
        # time: the others wait, then read the revision the first committed. Without it each saw an empty
        # database and all but one failed creating the same table. SQLite's BEGIN IMMEDIATE (db.make_engine)
        # does the same there.
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
