"""Leased work items (inbox messages, outbox notifications) shared by many workers.

A row is claimed by an atomic UPDATE of its lease columns: ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, SQLite's single writer (BEGIN IMMEDIATE) elsewhere.
A crashed worker's claim lapses when ``lease_until`` passes. Rows for one
recipient are handed out one at a time, oldest first, so a driver's messages
are applied, and answered, in order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, bindparam, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from accident_service import metrics
from accident_service.db import is_postgres, run_prebuilt
from accident_service.models import InboundMessage, Notification, WorkStatus

LeasedModel = type[InboundMessage] | type[Notification]
MAX_BACKOFF = timedelta(minutes=10)
QUEUE_NAMES = {"inbound_message": "inbox", "notification": "outbox"}  # the label in metrics


Overtake = Callable[[Any, Any], ColumnElement[bool]]


def claim(session: Session, model: LeasedModel, worker_id: str, *, now: datetime, lease_seconds: int,
          limit: int, only_id: int | None = None, max_attempts: int | None = None,
          may_overtake: Overtake | None = None, on_failed: Callable[[list[int]], None] | None = None,
          waiting_until: Any = None, recipients: Collection[str] | None = None) -> list[int]:
    """Lease up to ``limit`` due rows of ``model`` to ``worker_id``; returns their ids.

    With ``max_attempts``, a row whose lease lapsed after its last allowed attempt
    (its worker died or hung every time) is marked FAILED instead of claimed again,
    and ``on_failed`` gets their ids in this transaction — unless the row's
    ``waiting_until`` column (a row waiting out an outage) is still ahead.
    ``may_overtake(earlier, row)``: when an unfinished older row of the same
    recipient does not hold a row back. ``recipients``: only rows for these people.
    """
    if max_attempts is not None:
        failed = _fail_exhausted(session, model, now=now, max_attempts=max_attempts, waiting_until=waiting_until)
        if failed:
            metrics.FAILURES.labels(QUEUE_NAMES[model.__tablename__], "lease_expired").inc(len(failed))
        if failed and on_failed is not None:
            on_failed(failed)
    candidates, take = _claim_statements(model, is_postgres(session), only_id is not None, may_overtake,
                                         recipients is not None)
    connection = session.connection()  # Core: built once, these need nothing of the ORM's per-statement work
    ids = list(connection.execute(candidates, {"now": now, "limit": limit, "only_id": only_id,
                                               "recipients": list(recipients or ())}).scalars())
    if ids:
        connection.execute(take, {"ids": ids, "now": now, "worker_id": worker_id,
                                  "lease_until": now + timedelta(seconds=lease_seconds)})
    return ids


@functools.cache
def _claim_statements(model: LeasedModel, postgres: bool, by_id: bool, may_overtake: Overtake | None,
                      by_recipient: bool = False):
    """The claim's SELECT and UPDATE, built once per kind of claim: every processed message and every
    send runs a claim, and building these ORM statements cost more CPU than running them (py-spy
    through the load test's burst). The values (now, limit, the row, the worker) are bound per call."""
    now = bindparam("now", type_=model.__table__.c.next_attempt_at.type)
    earlier = aliased(model)
    due = or_(and_(model.status == WorkStatus.PENDING, model.next_attempt_at <= now),
              and_(model.status == WorkStatus.PROCESSING, model.lease_until < now))
    # Any unfinished older row of the same recipient blocks: one waiting for its retry
    # (backoff) or held by a crashed worker must go first, not be overtaken.
    blocked = exists().where(
        earlier.openid == model.openid, earlier.id < model.id,
        earlier.status.in_((WorkStatus.PENDING, WorkStatus.PROCESSING)),
        *([~may_overtake(earlier, model)] if may_overtake is not None else []))
    candidates = select(model.id).where(due, ~blocked).order_by(model.id).limit(bindparam("limit"))
    if by_id:
        candidates = candidates.where(model.id == bindparam("only_id"))
    if by_recipient:
        candidates = candidates.where(model.openid.in_(bindparam("recipients", expanding=True)))
    if postgres:
        candidates = candidates.with_for_update(skip_locked=True)
    take = (update(model).where(model.id.in_(bindparam("ids", expanding=True)), due)
            .values(status=WorkStatus.PROCESSING, leased_by=bindparam("worker_id"),
                    lease_until=bindparam("lease_until", type_=model.__table__.c.lease_until.type),
                    attempts=model.attempts + 1)
            .execution_options(synchronize_session=False))
    return candidates, take


def _fail_exhausted(session: Session, model: LeasedModel, *, now: datetime, max_attempts: int,
                    waiting_until: Any = None) -> list[int]:
    # Without this a message that kills its worker would be claimed (and maybe re-sent) forever.
    stuck, fail = _exhausted_statements(model, is_postgres(session), waiting_until)
    params = {"now": now, "max_attempts": max_attempts}
    connection = session.connection()
    ids = list(connection.execute(stuck, params).scalars())
    if ids:
        error = f"lease expired on each of {max_attempts} attempts (worker died or hung)"
        connection.execute(fail, {**params, "ids": ids, "last_error": error})
    return ids


@functools.cache
def _exhausted_statements(model: LeasedModel, postgres: bool, waiting_until: Any):
    """Built once, like the claim's: every claim with an attempt limit runs the SELECT first."""
    now = bindparam("now", type_=model.__table__.c.lease_until.type)
    exhausted = and_(model.status == WorkStatus.PROCESSING, model.lease_until < now,
                     model.attempts >= bindparam("max_attempts"))
    if waiting_until is not None:  # one waiting out an outage has attempts to spare until then
        exhausted = and_(exhausted, or_(waiting_until.is_(None), waiting_until < now))
    stuck = select(model.id).where(exhausted).order_by(model.id)
    if postgres:
        stuck = stuck.with_for_update(skip_locked=True)
    fail = (update(model).where(model.id.in_(bindparam("ids", expanding=True)), exhausted)
            .values(status=WorkStatus.FAILED, lease_until=None, last_error=bindparam("last_error"))
            .execution_options(synchronize_session=False))
    return stuck, fail


def complete(session: Session, model: LeasedModel, row_id: int, worker_id: str, **values) -> bool:
    """Move a row we hold out of PROCESSING; False if our lease was taken over meanwhile."""
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
