"""Two drivers, from the menu click to both holding the booking notice — only signed XML and the emulator."""

from __future__ import annotations

import re
import time

from sqlalchemy import func, select

from accident_service.messages import text
from accident_service.models import (
    Appointment,
    AppointmentStatus,
    Case,
    CaseStatus,
    InboundMessage,
    Party,
    PartyRole,
    Photo,
    PhotoStatus,
    WorkStatus,
)
from accident_service.sandbox.images import make_jpeg
from tests.support.flows import report_until_ready
from tests.support.live import drain

A, B = "oDriverA0000000000000000001", "oDriverB0000000000000000002"


def test_two_drivers_from_menu_click_to_booking_notice(wechat, live_app, wechat_runtime, stations):
    case = report_until_ready(wechat, wechat_runtime, A, B)
    assert case.status is CaseStatus.READY

    to_a, to_b = wechat.messages_to(A), wechat.messages_to(B)
    assert any("1/3" in m for m in to_a) and any("3/3" in m for m in to_a)
    assert any("扫码" in m and "showqrcode" in m for m in to_a)  # the join QR went out
    assert any("您已加入案件" in m for m in to_b) and any("1/1" in m for m in to_b)
    offer = to_b[-1]  # B completed the case: B has the list, A is told B is choosing
    assert re.search(r"^1\. ", offer, re.M), offer
    # The note that B joined rode with the next thing A needed: that B is choosing a time.
    assert to_a[-1] == "\n".join([text("notice.joined", "zh", case_no=case.case_no),
                                  text("notice.ready", "zh", case_no=case.case_no)])

    wechat.post_text(B, "1")
    drain(wechat_runtime)

    with wechat_runtime.unit_of_work() as session:
        case = session.get(Case, case.id)
        assert case.status is CaseStatus.BOOKED
        appointment = session.scalar(select(Appointment).where(Appointment.case_id == case.id))
        assert appointment.status is AppointmentStatus.BOOKED
        fingerprint = case.evidence_fingerprint
        assert fingerprint and len(fingerprint) == 16
        station_name = appointment.slot.station.name
        case_no = case.case_no
    for driver in (A, B):
        notice = wechat.messages_to(driver)[-1]
        evidence_no = f"{fingerprint[:4].upper()}-{fingerprint[4:8].upper()}"
        assert case_no in notice and station_name in notice and evidence_no in notice, notice
        assert "撤离现场" in notice  # both may now leave the scene


def test_english_driver_gets_english_replies(wechat, live_app, wechat_runtime):
    wechat.post_text(A, "report")
    wechat.post_text(A, "english")
    wechat.post_text(A, "status")
    drain(wechat_runtime)
    last = wechat.messages_to(A)[-1]
    assert last.startswith("Case "), last
    assert "photo 1:" in last


def test_a_chosen_language_outlives_the_case(wechat, live_app, wechat_runtime):
    wechat.post_text(A, "English")  # before any case
    wechat.post_text(A, "report")
    drain(wechat_runtime)
    assert wechat.messages_to(A)[-1].splitlines()[-1].startswith("Please send photo 1:"), wechat.messages_to(A)
    wechat.post_text(A, "withdraw")
    wechat.post_text(A, "confirm withdraw")
    wechat.post_text(A, "status")  # no open case now: how the last one ended
    drain(wechat_runtime)
    assert wechat.messages_to(A)[-1].startswith("You withdrew case ")
    wechat.post_text(A, "中文")
    wechat.post_text(A, "report")
    drain(wechat_runtime)
    assert wechat.messages_to(A)[-1].splitlines()[-1].startswith("请拍照片1：")


def test_unclear_text_mid_case_gets_the_next_step_not_the_general_help(wechat, live_app, wechat_runtime):
    wechat.post_text(A, "快处")
    wechat.post_text(A, "hello")
    drain(wechat_runtime)
    assert wechat.messages_to(A)[-1] == "\n".join([text("conv.not_understood", "zh"),
                                                   text("conv.ask_photo", "zh", n=1,
                                                        item=text("checklist.scene", "zh"))])


def test_an_unreadable_location_is_refused_and_changes_nothing(wechat, live_app, wechat_runtime):
    wechat.post_text(A, "快处")
    drain(wechat_runtime)
    # (0, 0): what a phone sends with no fix yet (acceptance pass: taken, and the nearest desk offered 12,000 km off)
    odd = (("nan", "113.3"), ("23.1", "inf"), ("123.4", "113.3"), ("23.1", "500.1"), ("abc", ""), ("0", "0.0"))
    for msg_id, (lat, lng) in enumerate(odd, start=880001):
        wechat.post_raw(
            "<xml><ToUserName>gh_x</ToUserName><FromUserName>" + A + "</FromUserName><CreateTime>1764036000"
            f"</CreateTime><MsgType>location</MsgType><Location_X>{lat}</Location_X><Location_Y>{lng}</Location_Y>"
            f"<Scale>15</Scale><Label>x</Label><MsgId>{msg_id}</MsgId></xml>")
        drain(wechat_runtime)  # the driver reads each refusal before trying again (WECHAT.md §5 allowances)
    assert wechat.messages_to(A)[-6:] == [text("conv.location_invalid", "zh")] * 6
    with wechat_runtime.unit_of_work() as session:
        case = session.scalars(select(Case)).one()
        assert case.location_lat is None and case.location_lng is None
        assert session.scalar(select(func.count()).select_from(InboundMessage)
                              .where(InboundMessage.status == WorkStatus.FAILED)) == 0


def test_scanning_an_unknown_case_qr_says_the_code_is_stale(wechat, live_app, wechat_runtime):
    wechat.post_scan(B, "join:000000")
    drain(wechat_runtime)
    assert wechat.messages_to(B)[-1] == text("conv.join_refused.unknown_qr", "zh")


def test_rejected_photo_gets_a_reason_and_changes_no_progress(wechat, live_app, wechat_runtime):
    wechat.post_click(A, "REPORT_ACCIDENT")
    drain(wechat_runtime)
    media_id = wechat.add_media("blurred", make_jpeg("blurred", 1600, 1200, blur_radius=12))
    wechat.post_image(A, media_id)
    drain(wechat_runtime)
    replies = wechat.messages_to(A)
    assert any("模糊" in m for m in replies), replies
    assert not any("1/4" in m and "已收到" in m for m in replies)
    with wechat_runtime.unit_of_work() as session:
        photo = session.scalar(select(Photo))
        assert photo.status is PhotoStatus.REJECTED and photo.reject_code == "too_blurry"
        assert photo.object_key  # kept for the record all the same


def test_retake_replaces_the_item_and_keeps_the_old_photo(wechat, live_app, wechat_runtime):
    wechat.post_click(A, "REPORT_ACCIDENT")
    wechat.post_image(A, wechat.add_media("p1", make_jpeg("p1", 1600, 1200)))
    wechat.post_image(A, wechat.add_media("p2", make_jpeg("p2", 1600, 1200)))
    wechat.post_text(A, "重拍 1")
    wechat.post_image(A, wechat.add_media("p1b", make_jpeg("p1b", 1600, 1200)))
    drain(wechat_runtime)
    with wechat_runtime.unit_of_work() as session:
        rows = session.scalars(select(Photo).order_by(Photo.id)).all()
        assert [(p.item, p.status) for p in rows] == [
            (1, PhotoStatus.SUPERSEDED), (2, PhotoStatus.ACCEPTED), (1, PhotoStatus.ACCEPTED)]
    assert any("照片1已重拍" in m for m in wechat.messages_to(A))


def test_join_by_code_and_refusals(wechat, live_app, wechat_runtime):
    wechat.post_text(A, "快处")
    drain(wechat_runtime)
    with wechat_runtime.unit_of_work() as session:
        code = session.scalar(select(Case.join_code))
    wechat.post_text(A, code)  # own case
    wechat.post_text(B, "000000" if code != "000000" else "111111")  # unknown
    wechat.post_text(B, code)
    drain(wechat_runtime)
    assert any("自己报的案件" in m for m in wechat.messages_to(A))
    assert any("加入码无效" in m for m in wechat.messages_to(B))
    assert any("您已加入案件" in m for m in wechat.messages_to(B))
    with wechat_runtime.unit_of_work() as session:
        roles = {p.openid: p.role for p in session.scalars(select(Party))}
    assert roles == {A: PartyRole.A, B: PartyRole.B}


def test_a_push_retried_three_times_has_one_effect(wechat, live_app, wechat_runtime):
    """The platform re-sends a push it got no answer for; same MsgId, one case, one reply."""
    for _ in range(3):
        assert wechat.post_text(A, "快处", msg_id=424242).text == "success"
    drain(wechat_runtime)
    with wechat_runtime.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(Case)) == 1
        assert session.scalar(select(func.count()).select_from(InboundMessage)) == 1
    assert sum("已为您登记" in m for m in wechat.messages_to(A)) == 1


def test_inline_processing_answers_without_the_scheduler(wechat, wechat_settings_overrides, clock):
    """With INBOX_PROCESS_INLINE the web process answers by itself (the scheduler only sweeps)."""
    from accident_service import create_app
    from accident_service.runtime import build_runtime
    from accident_service.settings import load_settings
    from tests.support.live import LiveServer

    runtime = build_runtime(load_settings({**wechat_settings_overrides, "INBOX_PROCESS_INLINE": True},
                                          environ={}), clock=clock)
    server = LiveServer(create_app(runtime=runtime)).start()
    try:
        wechat.callback_url = server.url + "/wechat"
        wechat.post_text(A, "快处")
        wechat.wait_for_sent(lambda m: m["touser"] == A and "已为您登记" in (m["text"] or ""), timeout=10)
    finally:
        server.stop()
        from accident_service.wechat.worker_pool import shutdown_pools

        shutdown_pools()
        runtime.close()
    with runtime.unit_of_work() as session:
        assert session.scalar(select(InboundMessage.status)) is WorkStatus.DONE


def test_inline_a_text_is_answered_while_other_drivers_photos_hold_every_photo_thread(wechat, wechat_settings_overrides,
                                                                                       clock):
    """Photos and texts have their own threads in the web process: a slot pick never queues behind photos."""
    from accident_service import create_app
    from accident_service.runtime import build_runtime
    from accident_service.settings import load_settings
    from accident_service.wechat.worker_pool import LANES, shutdown_pools
    from tests.support.live import LiveServer

    runtime = build_runtime(load_settings({**wechat_settings_overrides, "INBOX_PROCESS_INLINE": True},
                                          environ={}), clock=clock)
    server = LiveServer(create_app(runtime=runtime)).start()
    photographers = [f"oLanePhoto{n:02d}" for n in range(LANES["photo"] + 1)]
    try:
        wechat.callback_url = server.url + "/wechat"
        for openid in photographers:
            wechat.post_text(openid, "快处")
        wechat.wait_for_sent(lambda m: "已为您登记" in (m["text"] or ""), timeout=10, count=len(photographers))
        wechat.hold("media/get")
        for n, openid in enumerate(photographers):
            wechat.post_image(openid, wechat.add_media(f"lane-{n}", make_jpeg(f"lane-{n}", 1600, 1200)))
        wechat.wait_until_held("media/get", count=LANES["photo"])  # every photo thread is inside a download
        started = time.monotonic()
        wechat.post_text(A, "快处")
        wechat.wait_for_sent(lambda m: m["touser"] == A and "已为您登记" in (m["text"] or ""), timeout=3)
        assert time.monotonic() - started < 3
        assert not any("1/3" in m for openid in photographers for m in wechat.messages_to(openid))  # still held
        wechat.release("media/get")
        wechat.wait_for_sent(lambda m: "1/3" in (m["text"] or ""), timeout=30, count=len(photographers))
    finally:
        wechat.clear_faults()
        server.stop()
        shutdown_pools()
        runtime.close()


def test_the_platform_s_template_result_push_is_stored_answered_with_nothing_and_opens_no_allowance(
        wechat, live_app, wechat_runtime):
    """After each template the platform pushes TEMPLATESENDJOBFINISH (WECHAT.md §5): not the driver's action."""
    from accident_service.models import Notification
    from accident_service.notify import allowance
    from accident_service.outbox import enqueue

    wechat.add_follower(A)  # follows; has done nothing lately, so the notice goes as a template card
    with wechat_runtime.unit_of_work() as session:
        enqueue(session, openid=A, kind="booked", dedupe_key="result:1", now=wechat_runtime.clock.now(),
                notice={"case_no": "20261125-RSLT1", "fingerprint": "0123456789abcdef", "station": "天河事故处理点",
                        "address": "广州市天河路 1 号", "timezone": "Asia/Shanghai",
                        "starts_at": "2026-11-25T06:00:00+00:00", "ends_at": "2026-11-25T06:30:00+00:00", "to": "A"})
    drain(wechat_runtime)
    [card] = wechat.sent_to(A)
    assert card["kind"] == "template"

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with wechat_runtime.unit_of_work() as session:
            if session.scalar(select(func.count()).select_from(InboundMessage).where(InboundMessage.openid == A)):
                break
        time.sleep(0.05)
    drain(wechat_runtime)
    with wechat_runtime.unit_of_work() as session:
        [row] = session.scalars(select(InboundMessage).where(InboundMessage.openid == A)).all()
        assert row.msg_type == "event:templatesendjobfinish" and row.status is WorkStatus.DONE
        assert not allowance.can_send(session, A, wechat_runtime.clock.now())
        assert session.scalar(select(func.count()).select_from(Notification)) == 1  # nothing said back
    assert len(wechat.sent_to(A)) == 1 and wechat.refusal_counts() == {}


def test_a_template_the_person_blocked_is_not_taken_for_delivered_the_notice_goes_with_their_next_message(
        wechat, live_app, wechat_runtime):
    """The platform takes a template to someone who turned the account's messages off, then pushes
    TEMPLATESENDJOBFINISH with ``failed:user block`` (WECHAT.md §5): the notice was never seen, so it waits for
    the person and goes as a text with their next message; no template is tried for them until then."""
    from accident_service.models import Notification
    from accident_service.notify import allowance
    from accident_service.outbox import enqueue

    wechat.add_follower(A)
    wechat.set_template_result(A, "failed:user block")
    notice = {"case_no": "20261125-BLOCK", "fingerprint": "0123456789abcdef", "station": "天河事故处理点",
              "address": "广州市天河路 1 号", "timezone": "Asia/Shanghai",
              "starts_at": "2026-11-25T06:00:00+00:00", "ends_at": "2026-11-25T06:30:00+00:00", "to": "A"}
    with wechat_runtime.unit_of_work() as session:
        notification_id = enqueue(session, openid=A, kind="booked", dedupe_key="blocked:1",
                                  now=wechat_runtime.clock.now(), notice=notice)
    drain(wechat_runtime)
    [taken] = wechat.templates_not_delivered
    assert wechat.sent_to(A) == []

    deadline = time.monotonic() + 10  # the result push comes on the platform's own time
    while time.monotonic() < deadline:
        drain(wechat_runtime)
        with wechat_runtime.unit_of_work() as session:
            row = session.get(Notification, notification_id)
            if row.status is WorkStatus.HELD:
                break
        time.sleep(0.05)
    assert (row.status, row.channel, row.platform_msgid) == (WorkStatus.HELD, None, None), row.last_error
    with wechat_runtime.unit_of_work() as session:
        assert not allowance.templates_reach(session, A)
    with wechat_runtime.unit_of_work() as session:  # a second notice is not tried as a template
        enqueue(session, openid=A, kind="reminder", dedupe_key="blocked:2", now=wechat_runtime.clock.now(),
                notice=notice)
    drain(wechat_runtime)
    assert len(wechat.templates_not_delivered) == 1 and taken["msgid"]

    wechat.post_text(A, "状态")
    drain(wechat_runtime)
    received = wechat.messages_to(A)
    assert len(received) == 3 and received[0].startswith("预约成功") and "20261125-BLOCK" in received[0]
    with wechat_runtime.unit_of_work() as session:
        row = session.get(Notification, notification_id)
        assert (row.status, row.channel) == (WorkStatus.DONE, "wechat")
        assert allowance.templates_reach(session, A)  # they acted: a template may be tried again
    assert wechat.refusal_counts() == {}
