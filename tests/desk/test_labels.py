"""Stored codes on the case page in the officer's words (acceptance pass: the audit trail read `set_detail`,
`no_show` and `booked`, and a dropped notice its English last_error, on the Chinese desk)."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from accident_service.cases.lifecycle import TABLE
from accident_service.desk import actions, labels
from accident_service.messages import text
from accident_service.models import Appointment, AuditEvent, Case, Notification, Station, WorkStatus
from accident_service.notify.dispatch import MOOT, UNCONFIRMED, WAITING
from tests.booking import factories as make
from tests.conftest import T0
from tests.desk.conftest import sign_in
from tests.desk.test_views import post_form


def section(page: str, title_id: str) -> str:
    """The visible text of the page's panel headed ``title_id``."""
    return visible_text(page.split(f'aria-labelledby="{title_id}"')[1].split("</section>")[0])


def visible_text(page: str) -> str:
    """``page``'s text, tags out, spaces squeezed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def test_the_audit_trail_says_what_happened_in_the_officers_language(client, desk, runtime):
    sign_in(client, "th")
    post_form(client, desk["case_no"], "confirm")
    with runtime.unit_of_work() as session:
        session.add(AuditEvent(at=T0, actor_type="system", actor=None, action="case.something_new",
                               case_id=desk["case_id"], after={"status": "no_such_status"}))
    for lang in ("zh", "en"):
        client.set_cookie("desk_lang", lang)
        audit = section(client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True), "audit-title")
        for key in ("desk.action.confirm", "desk.audit.action.case.book", "desk.audit.actor.system"):
            assert text(key, lang, name="").strip() in audit, (lang, key)
        assert text("desk.audit.actor.staff", lang, name="th") in audit
        assert f"{text('desk.status.booked', lang)} → {text('desk.status.confirmed', lang)}" in audit
        assert text("desk.queue.status", lang) in audit
        assert not re.search(r"case\.(confirm|book)\b|\bbooked\b|\bconfirmed\b|\bstatus=", audit), (lang, audit)
        assert "case.something_new" in audit and "no_such_status" in audit  # unknown: the code as it is


def test_the_audit_names_a_slot_by_its_time_and_another_station_s_by_its_name(app, client, desk, runtime):
    """Acceptance pass: "时段编号：- → 1", then "1 → 2": an officer cannot tell which visit an id was."""
    with runtime.unit_of_work() as session:
        yx = session.scalar(select(Station).where(Station.code == "GZ-YX"))
        away = make.slot(session, yx, T0 + timedelta(hours=6)).id
    sign_in(client, "th")
    page = client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True)
    later = re.findall(r'<option value="(\d+)">', page.split('id="reschedule-slot"')[1].split("</select>")[0])[0]
    post_form(client, desk["case_no"], "reschedule", slot_id=later)
    audit = section(client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True), "audit-title")
    assert "时段：11-25 14:00–14:30" in audit  # booked (nothing before)
    assert "时段：11-25 14:00–14:30 → 11-25 15:00–15:30" in audit  # moved by the desk
    with runtime.unit_of_work() as session:  # moved to another station (the API's all-stations token may)
        actions.reschedule(session, session.get(Case, desk["case_id"]), away, staff="cms", settings=runtime.settings,
                           now=T0)
    supervisor = app.test_client()
    sign_in(supervisor, "sup")  # the page is the new station's now
    audit = section(supervisor.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True), "audit-title")
    assert "11-25 15:00–15:30 · 天河事故处理点 → 11-25 16:00–16:30" in audit
    assert not re.search(r"时段：-? ?→? ?\d+\b(?![-:])", audit), audit


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_every_action_the_case_audits_has_words_in_both_languages(app, lang):
    codes = [f"case.{t.name}" for t in TABLE if t.records] + ["case.started", "case.join_unknown_code",
                                                            "case.purged"]
    with app.test_request_context(headers={"Cookie": f"desk_lang={lang}"}):
        assert [code for code in codes if labels.audit_action(code) == code] == []
        assert labels.audit_actor("party", "A") == text("desk.case.party_a", lang)


@pytest.mark.parametrize(("last_error", "key", "detail"), [
    (MOOT, "moot", None),
    ("template not delivered: failed:user block; not sent again: a later notice about the case went to them",
     "template_moot", "failed:user block"),
    ("template not delivered: failed:system failed", "template_not_delivered", "failed:system failed"),
    (WAITING, "waiting", None),
    (f"{WAITING}; 1014: the number is blacklisted", "sms_refused", "1014: the number is blacklisted"),
    ("carried by their next message", "carried", None),
    (UNCONFIRMED, "unconfirmed", None),
    ("purged by retention before it was sent", "purged", None),
    ("bad payload: 'slot'", "bad_payload", "'slot'"),
    ("lease expired on each of 5 attempts (worker died or hung)", "lease_expired", None),
    ("45047: out of response count limit", "other", "45047: out of response count limit"),
])
def test_a_notice_reason_is_told_in_words_with_the_raw_text_only_where_it_adds(app, last_error, key, detail):
    for lang in ("zh", "en"):
        with app.test_request_context(headers={"Cookie": f"desk_lang={lang}"}):
            assert labels.notice_reason(last_error) == labels.NoticeReason(
                text(f"desk.notice_reason.{key}", lang), detail)


def test_a_dropped_notice_says_why_in_the_officers_language(client, desk, runtime):
    sign_in(client, "th")
    with runtime.unit_of_work() as session:
        appointment_id = session.scalar(select(Appointment.id).where(Appointment.case_id == desk["case_id"]))
        session.add(Notification(openid="oDeskMoot", kind="ready", language="zh", case_id=desk["case_id"],
                                 payload={"text": "moot"}, dedupe_key="moot:desk", next_attempt_at=T0, created_at=T0,
                                 status=WorkStatus.DROPPED, last_error=MOOT))
        session.add(Notification(openid="oDeskReminder", kind="reminder", language="zh", case_id=desk["case_id"],
                                 payload={"text": "reminder"}, dedupe_key=f"reminder:{appointment_id}:A",
                                 next_attempt_at=T0, created_at=T0))
    post_form(client, desk["case_no"], "cancel", reason="车辆已送修")  # the reminder goes as it really does
    for lang in ("zh", "en"):
        client.set_cookie("desk_lang", lang)
        notices = section(client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True), "notices-title")
        assert text("desk.notice_reason.moot", lang) in notices
        cancelled = text("desk.appointment_status.cancelled", lang)
        assert text("desk.notice_reason.appointment_changed", lang, status=cancelled) in notices
        assert MOOT not in notices and f"appointment {appointment_id} cancelled" not in notices



def test_an_unchanged_value_shows_once_and_a_flag_in_words(app):
    """"状态：草稿 → 草稿" and "替换照片：False" on the Chinese desk (before-stop review of the page)."""
    with app.test_request_context():
        changes = labels.audit_changes({"status": "draft", "replaced": False, "gone": "x"},
                                       {"status": "draft", "replaced": True, "item": 2})
    by_field = {change.field: (change.before, change.after) for change in changes}
    assert by_field == {"状态": (None, "草稿"), "替换照片": ("否", "是"), "gone": ("x", "-"), "照片项": (None, "2")}
    with app.test_request_context():  # a cancelled appointment: its slot is gone (acceptance pass: shown as kept)
        cancelled = labels.audit_changes({"status": "booked", "slot_id": 5}, {"status": "ready"})
        started = labels.audit_changes(None, {"status": "draft"})
    assert [(c.before, c.after) for c in cancelled] == [("已预约", "待预约"), ("5", "-")]
    assert [(c.before, c.after) for c in started] == [(None, "草稿")]


def test_times_in_the_station_s_zone_a_token_as_a_token_and_languages_by_name(app):
    """Acceptance pass: "截止（UTC）：2026-12-07T12:19:30.703609+00:00", "民警 token:acc-write", "A (zh)"."""
    with app.test_request_context():
        (due,) = labels.audit_changes(None, {"due_at": "2026-12-07T12:19:30.703609+00:00"}, "Asia/Shanghai")
        assert (due.field, due.after) == ("截止", "12-07 20:19")
        assert labels.audit_actor("staff", "token:acc-write") == "接口令牌 acc-write"
        assert labels.audit_actor("staff", "wang") == "民警 wang"
        assert (labels.language("zh"), labels.language("en"), labels.language("fr")) == ("中文", "英文", "fr")


def test_photo_items_in_the_officer_s_words_and_a_deadline_of_another_day_with_its_date(client, desk):
    """Acceptance pass: items 3 and 4 both read "your car's plate" (the drivers' words), and "retake due 22:43" on
    the next day's queue."""
    client.set_cookie("desk_lang", "en")
    sign_in(client, "th")
    page = html.unescape(client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True))
    assert "3. Party A's plate (Party A)" in page and "4. Party B's plate (Party B)" in page
    assert "your car's plate" not in page
    post_form(client, desk["case_no"], "retake", item="4", reason="glare", deadline_minutes=str(16 * 60))
    parties = section(client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True), "parties-title")
    assert "Owes “4. Party B's plate”, due 11-26 02:00" in parties  # 16 hours on: the next day; the item named
    slot_start = T0.astimezone(ZoneInfo("Asia/Shanghai")) + timedelta(hours=4)  # 11-25 14:00 in Guangzhou
    assert labels.due_time(T0 + timedelta(hours=5), slot_start) == "15:00"
    assert labels.due_time(T0 - timedelta(hours=3), slot_start) == "07:00"  # 23:00 UTC: the 25th in Guangzhou
    assert labels.due_time(T0 - timedelta(hours=12), slot_start) == "11-24 22:00"


def test_a_notice_s_recipient_an_audited_photo_item_and_a_cancelled_appointment_in_the_page_s_words(client, desk):
    """Noticed in review: a notice went "To: B" and a photo "A方拍摄" where the parties are 甲方 and 乙方, the audit
    read "Photo item: 4" with no name, and a cancelled appointment read 已撤销, the word for a case the driver
    withdrew."""
    sign_in(client, "th")
    post_form(client, desk["case_no"], "retake", item="4", reason="glare", deadline_minutes="60")
    for lang in ("zh", "en"):
        client.set_cookie("desk_lang", lang)
        page = client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True)
        notices, audit = section(page, "notices-title"), section(page, "audit-title")
        assert f"{text('desk.party.B', lang)} ({text('desk.language.zh', lang)})" in notices
        assert not re.search(r"(?<!Party )\b[AB] \(", notices)
        photos = section(page, "photos-title")
        assert text("desk.case.photo_by", lang, party=text("desk.party.A", lang)) in photos
        assert not re.search(r"[AB]方|by party", photos)  # "A方拍摄": the parties are 甲方 and 乙方 in Chinese
        item = text("desk.case.photo_item", lang, item=4, name=text("desk.checklist.plate_b", lang))
        assert f"{text('desk.form.item', lang)}{'：' if lang == 'zh' else ': '}{item}" in audit
    sheet = visible_text(client.get(f"/desk/cases/{desk['case_no']}/sheet").get_data(as_text=True))
    assert f"· {text('desk.party.B', 'en')}" in sheet and not re.search(r"· [AB]\b", sheet)  # the photos' takers
    client.set_cookie("desk_lang", "zh")
    post_form(client, desk["case_no"], "cancel", reason="车辆已送修")
    appointment = section(client.get(f"/desk/cases/{desk['case_no']}").get_data(as_text=True), "appointment-title")
    assert "预约状态 已取消" in appointment and "已撤销" not in appointment


def test_an_item_beyond_what_the_page_knows_shows_as_its_number(app):
    with app.test_request_context():
        (known,) = labels.audit_changes(None, {"item": 3}, items={3: "plate_a"})
        (unknown,) = labels.audit_changes(None, {"item": 9}, items={3: "plate_a"})
    assert (known.after, unknown.after) == ("3. 甲方车牌", "9")
