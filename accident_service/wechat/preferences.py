"""A driver's language, kept by openid, so a new case (or no case at all) answers in it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from accident_service import messages
from accident_service.db import is_postgres
from accident_service.models import DriverPreference, Party


def language_of(session: Session, openid: str) -> str:
    """The language the driver last chose, else the default."""
    chosen = session.scalar(select(DriverPreference.language).where(DriverPreference.openid == openid))
    return messages.normalise_language(chosen) if chosen else messages.DEFAULT_LANGUAGE


def language_for(session: Session, openid: str, party: Party | None) -> str:
    """The language to answer in: the driver's party in their open case, else what they last chose."""
    return party.language if party is not None else language_of(session, openid)


def remember_language(session: Session, openid: str, language: str, now: datetime) -> None:
    insert = postgresql.insert if is_postgres(session) else sqlite.insert
    statement = insert(DriverPreference).values(openid=openid[:64], language=language, updated_at=now)
    session.execute(statement.on_conflict_do_update(index_elements=["openid"],
                                                    set_={"language": language, "updated_at": now}))
