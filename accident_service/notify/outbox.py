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


def enqueue(session: Session, *, openid: str, kind: str, dedupe_key: str, now: datetime,
            case_id: int | None = None, language: str = "zh", text: str | None = None,
            template_data: dict[str, Any] | None = None, notice: dict[str, Any] | None = None) -> int | None:
    """Add a message unless one with ``dedupe_key`` exists; returns the new row's id or None.

    Either ``text``, the customer-service text already in the recipient's
    language (``template_data`` is sent instead where a template id is
    configured for ``kind``), or ``notice``: the facts of a notice about a case,
    which the dispatcher renders in ``language`` when it sends (booking.notices).
    Raises ValueError unless exactly one of the two is given.
    """
    if (text is None) == (notice is None):
        raise ValueError("give the text of the message or the facts of a notice, not both")
    payload = {"notice": notice} if notice is not None else {"text": text, "template_data": template_data or {}}
    insert = postgresql.insert if is_postgres(session) else sqlite.insert
    statement = (insert(Notification)
                 .values(dedupe_key=dedupe_key, case_id=case_id, openid=openid, kind=kind, language=language,
                         payload=payload, status=WorkStatus.PENDING, attempts=0, next_attempt_at=now,
                         created_at=now)
                 .on_conflict_do_nothing(index_elements=[Notification.dedupe_key])
                 .returning(Notification.id))
    return session.execute(statement).scalar_one_or_none()
