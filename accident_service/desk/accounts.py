"""Staff accounts: argon2 password hashes, roles scoped to a station."""

from __future__ import annotations

import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from accident_service.clock import Clock
from accident_service.errors import Conflict, ServiceError
from accident_service.models import StaffRole, StaffUser, Station

_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 10
USERNAME = re.compile(r"[a-z0-9._-]{1,64}")


class InvalidStaffInput(ServiceError):
    code = "invalid_staff"


@dataclass(frozen=True)
class NewStaff:
    """A staff account that may be created: its username as kept, its role and its station."""

    username: str
    role: StaffRole
    station_id: int | None


def check_new_staff(session: Session, *, username: str, role: str, station_code: str | None) -> NewStaff:
    """Everything about a new account but its password. Raises InvalidStaffInput or Conflict (username taken).

    The CLI calls it before asking for the password, so a typo in the rest is named before anything is typed.
    """
    username = username.strip().lower()  # "SUP1" and "sup1" are one officer at the login prompt
    if not USERNAME.fullmatch(username):
        raise InvalidStaffInput("username must be 1-64 letters, digits, '.', '_' or '-'")
    try:
        staff_role = StaffRole(role)
    except ValueError as exc:
        raise InvalidStaffInput(f"role must be one of {[r.value for r in StaffRole]}") from exc
    station_id = None
    if station_code and staff_role is StaffRole.SUPERVISOR:
        raise InvalidStaffInput("a supervisor works for every station: leave the station out")
    if station_code:
        station = session.scalar(select(Station).where(Station.code == station_code))
        if station is None:
            raise InvalidStaffInput(f"unknown station {station_code!r}")
        station_id = station.id
    elif staff_role is StaffRole.OFFICER:
        raise InvalidStaffInput("an officer needs a station")
    if session.scalar(select(StaffUser.id).where(StaffUser.username == username)) is not None:
        raise Conflict(f"username {username!r} is taken")
    return NewStaff(username, staff_role, station_id)


def create_staff(session: Session, *, username: str, password: str, role: str, station_code: str | None,
                 clock: Clock) -> StaffUser:
    """Create a staff account. Raises InvalidStaffInput or Conflict (username taken)."""
    check_password(password)
    new = check_new_staff(session, username=username, role=role, station_code=station_code)
    user = StaffUser(username=new.username, password_hash=_hasher.hash(password), role=new.role,
                     station_id=new.station_id, active=True, created_at=clock.now())
    session.add(user)
    session.flush()
    return user


def set_password(user: StaffUser, password: str) -> None:
    """A new password for ``user``. Raises InvalidStaffInput when it is too short."""
    check_password(password)
    user.password_hash = _hasher.hash(password)
    end_sessions(user)  # whoever signed in with the old one is signed out


def end_sessions(user: StaffUser) -> None:
    """Every session of the account ends: the server refuses their cookies from now on (desk.auth)."""
    # Counted up in SQL at the flush, not from the value read: two sign-outs at once both count.
    user.session_generation = StaffUser.session_generation + 1


def check_password(password: str) -> None:
    """Raises InvalidStaffInput when ``password`` is too weak to set (the CLI asks again before the confirmation)."""
    # Spaces are fine in a passphrase, but do not count: ten of them would be a password anybody could type.
    if len("".join(password.split())) < MIN_PASSWORD_LENGTH:
        raise InvalidStaffInput(f"password must be at least {MIN_PASSWORD_LENGTH} characters other than spaces")


def verify_password(user: StaffUser, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
