"""Staff accounts: names, passwords, roles and stations."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from accident_service.desk.accounts import InvalidStaffInput, create_staff, verify_password
from accident_service.errors import Conflict
from accident_service.models import StaffUser

PASSWORD = "correct horse battery"


def _create(runtime, username, password=PASSWORD, role="supervisor"):
    with runtime.unit_of_work() as session:
        return create_staff(session, username=username, password=password, role=role, station_code=None,
                            clock=runtime.clock).username


def test_usernames_are_case_insensitive_and_stored_lowercase(runtime):
    assert _create(runtime, " Sup1 ") == "sup1"
    with pytest.raises(Conflict):
        _create(runtime, "SUP1")


@pytest.mark.parametrize("username", ["", "bad name", "x" * 65, "名字", "a/b"])
def test_unusable_usernames_are_refused(runtime, username):
    with pytest.raises(InvalidStaffInput):
        _create(runtime, username)
    with runtime.unit_of_work() as session:
        assert session.scalars(select(StaffUser)).all() == []


def test_short_passwords_are_refused_and_hashes_verify(runtime):
    with pytest.raises(InvalidStaffInput):
        _create(runtime, "officer.li", password="short")
    _create(runtime, "officer.li")
    with runtime.unit_of_work() as session:
        user = session.scalar(select(StaffUser))
        assert user.password_hash.startswith("$argon2") and PASSWORD not in user.password_hash
        assert verify_password(user, PASSWORD) and not verify_password(user, PASSWORD + "x")


@pytest.mark.parametrize("password", [" " * 12, "a b c d e f g h i"], ids=["only_spaces", "nine_letters_spaced"])
def test_spaces_do_not_count_towards_a_password_s_length(runtime, password):
    with pytest.raises(InvalidStaffInput, match="other than spaces"):
        _create(runtime, "officer.li", password=password)
    _create(runtime, "officer.li", password="a long passphrase")  # spaces inside one are fine


def test_a_supervisor_given_a_station_is_refused_rather_than_stored_half_scoped(runtime):
    """A supervisor sees every station: a station stored beside the role would say otherwise (acceptance pass)."""
    with runtime.unit_of_work() as session, pytest.raises(InvalidStaffInput, match="every station"):
        create_staff(session, username="chief", password=PASSWORD, role="supervisor", station_code="GZ-TH",
                     clock=runtime.clock)
    with runtime.unit_of_work() as session:
        assert session.scalars(select(StaffUser)).all() == []
