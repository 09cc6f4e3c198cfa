"""The desk's pages through real forms (test client): sign-in, queue, case page, actions, scope."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from accident_service.desk import actions
from accident_service.messages import text
from accident_service.models import AuditEvent, Case, CaseStatus, Notification, Photo, WorkStatus
from tests.conftest import T0
from tests.desk.conftest import case_version, sign_in
from tests.desk.factories import store_photos
from tests.support.html_forms import form_to


def test_signed_out_visitors_are_sent_to_the_sign_in_form(client, desk):
    response = client.get(f"/desk/cases/{desk['case_no']}")
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/desk/login?next=/desk/cases/")
    assert client.get("/desk/queue/rows").status_code == 401  # the page's script reloads to the form


def test_an_officer_signs_in_finds_the_case_opens_it_and_confirms(client, desk, runtime):
    response = sign_in(client, "th")
    assert response.status_code == 303 and response.headers["Location"] == "/desk/"
    queue = client.get("/desk/").get_data(as_text=True)
    assert desk["case_no"] in queue and "已预约" in queue
    page = client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True)
    assert "13800000" in page  # phones in full on the case page
    confirm = form_to(page, f"/cases/{desk['case_no']}/confirm")
    done = client.post(confirm.action, data=confirm.fields)
    assert done.status_code == 303
    with runtime.unit_of_work() as session:
        assert session.get(Case, desk["case_id"]).status is CaseStatus.CONFIRMED
        told = session.scalars(select(Notification.payload).where(Notification.kind == "confirmed")).all()
        assert sorted(p["notice"]["to"] for p in told) == ["A", "B"]
        logins = session.scalars(select(AuditEvent.actor).where(AuditEvent.action == "staff.login")).all()
        assert logins == ["th"]
    again = client.post(confirm.action, data=confirm.fields, follow_redirects=True)  # the same click twice
    assert "本次操作未执行" in again.get_data(as_text=True)
    assert case_version(runtime, desk["case_id"]) == int(confirm.fields["expected_version"]) + 1


def test_every_page_renders_in_both_languages(client, desk):
    sign_in(client, "sup")
    for lang in ("zh", "en"):
        client.set_cookie("desk_lang", lang)
        for path in ("/desk/", f"/desk/cases/{desk['case_no']}", f"/desk/cases/{desk['case_no']}/sheet",
                     f"/desk/cases/{desk['case_no']}/verify", "/desk/summary", "/desk/queue/rows",
                     "/desk/?q=T0", "/desk/?status=booked"):
            response = client.get(path)
            assert response.status_code == 200, (lang, path)


def test_the_case_page_names_every_delivery_state_of_a_notice(client, desk, runtime):
    """A notice waiting for the person (no WeChat allowance, template or SMS for it) shows as such."""
    sign_in(client, "th")
    with runtime.unit_of_work() as session:
        notice = Notification(openid="oDeskHeld", kind="booked", language="zh", case_id=desk["case_id"],
                              payload={"text": "held"}, dedupe_key="held:desk", next_attempt_at=T0, created_at=T0,
                              last_error="waiting for the person: no WeChat allowance, no template or SMS for it")
        session.add(notice)
        session.flush()
        notice_id = notice.id
    for status in WorkStatus:
        with runtime.unit_of_work() as session:
            session.get(Notification, notice_id).status = status
        for lang, label in (("zh", text(f"desk.work.{status.value}", "zh")),
                            ("en", text(f"desk.work.{status.value}", "en"))):
            client.set_cookie("desk_lang", lang)
            page = client.get(f"/desk/cases/{desk['case_no']}")
            assert page.status_code == 200, (status, lang)
            assert label in page.get_data(as_text=True)
    assert "Waiting for the person" in text("desk.work.held", "en")


def test_the_case_page_says_how_each_notice_went_and_to_which_number_an_sms(client, desk, runtime):
    sign_in(client, "th")
    with runtime.unit_of_work() as session:
        for key, channel, address in (("sms", "sms", "13900139000"), ("card", "template", "oDeskCard")):
            session.add(Notification(openid="oDeskSent", kind="confirmed", language="zh", case_id=desk["case_id"],
                                     payload={"text": "sent"}, dedupe_key=f"sent:{key}", next_attempt_at=T0,
                                     created_at=T0, sent_at=T0, status=WorkStatus.DONE, channel=channel,
                                     address=address))
    page = client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True)
    assert f"{text('desk.channel.sms', 'zh')} <span class=\"mono\">13900139000</span>" in page
    assert text("desk.channel.template", "zh") in page and "oDeskCard" not in page  # an openid is no address to show


def test_another_stations_officer_gets_404_for_every_page_and_action_of_the_case(client, desk, runtime):
    sign_in(client, "yx")
    case = f"/desk/cases/{desk['case_no']}"
    for path in (case, f"{case}/sheet", f"{case}/verify"):
        assert client.get(path).status_code == 404, path
    assert "<h1>未找到</h1>" in client.get(case).get_data(as_text=True)  # not "something went wrong"
    token = form_to(client.get("/desk/").get_data(as_text=True), "/desk/logout").fields["csrf_token"]
    for action in ("confirm", "check-in", "cancel"):
        refused = client.post(f"{case}/{action}", data={"csrf_token": token, "expected_version": "2", "reason": "x"})
        assert refused.status_code == 404, action
    assert f"/desk/cases/{desk['case_no']}" not in client.get(f"/desk/?q={desk['case_no']}").get_data(as_text=True)
    assert client.get("/desk/summary").status_code == 404 and client.get("/desk/export.csv").status_code == 404
    with runtime.unit_of_work() as session:
        assert session.get(Case, desk["case_id"]).status is CaseStatus.BOOKED


def test_a_supervisor_sees_every_station(client, desk):
    sign_in(client, "sup")
    queue = client.get("/desk/").get_data(as_text=True)
    assert desk["case_no"] in queue and "GZ-TH" in queue
    assert client.get(f"/desk/cases/{desk['case_no']}").status_code == 200


def test_lists_mask_plates_and_the_case_page_shows_them(client, desk):
    sign_in(client, "th")
    queue = client.get("/desk/").get_data(as_text=True)
    page = client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True)
    full = re.search(r"粤A\d{4}A", page).group(0)
    assert full not in queue and f"{full[:2]}***{full[-2:]}" in queue
    assert "1380000" not in queue  # no phones in lists at all


def test_the_queue_filters_by_date_and_status_and_searches_numbers_and_plates(client, desk):
    sign_in(client, "th")
    assert desk["case_no"] in client.get("/desk/?status=booked").get_data(as_text=True)
    assert desk["case_no"] not in client.get("/desk/?status=confirmed").get_data(as_text=True)
    assert desk["case_no"] not in client.get("/desk/?date=2026-11-26").get_data(as_text=True)
    exact = client.get(f"/desk/?q={desk['case_no'].lower()}")
    assert exact.status_code == 302 and exact.headers["Location"] == f"/desk/cases/{desk['case_no']}"
    plate = re.search(r"粤A(\d{4})A", client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True)).group(1)
    found = client.get("/desk/", query_string={"q": f"{plate}Ａ", "date": "2026-12-01"})  # full-width, days later
    assert desk["case_no"] in found.get_data(as_text=True)
    assert desk["case_no"] not in client.get("/desk/?q=ZZZZ9").get_data(as_text=True)


def test_the_refresh_fragment_answers_304_until_the_queue_changes(client, desk, runtime):
    sign_in(client, "th")
    first = client.get("/desk/queue/rows")
    assert first.status_code == 200 and desk["case_no"] in first.get_data(as_text=True)
    assert client.get("/desk/queue/rows", headers={"If-None-Match": first.headers["ETag"]}).status_code == 304
    act(runtime, desk, actions.confirm)
    changed = client.get("/desk/queue/rows", headers={"If-None-Match": first.headers["ETag"]})
    assert changed.status_code == 200 and "已确认" in changed.get_data(as_text=True)


def test_a_retake_past_its_deadline_is_flagged_in_the_queue(client, desk, runtime, clock):
    act(runtime, desk, actions.request_retake, item=2, reason="看不清", deadline=timedelta(minutes=30))
    sign_in(client, "th")
    assert 'data-count="overdue_retake"' in (page := client.get("/desk/").get_data(as_text=True))
    assert "badge-overdue_retake" not in page and "badge-retake_requested" in page
    overdue_count = re.compile(r'class="count count-overdue_retake[^"]*"')
    assert "is-zero" in overdue_count.search(page).group()  # a count of 0 is not shown in the alarm's red
    clock.advance(minutes=31)
    page = client.get("/desk/?status=overdue_retake").get_data(as_text=True)
    assert desk["case_no"] in page and "badge-overdue_retake" in page and "补拍已超时" in page
    assert "is-zero" not in overdue_count.search(page).group()


def test_every_action_through_its_form(client, desk, runtime, clock):
    sign_in(client, "th")

    def post(action, **fields):
        return post_form(client, desk["case_no"], action, **fields)

    assert "请选择责任认定结果" not in post("confirm")
    page = client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True)
    moved_to = re.findall(r'<option value="(\d+)">', page.split('id="reschedule-slot"')[1].split("</select>")[0])
    assert "已改约" in post("reschedule", slot_id=moved_to[0])
    assert "没有该时段" in post("reschedule", slot_id="999999")
    assert "案件已预约该时段" in post("reschedule", slot_id=moved_to[0])
    assert "请填写原因" in post("retake", item="2", reason=" ")
    assert "已要求补拍" in post("retake", item="2", reason="看不清", deadline_minutes="45")
    assert "已签到" in post("check-in")
    assert "已办结" in post("complete", liability="shared", note="双方各负一半")
    with runtime.unit_of_work() as session:
        case = session.get(Case, desk["case_id"])
        assert (case.status, case.liability, case.outcome_note, case.handled_by) == \
            (CaseStatus.COMPLETED, "shared", "双方各负一半", "th")
    sheet = client.get(f"/desk/cases/{desk['case_no']}/sheet").get_data(as_text=True)
    assert f'<a href="/desk/cases/{desk["case_no"]}">← 返回案件</a>' in sheet  # back where it was opened from
    assert "双方同责" in sheet and "双方各负一半" in sheet and case.evidence_fingerprint in sheet


def post_form(client, case_no: str, action: str, **fields) -> str:
    page = client.get(f"/desk/cases/{case_no}").get_data(as_text=True)
    form = form_to(page, f"/cases/{case_no}/{action}")
    return client.post(form.action, data=form.fields | fields, follow_redirects=True).get_data(as_text=True)


def status_of(runtime, case_id: int) -> CaseStatus:
    with runtime.unit_of_work() as session:
        return session.get(Case, case_id).status


def test_no_show_is_offered_once_the_slot_has_started(client, desk, runtime, clock):
    sign_in(client, "th")
    page = client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True)
    assert f"/cases/{desk['case_no']}/no-show" not in page
    clock.advance(hours=4)  # 14:00, the slot's start
    assert "已标记未到场" in post_form(client, desk["case_no"], "no-show")
    assert status_of(runtime, desk["case_id"]) is CaseStatus.NO_SHOW


def test_cancel_then_close_each_with_a_reason(client, desk, runtime):
    sign_in(client, "th")
    assert "请填写原因" in post_form(client, desk["case_no"], "cancel", reason="")
    assert "预约已取消" in post_form(client, desk["case_no"], "cancel", reason="车辆已送修")
    assert status_of(runtime, desk["case_id"]) is CaseStatus.READY
    assert "案件已结案" in post_form(client, desk["case_no"], "close", reason="双方已自行协商")
    assert status_of(runtime, desk["case_id"]) is CaseStatus.CANCELLED


def test_text_too_long_for_a_message_is_refused_through_every_form_and_changes_nothing(client, desk, runtime):
    """An officer's pass: a 5,000-character retake reason was taken and sent to both drivers cut to its first 200.
    The browser's maxlength is the lifecycle's own limit; a form that gets past it is refused, nothing changed."""
    from accident_service.cases.lifecycle import NOTE_MAX_CHARS, REASON_MAX_CHARS
    from accident_service.models import AuditEvent

    sign_in(client, "th")
    page = client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True)
    assert f'maxlength="{REASON_MAX_CHARS}"' in page

    def audit_count() -> int:
        with runtime.unit_of_work() as session:
            return len(session.scalars(select(AuditEvent).where(AuditEvent.case_id == desk["case_id"])).all())

    before = (status_of(runtime, desk["case_id"]), audit_count())
    long_reason = "看" * (REASON_MAX_CHARS + 1)
    for action, fields in [("retake", {"item": "2", "reason": long_reason}), ("cancel", {"reason": long_reason}),
                           ("close", {"reason": long_reason})]:
        assert f"原因最多 {REASON_MAX_CHARS} 字" in post_form(client, desk["case_no"], action, **fields), action
    assert (status_of(runtime, desk["case_id"]), audit_count()) == before
    assert "已要求补拍" in post_form(client, desk["case_no"], "retake", item="2",
                                  reason=" " + "看" * REASON_MAX_CHARS + " ")  # the limit itself, spaces aside

    act(runtime, desk, actions.check_in)
    assert f'maxlength="{NOTE_MAX_CHARS}"' in client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True)
    assert f"处理说明最多 {NOTE_MAX_CHARS} 字" in post_form(client, desk["case_no"], "complete", liability="A",
                                                     note="x" * (NOTE_MAX_CHARS + 1))
    assert status_of(runtime, desk["case_id"]) is CaseStatus.CHECKED_IN


def test_a_field_out_of_place_is_named_and_changes_nothing(client, desk, runtime):
    """An officer's pass: a deadline of 0 or "abc", a slot "abc" and a form without its version all read "the form
    is incomplete"; each now names what to fix."""
    from accident_service.cases.lifecycle import RETAKE_MAX_DEADLINE_MINUTES as MAX_DEADLINE_MINUTES

    sign_in(client, "th")
    page = client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True)
    assert f'name="deadline_minutes" type="number" min="1" max="{MAX_DEADLINE_MINUTES}"' in page  # the same limit
    before = status_of(runtime, desk["case_id"])
    for deadline in ("0", "abc", str(MAX_DEADLINE_MINUTES + 1)):
        said = post_form(client, desk["case_no"], "retake", item="2", reason="看不清", deadline_minutes=deadline)
        assert f"补拍期限须为 1 到 {MAX_DEADLINE_MINUTES} 分钟的整数" in said, deadline
    assert "请从列表中选择时段" in post_form(client, desk["case_no"], "reschedule", slot_id="abc")
    assert "请选择要补拍的照片项" in post_form(client, desk["case_no"], "retake", item="", reason="看不清")
    assert "表单缺少案件版本" in post_form(client, desk["case_no"], "confirm", expected_version="")
    assert status_of(runtime, desk["case_id"]) is before


def test_the_stored_originals_are_rehashed_on_demand(client, desk, runtime):
    store_photos(runtime, desk["case_id"])
    sign_in(client, "th")
    assert "原图与证据指纹一致（4 张" in client.get(f"/desk/cases/{desk['case_no']}/verify").get_data(as_text=True)
    with runtime.unit_of_work() as session:
        key = session.scalars(select(Photo.object_key).where(Photo.case_id == desk["case_id"], Photo.item == 3)).one()
    runtime.store.put(key, b"not the photo the drivers sent", content_type="image/jpeg")
    page = client.get(f"/desk/cases/{desk['case_no']}/verify").get_data(as_text=True)
    assert "原图与证据指纹不一致" in page and "3: 已改变" in page


def test_the_english_switch_keeps_to_the_officer(client, desk):
    sign_in(client, "th")
    form = form_to(client.get("/desk/").get_data(as_text=True), "/desk/language")
    switched = client.post(form.action, data=form.fields)
    assert switched.status_code == 303 and "desk_lang=en" in switched.headers["Set-Cookie"]
    page = client.get("/desk/").get_data(as_text=True)
    assert "Appointment queue" in page and '<html lang="en">' in page


def test_supervisors_get_a_day_summary_and_a_csv_export(client, desk, runtime, clock):
    act(runtime, desk, actions.check_in)
    act(runtime, desk, actions.complete, liability="A", note="", now=T0 + timedelta(minutes=24))
    sign_in(client, "sup")
    summary = client.get("/desk/summary?date=2026-11-25").get_data(as_text=True)
    row = re.search(r'<tr data-station="GZ-TH">(.*?)</tr>', summary, re.S).group(1)
    assert re.findall(r'<td class="num">([^<]*)</td>', row) == ["1", "1", "0", "0", "24"]
    export = client.get("/desk/export.csv?from=2026-11-25&to=2026-11-25")
    assert export.headers["Content-Type"].startswith("text/csv")
    lines = export.get_data(as_text=True).lstrip("\ufeff").splitlines()
    assert lines[0].startswith("station,date,slot,case_no") and len(lines) == 2
    assert desk["case_no"] in lines[1] and "***" in lines[1] and ",24" in lines[1]
    too_long = client.get("/desk/export.csv?from=2026-01-01&to=2026-12-31", follow_redirects=True)
    assert "92 天以内" in too_long.get_data(as_text=True)


def act(runtime, desk, action, *, now=T0, **options):
    with runtime.unit_of_work() as session:
        case = actions.lock_case(session, desk["case_no"])
        action(session, case, staff="officer1", settings=runtime.settings, now=now, **options)


def test_with_inline_processing_the_notices_go_out_right_after_the_action(settings_overrides, clock, wechat):
    """INBOX_PROCESS_INLINE: the web process sends the action's notices at once (the scheduler is the backstop)."""
    from accident_service import create_app
    from accident_service.runtime import build_runtime
    from accident_service.settings import load_settings
    from tests.desk.factories import seed_desk
    from tests.support.live import wait_until

    runtime = build_runtime(load_settings({**settings_overrides, "INBOX_PROCESS_INLINE": True,
                                           "WECHAT_API_BASE_URL": wechat.api_base_url}, environ={}), clock=clock)
    try:
        desk = seed_desk(runtime)
        client = create_app(runtime=runtime).test_client()
        sign_in(client, "th")

        def attempts():  # the emulator does not know these drivers: each try fails, and is counted
            with runtime.unit_of_work() as session:
                return sum(session.scalars(select(Notification.attempts)))

        assert attempts() == 0  # nothing dispatched the booking's notices before (no scheduler here)
        confirm = form_to(client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True), "/confirm")
        client.post(confirm.action, data=confirm.fields)
        assert wait_until(attempts, timeout=10)
    finally:
        runtime.close()


def test_an_action_sends_at_once_only_the_notices_of_the_people_it_wrote_to(settings_overrides, clock, wechat):
    """Another person's older due notice is the dispatcher's: it does not go out (nor go first) after the action."""
    from accident_service import create_app, outbox
    from accident_service.runtime import build_runtime
    from accident_service.settings import load_settings
    from tests.desk.factories import seed_desk
    from tests.support.live import wait_until

    runtime = build_runtime(load_settings({**settings_overrides, "INBOX_PROCESS_INLINE": True,
                                           "WECHAT_API_BASE_URL": wechat.api_base_url}, environ={}), clock=clock)
    try:
        desk = seed_desk(runtime)
        with runtime.unit_of_work() as session:
            outbox.enqueue(session, openid="oSomeoneElse", kind="text", dedupe_key="someone-else",
                           now=T0 - timedelta(hours=1), text="an older notice to someone else")
        client = create_app(runtime=runtime).test_client()
        sign_in(client, "th")

        def attempted(*, confirmed: bool) -> int:
            mine = Notification.kind == "confirmed" if confirmed else Notification.openid == "oSomeoneElse"
            with runtime.unit_of_work() as session:
                return sum(session.scalars(select(Notification.attempts).where(mine)))

        confirm = form_to(client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True), "/confirm")
        client.post(confirm.action, data=confirm.fields)
        assert wait_until(lambda: attempted(confirmed=True) >= 2, timeout=10)  # both parties', tried at once
        assert attempted(confirmed=False) == 0

        def settled() -> bool:  # the sender's last writes done before the tables are emptied (a TRUNCATE
            with runtime.unit_of_work() as session:  # waiting on them deadlocked in CI)
                return not session.scalar(select(Notification.id).where(
                    Notification.kind == "confirmed", Notification.status == WorkStatus.PROCESSING).limit(1))
        assert wait_until(settled, timeout=10)
    finally:
        runtime.close()
