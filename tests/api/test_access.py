"""Who may use the API: tokens (CLI-made, hashed, scoped, revocable) and desk sessions with CSRF."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner
from flask_login import FlaskLoginClient
from sqlalchemy import select

from accident_service.api.tokens import hash_token
from accident_service.cli import cli
from accident_service.desk.accounts import create_staff
from accident_service.desk.auth import Staff
from accident_service.errors import Conflict
from accident_service.models import ApiToken, AuditEvent
from tests.api.conftest import Api


def token_row(runtime, name: str) -> ApiToken:
    with runtime.unit_of_work() as session:
        return session.scalar(select(ApiToken).where(ApiToken.name == name))


@pytest.fixture
def run_cli(settings_overrides):
    """The console script's group in-process, on the test database (stdout and stderr apart; a refusal is
    the result's exception, which ``main`` would print as ``error: ...``)."""
    env = {key: str(value) for key, value in settings_overrides.items()}

    def run(*args: str):
        return CliRunner().invoke(cli, list(args), env=env)
    return run


def test_the_cli_prints_only_the_token_and_keeps_only_its_hash(run_cli, runtime, client, seeded):
    made = run_cli("create-api-token", "--name", "Insurer-PA", "--all", "--scope", "read")
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    assert token.startswith("ast_") and "\n" not in token and "shown only now" in made.stderr
    row = token_row(runtime, "insurer-pa")
    assert (row.token_hash, row.scope.value, row.station_id) == (hash_token(token), "read", None)
    assert token not in {row.name, row.token_hash}
    assert Api(client, token).get("/cases").status_code == 200

    taken = run_cli("create-api-token", "--name", "insurer-pa", "--all", "--scope", "read")
    assert isinstance(taken.exception, Conflict) and taken.stdout == ""
    assert run_cli("create-api-token", "--name", "both", "--all", "--station", "GZ-TH",
                   "--scope", "read").exit_code != 0
    assert run_cli("create-api-token", "--name", "none", "--scope", "read").exit_code != 0

    revoked = run_cli("revoke-api-token", "insurer-pa")
    assert revoked.exit_code == 0 and "revoked" in revoked.stdout
    refused = Api(client, token).get("/cases")
    assert refused.status_code == 401 and refused.json["code"] == "unauthenticated"
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    listed = run_cli("list-api-tokens")
    assert "insurer-pa\tread\tall" in listed.stdout and "revoked" in listed.stdout


def test_missing_unknown_and_malformed_credentials_are_401(client, seeded):
    for headers in ({}, {"Authorization": "Bearer ast_nope"}, {"Authorization": "Basic dTpw"},
                    {"Authorization": "Bearer "}):
        answer = client.get("/api/v1/cases", headers=headers)
        assert answer.status_code == 401 and answer.json["code"] == "unauthenticated", headers
        assert set(answer.json) == {"code", "message", "details"}


def test_last_use_is_recorded_at_most_once_a_minute(client, make_token, runtime, clock, seeded):
    api = Api(client, make_token("cms"))
    assert token_row(runtime, "cms").last_used_at is None
    api.get("/stations")
    first = clock.now()
    clock.advance(timedelta(seconds=30))
    api.get("/stations")
    assert token_row(runtime, "cms").last_used_at == first
    clock.advance(timedelta(seconds=31))
    api.get("/stations")
    assert token_row(runtime, "cms").last_used_at == clock.now()


def test_a_read_token_reads_but_cannot_post(client, make_token, seeded, runtime):
    reader = Api(client, make_token("reader", "read"))
    case_no = seeded.cases["GZ-TH"][0]
    assert reader.get(f"/cases/{case_no}").status_code == 200
    refused = reader.post(f"/cases/{case_no}/confirm", key="r")
    assert refused.status_code == 403 and refused.json["code"] == "read_only"
    assert reader.get(f"/cases/{case_no}").json["status"] == "booked"


def test_a_station_token_sees_only_its_station(client, make_token, seeded):
    yuexiu = Api(client, make_token("yx-desk", "write", station="GZ-YX"))
    own, = seeded.cases["GZ-YX"]
    assert [c["case_no"] for c in yuexiu.get("/cases").json["items"]] == [own]
    assert [s["code"] for s in yuexiu.get("/stations").json] == ["GZ-YX"]
    assert {e["case_no"] for e in yuexiu.get("/audit-events").json["items"]} == {own}
    other = seeded.cases["GZ-TH"][0]
    for path in (f"/cases/{other}", f"/cases/{other}/dossier", f"/cases/{other}/audit-events",
                 "/stations/GZ-TH/slots"):
        answer = yuexiu.get(path)
        assert answer.status_code == 404 and answer.json["code"] == "not_found", path
    refused = yuexiu.post(f"/cases/{other}/confirm", key="x")
    assert refused.status_code == 404
    assert yuexiu.post(f"/cases/{own}/confirm", key="y").status_code == 200


@pytest.fixture
def officer_client(app, runtime, seeded):
    """A desk officer of GZ-TH signed in (a real Flask-Login session cookie)."""
    with runtime.unit_of_work() as session:
        user = create_staff(session, username="officer1", password="correct horse battery", role="officer",
                            station_code="GZ-TH", clock=runtime.clock)
        staff = Staff.of(user)
    app.test_client_class = FlaskLoginClient
    return app.test_client(user=staff)


def test_a_desk_session_works_and_its_writes_need_the_csrf_token(officer_client, seeded, runtime):
    me = officer_client.get("/api/v1/me").json
    assert me | {"csrf_token": None} == {"kind": "staff", "name": "officer1", "station": "GZ-TH",
                                         "can_write": True, "csrf_token": None}
    case_no = seeded.cases["GZ-TH"][0]
    assert officer_client.get(f"/api/v1/cases/{seeded.cases['GZ-YX'][0]}").status_code == 404
    forged = officer_client.post(f"/api/v1/cases/{case_no}/confirm", headers={"Idempotency-Key": "s1"})
    assert forged.status_code == 400 and forged.json["code"] == "csrf_failed"
    assert forged.json["message"] == "The CSRF token is missing: send the token of GET /api/v1/me as X-CSRFToken"
    done = officer_client.post(f"/api/v1/cases/{case_no}/confirm",
                               headers={"Idempotency-Key": "s1", "X-CSRFToken": me["csrf_token"]})
    assert done.status_code == 200 and done.json["status"] == "confirmed"
    with runtime.unit_of_work() as session:
        assert session.scalar(select(AuditEvent.actor).where(AuditEvent.action == "case.confirm")) == "officer1"


def test_a_token_needs_no_csrf_token_even_beside_a_session(officer_client, make_token, seeded):
    case_no = seeded.cases["GZ-YX"][0]  # outside the officer's station: the token, not the session, decides
    answer = officer_client.post(f"/api/v1/cases/{case_no}/confirm",
                                 headers={"Authorization": f"Bearer {make_token('cms')}", "Idempotency-Key": "t"})
    assert answer.status_code == 200
