"""Engine, sessions and the declarative base.

Nothing here is built at import time: the engine and the session factory are
made from settings by :func:`make_engine` / :func:`make_session_factory`, so
tests and several apps in one process never share hidden state.

Dead connections: there is no pool pre-ping (a round trip on every checkout).
A pooled PostgreSQL connection idle for a second or more whose server hung up
meanwhile is dropped at checkout by a look at its socket (no round trip); one
that dies while the pool is busy fails its statement, and
:func:`run_in_transaction` runs the transaction once more on a fresh
connection when nothing can have been committed. A web request whose
connection dies under an ORM unit of work before it committed a write runs
once more, whole (:func:`lost_before_anything_was_committed`, used by the app
factory). A database that stays unreachable raises :class:`DatabaseUnavailable`
(HTTP 503, mapped once in the app factory).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import select
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from accident_service.errors import ServiceError

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Seconds to wait for a PostgreSQL connection to open: within the platform's 5 s, a webhook
#: facing an unreachable database answers 503 (and is pushed again) rather than nothing.
CONNECT_TIMEOUT_SECONDS = 2
#: libpq's TCP settings: a server that vanishes without a word (a failover's old primary, a network partition) is
#: found out in seconds, not at Linux's retransmission limit (about 15 minutes, each thread waiting on it holding
#: its connection): keepalives probe a connection that waits for an answer after 10 s, every 5 s, three times, and
#: data the server has not acknowledged for 10 s ends it (``tcp_user_timeout``, in ms), as a lost connection: the
#: retry, then 503. A server that is there but does not answer (hung) is not found out this way (its kernel
#: acknowledges both): ``answer_within`` is for that.
TCP_SETTINGS = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
                "tcp_user_timeout": 10_000}
#: How long a statement on the autocommit engine (a push's store, a lease's claim, the readiness probe: each
#: answered in milliseconds) may wait for the server's answer. A server that takes it and never answers (hung,
#: or a proxy in front of one) is not found out by TCP, whose packets its kernel still acknowledges: past this the
#: connection is closed as lost, the statement runs again on a fresh one (``run_in_transaction``), whose connect
#: times out, and the push is answered 503 (the platform pushes again) rather than held until the server wakes:
#: 2 s and the 2 s connect, within the platform's 5 s wait for an answer; a push's store takes milliseconds.
SINGLE_STATEMENT_DEADLINE_SECONDS = 2.0
#: How much longer than its deadline a connection waits for the server's own answer to it: the server ends a statement
#: at the deadline itself (``statement_timeout``: its locks released, its backend free), and says so. Past this,
#: the server is taken for hung and the connection closed (a statement cut off only there would keep running, or
#: waiting on its lock, in a backend of its own, one more for each request that met it).
ANSWER_BACKSTOP_SECONDS = 0.5

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    SQLite has no timezone type and hands back naive values; PostgreSQL
    returns them in the session's zone. Both come back as aware UTC here, and
    naive values are refused on the way in so a local time can never slip in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; pass an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


def make_engine(url: str, *, echo: bool = False, autocommit: bool = False,
                answer_within: float | None = None) -> Engine:
    """Create an engine with the per-backend settings the service relies on.

    SQLite gets WAL (readers do not block the writer), foreign keys, a busy
    timeout, and ``BEGIN IMMEDIATE`` so that a transaction that reads and then
    writes (a booking) takes the write lock up front instead of failing with
    "database is locked" on the upgrade. ``autocommit`` (PostgreSQL): connections
    that stay in autocommit, for :func:`run_single_statement` only. ``answer_within`` (PostgreSQL): seconds a
    statement may take: the server ends it then (``statement_timeout``, SQLSTATE 57014: "try again later"), and a
    server that does not even say so :data:`ANSWER_BACKSTOP_SECONDS` later is given up as lost, its connection closed
    (:func:`_connect_with_a_deadline`).
    """
    parsed = make_url(url)
    # A database error's text leaves its statement's values out (hide_parameters): an openid, a phone, a place's
    # name or an access token being stored. That text is logged (where the filter masks only what it knows) and
    # stored: an inbox row's or a notice's last_error, which the desk shows.
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, echo=echo, hide_parameters=True,
                               connect_args={"timeout": SQLITE_BUSY_SECONDS, "check_same_thread": False})
        _configure_sqlite(engine)
        _watch_writes(engine)
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS, **TCP_SETTINGS}
    if answer_within is not None:
        # libpq's startup options, after any the URL gives (behind PgBouncer: let it pass "options" on).
        # In whole milliseconds, at least 1: 0 turns PostgreSQL's limit off.
        given = parsed.query.get("options", ())
        connect_args["options"] = " ".join([*((given,) if isinstance(given, str) else given),
                                            f"-c statement_timeout={max(1, round(answer_within * 1000))}"])
    engine = create_engine(url, echo=echo, hide_parameters=True, pool_size=10, max_overflow=20,
                           connect_args=connect_args, **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}))
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _drop_if_the_server_hung_up)
    if not autocommit:  # run_in_transaction counts every statement of the autocommit engine's as a commit
        _watch_writes(engine)
    if answer_within is not None:
        event.listen(engine, "do_connect", _connect_with_a_deadline(answer_within + ANSWER_BACKSTOP_SECONDS))
    return engine


def _connect_with_a_deadline(seconds: float):
    """SQLAlchemy's ``do_connect`` hook: psycopg connections whose every wait for the server ends after ``seconds``
    with the connection closed, which SQLAlchemy then takes for a lost connection (its psycopg dialect's
    ``is_disconnect``). psycopg's own timeout of a wait; the connecting itself keeps ``connect_timeout``."""
    import psycopg

    class AnsweredInTime(psycopg.Connection):
        def wait(self, gen, *args, **kwargs):
            if len(args) < 2 and kwargs.get("timeout") is None:  # a wait psycopg bounds itself keeps its own
                kwargs["timeout"] = seconds
            try:
                return super().wait(gen, *args, **kwargs)
            except psycopg.OperationalError as exc:
                if self.closed or self.pgconn.transaction_status != psycopg.pq.TransactionStatus.ACTIVE:
                    raise
                # Still waiting for an answer: the deadline passed, and the protocol is mid-way.
                self.close()
                overdue = psycopg.OperationalError(f"the server did not answer within {seconds:g} s")
                overdue.server_did_not_answer = True  # type: ignore[attr-defined]  # (lost_before_anything_...)
                raise overdue from exc

    def connect(_dialect, _record, cargs, cparams):
        return AnsweredInTime.connect(*cargs, **cparams)

    return connect


#: A connection back in the pool for longer than this is looked at before it is handed out.
IDLE_CHECK_SECONDS = 1.0


def _note_checkin(_dbapi_connection, record) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _drop_if_the_server_hung_up(dbapi_connection, record, _proxy) -> None:
    """Refuse a pooled connection the server closed while it sat idle (restart, pg_terminate_backend).

    An idle connection has nothing to read unless the server sent its goodbye (an error, then
    EOF): a zero-timeout poll of the socket sees that without the round trip of a pre-ping.
    The pool then opens a fresh connection. Only connections idle for a second or more are
    looked at: the poll gives up the GIL, which under load costs a thread more than the poll
    (about 5 % of a busy webhook's time, profiled). A connection lost while the pool is busy,
    or a server that vanished without a word, is caught by the statement failing, and
    :func:`run_in_transaction`.
    """
    if time.monotonic() - record.info.get("checked_in_at", 0.0) < IDLE_CHECK_SECONDS:
        return
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    if poller.poll(0):
        raise sa_exc.DisconnectionError("the server closed this connection while it was idle in the pool")


#: How long a SQLite connection waits for another's lock.
SQLITE_BUSY_SECONDS = 30


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        _use_wal(dbapi_connection)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _use_wal(dbapi_connection) -> None:
    """WAL mode, waiting as long as for any lock. A database still in rollback mode needs an exclusive lock for the
    switch, and SQLite refuses it at once, without its busy timeout, while another connection holds the write lock
    (it would deadlock): two of gunicorn's workers opening a new database together (AUTO_MIGRATE, the first one
    migrating) failed to boot with "database is locked" (CI)."""
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    while True:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL").close()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


class _Commits:
    """Whether anything of the work being watched may have been committed: a unit of work that wrote sent its
    COMMIT, or :func:`run_in_transaction` ran (its single statements commit as they run)."""

    attempted = False
    wrote = False  # a statement other than a read ran: from then on a COMMIT may keep something


#: Statements that keep nothing once committed: reads (with their row locks), and the transaction's own.
_KEEPS_NOTHING = re.compile(r"\s*(SELECT|BEGIN|SAVEPOINT|RELEASE|ROLLBACK|SHOW|SET|PRAGMA)\b", re.IGNORECASE)


_COMMITS: contextvars.ContextVar[_Commits | None] = contextvars.ContextVar("commits", default=None)


@contextlib.contextmanager
def commits_watched() -> Iterator[None]:
    """Watch the commits of the work this block runs (a web request), for
    :func:`lost_before_anything_was_committed`."""
    token = _COMMITS.set(_Commits())
    try:
        yield
    finally:
        _COMMITS.reset(token)


def _committing() -> None:
    commits = _COMMITS.get()
    if commits is not None:
        commits.attempted = True


def _watch_writes(engine: Engine) -> None:
    """Every COMMIT on ``engine`` after a write counts for :func:`lost_before_anything_was_committed`, whichever
    code sends it (a unit of work, the token store's own sessions). One after reads alone keeps nothing (the
    officer's or the API caller's look-up, a page's queries): a request lost after it may still run again whole
    (acceptance pass: every desk page and API call lost after the sign-in's look-up was answered 503)."""
    event.listen(engine, "before_cursor_execute", _note_a_write)
    event.listen(engine, "commit", _note_a_commit)


def _note_a_write(_connection, _cursor, statement: str, _parameters, _context, _executemany) -> None:
    """Anything but a read counts (a ``WITH`` too, which may hold an INSERT): conservative, as it only ever costs
    a request its second run."""
    commits = _COMMITS.get()
    if commits is not None and not commits.wrote and not _KEEPS_NOTHING.match(statement):
        commits.wrote = True


def _note_a_commit(_connection) -> None:
    commits = _COMMITS.get()
    if commits is not None and commits.wrote:
        commits.attempted = True


def lost_before_anything_was_committed(exc: BaseException) -> bool:
    """Whether the work watched by :func:`commits_watched` may run once more, whole, on a fresh connection: ``exc``
    is its connection lost (a server restart, a failover, ``pg_terminate_backend``; also a pooled connection
    that died a moment after it was last used, which no look at its socket at checkout catches) and the work has
    attempted no COMMIT after a write, so nothing of it can have been kept. A connection lost during such a COMMIT
    leaves open whether it was kept: never run again. Nor one closed here because the server did not answer in
    time (``DATABASE_ANSWER_TIMEOUT_SECONDS``): a hung server would hold the request a second time, where one
    wait was what it was to cost. Pool pre-ping would cost every checkout a round trip."""
    commits = _COMMITS.get()
    return (commits is not None and not commits.attempted
            and isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
            and not getattr(exc.orig, "server_did_not_answer", False))


@contextlib.contextmanager
def unit_of_work(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit when the block ends normally, roll back otherwise."""
    session = session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


class DatabaseUnavailable(ServiceError):
    """The database cannot be reached, or a connection died where a retry would not be safe: try again later."""

    code = "database_unavailable"
    http_status = 503

    def __init__(self, message: str = "the database is unavailable; try again shortly") -> None:
        super().__init__(message)


#: Errors that say "not now" rather than "never": lost or refused connections, a server shutting
#: down, lock or statement timeouts, SQLite's busy database (OperationalError), an exhausted pool.
UNAVAILABLE_ERRORS = (sa_exc.OperationalError, sa_exc.TimeoutError)

#: SQLSTATE classes of a server that is not there, going down, out of resources, or in a lock or timeout
#: that ends: connection exception, insufficient resources, operator intervention, transaction rollback.
_NOT_NOW_SQLSTATE_CLASSES = ("08", "53", "57", "40")


#: What a PostgreSQL server says, refusing a connection, when the settings name a database or a user it does not
#: know or credentials it does not take (SQLSTATE 3D000, 28000, 28P01, which libpq does not pass on). Not "database
#: … is not currently accepting connections": an administrator's pause, which ends.
_REFUSED_FOR_GOOD = re.compile(r'FATAL:  (database|role) "[^"]*" does not exist|FATAL:  role "[^"]*" is not '
                               r"permitted to log in|password authentication failed|no pg_hba\.conf entry")


def may_succeed_later(exc: BaseException) -> bool:
    """Whether the same command could work later, as is: a connection refused or lost, a server going down, an
    exhausted pool, a lock held by someone else; not a missing schema, an unwritable file, a bad statement, or a
    database or user the server does not know."""
    if isinstance(exc, sa_exc.TimeoutError):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.OperationalError):
        return any(word in str(orig) for word in ("locked", "busy"))
    sqlstate = getattr(orig, "sqlstate", "") or ""
    if isinstance(exc, sa_exc.OperationalError) and not sqlstate:
        # The driver's own: no connection could be made, or it broke. libpq gives no SQLSTATE for a server that
        # refused the connection, only its message: one naming a database or user it does not know, or failed
        # credentials, is an answer that stays the same (an English server's words; others are tried again).
        return _REFUSED_FOR_GOOD.search(str(orig)) is None
    return sqlstate.startswith(_NOT_NOW_SQLSTATE_CLASSES) or sqlstate == "55P03"  # lock not available


def driver_error(exc: BaseException) -> BaseException:
    """What the driver raised (``AdminShutdown``, ``OperationalError``), behind SQLAlchemy's wrapper or our
    DatabaseUnavailable; else ``exc`` itself."""
    cause = exc.__cause__ if isinstance(exc, DatabaseUnavailable) and exc.__cause__ is not None else exc
    return getattr(cause, "orig", None) or cause


def error_name(exc: BaseException) -> str:
    """The name a log line or a row's last error gives a database error: the driver's own; no message (it may quote
    a row)."""
    return type(driver_error(exc)).__name__


def is_outage(exc: BaseException) -> bool:
    """The database unavailable for now, however it was said: our DatabaseUnavailable, or what
    :func:`may_succeed_later` tells apart."""
    return isinstance(exc, DatabaseUnavailable) or may_succeed_later(exc)


#: Seconds between the tries of :func:`tried_through_a_blip`.
BLIP_RETRY_WAITS = (1.0, 2.0)


def tried_through_a_blip(work: Callable[[], T]) -> T:
    """``work()`` (units of work of its own), tried twice more, 1 s and 2 s later, when the database failed under
    it in a way that may pass: a restart, a failover, a connection the server ended. Bounded: three tries, three
    seconds; then the error is raised.

    For the steps around a leased row (an inbox message, a notice) that, left undone, keep it leased, its
    recipient's later rows behind it, until the lease lapses (``INBOX_LEASE_SECONDS``): reading it, and
    recording how its attempt ended. A try whose COMMIT was lost may have been kept: tried again, the lease is no
    longer ours (``leases.complete`` says so), and what else ``work`` writes must then change nothing more.
    """
    for wait in (*BLIP_RETRY_WAITS, None):
        try:
            return work()
        except sa_exc.SQLAlchemyError as exc:
            if wait is None or not may_succeed_later(exc):
                raise
            log.warning("database unavailable (%s); trying again in %s s", error_name(exc), wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def run_in_transaction(engine: Engine, work: Callable[[Connection], T], *,
                       rerun: Callable[[Connection], T] | None = None) -> T:
    """``work(connection)`` in one transaction (committed, or rolled back on error), and its result.

    Core, not a Session: the webhook runs this on every push, and a Session's bookkeeping
    costs more than the statement. When the connection dies before COMMIT is sent, nothing
    of the attempt can have been kept, so ``work`` (or ``rerun``, when given) runs once more on a
    fresh connection: keep it to database work. A connection lost during COMMIT is never retried (the
    transaction may have committed). On an engine in autocommit (:func:`run_single_statement`)
    each statement commits as it runs, so a rerun after a lost connection is safe only for work
    a rerun leaves unchanged, or for a ``rerun`` that finds what a first run that committed did.
    Raises DatabaseUnavailable when the database cannot be reached or the retry fails too.
    """
    _committing()  # in autocommit each statement commits as it runs; and a work run here is never run again whole
    for attempt in (1, 2):
        committing = False
        try:
            with engine.connect() as connection:
                transaction = connection.begin()
                result = (work if attempt == 1 or rerun is None else rerun)(connection)
                committing = True  # from here on the server may have kept the transaction
                transaction.commit()
            return result
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated and not committing and attempt == 1:
                log.warning("database connection lost before commit (%s); running the work again",
                            type(exc.orig).__name__)
                continue
            if isinstance(exc, UNAVAILABLE_ERRORS):
                raise DatabaseUnavailable() from exc
            raise
        except sa_exc.TimeoutError as exc:  # no connection free in the pool
            raise DatabaseUnavailable() from exc
    raise AssertionError("unreachable")  # pragma: no cover


def run_single_statement(engine: Engine, work: Callable[[Connection], T], *,
                         rerun: Callable[[Connection], T] | None = None) -> T:
    """``work(connection)``, which runs exactly one statement, committed as its own transaction. Either a
    rerun of it changes nothing (an upsert, an ``INSERT … ON CONFLICT DO NOTHING``), or ``rerun`` is what
    to run instead after a lost connection (a lease's claim: take back the rows a first run that committed
    leased, else claim).

    Give it an engine made with ``autocommit=True`` on PostgreSQL: the statement is then the
    transaction (BEGIN and COMMIT are no-ops), so the two round trips go (a webhook push spent three,
    now one). It is :func:`run_in_transaction` on that engine: a connection lost while the statement
    runs leaves open whether it committed, and the rerun on a fresh connection settles it. On SQLite
    (no round trips) the engine is the ordinary one.
    """
    return run_in_transaction(engine, work, rerun=rerun)


class DriverStatement:
    """A Core statement compiled once for one dialect, then run with ``exec_driver_sql``.

    ``Connection.execute`` walks the statement for its cache key on every execution: for the
    webhook's chain of data-modifying CTEs that walk and its bookkeeping cost 0.18 ms of CPU a push
    (1.06 ms against 0.88, measured), about a sixth of its database work. The SQL and its
    parameters' type conversions (the enum columns' values) come from SQLAlchemy, once; errors
    and connection loss are still SQLAlchemy's (``exec_driver_sql`` wraps them as ``execute`` does).
    Named parameters only (PostgreSQL's driver), not SQLite's positional ones.
    """

    def __init__(self, statement, dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        if compiled.positional:
            raise ValueError("DriverStatement takes a dialect with named parameters")
        self.sql = str(compiled)
        self._conversions = {name: convert for name, bind in compiled.binds.items()
                             if (convert := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None}

    def execute(self, connection: Connection, params: dict[str, Any]):
        conversions = self._conversions
        return connection.exec_driver_sql(self.sql, {name: conversions[name](value) if name in conversions else value
                                                     for name, value in params.items()})


def run_prebuilt(session: Session, statement, params: dict[str, Any]):
    """Run a statement built once (``functools.cache``) on the session's connection, through Core.

    For the statements every message or send runs: building one, and the ORM's work around it, cost
    more CPU than the database's (leases.complete: 398 against 127 µs). The session's pending writes are
    flushed first, as the ORM does before its own statements; the identity map is not updated.
    """
    session.flush()
    return session.connection().execute(statement, params)


def is_postgres(bind: Session | Engine | Connection) -> bool:
    return (bind.get_bind() if isinstance(bind, Session) else bind).dialect.name == "postgresql"
