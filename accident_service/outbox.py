"""The notification outbox: every message to a driver is a row first.

Rows are written in the same transaction as the change that causes them, so a
committed booking always has its notices, and a rolled-back one has none.
``dedupe_key`` is UNIQUE and the row is written with ``INSERT … ON CONFLICT DO
NOTHING``: writing the same notice twice (a retried job, a re-processed
message, two schedulers at once) is a no-op, so each notice is sent at most
once, and no transaction fails over it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, Select, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from accident_service.db import is_postgres, run_prebuilt
from accident_service.models import Notification, WorkStatus

#: In a text written with ``join_qr``: where the dispatcher puts the link of the case's join QR code.
JOIN_QR_PLACEHOLDER = "{qr_url}"
#: The kind of a conversation's answer to what a driver sent (a notice about a case has its own kinds).
REPLY_KIND = "reply"
_RECIPIENTS: ContextVar[set[str] | None] = ContextVar("outbox_recipients", default=None)


@contextmanager
def recipients_written() -> Iterator[set[str]]:
    """The people messages are written (or released) for inside the block, in this thread: whose due notices
    go out right after it (notify.dispatch.dispatch_after_change: after a driver's message in
    wechat.processing, after a desk or API action through notify.background). A write rolled back leaves
    its person in the set, which then finds nothing due."""
    recipients: set[str] = set()
    token = _RECIPIENTS.set(recipients)
    try:
        yield recipients
    finally:
        _RECIPIENTS.reset(token)


def note_recipients(openids: Iterable[str]) -> None:
    """Count ``openids`` as written for, inside :func:`recipients_written` (elsewhere nothing happens)."""
    recipients = _RECIPIENTS.get()
    if recipients is not None:
        recipients.update(openids)


def enqueue(session: Session, *, openid: str, kind: str, dedupe_key: str, now: datetime,
            case_id: int | None = None, language: str = "zh", text: str | None = None,
            template_data: dict[str, Any] | None = None, notice: dict[str, Any] | None = None,
            join_qr: bool = False) -> int | None:
    """Add a message unless one with ``dedupe_key`` exists; returns the new row's id or None.

    Either ``text``, the customer-service text already in the recipient's
    language (``template_data`` is sent instead where a template id is
    configured for ``kind``), or ``notice``: the facts of a notice about a case,
    which the dispatcher renders in ``language`` when it sends (notify.notices).
    ``join_qr``: the text holds ``{qr_url}``, which the dispatcher replaces with
    the link of the case's join QR code (made once per case, kept on the case).
    Raises ValueError unless exactly one of the two is given.
    """
    if (text is None) == (notice is None):
        raise ValueError("give the text of the message or the facts of a notice, not both")
    payload: dict[str, Any] = {"notice": notice} if notice is not None \
        else {"text": text, "template_data": template_data or {}}
    if join_qr:
        payload["join_qr"] = True
    row = message_row(openid=openid, kind=kind, dedupe_key=dedupe_key, now=now, case_id=case_id, language=language,
                      payload=payload)
    note_recipients((openid,))
    return session.connection().execute(_insert(is_postgres(session), returning=True), row).scalar_one_or_none()


def enqueue_many(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Add several messages (rows from :func:`message_row`) in one statement; a row whose key exists is skipped."""
    if rows:
        note_recipients(row["openid"] for row in rows)
        session.connection().execute(_insert(is_postgres(session), returning=False), list(rows))


def message_row(*, openid: str, kind: str, dedupe_key: str, now: datetime, case_id: int | None, language: str,
                payload: dict[str, Any]) -> dict[str, Any]:
    """One outbox row's values: pending, due now."""
    return {"dedupe_key": dedupe_key, "case_id": case_id, "openid": openid, "kind": kind, "language": language,
            "payload": payload, "status": WorkStatus.PENDING, "attempts": 0, "next_attempt_at": now,
            "created_at": now}


@functools.cache
def _insert(postgres: bool, *, returning: bool) -> Insert:
    """Built once: every reply and notice runs it, and building a statement costs more than running it."""
    table = Notification.__table__
    statement = (postgresql.insert if postgres else sqlite.insert)(table).on_conflict_do_nothing(
        index_elements=[table.c.dedupe_key])
    return statement.returning(table.c.id) if returning else statement


def is_written(session: Session, dedupe_key: str) -> bool:
    """Whether a message under ``dedupe_key`` was written, sent or not."""
    return run_prebuilt(session, _by_key(), {"dedupe_key": dedupe_key}).first() is not None


@functools.cache
def _by_key() -> Select:
    """Built once: every message processed asks it."""
    return select(Notification.__table__.c.id).where(Notification.__table__.c.dedupe_key == bindparam("dedupe_key"))


def drop_pending(session: Session, *, dedupe_prefix: str, reason: str) -> int:
    """Mark the not-yet-sent rows whose key starts with ``dedupe_prefix`` DROPPED; returns how many.

    For a notice that is no longer true before it went out (a reminder for a
    moved or cancelled appointment). A row being sent right now is left alone.
    """
    result = session.execute(update(Notification)
                             .where(Notification.dedupe_key.startswith(dedupe_prefix, autoescape=True),
                                    Notification.status == WorkStatus.PENDING)
                             .values(status=WorkStatus.DROPPED, last_error=reason[:500])
                             .execution_options(synchronize_session=False))
    return result.rowcount
