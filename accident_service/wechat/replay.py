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
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from accident_service.db import is_postgres
from accident_service.models import PushSignature

MAX_NONCE_LENGTH = 64
MAX_TIMESTAMP_LENGTH = 20


class SignatureReused(Exception):
    """Another body came under this plain signature before; nothing was stored."""


@dataclass(frozen=True)
class SignedBody:
    """A plain-mode push's (timestamp, nonce) and its body, ready to be recorded."""

    timestamp: str
    nonce: str
    body_sha256: str
    seen_at: datetime

    @classmethod
    def of(cls, *, timestamp: str, nonce: str, body: bytes, now: datetime) -> SignedBody:
        """Raises ValueError for a timestamp or nonce too long to be the platform's."""
        if len(timestamp) > MAX_TIMESTAMP_LENGTH or len(nonce) > MAX_NONCE_LENGTH:
            raise ValueError("timestamp or nonce too long")
        return cls(timestamp, nonce, hashlib.sha256(body).hexdigest(), now)

    def params(self) -> dict[str, object]:
        return {"timestamp": self.timestamp, "nonce": self.nonce, "body_sha256": self.body_sha256,
                "seen_at": self.seen_at}


def first_body_for_signature(connection: Connection, signed: SignedBody) -> bool:
    """Record the body signed with (timestamp, nonce); False if another body came under it before."""
    return connection.execute(signature_upsert(is_postgres(connection)), signed.params()).first() is not None


@functools.cache
def signature_upsert(postgres: bool):
    """The rule in one statement: it returns a row for the first body under a (timestamp, nonce) and
    for the same body again (the platform's retry), none for another body.

    Built once: every plain-mode push runs it (the webhook within its inbox insert on PostgreSQL).
    The same-body case is an ON CONFLICT DO UPDATE that changes nothing rather than a SELECT:
    it sees a record a concurrent retry committed after this statement began, where a SELECT
    in the same statement would not, and would refuse the platform's own retry.
    """
    table = PushSignature.__table__
    insert = (postgresql.insert if postgres else sqlite.insert)(table).values(
        timestamp=bindparam("timestamp"), nonce=bindparam("nonce"), body_sha256=bindparam("body_sha256"),
        seen_at=bindparam("seen_at", type_=table.c.seen_at.type))
    return insert.on_conflict_do_update(
        index_elements=[table.c.timestamp, table.c.nonce], set_={"seen_at": table.c.seen_at},
        where=table.c.body_sha256 == insert.excluded.body_sha256).returning(table.c.body_sha256)


def forget_signatures(session: Session, *, seen_before: datetime) -> int:
    """Drop records the age check makes useless; returns how many."""
    return session.execute(delete(PushSignature).where(PushSignature.seen_at < seen_before)).rowcount


def retention(tolerance_seconds: int) -> timedelta:
    """How long a record stays useful: the tolerance either side of now, and a margin for clock skew."""
    return timedelta(seconds=2 * tolerance_seconds + 60)
