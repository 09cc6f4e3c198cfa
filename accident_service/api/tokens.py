"""API tokens for integrations: created once and shown once, kept as a hash, revocable, their last use noted.

A token is ``ast_`` and 43 URL-safe characters (256 random bits). Only its
SHA-256 is stored; a fast hash suffices because nobody can guess 256 bits,
unlike a password. Plain functions over a session; callers own the transaction.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from accident_service.errors import Conflict, NotFound, ServiceError
from accident_service.models import ApiToken, Station, TokenScope

TOKEN_PREFIX = "ast_"
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,47}")
#: How stale ``last_used_at`` may get: one write a minute per token instead of one per request.
LAST_USE_RESOLUTION = timedelta(minutes=1)


class InvalidTokenInput(ServiceError):
    code = "invalid_token_input"


class Unauthenticated(ServiceError):
    """No credentials, or a token that is unknown or revoked (which of the two is not said)."""

    code = "unauthenticated"
    http_status = 401

    def response_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="api"'}


@dataclass(frozen=True)
class TokenHolder:
    """Who a valid token speaks for, as the API needs it (no ORM object outlives its session)."""

    id: int
    name: str
    scope: TokenScope
    station_id: int | None  # None: every station


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, name: str, scope: str, station_code: str | None, all_stations: bool,
                 now: datetime) -> str:
    """Create the token ``name`` and return it: the only time it is ever readable.

    Exactly one of ``station_code`` and ``all_stations``. Raises
    InvalidTokenInput (name, scope, station) or Conflict (name taken, also by
    a revoked token: audit events name tokens, so a name means one token).
    """
    name = name.strip().lower()
    if not NAME.fullmatch(name):
        raise InvalidTokenInput("name must be 1-48 lower-case letters, digits, '.', '_' or '-', starting with "
                                "a letter or digit")
    try:
        token_scope = TokenScope(scope)
    except ValueError as exc:
        raise InvalidTokenInput(f"scope must be one of {[s.value for s in TokenScope]}") from exc
    if bool(station_code) == all_stations:
        raise InvalidTokenInput("give either a station code or all stations")
    station_id = None
    if station_code:
        station_id = session.scalar(select(Station.id).where(Station.code == station_code))
        if station_id is None:
            raise InvalidTokenInput(f"unknown station {station_code!r}")
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise Conflict(f"a token named {name!r} exists (revoked ones keep their names); choose another name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=hash_token(token), scope=token_scope, station_id=station_id,
                         created_at=now))
    session.flush()
    return token


def revoke_token(session: Session, name: str, *, now: datetime) -> datetime:
    """Revoke the token ``name`` from now on; returns when it was revoked (earlier, if it already was).

    Raises NotFound.
    """
    row = session.scalar(select(ApiToken).where(ApiToken.name == name.strip().lower()).with_for_update())
    if row is None:
        raise NotFound(f"no token named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = now
    return row.revoked_at


def list_tokens(session: Session) -> list[tuple[ApiToken, str | None]]:
    """Every token with its station code (None: all stations), by name."""
    query = (select(ApiToken, Station.code).outerjoin(Station, Station.id == ApiToken.station_id)
             .order_by(ApiToken.name))
    return [(token, code) for token, code in session.execute(query)]


def authenticate_token(session: Session, token: str, *, now: datetime) -> TokenHolder:
    """The holder of ``token`` if it is valid; notes its use (at most once a minute).

    Raises Unauthenticated for an unknown or revoked token.
    """
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        raise Unauthenticated("the token is not valid")
    if row.last_used_at is None or row.last_used_at <= now - LAST_USE_RESOLUTION:
        # Conditional, so concurrent requests of one token write it once.
        session.execute(update(ApiToken).where(ApiToken.id == row.id, or_(
            ApiToken.last_used_at.is_(None), ApiToken.last_used_at <= now - LAST_USE_RESOLUTION))
            .values(last_used_at=now).execution_options(synchronize_session=False))
    return TokenHolder(row.id, row.name, row.scope, row.station_id)
