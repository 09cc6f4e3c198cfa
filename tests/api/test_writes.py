"""Appointment actions on the API: one desk action per request, answered once per Idempotency-Key."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select

from accident_service import create_app, jobs, outbox
from accident_service.models import AuditEvent, Case, IdempotencyKey, Notification, PartyRole, Slot
from tests.api.conftest import Api, H
from tests.booking import factories as make
from tests.conftest import T0
from tests.support.live import LiveServer, wait_until


def audit_count(runtime, action: str) -> int:
    with runtime.unit_of_work() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action))


def notice_count(runtime, kind: str) -> int:
    with runtime.unit_of_work() as session:
        return session.scalar(select(func.count()).select_from(Notification).where(Notification.kind == kind))


def test_a_confirmation_retried_with_its_key_is_answered_once_and_applied_once(api, seeded, runtime):
    case_no = seeded.cases["GZ-TH"][0]
    first = api.post(f"/cases/{case_no}/confirm", {"expected_version": 2}, key="confirm-1")
    assert first.status_code == 200 and first.json["status"] == "confirmed" and first.json["version"] == 3
    assert "Idempotent-Replayed" not in first.headers
    again = api.post(f"/cases/{case_no}/confirm", {"expected_version": 2}, key="confirm-1")
    assert (again.status_code, again.json, again.headers["Idempotent-Replayed"]) == (200, first.json, "true")
    assert audit_count(runtime, "case.confirm") == 1
    assert notice_count(runtime, "confirmed") == 2  # one notice to each driver
    with runtime.unit_of_work() as session:
        audit = session.scalar(select(AuditEvent).where(AuditEvent.action == "case.confirm"))
        assert (audit.actor_type, audit.actor) == ("staff", "token:police-cms")


def test_a_key_used_for_another_request_is_refused_and_changes_nothing(api, seeded, runtime):
    one, other = seeded.cases["GZ-TH"]
    assert api.post(f"/cases/{one}/confirm", key="k").status_code == 200
    for path, body in ((f"/cases/{one}/cancel", {"reason": "desk closed"}), (f"/cases/{other}/confirm", None),
                       (f"/cases/{one}/confirm", {"expected_version": 2})):
        refused = api.post(path, body, key="k")
        assert refused.status_code == 422 and refused.json["code"] == "idempotency_key_reused", path
    with runtime.unit_of_work() as session:
        assert session.scalar(select(Case.status).where(Case.case_no == other)).value == "booked"
    assert audit_count(runtime, "case.cancel_appointment") == 0


def test_a_refusal_is_the_first_answer_too(api, seeded, runtime):
    case_no = seeded.cases["GZ-TH"][0]
    complete = {"liability": "A", "note": "A rear-ended B"}
    refused = api.post(f"/cases/{case_no}/complete", complete, key="complete-1")
    assert refused.status_code == 409 and refused.json["code"] == "wrong_state"
    assert refused.json["details"] == {"transition": "complete", "reason": "booked"}
    assert refused.json["message"] == "Not possible while the case's status is “Booked”; nothing was changed."
    assert api.post(f"/cases/{case_no}/check-in", key="check-in-1").status_code == 200
    replayed = api.post(f"/cases/{case_no}/complete", complete, key="complete-1")
    assert (replayed.status_code, replayed.json) == (409, refused.json)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    done = api.post(f"/cases/{case_no}/complete", complete, key="complete-2")
    assert done.status_code == 200 and done.json["status"] == "completed"
    outcome = api.get(f"/cases/{case_no}").json["outcome"]
    assert outcome | {"completed_at": None} == {"liability": "A", "note": "A rear-ended B",
                                                "handled_by": "token:police-cms", "completed_at": None}


def test_an_action_on_a_case_that_changed_since_is_refused(api, seeded, runtime):
    case_no = seeded.cases["GZ-TH"][0]
    assert api.post(f"/cases/{case_no}/confirm", {"expected_version": 2}, key="a").status_code == 200
    stale = api.post(f"/cases/{case_no}/check-in", {"expected_version": 2}, key="b")
    assert stale.status_code == 409 and stale.json["code"] == "stale_case"
    assert api.get(f"/cases/{case_no}").json["status"] == "confirmed"


def test_an_action_without_a_body_or_with_an_empty_one(api, client, seeded):
    one, other = seeded.cases["GZ-TH"]
    assert api.post(f"/cases/{one}/confirm", key="no-body").status_code == 200
    empty = client.post(f"/api/v1/cases/{other}/confirm", data=b"",
                        headers=api.headers | {"Idempotency-Key": "empty", "Content-Type": "application/json"})
    assert empty.status_code == 200 and empty.json["status"] == "confirmed"


def test_keys_belong_to_their_caller(client, api, make_token, seeded):
    case_no = seeded.cases["GZ-TH"][0]
    insurer = Api(client, make_token("insurer", "write"))
    assert api.post(f"/cases/{case_no}/confirm", key="same").json["status"] == "confirmed"
    assert insurer.post(f"/cases/{case_no}/check-in", key="same").json["status"] == "checked_in"


def test_a_key_is_forgotten_after_it_expires(api, seeded, runtime, clock):
    case_no = seeded.cases["GZ-TH"][0]
    assert api.post(f"/cases/{case_no}/confirm", key="old").status_code == 200
    clock.advance(timedelta(hours=runtime.settings.IDEMPOTENCY_KEY_HOURS, seconds=1))
    again = api.post(f"/cases/{case_no}/confirm", key="old")  # a new request now: the case is confirmed already
    assert again.status_code == 409 and again.json["code"] == "wrong_state"
    clock.advance(timedelta(hours=runtime.settings.IDEMPOTENCY_KEY_HOURS, seconds=1))
    assert jobs.forget_idempotency_keys(runtime, "w1") == 1
    assert make.count(runtime, IdempotencyKey) == 0


def test_every_post_needs_a_key(api, seeded):
    missing = api.post(f"/cases/{seeded.cases['GZ-TH'][0]}/confirm", key=None)
    assert missing.status_code == 422 and "Idempotency-Key" in missing.json["details"]["errors"]["headers"]


def test_reschedule_check_in_retake_and_cancel(api, seeded, runtime, clock):
    case_no = seeded.cases["GZ-TH"][0]
    later = seeded.slots["GZ-TH"][0]
    moved = api.post(f"/cases/{case_no}/reschedule", {"slot_id": later}, key="r")
    assert moved.status_code == 200 and moved.json["appointment"]["slot_id"] == later
    held = api.post(f"/cases/{case_no}/reschedule", {"slot_id": later}, key="r2")
    assert held.status_code == 409 and held.json["code"] == "slot_unavailable"
    assert held.json["details"] == {"slot_id": later, "reason": "current"}

    too_long = api.post(f"/cases/{case_no}/retake-requests", {"item": 2, "reason": "blurred",
                                                              "deadline_minutes": 8 * 24 * 60}, key="t0")
    assert too_long.status_code == 422 and "deadline_minutes" in too_long.json["details"]["errors"]["json"]
    retake = api.post(f"/cases/{case_no}/retake-requests", {"item": 2, "reason": "blurred",
                                                            "deadline_minutes": 45}, key="t1")
    assert retake.status_code == 200 and retake.json["status"] == "retake_requested"
    assert notice_count(runtime, "retake") == 2
    with runtime.unit_of_work() as session:
        asked = session.scalar(select(Case).where(Case.case_no == case_no)).party(PartyRole.A)
        assert (asked.retake_item, asked.retake_due_at) == (2, T0 + timedelta(minutes=45))

    blank = api.post(f"/cases/{case_no}/cancel", {"reason": "   "}, key="c0")
    assert blank.status_code == 422 and "reason" in blank.json["details"]["errors"]["json"]
    cancelled = api.post(f"/cases/{case_no}/cancel", {"reason": "station closed today"}, key="c1")
    assert cancelled.status_code == 200 and cancelled.json["status"] == "ready"
    with runtime.unit_of_work() as session:
        assert session.get(Slot, later).booked == 0  # the seat is free again


def test_a_slot_that_does_not_exist_is_named_as_such_and_changes_nothing(api, seeded, runtime):
    case_no = seeded.cases["GZ-TH"][0]
    unknown = api.post(f"/cases/{case_no}/reschedule", {"slot_id": 999_999}, key="r")
    assert unknown.status_code == 404 and unknown.json["code"] == "slot_not_found"
    assert unknown.json["details"] == {"slot_id": 999_999} and "no slot 999999" in unknown.json["message"]
    assert audit_count(runtime, "case.reschedule") == 0
    again = api.post(f"/cases/{case_no}/reschedule", {"slot_id": 999_999}, key="r")
    assert (again.status_code, again.json, again.headers["Idempotent-Replayed"]) == (404, unknown.json, "true")


def test_a_station_token_moves_appointments_only_within_its_station(client, make_token, seeded):
    officer = Api(client, make_token("th-desk", "write", station="GZ-TH"))
    case_no = seeded.cases["GZ-TH"][0]
    away = officer.post(f"/cases/{case_no}/reschedule", {"slot_id": seeded.slots["GZ-YX"][0]}, key="away")
    assert away.status_code == 409 and away.json["code"] == "slot_unavailable"
    assert away.json["details"] == {"slot_id": seeded.slots["GZ-YX"][0], "reason": "other_station"}
    home = officer.post(f"/cases/{case_no}/reschedule", {"slot_id": seeded.slots["GZ-TH"][1]}, key="home")
    assert home.status_code == 200


def test_a_full_or_started_slot_is_refused_saying_which(api, seeded, runtime, clock):
    case_no, other = seeded.cases["GZ-TH"]
    later = seeded.slots["GZ-TH"][0]
    with runtime.unit_of_work() as session:
        session.get(Slot, later).capacity = session.get(Slot, later).booked
    full = api.post(f"/cases/{case_no}/reschedule", {"slot_id": later}, key="full")
    assert (full.status_code, full.json["code"], full.json["details"]) == (
        409, "slot_unavailable", {"slot_id": later, "reason": "full"})
    assert full.json["message"] == "That slot is full: choose another; nothing was changed."  # the desk's words
    with runtime.unit_of_work() as session:
        starts_at = session.get(Slot, later).starts_at
    clock.set(starts_at)
    started = api.post(f"/cases/{other}/reschedule", {"slot_id": later}, key="started")
    assert started.json["details"] == {"slot_id": later, "reason": "started"}
    assert audit_count(runtime, "case.reschedule") == 0


def test_rescheduling_a_case_without_an_appointment_is_refused_for_its_state(api, seeded, runtime):
    """Not as a first booking the desk may not make (403 not_allowed): the desk asked to move an appointment."""
    cancelled, completed = seeded.cases["GZ-TH"]
    free = seeded.slots["GZ-TH"][1]
    assert api.post(f"/cases/{cancelled}/cancel", {"reason": "desk closed"}, key="c").status_code == 200
    assert api.post(f"/cases/{completed}/check-in", key="i").status_code == 200
    assert api.post(f"/cases/{completed}/complete", {"liability": "A"}, key="d").status_code == 200
    for case_no, status in ((cancelled, "ready"), (completed, "completed")):
        refused = api.post(f"/cases/{case_no}/reschedule", {"slot_id": free}, key=f"move-{case_no}")
        assert refused.status_code == 409 and refused.json["code"] == "wrong_state", refused.json
        assert refused.json["details"] == {"transition": "reschedule", "reason": status}
    assert audit_count(runtime, "case.reschedule") == 0


def test_no_show_only_once_the_slot_started(api, seeded, clock):
    case_no = seeded.cases["GZ-YX"][0]
    early = api.post(f"/cases/{case_no}/no-show", key="n1")
    assert early.status_code == 409 and early.json["details"] == {"transition": "no_show", "reason": "not_started"}
    assert early.json["message"] == "The slot has not started: too early for a no-show."
    clock.advance(5 * H)
    assert api.post(f"/cases/{case_no}/no-show", key="n2").json["status"] == "no_show"


def test_duplicates_sent_at_the_same_moment_apply_once(runtime, seeded, make_token):
    """Real concurrent requests on a threaded server: the case lock makes the others wait, then replay."""
    server = LiveServer(create_app(runtime=runtime)).start()
    headers = {"Authorization": f"Bearer {make_token('cms')}", "Idempotency-Key": "burst"}
    url = f"{server.url}/api/v1/cases/{seeded.cases['GZ-TH'][0]}/confirm"
    answers: list[requests.Response] = []
    start = threading.Barrier(4)

    def send() -> None:
        start.wait(timeout=10)
        answers.append(requests.post(url, headers=headers, json={}, timeout=30))

    threads = [threading.Thread(target=send) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        server.stop()
    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.text for a in answers}) == 1
    assert sum(1 for a in answers if "Idempotent-Replayed" not in a.headers) == 1
    assert audit_count(runtime, "case.confirm") == 1
    assert notice_count(runtime, "confirmed") == 2


class TestWithInlineProcessing:
    """INBOX_PROCESS_INLINE: the web process sends an action's notices at once, as after a desk officer's."""

    @pytest.fixture
    def settings_overrides(self, settings_overrides, wechat):
        return {**settings_overrides, "INBOX_PROCESS_INLINE": True, "WECHAT_API_BASE_URL": wechat.api_base_url}

    def test_an_action_sends_at_once_only_the_notices_of_the_people_it_wrote_to(self, api, seeded, runtime):
        with runtime.unit_of_work() as session:
            outbox.enqueue(session, openid="oSomeoneElse", kind="text", dedupe_key="someone-else",
                           now=T0 - H, text="an older notice to someone else")

        def attempted(*, confirmed: bool) -> int:  # the emulator does not know these drivers: each try counts
            mine = Notification.kind == "confirmed" if confirmed else Notification.openid == "oSomeoneElse"
            with runtime.unit_of_work() as session:
                return sum(session.scalars(select(Notification.attempts).where(mine)))

        case_no = seeded.cases["GZ-TH"][0]
        assert api.post(f"/cases/{case_no}/confirm", {"expected_version": 2}).status_code == 200
        assert wait_until(lambda: attempted(confirmed=True) >= 2, timeout=10)  # both drivers', tried at once
        assert attempted(confirmed=False) == 0
