"""Idempotency keys: a retried POST gets the first answer and changes nothing.

Each caller's keys are their own (``owner``). The first answer (status and
JSON body) is stored under the key in the transaction of the change it
reports, so the change and its answer commit together or not at all. A key
sent again with another request (method, path or body) is refused: it would
otherwise answer a request that was never made. Plain functions over a
session; callers own the transaction (see ``api/writes.py``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from accident_service.errors import ServiceError
from accident_service.models import IdempotencyKey


class KeyReused(ServiceError):
    """The key answered a different request (method, path or body) before."""

    code = "idempotency_key_reused"
    http_status = 422


@dataclass(frozen=True)
class Answer:
    """What a POST answered: its status and JSON body; ``replayed`` when it is a stored first answer."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


def request_hash(method: str, path: str, payload: Any) -> str:
    """What a key is bound to: the method, the path and the parsed body (key order and spacing do not matter)."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(f"{method} {path}\n{body}".encode()).hexdigest()


def stored_answer(session: Session, owner: str, key: str, fingerprint: str, *, now: datetime) -> Answer | None:
    """The first answer under ``key``, or None when the key is new (or expired).

    Raises KeyReused when the key answered another request.
    """
    row = session.scalar(select(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key,
                                                      IdempotencyKey.expires_at > now))
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise KeyReused("this Idempotency-Key was used for a different request; use a new key per request",
                        key=key)
    return Answer(row.status_code, row.response_body, replayed=True)


def remember(session: Session, owner: str, key: str, fingerprint: str, answer: Answer, *, now: datetime,
             keep: timedelta) -> None:
    """Store ``answer`` as the first answer under ``key`` for ``keep``; flushed, so a concurrent first answer
    stored meanwhile raises IntegrityError here (the primary key), before anything commits."""
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.owner == owner, IdempotencyKey.key == key,
                                                 IdempotencyKey.expires_at <= now))
    session.add(IdempotencyKey(owner=owner, key=key, request_hash=fingerprint, status_code=answer.status,
                               response_body=answer.body, created_at=now, expires_at=now + keep))
    session.flush()


def forget_expired(session: Session, *, now: datetime) -> int:
    """Delete expired keys; returns how many (the scheduler's job)."""
    return session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now)).rowcount or 0
