"""Signing staff in and out, each audited (who, from where), in one unit of work each.

The audit trail records failed attempts too, under the name that was typed:
a supervisor can see a password being guessed even before throttling stops it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from accident_service.cases.service import record_audit
from accident_service.desk.accounts import end_sessions
from accident_service.desk.auth import Staff, authenticate
from accident_service.models import StaffUser

LOGIN, LOGIN_FAILED, LOGOUT = "staff.login", "staff.login_failed", "staff.logout"


def sign_in(session: Session, username: str, password: str, *, now: datetime, address: str | None) -> Staff | None:
    """The staff member if the password is theirs (an audit event either way), else None."""
    staff = authenticate(session, username, password, now=now)
    typed = username.strip().lower()[:64] or "-"
    after = {"address": address} | ({"role": staff.role.value, "station_id": staff.station_id} if staff else {})
    record_audit(session, actor_type="staff", actor=staff.username if staff else typed,
                 action=LOGIN if staff else LOGIN_FAILED, case_id=None, now=now, after=after)
    return staff


def sign_out(session: Session, staff: Staff, *, now: datetime, address: str | None) -> None:
    """Every session of ``staff`` ends (this one and any other, a cookie copied from a shared PC included), audited."""
    account = session.get(StaffUser, staff.id)
    if account is not None:  # deleted meanwhile: no session of it is accepted anyway
        end_sessions(account)
    record_audit(session, actor_type="staff", actor=staff.username, action=LOGOUT, case_id=None, now=now,
                 after={"address": address})
