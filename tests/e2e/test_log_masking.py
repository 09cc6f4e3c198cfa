"""A driver flow with database faults mid-way: the logs' tracebacks quote openids, raw pushes and
notice texts, and none of it reaches a line unmasked, in either log format.

Faults are real database failures: triggers that make one kind of INSERT fail
(the other driver joining; the webhook storing their plate push; the reply
that repeats their phone number), removed again so the flow completes.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select, text

from accident_service.logs import configure_logging
from accident_service.models import Case, CaseStatus
from tests.support.flows import send_photos
from tests.support.live import drain

A, B = "oMaskDriverA00000000000000001", "oMaskDriverB00000000000000002"
PLATE_A, PLATE_B, PHONE_A, PHONE_B = "粤A12345", "粤BD12345", "13800138000", "13900139000"
PERSONAL = (A, B, PLATE_A, PLATE_B, PHONE_A, PHONE_B, "A12345", "BD12345")


@contextlib.contextmanager
def failing_inserts(engine: Engine, table: str, condition: str) -> Iterator[None]:
    """Every INSERT into ``table`` whose new row meets ``condition`` (SQL over NEW) fails until the block ends."""
    name = f"injected_fault_{table}"
    if engine.dialect.name == "postgresql":
        create = [f"CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN "
                  f"RAISE EXCEPTION 'injected fault on {table}'; END $$ LANGUAGE plpgsql",
                  f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW WHEN ({condition}) "
                  f"EXECUTE FUNCTION {name}()"]
        drop = [f"DROP TRIGGER IF EXISTS {name} ON {table}", f"DROP FUNCTION IF EXISTS {name}()"]
    else:
        create = [f"CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN {condition} "
                  f"BEGIN SELECT RAISE(ABORT, 'injected fault on {table}'); END"]
        drop = [f"DROP TRIGGER IF EXISTS {name}"]
    with engine.begin() as connection:
        for statement in create:
            connection.execute(text(statement))
    try:
        yield
    finally:
        with engine.begin() as connection:
            for statement in drop:
                connection.execute(text(statement))


def as_text(engine: Engine, column: str) -> str:
    return f"CAST({column} AS TEXT)" if engine.dialect.name == "postgresql" else column


@pytest.fixture
def captured_logs(request):
    """The service's own handler, in the format asked for, on a buffer; back on stderr afterwards."""
    buffer = io.StringIO()
    configure_logging("INFO", request.param, stream=buffer)
    yield request.param, buffer
    configure_logging("INFO", "text", stream=sys.stderr)


@pytest.mark.parametrize("captured_logs", ["text", "json"], indirect=True)
def test_tracebacks_of_a_faulty_flow_carry_no_personal_data(wechat, live_app, wechat_runtime, stations, clock,
                                                            captured_logs):
    log_format, buffer = captured_logs
    engine = wechat_runtime.engine
    # The app was created before the buffer: make sure the live server's app logs to it, in the format.
    configure_logging("INFO", log_format, stream=buffer)

    wechat.post_click(A, "REPORT_ACCIDENT")
    drain(wechat_runtime)
    send_photos(wechat, wechat_runtime, A, 3, seed=A)
    wechat.post_location(A, 23.1066, 113.3245, label="广州塔附近")
    wechat.post_text(A, PLATE_A)
    wechat.post_text(A, PHONE_A)
    drain(wechat_runtime)

    # 1. B scans the QR code, and joining fails in the database: the worker logs the failed INSERT.
    with failing_inserts(engine, "party", "NEW.role = 'B'"):
        wechat.post_scan(B, next(iter(wechat.qrcodes)), subscribed=False)
        drain(wechat_runtime)
    # 2. B's plate push cannot be stored: the webhook's error quotes the raw XML.
    with failing_inserts(engine, "inbound_message", f"{as_text(engine, 'NEW.payload')} LIKE '%BD12345%'"):
        refused = wechat.post_text(B, PLATE_B)
    assert refused.status_code >= 500
    clock.advance(timedelta(minutes=1))  # the join's retry is due
    wechat.post_text(B, PLATE_B)  # the platform sends it again
    drain(wechat_runtime)
    send_photos(wechat, wechat_runtime, B, 1, seed=B)  # B's own plate, B's checklist item
    # 3. The reply that repeats B's phone number cannot be written to the outbox.
    with failing_inserts(engine, "notification", f"{as_text(engine, 'NEW.payload')} LIKE '%{PHONE_B}%'"):
        wechat.post_text(B, PHONE_B)
        drain(wechat_runtime)
    clock.advance(timedelta(minutes=1))
    drain(wechat_runtime)
    wechat.post_text(B, "1")  # B completed the case, so the slot list is B's
    drain(wechat_runtime)

    with wechat_runtime.unit_of_work() as session:
        assert session.scalars(select(Case.status)).all() == [CaseStatus.BOOKED]  # the flow got through
    lines = buffer.getvalue().splitlines()
    output = "\n".join(lines)
    assert output.count("injected fault on") >= 3, output[-3000:]
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # one object per line, every line
        assert sum("exception" in r for r in records) >= 3
    else:
        assert output.count("Traceback (most recent call last)") >= 3
    leaks = [(secret, line[:300]) for line in lines for secret in PERSONAL if secret in line]
    assert leaks == []
