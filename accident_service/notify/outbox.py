"""The notification outbox: every message to a driver is a row first.

Rows are written in the same transaction as the change that causes them, so a
committed booking always has its notices, and a rolled-back one has none.
``dedupe_key`` is UNIQUE: writing the same notice twice (a retried job, a
re-processed message) is a no-op, so each notice is sent at most once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from accident_service.models import Notification, WorkStatus


def enqueue(session: Session, *, openid: str, kind: str, text: str, dedupe_key: str, now: datetime,
            case_id: int | None = None, language: str = "zh",
            template_data: dict[str, Any] | None = None) -> Notification | None:
    """Add a notice unless one with ``dedupe_key`` exists; returns the new row or None.

    ``text`` is the customer-service text (already in the recipient's language);
    ``template_data`` is used instead when a template id is configured for ``kind``.
    """
    if session.scalar(select(Notification.id).where(Notification.dedupe_key == dedupe_key)) is not None:
        return None
    for pending in session.new:  # same transaction, not yet flushed
        if isinstance(pending, Notification) and pending.dedupe_key == dedupe_key:
            return None
    row = Notification(dedupe_key=dedupe_key, case_id=case_id, openid=openid, kind=kind, language=language,
                       payload={"text": text, "template_data": template_data or {}},
                       status=WorkStatus.PENDING, attempts=0, next_attempt_at=now, created_at=now)
    session.add(row)
    return row
