"""The two baselines benchmarks/webhook.py runs beside the service, under the same gunicorn settings.

* ``bare_app``: Flask answering "success" to ``POST /wechat`` and nothing else.
* ``floor_app``: the durable floor: Flask, then one ``INSERT … ON CONFLICT DO NOTHING`` of the
  request body and COMMIT through SQLAlchemy Core, on the database in ``DATABASE_URL`` with the
  service's own engine settings (``accident_service.db.make_engine``: pool, SQLite pragmas), before
  it answers "success". The row is keyed by the query's nonce, unique per push in the benchmark.
"""

from __future__ import annotations

import functools
import os

from flask import Flask, request
from sqlalchemy import BigInteger, Column, MetaData, String, Table, Text, bindparam
from sqlalchemy.dialects import postgresql, sqlite

from accident_service.db import make_engine

metadata = MetaData()
FLOOR_TABLE = Table("bench_webhook_floor", metadata,
                    Column("id", BigInteger().with_variant(sqlite.INTEGER(), "sqlite"), primary_key=True),
                    Column("dedupe_key", String(200), nullable=False, unique=True),
                    Column("payload", Text, nullable=False))

bare_app = Flask("bare")
floor_app = Flask("floor")


@bare_app.post("/wechat")
def _bare_success():
    return "success"


@floor_app.post("/wechat")
def _floor_success():
    engine = _engine()
    with engine.begin() as connection:
        connection.execute(_floor_insert(engine.dialect.name), {"dedupe_key": request.args.get("nonce", ""),
                                                                 "payload": request.get_data(as_text=True)})
    return "success"


@bare_app.get("/healthz")
@floor_app.get("/healthz")
def _health():
    return "ok"


@functools.cache
def _engine():
    return make_engine(os.environ["DATABASE_URL"])


@functools.cache
def _floor_insert(dialect: str):
    """Built once, as the service builds its statements."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(FLOOR_TABLE).values(dedupe_key=bindparam("dedupe_key"), payload=bindparam("payload")) \
        .on_conflict_do_nothing(index_elements=["dedupe_key"])


def create_floor_table(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        metadata.create_all(engine)
    finally:
        engine.dispose()
