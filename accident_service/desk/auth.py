"""Who is at the desk: staff sessions (Flask-Login), CSRF on every form (Flask-WTF), and the station scope.

Officers see and act only on their station's cases; supervisors see all.
The desk UI and the JSON API share this: a signed-in officer is the same
person on ``/desk`` and on ``/api/v1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flask import Flask
from flask_login import LoginManager, UserMixin, current_user
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import select
from sqlalchemy.orm import Session

from accident_service.desk.accounts import verify_password
from accident_service.models import StaffRole, StaffUser

login_manager = LoginManager()
csrf = CSRFProtect()


@dataclass(frozen=True)
class Staff(UserMixin):
    """The signed-in staff member as views see it (no ORM object outlives its session)."""

    id: int
    username: str
    role: StaffRole
    station_id: int | None
    session_generation: int

    def get_id(self) -> str:
        # What the session cookie keeps (Flask-Login's alternative token): the account and its sessions'
        # generation, so a cookie copied before a sign-out or a new password is refused by the server.
        return f"{self.id}.{self.session_generation}"

    @property
    def station_scope(self) -> int | None:
        """The one station this person may see and act on; None for a supervisor (every station)."""
        return None if self.role is StaffRole.SUPERVISOR else self.station_id

    @classmethod
    def of(cls, user: StaffUser) -> Staff:
        return cls(user.id, user.username, user.role, user.station_id, user.session_generation)


def init_app(app: Flask) -> None:
    """Sessions and CSRF for every blueprint; called once by the app factory."""
    login_manager.init_app(app)
    csrf.init_app(app)


@login_manager.user_loader
def _load_staff(user_id: str) -> Staff | None:
    from accident_service.web import current_runtime

    account, _, generation = user_id.partition(".")
    if not (account.isdigit() and generation.isdigit()):
        return None  # not one this service signed
    with current_runtime().unit_of_work() as session:
        user = session.get(StaffUser, int(account))
        if user is None or not user.active or user.session_generation != int(generation):
            return None  # gone, disabled, or signed out (or a new password) since this session began
        return Staff.of(user)


def current_staff() -> Staff | None:
    """The signed-in staff member of this request, or None."""
    return current_user if getattr(current_user, "is_authenticated", False) else None  # type: ignore[return-value]


def authenticate(session: Session, username: str, password: str, *, now: datetime) -> Staff | None:
    """The active account ``username`` if ``password`` is its password, else None (no hint which was wrong)."""
    user = session.scalar(select(StaffUser).where(StaffUser.username == username.strip().lower()))
    if user is None or not user.active or not verify_password(user, password):
        return None
    return Staff.of(user)
