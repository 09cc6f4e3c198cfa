"""Plain-mode pushes: one body per signed (timestamp, nonce).

The platform retries a push with the same query and body, which passes (the
inbox then finds the duplicate); a second, different body under a signature
already seen is a forgery built from an intercepted query. Records are kept
a little longer than the timestamp tolerance, after which the age check
refuses the query anyway.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from accident_service.db import is_postgres
from accident_service.models import PushSignature

MAX_NONCE_LENGTH = 64
MAX_TIMESTAMP_LENGTH = 20


def first_body_for_signature(session: Session, *, timestamp: str, nonce: str, body: bytes, now: datetime) -> bool:
    """Record the body signed with (timestamp, nonce); False if another body came under it before.

    Raises ValueError for a timestamp or nonce too long to be the platform's.
    """
    if len(timestamp) > MAX_TIMESTAMP_LENGTH or len(nonce) > MAX_NONCE_LENGTH:
        raise ValueError("timestamp or nonce too long")
    digest = hashlib.sha256(body).hexdigest()
    connection = session.connection()
    key = {"timestamp": timestamp, "nonce": nonce}
    if connection.execute(_insert_signature(is_postgres(session)), {**key, "body_sha256": digest,
                                                                    "seen_at": now}).first() is not None:
        return True
    return connection.execute(_body_seen_under_signature(), key).scalar() == digest


@functools.cache
def _insert_signature(postgres: bool):
    """Built once: every plain-mode push runs it."""
    table = PushSignature.__table__
    insert = postgresql.insert if postgres else sqlite.insert
    return insert(table).on_conflict_do_nothing().returning(table.c.body_sha256)


@functools.cache
def _body_seen_under_signature():
    table = PushSignature.__table__
    return select(table.c.body_sha256).where(table.c.timestamp == bindparam("timestamp"),
                                             table.c.nonce == bindparam("nonce"))


def forget_signatures(session: Session, *, seen_before: datetime) -> int:
    """Drop records the age check makes useless; returns how many."""
    return session.execute(delete(PushSignature).where(PushSignature.seen_at < seen_before)).rowcount


def retention(tolerance_seconds: int) -> timedelta:
    """How long a record stays useful: the tolerance either side of now, and a margin for clock skew."""
    return timedelta(seconds=2 * tolerance_seconds + 60)
