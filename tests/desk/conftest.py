"""Desk fixtures and a client that signs in through the real form."""

from __future__ import annotations

import pytest

from accident_service.models import Case
from tests.desk.factories import PASSWORD, seed_desk
from tests.e2e.conftest import browser_context, chromium  # noqa: F401  (one browser setup for both)
from tests.support.html_forms import form_to


@pytest.fixture
def desk(runtime):
    """See tests.desk.factories.seed_desk: two stations, their officers, a supervisor, a booked case."""
    return seed_desk(runtime)


def sign_in(client, username: str, password: str = PASSWORD):
    """Post the sign-in form as a browser does (its CSRF token included); returns the response."""
    page = client.get("/desk/login")
    form = form_to(page.get_data(as_text=True), "/desk/login")
    return client.post("/desk/login", data=form.fields | {"username": username, "password": password})


def case_version(runtime, case_id: int) -> int:
    with runtime.unit_of_work() as session:
        return session.get(Case, case_id).version
