"""The notification outbox: every message to a driver is a row first.

Rows are written in the same transaction as the change that causes them, so a
committed booking always has its notices, and a rolled-back one has none.
``dedupe_key`` is UNIQUE and the row is written with ``INSERT … ON CONFLICT DO
NOTHING``: writing the same notice twice (a retried job, a re-processed
message, two schedulers at once) is a no-op, so each notice is sent at most
once, and no transaction fails over it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from accident_service.db import is_postgres
from accident_service.models import Notification, WorkStatus


def enqueue(session: Session, *, openid: str, kind: str, text: str, dedupe_key: str, now: datetime,
            case_id: int | None = None, language: str = "zh",
            template_data: dict[str, Any] | None = None) -> int | None:
    """Add a notice unless one with ``dedupe_key`` exists; returns the new row's id or None.

    ``text`` is the customer-service text (already in the recipient's language);
    ``template_data`` is used instead when a template id is configured for ``kind``.
    """
    insert = postgresql.insert if is_postgres(session) else sqlite.insert
    statement = (insert(Notification)
                 .values(dedupe_key=dedupe_key, case_id=case_id, openid=openid, kind=kind, language=language,
                         payload={"text": text, "template_data": template_data or {}},
                         status=WorkStatus.PENDING, attempts=0, next_attempt_at=now, created_at=now)
                 .on_conflict_do_nothing(index_elements=[Notification.dedupe_key])
                 .returning(Notification.id))
    return session.execute(statement).scalar_one_or_none()
