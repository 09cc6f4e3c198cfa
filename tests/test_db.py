"""Dead database connections: replaced at checkout, retried once before COMMIT, never after; 503 when it stays down.

The PostgreSQL tests end the app's server processes for real (``pg_terminate_backend``)
from a connection of their own, as a server restart or an operator would.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from flask import jsonify
from sqlalchemy import create_engine, event, func, make_url, select, text
from sqlalchemy import exc as sa_exc

from accident_service import create_app, db
from accident_service.db import (
    DatabaseUnavailable,
    make_engine,
    make_session_factory,
    run_in_transaction,
    run_single_statement,
    unit_of_work,
)
from accident_service.models import AuditEvent, Station
from accident_service.runtime import build_runtime
from accident_service.settings import load_settings
from tests.conftest import T0
from tests.faults.test_database import terminate_web_backends
from tests.support.live import wait_until
from tests.support.pg_cut import postgres_through_a_proxy
from tests.support.servers import free_port

postgres_only = pytest.mark.postgres_only


def terminate(database_url: str, pid: int) -> None:
    admin = make_engine(database_url)
    try:
        with admin.connect() as connection:
            # With a timeout, PostgreSQL (14+) answers once the backend has exited (its goodbye sent on the socket):
            # a signal alone may leave it running a moment longer, past the pool's check at the next checkout.
            assert connection.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}).scalar()
    finally:
        admin.dispose()


def backend_alive(database_url: str, pid: int) -> bool:
    admin = make_engine(database_url)
    try:
        with admin.connect() as connection:
            return bool(connection.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                                          {"pid": pid}))
    finally:
        admin.dispose()


def audit_rows(sessions, action: str) -> int:
    with unit_of_work(sessions) as session:
        return session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action))


def add_audit(session, action: str) -> None:
    session.add(AuditEvent(at=T0, actor_type="system", actor=None, action=action))


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@postgres_only
def test_no_round_trip_is_spent_on_a_pre_ping(engine):
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_: statements.append(statement))
    for _ in range(3):
        with unit_of_work(make_session_factory(engine)) as session:
            session.execute(text("SELECT 1 AS probe"))
    assert statements == ["SELECT 1 AS probe"] * 3  # no ping between checkouts
    assert engine.pool._pre_ping is False


@postgres_only
def test_a_connection_the_server_closed_while_idle_is_replaced_at_checkout(engine, database_url, monkeypatch):
    monkeypatch.setattr(db, "IDLE_CHECK_SECONDS", 0.2)
    sessions = make_session_factory(engine)
    with unit_of_work(sessions) as session:
        first_pid = session.scalar(text("SELECT pg_backend_pid()"))
    terminate(database_url, first_pid)  # the connection now sits dead in the pool
    time.sleep(0.3)  # idle past IDLE_CHECK_SECONDS

    with unit_of_work(sessions) as session:  # a plain unit of work, no retry: the pool noticed
        add_audit(session, "idle-death")
        assert session.scalar(text("SELECT pg_backend_pid()")) != first_pid
    assert audit_rows(sessions, "idle-death") == 1


@postgres_only
def test_a_connection_just_back_in_a_busy_pool_is_trusted_and_its_loss_left_to_the_retry(engine, database_url):
    """No look at the socket (it gives up the GIL) for a connection used a moment ago."""
    with unit_of_work(make_session_factory(engine)) as session:
        first_pid = session.scalar(text("SELECT pg_backend_pid()"))
    terminate(database_url, first_pid)

    calls = []

    def work(connection):
        calls.append(1)
        return connection.scalar(text("SELECT pg_backend_pid()"))

    assert run_in_transaction(engine, work) != first_pid
    assert len(calls) == 2  # the first attempt met the dead connection; the retry ran on a new one


def insert_audit(connection, action: str) -> None:
    connection.execute(AuditEvent.__table__.insert().values(at=T0, actor_type="system", actor=None, action=action))


@postgres_only
def test_a_connection_lost_before_commit_is_retried_once_on_a_fresh_connection(engine, database_url):
    attempts: list[int] = []

    def work(connection):
        pid = connection.scalar(text("SELECT pg_backend_pid()"))
        attempts.append(pid)
        if len(attempts) == 1:
            terminate(database_url, pid)  # dies mid-transaction, after its first statement
        insert_audit(connection, "retried")
        return "done"

    assert run_in_transaction(engine, work) == "done"
    assert len(attempts) == 2 and attempts[0] != attempts[1]
    assert audit_rows(make_session_factory(engine), "retried") == 1


@postgres_only
def test_a_connection_lost_during_commit_is_not_retried(engine, database_url):
    """The COMMIT may have reached the server: running the work again could apply it twice."""
    calls: list[int] = []

    def kill_before_commit(connection) -> None:
        terminate(database_url, connection.exec_driver_sql("SELECT pg_backend_pid()").scalar())

    event.listen(engine, "commit", kill_before_commit)

    def work(connection):
        calls.append(1)
        insert_audit(connection, "ambiguous")

    with pytest.raises(DatabaseUnavailable):
        run_in_transaction(engine, work)
    event.remove(engine, "commit", kill_before_commit)
    assert calls == [1]
    assert audit_rows(make_session_factory(engine), "ambiguous") == 0  # here the server never saw the COMMIT


@postgres_only
def test_a_connection_lost_on_the_retry_too_is_database_unavailable(engine, database_url):
    calls: list[int] = []

    def work(connection):
        calls.append(1)
        terminate(database_url, connection.scalar(text("SELECT pg_backend_pid()")))
        connection.execute(text("SELECT 1"))

    with pytest.raises(DatabaseUnavailable):
        run_in_transaction(engine, work)
    assert len(calls) == 2


def transaction_status_after_a_statement(connection):
    connection.execute(text("SELECT 1"))
    return connection.connection.dbapi_connection.info.transaction_status


@pytest.fixture
def autocommit_engine(database_url):
    engine = make_engine(database_url, autocommit=True)
    yield engine
    engine.dispose()


@postgres_only
def test_a_single_statement_spends_no_round_trip_on_begin_and_commit(engine, autocommit_engine):
    from psycopg.pq import TransactionStatus

    # Inside a transaction block the server must be told BEGIN before and COMMIT after; here there is none.
    assert run_single_statement(autocommit_engine, transaction_status_after_a_statement) is TransactionStatus.IDLE
    assert run_in_transaction(engine, transaction_status_after_a_statement) is TransactionStatus.INTRANS


def test_the_runtime_runs_single_statements_on_connections_in_autocommit_on_postgresql(settings_overrides, clock):
    runtime = build_runtime(load_settings(settings_overrides, environ={}), clock=clock)
    try:
        statement_engine = runtime.statement_engine()
        assert statement_engine is runtime.statement_engine()  # built once
        if runtime.engine.dialect.name == "postgresql":
            assert statement_engine is not runtime.engine and statement_engine.url == runtime.engine.url
            with statement_engine.connect() as connection:
                assert connection.connection.dbapi_connection.autocommit is True
            with runtime.engine.connect() as connection:
                assert connection.connection.dbapi_connection.autocommit is False
        else:  # SQLite: no round trips to save
            assert statement_engine is runtime.engine
    finally:
        runtime.close()


@postgres_only
def test_a_single_statement_whose_connection_died_under_it_runs_again_on_a_fresh_one(autocommit_engine,
                                                                                     database_url):
    """Whether the statement committed is unknown then; a rerun changes nothing either way."""
    attempts: list[int] = []

    def work(connection):
        attempts.append(connection.connection.dbapi_connection.info.backend_pid)
        if len(attempts) == 1:
            terminate(database_url, attempts[0])
        insert_audit(connection, "single")
        return "done"

    assert run_single_statement(autocommit_engine, work) == "done"
    assert len(attempts) == 2 and attempts[0] != attempts[1]
    assert audit_rows(make_session_factory(autocommit_engine), "single") == 1


@postgres_only
def test_a_single_statement_lost_on_the_retry_too_is_database_unavailable(autocommit_engine, database_url):
    calls: list[int] = []

    def work(connection):
        calls.append(1)
        terminate(database_url, connection.connection.dbapi_connection.info.backend_pid)
        connection.execute(text("SELECT 1"))

    with pytest.raises(DatabaseUnavailable):
        run_single_statement(autocommit_engine, work)
    assert len(calls) == 2


def test_a_single_statement_commits_and_other_errors_are_neither_retried_nor_called_unavailable(engine):
    run_single_statement(engine, lambda connection: insert_audit(connection, "kept"))
    assert audit_rows(make_session_factory(engine), "kept") == 1
    calls: list[int] = []

    def work(connection):
        calls.append(1)
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_single_statement(engine, work)
    assert calls == [1]


def test_other_errors_are_neither_retried_nor_called_unavailable(engine):
    calls: list[int] = []

    def work(connection):
        calls.append(1)
        insert_audit(connection, "rolled back")
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_in_transaction(engine, work)
    assert calls == [1]
    assert audit_rows(make_session_factory(engine), "rolled back") == 0


def closed_port_url() -> str:
    return f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"


def test_an_unreachable_database_is_database_unavailable():
    engine = make_engine(closed_port_url())
    try:
        with pytest.raises(DatabaseUnavailable):
            run_in_transaction(engine, lambda connection: connection.execute(text("SELECT 1")))
    finally:
        engine.dispose()


@postgres_only
def test_a_connection_tells_tcp_to_find_out_a_server_that_vanished(engine):
    """Keepalives and a bound on unacknowledged data, set on the socket itself (what the kernel acts on)."""
    with engine.connect() as connection:
        sock = socket.socket(fileno=connection.connection.driver_connection.fileno())
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert (sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)) == (10, 5, 3)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000
        finally:
            sock.detach()  # the connection's socket: not ours to close


def test_a_server_that_takes_the_connection_and_never_answers_is_database_unavailable_within_seconds():
    """A listening socket nobody serves (a hung server, whose kernel still completes the handshake): the connect
    timeout, then DatabaseUnavailable, within the platform's 5 s (the webhook's 503, pushed again)."""
    def connect(port: int) -> None:
        engine = make_engine(f"postgresql+psycopg://nobody@127.0.0.1:{port}/none")
        try:
            run_in_transaction(engine, lambda connection: connection.execute(text("SELECT 1")))
        finally:
            engine.dispose()

    with socket.socket() as silent, ThreadPoolExecutor(1) as pool:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        attempt = pool.submit(connect, silent.getsockname()[1])
        try:
            with pytest.raises(DatabaseUnavailable):
                attempt.result(timeout=db.CONNECT_TIMEOUT_SECONDS + 2)
        finally:
            silent.close()  # a connection still waiting (no timeout) meets the end of the stream, and the thread ends
        assert time.monotonic() - started < db.CONNECT_TIMEOUT_SECONDS + 2


@pytest.fixture
def unreachable_app(settings_overrides, clock):
    runtime = build_runtime(load_settings({**settings_overrides, "DATABASE_URL": closed_port_url(),
                                           "WECHAT_TOKEN": "t"}, environ={}), clock=clock)
    app = create_app(runtime=runtime)

    @app.get("/test-json")
    def _json_view():  # any JSON endpoint that reads the database
        with runtime.unit_of_work() as session:
            return jsonify(value=session.scalar(text("SELECT 1")))

    yield app
    runtime.close()


def test_the_webhook_answers_503_in_plain_text_when_the_database_is_unreachable(unreachable_app):
    from tests.wechat.test_webhook import sha1_sorted, text_message

    query = {"timestamp": "1700000000", "nonce": "42", "signature": sha1_sorted("t", "1700000000", "42")}
    response = unreachable_app.test_client().post("/wechat", query_string=query, data=text_message().encode(),
                                                  content_type="text/xml")
    assert response.status_code == 503
    assert response.mimetype == "text/plain" and b"<html" not in response.data.lower()


def test_json_endpoints_answer_a_json_503_when_the_database_is_unreachable(unreachable_app):
    response = unreachable_app.test_client().get("/test-json")
    assert response.status_code == 503
    assert response.json["code"] == "database_unavailable"


def test_metrics_still_answer_when_the_database_is_unreachable(unreachable_app):
    response = unreachable_app.test_client().get("/metrics")
    assert response.status_code == 200
    assert b"accident_webhook_requests_total" in response.data
    assert b"accident_database_up 0.0" in response.data


@postgres_only
def test_the_webhook_stores_a_push_whose_connection_died_mid_transaction(settings_overrides, clock, database_url):
    """The connection dies just before the store statement: the push is stored once, and answered success."""
    from tests.wechat.test_webhook import plain_query, stored_count, text_message

    runtime = build_runtime(load_settings({**settings_overrides, "WECHAT_TOKEN": "webhook-test-token",
                                           "WECHAT_TIMESTAMP_TOLERANCE_SECONDS": 300}, environ={}), clock=clock)
    killed: list[int] = []

    def kill_once(connection, _cursor, statement, *_args) -> None:
        if "inbound_message" in statement and not killed:
            killed.append(connection.connection.dbapi_connection.info.backend_pid)
            terminate(database_url, killed[0])

    event.listen(runtime.statement_engine(), "before_cursor_execute", kill_once)
    try:
        response = create_app(runtime=runtime).test_client().post(
            "/wechat", query_string=plain_query(), data=text_message().encode(), content_type="text/xml")
        assert (response.status_code, response.data) == (200, b"success")
        assert len(killed) == 1 and stored_count(runtime) == 1
    finally:
        runtime.close()


@postgres_only
def test_the_webhook_stores_a_push_in_one_round_trip(settings_overrides, clock, database_url):
    """The signature record and the inbox row: one statement, outside a transaction block (no BEGIN, no COMMIT)."""
    from psycopg.pq import TransactionStatus

    from tests.wechat.test_webhook import plain_query, stored_count, text_message

    runtime = build_runtime(load_settings({**settings_overrides, "WECHAT_TOKEN": "webhook-test-token",
                                           "WECHAT_TIMESTAMP_TOLERANCE_SECONDS": 300}, environ={}), clock=clock)
    sent: list[tuple[str, object]] = []

    def note(connection, _cursor, statement, *_args) -> None:
        sent.append((statement, connection.connection.dbapi_connection.info.transaction_status))

    event.listen(runtime.statement_engine(), "after_cursor_execute", note)
    try:
        response = create_app(runtime=runtime).test_client().post(
            "/wechat", query_string=plain_query(), data=text_message().encode(), content_type="text/xml")
        assert (response.status_code, response.data) == (200, b"success")
        event.remove(runtime.statement_engine(), "after_cursor_execute", note)
        assert len(sent) == 1 and "push_signature" in sent[0][0] and "inbound_message" in sent[0][0]
        assert sent[0][1] is TransactionStatus.IDLE
        assert stored_count(runtime) == 1
    finally:
        runtime.close()


@postgres_only
def test_a_push_stored_before_its_connection_died_is_answered_and_stored_once(settings_overrides, clock,
                                                                             database_url):
    """PostgreSQL committed the store, then the connection died before a byte of the answer came back (a proxy
    on loopback drops it after the server's ReadyForQuery): the rerun on a fresh connection finds the push
    stored and its signature recorded with the same body, and the platform gets "success"."""
    from tests.wechat.test_webhook import plain_query, stored_count, text_message

    with postgres_through_a_proxy(database_url) as (proxy, through_proxy):
        runtime = build_runtime(load_settings({**settings_overrides, "DATABASE_URL": through_proxy,
                                               "WECHAT_TOKEN": "webhook-test-token",
                                               "WECHAT_TIMESTAMP_TOLERANCE_SECONDS": 300}, environ={}), clock=clock)
        try:
            proxy.arm(b"inbound_message")
            response = create_app(runtime=runtime).test_client().post(
                "/wechat", query_string=plain_query(), data=text_message().encode(), content_type="text/xml")
            assert proxy.cut == 1, "no answer was lost: the test proved nothing"
            assert (response.status_code, response.data) == (200, b"success")
            assert stored_count(runtime) == 1
            with runtime.unit_of_work() as session:
                assert session.scalar(text("SELECT count(*) FROM push_signature")) == 1
        finally:
            runtime.close()


class _ClockThatMovesWhenAsked:
    """The test clock, which moves ``step`` at each reading once ``moving`` is set: the rerun of a claim reads
    it again, so the time between a claim's two runs can be as long as a test needs."""

    def __init__(self, clock, step: timedelta) -> None:
        self._clock, self._step, self.moving = clock, step, False

    def now(self):
        return self._clock.advance(self._step) if self.moving else self._clock.now()


def _claim_whose_answer_is_lost(settings_overrides, clock, database_url, *, rerun_after: timedelta,
                                image: bool = False):
    """Claim a driver's message (a text, or a photo) through a proxy that loses the claim's answer, the rerun
    coming ``rerun_after`` later; returns (what the claim returned, the message's row, when the claim ran)."""
    from accident_service.wechat import inbox
    from tests.wechat.test_inbox import load, push

    moving_clock = _ClockThatMovesWhenAsked(clock, rerun_after)
    with postgres_through_a_proxy(database_url) as (proxy, through_proxy):
        runtime = build_runtime(load_settings({**settings_overrides, "DATABASE_URL": through_proxy,
                                               "INBOX_LEASE_SECONDS": 60}, environ={}), clock=moving_clock)
        try:
            message_id = push(runtime, "oClaimCut", image=image)
            claimed_at = clock.now() + rerun_after  # the first reading, once moving
            proxy.arm(b"leased_by")  # the claim's UPDATE; the answer to it is lost
            moving_clock.moving = rerun_after > timedelta(0)
            claimed = inbox.claim_due(runtime, "w1")
            moving_clock.moving = False
            assert proxy.cut == 1, "no answer was lost: the test proved nothing"
            assert inbox.claim_due(runtime, "w2") == []  # still leased: not handed out twice
            return claimed, load(runtime, message_id), claimed_at
        finally:
            runtime.close()


@postgres_only
@pytest.mark.parametrize(("image", "rerun_after", "attempts"),
                         [(True, 20, 1), (True, 61, 2), (False, 10, 1), (False, 21, 2)],
                         ids=["photo-lease-lasts", "photo-lease-lapsed", "text-lease-lasts", "text-lease-lapsed"])
def test_a_claim_committed_before_its_connection_died_is_taken_back_on_the_rerun_while_its_lease_lasts(
        settings_overrides, clock, database_url, image, rerun_after, attempts):
    """The claim leased the message and committed, then its answer was lost (the proxy drops it after the
    server's ReadyForQuery): the rerun on a fresh connection hands that message to its worker, its attempt
    counted once and its lease renewed from the rerun, as long as a claim leases it (a photo 60 s, a text
    20 s). Claiming again would find nothing due and leave it leased to nobody who knows until its lease
    lapsed, an attempt spent that never ran. Past its lease the row is anyone's, the sweep's perhaps: the
    rerun claims as any claim would, counting the attempt; here nobody else did, so it is this one's."""
    from accident_service.models import WorkStatus
    from accident_service.wechat.inbox import NO_NETWORK_LEASE_SECONDS

    claimed, row, claimed_at = _claim_whose_answer_is_lost(settings_overrides, clock, database_url,
                                                           rerun_after=timedelta(seconds=rerun_after), image=image)
    assert claimed == [row.id]
    assert (row.status, row.leased_by, row.attempts) == (WorkStatus.PROCESSING, "w1", attempts)
    lease = 60 if image else NO_NETWORK_LEASE_SECONDS
    assert row.lease_until == claimed_at + timedelta(seconds=rerun_after + lease)


@postgres_only
def test_a_driver_statement_runs_the_core_statement_with_its_type_conversions(engine):
    """Compiled once, run with exec_driver_sql: the enum column gets its stored value, as through execute."""
    from sqlalchemy import bindparam, insert

    from accident_service.models import InboundMessage, WorkStatus

    table = InboundMessage.__table__
    statement = insert(table).values({name: bindparam(name) for name in (
        "dedupe_key", "openid", "msg_type", "payload", "received_at", "status", "attempts", "next_attempt_at")}) \
        .returning(table.c.id)
    params = {"dedupe_key": "msg:driver-1", "openid": "oDriver", "msg_type": "text", "payload": "<xml/>",
              "received_at": T0, "status": WorkStatus.PENDING, "attempts": 0, "next_attempt_at": T0}
    with engine.begin() as connection:
        row_id = db.DriverStatement(statement, engine.dialect).execute(connection, params).scalar_one()
        stored = connection.execute(select(table.c.status).where(table.c.id == row_id)).scalar_one()
        raw = connection.execute(text("SELECT status FROM inbound_message WHERE id = :id"), {"id": row_id}).scalar()
    assert stored is WorkStatus.PENDING and raw == "pending"


def test_a_driver_statement_refuses_a_dialect_with_positional_parameters():
    from sqlalchemy import bindparam
    from sqlalchemy.dialects import sqlite

    with pytest.raises(ValueError):
        db.DriverStatement(select(bindparam("x")), sqlite.dialect())


class _DriverError(Exception):
    """A driver's error carrying a SQLSTATE, as psycopg's do."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _refused_at_connect(fatal: str) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("", {}, _DriverError(
        f'connection failed: connection to server at "db", port 5432 failed: FATAL:  {fatal}', None))


@pytest.mark.parametrize(("error", "later"), [
    (sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked")), True),
    (sa_exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("no such table: cases")), False),
    (sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("attempt to write a readonly database")), False),
    (sa_exc.OperationalError("", {}, _DriverError("connection refused", None)), True),
    # Refused by the server at connect time: libpq passes on only the words (no SQLSTATE).
    (_refused_at_connect('database "evidence" does not exist'), False),
    (_refused_at_connect('role "app" does not exist'), False),
    (_refused_at_connect('password authentication failed for user "app"'), False),
    (_refused_at_connect("the database system is starting up"), True),
    (_refused_at_connect("sorry, too many clients already"), True),
    (_refused_at_connect('role "app" is not permitted to log in'), False),
    (_refused_at_connect('database "evidence" is not currently accepting connections'), True),  # a pause, which ends
    (sa_exc.OperationalError("", {}, _DriverError("terminating connection due to administrator command", "57P01")),
     True),
    (sa_exc.OperationalError("", {}, _DriverError("canceling statement due to statement timeout", "57014")), True),
    (sa_exc.OperationalError("", {}, _DriverError("could not obtain lock", "55P03")), True),
    (sa_exc.ProgrammingError("", {}, _DriverError('relation "cases" does not exist', "42P01")), False),
    (sa_exc.IntegrityError("", {}, _DriverError("duplicate key", "23505")), False),
    (sa_exc.TimeoutError("QueuePool limit reached"), True),
    (ValueError("not a database error"), False),
])
def test_may_succeed_later_only_where_trying_again_can_help(error, later):
    assert db.may_succeed_later(error) is later


def test_a_database_error_does_not_quote_the_values_of_its_statement(engine):
    """Its text is logged and stored (an inbox row's or a notice's last_error, shown on the desk)."""
    with engine.begin() as connection:
        taken = connection.execute(AuditEvent.__table__.insert().values(
            at=T0, actor_type="system", actor=None, action="first")).inserted_primary_key[0]
    with pytest.raises(sa_exc.IntegrityError) as caught, engine.begin() as connection:
        connection.execute(AuditEvent.__table__.insert(), {"id": taken, "at": T0, "actor_type": "wechat",
                                                           "actor": "oSecretOpenid13800138000", "action": "again"})
    assert "oSecretOpenid13800138000" not in str(caught.value) and "13800138000" not in repr(caught.value)
    assert "INSERT INTO audit_event" in str(caught.value)  # the statement itself is kept


@postgres_only
def test_a_server_that_stops_answering_costs_a_push_seconds_and_a_503_not_a_hung_request(settings_overrides, clock,
                                                                                         database_url, monkeypatch):
    """A server there but not answering (hung, or a proxy in front of one: its kernel still acknowledges, so TCP
    finds nothing wrong). An acceptance pass saw a push held 90 s and /readyz past 20 s. The autocommit engine's
    wait ends at its deadline, the rerun's connect at its timeout: the push is answered 503 in plain text (pushed
    again by the platform), /readyz 503 naming the database; once the server answers, so does the service."""
    from accident_service import runtime as runtime_module
    from tests.wechat.test_webhook import plain_query, text_message

    monkeypatch.setattr(runtime_module, "SINGLE_STATEMENT_DEADLINE_SECONDS", 1.0)
    with postgres_through_a_proxy(database_url) as (proxy, url), ThreadPoolExecutor(1) as pool:
        runtime = build_runtime(load_settings({**settings_overrides, "DATABASE_URL": url, "WECHAT_TOKEN": "t"},
                                              environ={}), clock=clock)
        client = create_app(runtime=runtime).test_client()

        def push(msg_id: int):
            return client.post("/wechat", query_string=plain_query("t"), data=text_message(msg_id=msg_id).encode(),
                               content_type="text/xml")

        try:
            assert push(1).status_code == 200  # a connection of the autocommit engine is open through the proxy
            proxy.freeze()
            started = time.monotonic()
            frozen_push = pool.submit(push, 2).result(timeout=10)
            waited = time.monotonic() - started
            ready = pool.submit(client.get, "/readyz").result(timeout=10)
        finally:
            proxy.thaw()  # a request still waiting (no deadline) is answered, and its thread ends
        assert frozen_push.status_code == 503 and frozen_push.mimetype == "text/plain"
        assert waited < 1.0 + db.CONNECT_TIMEOUT_SECONDS + 2
        assert not ready.get_json()["failing"]["database"].startswith("_")  # not the driver's private timeout
        assert ready.status_code == 503 and "database" in ready.get_json()["failing"]
        assert push(3).status_code == 200
        runtime.close()


@postgres_only
def test_a_desk_page_meeting_a_server_that_stops_answering_gets_a_503_in_seconds_not_a_held_thread(
        settings_overrides, clock, database_url):
    """The ordinary engine's waits end too (DATABASE_ANSWER_TIMEOUT_SECONDS): without it every desk page, API call
    and job meeting a hung server (or its stalled disk) held its thread until the server woke, until no thread of
    the process was left for anything else, the platform's pushes included. Once the server answers, so does the
    page."""
    from tests.desk.conftest import sign_in
    from tests.desk.factories import seed_desk

    with postgres_through_a_proxy(database_url) as (proxy, url), ThreadPoolExecutor(1) as pool:
        runtime = build_runtime(load_settings({**settings_overrides, "DATABASE_URL": url,
                                               "DATABASE_ANSWER_TIMEOUT_SECONDS": "1.5"}, environ={}), clock=clock)
        seed_desk(runtime)
        client = create_app(runtime=runtime).test_client()
        try:
            assert sign_in(client, "th").status_code == 303
            assert client.get("/desk/").status_code == 200
            proxy.freeze()
            started = time.monotonic()
            page = pool.submit(client.get, "/desk/").result(timeout=15)
            waited = time.monotonic() - started
        finally:
            proxy.thaw()  # a request still waiting (no deadline) is answered, and its thread ends
        assert page.status_code == 503
        assert 1.5 <= waited < 1.5 + db.CONNECT_TIMEOUT_SECONDS + 2
        # A page for the officer, not the API's JSON, answered after one deadline: the page itself asks the
        # database nothing more (flask-login would reload the officer's account for it: a second wait, then 500).
        assert page.mimetype == "text/html" and "数据库暂时无法访问" in page.get_data(as_text=True)
        assert waited < 2 * (1.5 + db.ANSWER_BACKSTOP_SECONDS)
        assert client.get("/desk/").status_code == 200
        runtime.close()


def test_the_deadline_with_the_connect_timeout_answers_within_the_platform_s_wait():
    """The platform waits 5 s for an answer (WECHAT.md §2): a push meeting a server that does not answer must get its
    503 before that, its statement's deadline and the rerun's connect timeout together (review: 5 s + 2 s)."""
    assert db.SINGLE_STATEMENT_DEADLINE_SECONDS + db.ANSWER_BACKSTOP_SECONDS + db.CONNECT_TIMEOUT_SECONDS < 5


@postgres_only
def test_a_statement_waiting_on_a_lock_past_the_deadline_is_ended_by_the_server_too(settings_overrides, clock,
                                                                                    database_url):
    """Review: cut off at the client alone (its connection closed, nothing sent to the server), every request that
    met a held lock left a backend waiting on it, one more each time, until PostgreSQL refused connections. The
    server ends the statement at the deadline itself: the request fails as "try again later", nothing waits on."""
    runtime = build_runtime(load_settings({**settings_overrides, "DATABASE_ANSWER_TIMEOUT_SECONDS": "1"},
                                          environ={}), clock=clock)
    holder = create_engine(database_url)
    try:
        with runtime.unit_of_work() as session:  # the pool's connection is open before any timing
            session.execute(text("SELECT 1"))
        with holder.connect() as locking:
            locking.execute(text("LOCK TABLE station IN ACCESS EXCLUSIVE MODE"))
            for _ in range(3):
                with pytest.raises(sa_exc.OperationalError) as caught, runtime.unit_of_work() as session:
                    started = time.monotonic()
                    session.execute(select(Station.id)).all()
                assert time.monotonic() - started < 1 + db.ANSWER_BACKSTOP_SECONDS
                # The server's statement timeout (57014) on a connection still usable, not the client's backstop.
                assert caught.value.orig.sqlstate == "57014" and not caught.value.connection_invalidated
                assert db.may_succeed_later(caught.value)
            waiting = locking.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                           "AND datname = current_database()")).scalar()
            locking.rollback()
        assert waiting == 0
    finally:
        holder.dispose()
        runtime.close()


@postgres_only
def test_the_deadline_keeps_the_startup_options_the_url_gives(database_url):
    engine = db.make_engine(make_url(database_url).update_query_dict(
        {"options": "-c application_name=from-url"}).render_as_string(hide_password=False), answer_within=7)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == "7s"
            assert connection.exec_driver_sql("SHOW application_name").scalar() == "from-url"
    finally:
        engine.dispose()


def test_a_sqlite_connection_waits_for_another_s_write_lock_to_switch_a_new_database_to_wal(tmp_path):
    """A database still in rollback mode, another connection holding its write lock (a worker migrating): SQLite
    refuses the switch to WAL at once, without its busy timeout, and a second gunicorn worker failed to boot
    (CI). It waits as for any lock, then switches."""
    import threading

    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE migrating (step INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO migrating VALUES (1)")
    released = threading.Timer(1.0, lambda: holder.execute("COMMIT"))
    released.start()
    engine = make_engine(f"sqlite:///{path}")
    started = time.monotonic()
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("SELECT count(*) FROM migrating").scalar() == 1
        assert time.monotonic() - started >= 0.9  # it waited for the lock, and did not take it
    finally:
        released.join(timeout=10)
        engine.dispose()
        holder.close()


@postgres_only
def test_a_desk_page_whose_pooled_connection_the_server_ended_a_moment_ago_is_answered(runtime, database_url):
    """Acceptance pass: a page asked within a second of its connection's end got 503 with the database up (the
    look at an idle connection's socket skips those used a moment ago). It runs once more on a fresh one."""
    from tests.desk.conftest import sign_in
    from tests.desk.factories import seed_desk

    seed_desk(runtime)
    client = create_app(runtime=runtime).test_client()
    assert sign_in(client, "th").status_code == 303
    assert client.get("/desk/").status_code == 200
    assert terminate_web_backends(database_url) >= 1  # a restart, a failover, an operator
    assert client.get("/desk/").status_code == 200


@pytest.fixture
def counted_app(runtime, database_url):
    """An app with routes that lose their connection where a test says, counting their runs."""
    app = create_app(runtime=runtime)
    runs: list[str] = []

    def lose_the_connection(session) -> None:
        terminate(database_url, session.scalar(text("SELECT pg_backend_pid()")))
        session.execute(text("SELECT 1"))  # the connection is gone: SQLAlchemy invalidates it

    @app.get("/test-lost-while-reading")
    def _lost_while_reading():
        runs.append("read")
        with runtime.unit_of_work() as session:
            session.scalar(text("SELECT 1"))
            if len(runs) == 1:
                lose_the_connection(session)
        return jsonify(runs=len(runs))

    @app.get("/test-lost-after-a-commit")  # GET: no CSRF token to send
    def _lost_after_a_commit():
        runs.append("write")
        with runtime.unit_of_work() as session:
            add_audit(session, "committed-once")
        with runtime.unit_of_work() as session:
            lose_the_connection(session)
        return jsonify(runs=len(runs))

    @app.get("/test-lost-after-a-read")  # as a desk page is, after the officer's look-up
    def _lost_after_a_read():
        runs.append("read")
        with runtime.unit_of_work() as session:
            session.scalar(text("SELECT count(*) FROM audit_event"))
        with runtime.unit_of_work() as session:
            if len(runs) == 1:
                lose_the_connection(session)
        return jsonify(runs=len(runs))

    @app.get("/test-lost-after-a-core-write")  # a write the ORM does not see: a statement of its own
    def _lost_after_a_core_write():
        runs.append("write")
        with runtime.unit_of_work() as session:
            session.execute(text("UPDATE audit_event SET actor = actor WHERE id = -1"))
        with runtime.unit_of_work() as session:
            lose_the_connection(session)
        return jsonify(runs=len(runs))

    @app.get("/test-lost-after-a-commit-of-its-own")  # a write committed outside a unit of work (the token store's)
    def _lost_after_a_commit_of_its_own():
        runs.append("write")
        with runtime.session_factory() as session:
            add_audit(session, "committed-by-its-own-session")
            session.commit()
        with runtime.unit_of_work() as session:
            lose_the_connection(session)
        return jsonify(runs=len(runs))

    @app.get("/test-lost-every-time")
    def _lost_every_time():
        runs.append("read")
        with runtime.unit_of_work() as session:
            lose_the_connection(session)
        return jsonify(runs=len(runs))

    app.test_runs = runs
    return app


@postgres_only
def test_a_request_whose_connection_died_before_anything_was_committed_runs_once_more(counted_app):
    answer = counted_app.test_client().get("/test-lost-while-reading")
    assert answer.status_code == 200 and answer.json == {"runs": 2}


@postgres_only
def test_a_request_that_committed_before_its_connection_died_is_not_run_again(counted_app, runtime):
    answer = counted_app.test_client().get("/test-lost-after-a-commit")
    assert answer.status_code == 503 and answer.json["code"] == "database_unavailable"
    assert counted_app.test_runs == ["write"]
    assert audit_rows(runtime.session_factory, "committed-once") == 1  # kept once, not twice


@postgres_only
def test_a_request_lost_after_a_unit_of_work_that_only_read_runs_once_more(counted_app):
    """Acceptance pass: a desk page or an API call lost after the officer's or the caller's look-up (a unit of
    work that only read, and committed) was answered 503 with the database back up."""
    answer = counted_app.test_client().get("/test-lost-after-a-read")
    assert answer.status_code == 200 and answer.json == {"runs": 2}


@postgres_only
def test_a_request_lost_after_committing_a_write_of_its_own_statement_is_not_run_again(counted_app):
    answer = counted_app.test_client().get("/test-lost-after-a-core-write")
    assert answer.status_code == 503 and counted_app.test_runs == ["write"]


@postgres_only
def test_a_write_committed_outside_a_unit_of_work_counts_too(counted_app, runtime):
    answer = counted_app.test_client().get("/test-lost-after-a-commit-of-its-own")
    assert answer.status_code == 503 and counted_app.test_runs == ["write"]
    assert audit_rows(runtime.session_factory, "committed-by-its-own-session") == 1


@postgres_only
def test_a_desk_page_lost_after_the_officer_s_look_up_is_answered(runtime, database_url):
    """From outside, as the acceptance pass met it: the page's own query meets a connection the server ended."""
    from tests.desk.conftest import sign_in
    from tests.desk.factories import seed_desk

    desk = seed_desk(runtime)
    app = create_app(runtime=runtime)
    asked = []

    @event.listens_for(runtime.engine, "before_cursor_execute")
    def _end_it_under_the_case_query(connection, _cursor, statement, *_):
        if "FROM accident_case" in statement and "case_no" in statement:
            asked.append(connection.connection.dbapi_connection.info.backend_pid)
            if len(asked) == 1:
                terminate(database_url, asked[0])
                wait_until(lambda: not backend_alive(database_url, asked[0]), timeout=5)

    try:
        client = app.test_client()
        assert sign_in(client, "th").status_code == 303
        assert client.get(f"/desk/cases/{desk['case_no']}").status_code == 200
        assert len(asked) == 2 and asked[0] != asked[1]  # met the ended connection, then ran again on a new one
    finally:
        event.remove(runtime.engine, "before_cursor_execute", _end_it_under_the_case_query)


@postgres_only
def test_a_request_whose_connection_dies_again_on_its_second_run_is_a_503(counted_app):
    answer = counted_app.test_client().get("/test-lost-every-time")
    assert answer.status_code == 503 and answer.json["code"] == "database_unavailable"
    assert counted_app.test_runs == ["read", "read"]
