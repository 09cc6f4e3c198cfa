"""Every error under /api/ is {code, message, details}; the description says so for every operation."""

from __future__ import annotations

import json


def assert_error(answer, status: int, code: str) -> dict:
    assert answer.status_code == status, answer.data
    assert answer.is_json and set(answer.json) == {"code", "message", "details"}
    assert answer.json["code"] == code
    return answer.json


def case_as_stored(api, case_no: str) -> dict:
    """The case as the API reads it, less its photos' links: each read mints them anew, signed with the second of
    the minting (two reads a second apart differ there, and only there)."""
    case = api.get(f"/cases/{case_no}").json
    return case | {"photos": [{k: v for k, v in photo.items() if k != "url"} for photo in case["photos"]]}


def test_the_frameworks_errors_take_the_same_shape(api, client, seeded):
    assert_error(api.get("/nowhere"), 404, "not_found")
    assert_error(api.get("/cases/not-a-case-no"), 404, "not_found")  # no case number looks like that
    assert_error(api.get("/cases/20261125-ZZZZZ"), 404, "not_found")
    refused = client.delete("/api/v1/cases", headers=api.headers)
    assert_error(refused, 405, "method_not_allowed")
    assert set(refused.headers["Allow"].replace(" ", "").split(",")) >= {"GET"}
    details = assert_error(api.get("/cases", limit=0, staus="booked"), 422, "invalid_input")["details"]
    assert set(details["errors"]["query"]) == {"limit", "staus"}  # misspelt filters are refused, not ignored
    assert_error(api.get("/cases", plate="粤A\x0012345"), 422, "invalid_input")
    broken = client.post(f"/api/v1/cases/{seeded.cases['GZ-TH'][0]}/confirm", data="{not json",
                         headers=api.headers | {"Idempotency-Key": "j", "Content-Type": "application/json"})
    assert_error(broken, 400, "bad_request")


def test_a_body_over_the_cap_is_refused_unread_and_changes_nothing(api, client, seeded):
    """Acceptance pass: a 30 MB body with a valid token was read whole and parsed, then refused as broken JSON."""
    from accident_service.api.views import MAX_BODY_BYTES

    case_no = seeded.cases["GZ-TH"][0]
    before = case_as_stored(api, case_no)
    padded = json.dumps({"expected_version": before["version"], "pad": "x" * MAX_BODY_BYTES})
    answer = client.post(f"/api/v1/cases/{case_no}/confirm", data=padded,
                         headers=api.headers | {"Idempotency-Key": "big", "Content-Type": "application/json"})
    assert_error(answer, 413, "request_entity_too_large")
    assert case_as_stored(api, case_no) == before
    fits = client.post(f"/api/v1/cases/{case_no}/confirm", json={"expected_version": before["version"]},
                       headers=api.headers | {"Idempotency-Key": "small"})
    assert fits.status_code == 200


def test_a_body_not_sent_as_json_is_refused_and_changes_nothing(api, client, seeded):
    """Acceptance pass: ``curl -d`` (a form's type), text/plain or no type had the body read as none, so a stale
    ``expected_version`` was never compared and the case was confirmed."""
    case_no = seeded.cases["GZ-TH"][0]
    before = case_as_stored(api, case_no)
    stale = json.dumps({"expected_version": before["version"] - 1})
    for number, content_type in enumerate(["application/x-www-form-urlencoded", "text/plain", None]):
        headers = api.headers | {"Idempotency-Key": f"typed-{number}"}
        if content_type:
            headers["Content-Type"] = content_type
        details = assert_error(client.post(f"/api/v1/cases/{case_no}/confirm", data=stale, headers=headers), 415,
                               "unsupported_media_type")["details"]
        assert details == {"content_type": content_type}
    assert case_as_stored(api, case_no) == before
    as_json = client.post(f"/api/v1/cases/{case_no}/confirm", data=stale,
                          headers=api.headers | {"Idempotency-Key": "typed-json", "Content-Type": "application/json"})
    assert_error(as_json, 409, "stale_case")
    empty = client.post(f"/api/v1/cases/{case_no}/confirm", headers=api.headers | {"Idempotency-Key": "typed-none"})
    assert empty.status_code == 200  # no body at all is still no body: expected_version is optional


def test_pages_outside_the_api_keep_the_frameworks_own_error_pages(client):
    answer = client.get("/no-such-page")
    assert answer.status_code == 404 and not answer.is_json


def test_the_description_is_public_and_documents_auth_keys_and_errors(client):
    spec = client.get("/api/v1/openapi.json").json
    assert spec["openapi"].startswith("3.") and spec["security"] == [{"bearerAuth": []}]
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer",
                                                                   "description": "an API token"}
    error = spec["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "message", "details"}
    operations = [(path, method, op) for path, item in spec["paths"].items()
                  for method, op in item.items() if method in ("get", "post")]
    assert len(operations) == 15
    for path, method, op in operations:
        assert "401" in op["responses"] and "default" in op["responses"], (path, method)
        if method == "post":
            keys = [p for p in op["parameters"] if p["in"] == "header" and p["name"] == "Idempotency-Key"]
            assert keys and keys[0]["required"], path
            assert {"400", "403", "404", "409", "413", "422"} <= set(op["responses"]), path


def test_an_unexpected_failure_is_a_500_in_the_same_shape_without_internals(app):
    def broken():
        raise RuntimeError("connection string postgresql://secret@db")

    app.add_url_rule("/api/v1/broken-for-this-test", view_func=broken)
    app.config["TESTING"] = False  # answer as in production instead of re-raising into the test
    answer = app.test_client().get("/api/v1/broken-for-this-test")
    body = assert_error(answer, 500, "internal_error")
    assert "secret" not in answer.get_data(as_text=True) and body["details"] == {}


def test_messages_are_sentences_a_person_can_act_on(api, client, make_token, seeded):
    """Acceptance pass: "no case NOPE", "no station GZ-YX", "this token may only read" (lower-case fragments)."""
    reader = {"Authorization": f"Bearer {make_token('reader', 'read')}", "Idempotency-Key": "r"}
    answers = [api.get("/cases/20261125-ZZZZZ"), api.post("/cases/20261125-ZZZZZ/confirm", key="z"),
               api.get("/stations/NOWHERE/slots"), api.get("/cases", limit=0),
               client.post(f"/api/v1/cases/{seeded.cases['GZ-TH'][0]}/confirm", headers=reader)]
    messages = [answer.json["message"] for answer in answers]
    assert [m for m in messages if not (m[:1].isupper() and m.endswith("."))] == [], messages
    assert answers[0].json["details"] == answers[1].json["details"] == {"case_no": "20261125-ZZZZZ"}
