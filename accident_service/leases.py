"""Leased work items (inbox messages, outbox notifications) shared by many workers.

A row is claimed by one atomic statement, an UPDATE of its lease columns on
the rows a sub-SELECT picks: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
SQLite's single writer (BEGIN IMMEDIATE) elsewhere. A crashed worker's claim
lapses when ``lease_until`` passes. Rows for one recipient are handed out one
at a time, oldest first, so a driver's messages are applied, and answered, in
order (a claim may name older rows that need not hold a later one back). A row
whose worker died on its last allowed attempt is never claimed again; the
sweeps (the scheduler's jobs) mark it failed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, bindparam, case, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from accident_service import metrics
from accident_service.db import is_postgres, run_prebuilt
from accident_service.logs import mask_personal_data
from accident_service.models import InboundMessage, Notification, WorkStatus

LeasedModel = type[InboundMessage] | type[Notification]
MAX_BACKOFF = timedelta(minutes=10)
QUEUE_NAMES = {"inbound_message": "inbox", "notification": "outbox"}  # the label in metrics
LAST_ERROR_CHARS = 500  # of a row's last error kept (complete)
#: The last error of a row given up as its worker died on each attempt: then the attempts (desk/labels.py).
LEASE_EXPIRED = "lease expired on each of "


Overtake = Callable[[Any, Any], ColumnElement[bool]]
#: Which rows (a condition on the table) a claim leases for ``short_lease_seconds`` instead: work that makes no
#: network call, whose worker, if it dies, should not keep it from the next one for the whole lease.
ShortLease = Callable[[Any], ColumnElement[bool]]


def claim(connection: Connection, model: LeasedModel, worker_id: str, *, now: datetime, lease_seconds: int,
          limit: int, only_id: int | None = None, after_id: int | None = None, max_attempts: int | None = None,
          may_overtake: Overtake | None = None, waiting_until: Any = None,
          recipients: Collection[str] | None = None, oldest_first: bool = False,
          short_lease: ShortLease | None = None, short_lease_seconds: int | None = None) -> list[int]:
    """Lease up to ``limit`` due rows of ``model`` to ``worker_id``; returns their ids, oldest first.

    One statement (an UPDATE of the rows its sub-SELECT picks, RETURNING them): run it as its own
    transaction, one round trip, with :func:`claim_as_own_transaction`. It counts the attempt as it
    leases, so a row that kills its worker is counted all the same. With ``max_attempts``, a row whose
    lease lapsed after its last allowed attempt (its worker died or hung every time) is never claimed
    again — unless its ``waiting_until`` column (a row waiting out an outage) is still ahead: the
    sweep marks it FAILED (:func:`fail_exhausted`). A claim of any row (no ``only_id``, no ``recipients``: the
    sweep's) takes rows that do not wait out an outage first: each retry of one may take its call's whole
    timeout (a silent platform), and oldest first, a message due meanwhile would wait behind every one of them.
    ``oldest_first``: not so, the oldest due rows whichever they are (the sweep's turn for the waiting rows,
    which a steady stream of others would otherwise hold back for good). ``may_overtake(earlier, row)``:
    when an unfinished older row of the same recipient does not hold a row back. ``recipients``: only rows
    for these people. ``after_id``: only rows newer than that one. ``short_lease(row)``: the rows leased for
    ``short_lease_seconds`` (at most ``lease_seconds``) instead.
    """
    waits = None if waiting_until is None else waiting_until.key
    params = {"now": now, "limit": limit, "only_id": only_id, "after_id": after_id,
              "recipients": list(recipients or ()), "max_attempts": max_attempts, "worker_id": worker_id,
              **lease_ends(now, lease_seconds, short_lease_seconds)}
    kind = (model, is_postgres(connection), only_id is not None, after_id is not None, may_overtake,
            recipients is not None, max_attempts is not None, waits, short_lease)
    # Two statements, each walking the rows in id order (one ordered by whether a row waits could not: it read
    # and sorted every due row, 60 ms a claim on PostgreSQL with 20,000 due, against 0.7).
    if waits is not None and only_id is None and recipients is None and not oldest_first:
        taken = connection.execute(_claim_statement(*kind, not_waiting=True), params).scalars().all()
        if taken:
            return sorted(taken)
    return sorted(connection.execute(_claim_statement(*kind), params).scalars())


def claim_as_own_transaction(single_statement: Callable[..., list[int]], clock: Callable[[], datetime],
                             model: LeasedModel, worker_id: str, *, lease_seconds: int, **options: Any) -> list[int]:
    """:func:`claim` at ``clock()`` (``options``: its keywords) through ``single_statement``
    (``runtime.single_statement``).

    When the connection is lost under it, whether it committed is unknown. Claiming again would leave the
    rows a first run leased to nobody who knows: held until their lease lapsed, with an attempt counted
    that never ran (and one on its last allowed attempt given up unrun). So the rerun takes back what this
    very claim leased (this worker, this lease's end) while that lease lasts, renewing it, and claims
    afresh only if it finds nothing. Not closed: a connection lost while the server still runs the first
    claim, which then commits, leaves its rows to lapse as before.
    """
    now = clock()
    leased_until = tuple(lease_ends(now, lease_seconds, options.get("short_lease_seconds")).values())

    def run(connection: Connection) -> list[int]:
        return claim(connection, model, worker_id, now=now, lease_seconds=lease_seconds, **options)

    def rerun(connection: Connection) -> list[int]:
        again = clock()  # a lease lapsed meanwhile is not taken back: anyone may claim those rows now
        taken = _relet(connection, model, (worker_id,), worker_id, now=again, lease_seconds=lease_seconds,
                       short_lease=options.get("short_lease"), short_lease_seconds=options.get("short_lease_seconds"),
                       leased_until=leased_until)
        return taken or claim(connection, model, worker_id, now=again, lease_seconds=lease_seconds, **options)

    return single_statement(run, rerun=rerun)


def lease_ends(now: datetime, lease_seconds: int, short_lease_seconds: int | None) -> dict[str, datetime]:
    """When a claim's leases end: ``lease_until``, and ``short_lease_until`` for the rows its short lease picks."""
    short = min(lease_seconds, short_lease_seconds if short_lease_seconds is not None else lease_seconds)
    return {"lease_until": now + timedelta(seconds=lease_seconds), "short_lease_until": now + timedelta(seconds=short)}


def _out_of_attempts(row, now, waiting_until: str | None) -> ColumnElement[bool]:
    """A row that has had its last allowed attempt: one waiting out an outage (its ``waiting_until`` column
    still ahead) has attempts to spare until then."""
    used_up = row.attempts >= bindparam("max_attempts")
    if waiting_until is None:
        return used_up
    waits = getattr(row, waiting_until)
    return and_(used_up, or_(waits.is_(None), waits < now))


def _due(row, now, limited: bool, waiting_until: str | None) -> ColumnElement[bool]:
    lapsed = and_(row.status == WorkStatus.PROCESSING, row.lease_until < now)
    if limited:
        lapsed = and_(lapsed, ~_out_of_attempts(row, now, waiting_until))
    return or_(and_(row.status == WorkStatus.PENDING, row.next_attempt_at <= now), lapsed)


def _held_back(model: LeasedModel, row, may_overtake: Overtake | None) -> ColumnElement[bool]:
    """Any unfinished older row of the same recipient holds ``row`` back: one waiting for its retry (backoff) or
    held by a crashed worker must go first, not be overtaken (unless ``may_overtake`` says it need not)."""
    earlier = aliased(model)
    return exists().where(
        earlier.openid == row.openid, earlier.id < row.id,
        earlier.status.in_((WorkStatus.PENDING, WorkStatus.PROCESSING)),
        *([~may_overtake(earlier, row)] if may_overtake is not None else []))


@functools.cache
def _claim_statement(model: LeasedModel, postgres: bool, by_id: bool, newer: bool, may_overtake: Overtake | None,
                     by_recipient: bool, limited: bool, waiting_until: str | None, short_lease: ShortLease | None, *,
                     not_waiting: bool = False):
    """The claim, built once per kind of claim: every processed message and every send runs one, and
    building these statements cost more CPU than running them (py-spy through the load test's burst).
    The values (now, limit, the row, the worker) are bound per call. ``not_waiting``: only rows whose
    ``waiting_until`` is not set."""
    now = bindparam("now", type_=model.__table__.c.next_attempt_at.type)
    row = aliased(model)  # the picking sub-SELECT reads the table under a name of its own
    candidates = (select(row.id).where(_due(row, now, limited, waiting_until), ~_held_back(model, row, may_overtake))
                  .order_by(row.id).limit(bindparam("limit")))
    if not_waiting and waiting_until is not None:
        candidates = candidates.where(getattr(row, waiting_until).is_(None))
    if by_id:
        candidates = candidates.where(row.id == bindparam("only_id"))
    if newer:
        candidates = candidates.where(row.id > bindparam("after_id"))
    if by_recipient:
        candidates = candidates.where(row.openid.in_(bindparam("recipients", expanding=True)))
    if postgres:  # rows another claim is taking are skipped, not waited for
        candidates = candidates.with_for_update(skip_locked=True)
    # Picked once (MATERIALIZED): as a plain sub-SELECT, PostgreSQL may run it again for each row it
    # updates, and each run, past the rows already taken, picks another (a claim of one took two).
    picked = candidates.cte("picked").prefix_with("MATERIALIZED")
    # Due again: on PostgreSQL a row another claim committed meanwhile is looked at once more.
    return (update(model).where(model.id.in_(select(picked.c.id)), _due(model, now, limited, waiting_until))
            .values(status=WorkStatus.PROCESSING, leased_by=bindparam("worker_id"),
                    lease_until=_lease_end(model, short_lease), attempts=model.attempts + 1)
            .returning(model.id))


def _lease_end(model: LeasedModel, short_lease: ShortLease | None):
    """A leased row's ``lease_until``: the bound ``short_lease_until`` for the rows ``short_lease`` picks, else the
    bound ``lease_until`` (see :func:`lease_ends`)."""
    stamp = model.__table__.c.lease_until.type
    lease_until = bindparam("lease_until", type_=stamp)
    if short_lease is None:
        return lease_until
    return case((short_lease(model), bindparam("short_lease_until", type_=stamp)), else_=lease_until)


def fail_exhausted(session: Session, model: LeasedModel, *, now: datetime, max_attempts: int,
                   waiting_until: Any = None) -> list[int]:
    """Mark FAILED the rows whose lease lapsed after their last allowed attempt; returns their ids.

    The sweep's step (the scheduler's jobs), before it claims: without it a row that kills its worker
    would hold back its recipient's later rows forever. A claim never takes such a row.
    """
    stuck, fail = _exhausted_statements(model, is_postgres(session),
                                        None if waiting_until is None else waiting_until.key)
    params = {"now": now, "max_attempts": max_attempts}
    connection = session.connection()
    ids = list(connection.execute(stuck, params).scalars())
    if ids:
        error = f"{LEASE_EXPIRED}{max_attempts} attempts (worker died or hung)"
        connection.execute(fail, {**params, "ids": ids, "last_error": error})
        metrics.count_on_commit(session, metrics.FAILURES.labels(QUEUE_NAMES[model.__tablename__],
                                                                 metrics.Failure.LEASE_EXPIRED), len(ids))
    return ids


@functools.cache
def _exhausted_statements(model: LeasedModel, postgres: bool, waiting_until: str | None):
    """Built once, like the claim."""
    now = bindparam("now", type_=model.__table__.c.lease_until.type)
    exhausted = and_(model.status == WorkStatus.PROCESSING, model.lease_until < now,
                     _out_of_attempts(model, now, waiting_until))
    stuck = select(model.id).where(exhausted).order_by(model.id)
    if postgres:
        stuck = stuck.with_for_update(skip_locked=True)
    fail = (update(model).where(model.id.in_(bindparam("ids", expanding=True)), exhausted)
            .values(status=WorkStatus.FAILED, lease_until=None, last_error=bindparam("last_error"))
            .execution_options(synchronize_session=False))
    return stuck, fail


def take_over(connection: Connection, model: LeasedModel, row_id: int, from_worker: str, to_worker: str, *,
              now: datetime, lease_seconds: int, short_lease: ShortLease | None = None,
              short_lease_seconds: int | None = None) -> bool:
    """Move a live lease of ``from_worker`` on row ``row_id`` to ``to_worker``, renewed from ``now``; False if it
    lapsed or moved meanwhile (then it is anyone's, or someone's, to claim: not ``to_worker``'s to run).

    One statement (run it with ``runtime.single_statement``); run again after it committed, it finds the
    lease already ``to_worker``'s and renews it again.
    """
    return bool(_relet(connection, model, (from_worker, to_worker), to_worker, now=now, lease_seconds=lease_seconds,
                       short_lease=short_lease, short_lease_seconds=short_lease_seconds, row_id=row_id))


def _relet(connection: Connection, model: LeasedModel, holders: tuple[str, ...], to_worker: str, *,
           now: datetime, lease_seconds: int, short_lease: ShortLease | None = None,
           short_lease_seconds: int | None = None, row_id: int | None = None,
           leased_until: tuple[datetime, ...] | None = None) -> list[int]:
    """Leases still live at ``now`` and held by one of ``holders`` (on row ``row_id``, or ending at one of
    ``leased_until``: one claim's rows) given to ``to_worker``, renewed as a claim leases them; their ids, oldest
    first."""
    statement = _relet_statement(model, row_id is not None, leased_until is not None, short_lease)
    return sorted(connection.execute(statement, {
        "holders": list(holders), "to_worker": to_worker, "now": now, "row_id": row_id,
        "leased_until": list(leased_until or ()), **lease_ends(now, lease_seconds, short_lease_seconds)}).scalars())


@functools.cache
def _relet_statement(model: LeasedModel, by_id: bool, by_lease_end: bool, short_lease: ShortLease | None):
    table = model.__table__
    stamp = table.c.lease_until.type
    live = [table.c.status == WorkStatus.PROCESSING, table.c.leased_by.in_(bindparam("holders", expanding=True)),
            table.c.lease_until > bindparam("now", type_=stamp)]
    if by_id:
        live.append(table.c.id == bindparam("row_id"))
    if by_lease_end:
        live.append(table.c.lease_until.in_(bindparam("leased_until", type_=stamp, expanding=True)))
    return (update(table).where(*live)
            .values(leased_by=bindparam("to_worker"), lease_until=_lease_end(model, short_lease))
            .returning(table.c.id))


def complete(session: Session, model: LeasedModel, row_id: int, worker_id: str, **values) -> bool:
    """Move a row we hold out of PROCESSING; False if our lease was taken over meanwhile.

    Its ``last_error`` is masked like a log line, then cut to :data:`LAST_ERROR_CHARS`: an error's text may quote
    a row (a database's constraint error, an exception naming the sender), and the desk shows a notice's, where
    the log filter does not reach. Cut first, an openid at the end would keep too much of itself to be known.
    """
    if values.get("last_error"):
        values["last_error"] = mask_personal_data(values["last_error"])[:LAST_ERROR_CHARS]
    statement = _complete_statement(model, tuple(sorted(values)))
    return run_prebuilt(session, statement, {**values, "row_id": row_id, "worker_id": worker_id}).rowcount == 1


@functools.cache
def _complete_statement(model: LeasedModel, columns: tuple[str, ...]):
    """Built once per set of columns written, and run on the session's connection (Core): every message and
    every notice ends with one, and building and running it through the ORM cost three times as much CPU
    (398 against 127 µs, measured on PostgreSQL)."""
    table = model.__table__
    return (update(table)
            .where(table.c.id == bindparam("row_id"), table.c.leased_by == bindparam("worker_id"),
                   table.c.status == WorkStatus.PROCESSING)
            .values(lease_until=None, **{column: bindparam(column, type_=table.c[column].type) for column in columns}))


def backoff(attempts: int) -> timedelta:
    """5 s, 10 s, 20 s, … capped at 10 minutes."""
    return min(timedelta(seconds=5 * 2 ** max(attempts - 1, 0)), MAX_BACKOFF)
