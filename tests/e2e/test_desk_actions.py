"""Desk actions after booking: confirmation and a retake request, told to both drivers."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from accident_service.booking import offers
from accident_service.cases.lifecycle import RequirementMissing, WrongState
from accident_service.cases.service import evidence_fingerprint
from accident_service.desk import actions
from accident_service.messages import text
from accident_service.models import AuditEvent, Case, CaseStatus, Photo, PhotoStatus, Slot
from accident_service.sandbox.images import make_jpeg
from tests.support.flows import report_until_ready
from tests.support.live import drain
from tests.support.reading import read_by

A, B = "oStaffFlowA00000000000000001", "oStaffFlowB00000000000000002"


@pytest.fixture
def booked_case(wechat, live_app, wechat_runtime, stations):
    case = report_until_ready(wechat, wechat_runtime, A, B)
    wechat.post_text(B, "1")  # B completed the case, so the list went to B
    drain(wechat_runtime)
    return case.id


def confirm_appointment(session, case, *, staff, now, settings):
    actions.confirm(session, case, staff=staff, settings=settings, now=now)


def request_retake(session, case, **options):
    actions.request_retake(session, case, **options)


def test_confirmation_is_told_to_both_and_audited(wechat, wechat_runtime, booked_case):
    with wechat_runtime.unit_of_work() as session:
        case = session.get(Case, booked_case)
        confirm_appointment(session, case, staff="officer1", now=wechat_runtime.clock.now(),
                            settings=wechat_runtime.settings)
    drain(wechat_runtime)
    # As a text while a driver's allowance lasts, else as the template card ("预约已确认").
    for driver in (A, B):
        assert any(phrase in read_by(wechat, driver)[-1] for phrase in ("已由民警确认", "预约已确认"))
    with wechat_runtime.unit_of_work() as session:
        case = session.get(Case, booked_case)
        assert case.status is CaseStatus.CONFIRMED
        assert session.scalar(select(AuditEvent.actor).where(AuditEvent.action == "case.confirm")) == "officer1"
        with pytest.raises(WrongState):
            confirm_appointment(session, case, staff="officer1", now=wechat_runtime.clock.now(),
                                settings=wechat_runtime.settings)


def test_retake_request_keeps_the_slot_and_the_new_photo_replaces_the_item(wechat, wechat_runtime, booked_case):
    with wechat_runtime.unit_of_work() as session:
        case = session.get(Case, booked_case)
        slot_booked_before = session.scalar(select(Slot.booked).where(Slot.id == case.appointments[-1].slot_id))
        old_fingerprint = case.evidence_fingerprint
        request_retake(session, case, item=2, reason="碰撞部位看不清", staff="officer1",
                       settings=wechat_runtime.settings, now=wechat_runtime.clock.now())
    drain(wechat_runtime)
    assert "补拍照片2" in read_by(wechat, A)[-1] and "碰撞部位看不清" in read_by(wechat, A)[-1]
    assert "已请对方补拍照片2" in read_by(wechat, B)[-1]

    wechat.post_image(A, wechat.add_media("retake-2", make_jpeg("retake-2", 1600, 1200)))
    drain(wechat_runtime)
    with wechat_runtime.unit_of_work() as session:
        case = session.get(Case, booked_case)
        assert case.status is CaseStatus.BOOKED
        assert session.scalar(select(Slot.booked).where(Slot.id == case.appointments[-1].slot_id)) \
            == slot_booked_before
        item2 = session.scalars(select(Photo).where(Photo.case_id == case.id, Photo.item == 2)
                                .order_by(Photo.id)).all()
        assert [p.status for p in item2] == [PhotoStatus.SUPERSEDED, PhotoStatus.ACCEPTED]
        assert case.evidence_fingerprint != old_fingerprint
        new_fingerprint = case.evidence_fingerprint
        assert new_fingerprint == evidence_fingerprint(case)
    for driver in (A, B):  # both can check the evidence against the new evidence number
        assert f"{new_fingerprint[:4].upper()}-{new_fingerprint[4:8].upper()}" in wechat.messages_to(driver)[-1]


def reason_then_visit(runtime, case_id: int, reply: str) -> str:
    """A refusal's reason, checked to be followed by what holds now, the booked visit (README, "What drivers can
    send": the reason and the next step together)."""
    reason, _, visit = reply.partition("\n")
    with runtime.unit_of_work() as session:
        assert visit == offers.appointment_summary(session.get(Case, case_id), "zh"), reply
    return reason


@pytest.mark.parametrize("driver", [A, B])
def test_after_booking_a_driver_cannot_change_the_evidence(wechat, wechat_runtime, booked_case, driver):
    """The booking notice's fingerprint vouches for the photos: without a desk request they are sealed."""
    with wechat_runtime.unit_of_work() as session:
        fingerprint = session.get(Case, booked_case).evidence_fingerprint
        accepted_before = session.scalars(select(Photo.id).where(Photo.case_id == booked_case,
                                                                 Photo.status == PhotoStatus.ACCEPTED)).all()
    wechat.post_text(driver, "重拍 2")
    drain(wechat_runtime)
    assert wechat.messages_to(driver)[-1] == text("photos.reject.evidence_locked", "zh")
    wechat.post_image(driver, wechat.add_media(f"late-{driver}", make_jpeg(f"late-{driver}", 1600, 1200)))
    drain(wechat_runtime)
    assert wechat.messages_to(driver)[-1] == text("photos.reject.evidence_locked", "zh")
    for change in ("粤A54321", "13700137000"):  # plates and phones are sealed like the photos
        wechat.post_text(driver, change)
        drain(wechat_runtime)
        reply = wechat.messages_to(driver)[-1]
        assert reason_then_visit(wechat_runtime, booked_case, reply) == text("conv.details_sealed", "zh")
    wechat.post_location(driver, 23.2, 113.2, "别处")
    drain(wechat_runtime)
    reason = reason_then_visit(wechat_runtime, booked_case, wechat.messages_to(driver)[-1])
    assert reason == text("conv.details_sealed" if driver == A else "conv.location_reporter_only", "zh")
    with wechat_runtime.unit_of_work() as session:
        case = session.get(Case, booked_case)
        assert case.evidence_fingerprint == fingerprint == evidence_fingerprint(case)
        assert session.scalars(select(Photo.id).where(Photo.case_id == booked_case,
                                                      Photo.status == PhotoStatus.ACCEPTED)).all() == accepted_before
        late = session.scalars(select(Photo).where(Photo.case_id == booked_case).order_by(Photo.id.desc())).first()
        assert (late.status, late.reject_code) == (PhotoStatus.REJECTED, "evidence_locked")
        assert wechat_runtime.store.exists(late.object_key)  # kept all the same: nothing a driver sent is lost
        assert [(p.plate, p.phone) for p in case.parties] == [("粤A12345", "13800138000"),
                                                               ("粤BD12345", "13900139000")]
        assert (case.location_lat, case.location_label) == (23.1066, "广州塔附近")


def test_bad_retake_requests_change_nothing(wechat_runtime, booked_case):
    with wechat_runtime.unit_of_work() as session:
        case = session.get(Case, booked_case)
        for item, reason in ((0, "x"), (9, "x"), (1, "  ")):
            with pytest.raises(RequirementMissing):
                request_retake(session, case, item=item, reason=reason, staff="officer1",
                               settings=wechat_runtime.settings, now=wechat_runtime.clock.now())
        assert case.status is CaseStatus.BOOKED


def test_retakes_asked_of_both_drivers_keep_the_case_open_until_both_are_in(wechat, wechat_runtime, booked_case):
    now = wechat_runtime.clock.now()
    with wechat_runtime.unit_of_work() as session:
        case = session.get(Case, booked_case)
        item_of = {"A": 2, "B": 4}  # item 4, B's own plate, is B's photo
        for role in ("A", "B"):
            request_retake(session, case, item=item_of[role], reason="看不清", staff="officer1",
                           settings=wechat_runtime.settings, now=now)
        with pytest.raises(RequirementMissing):  # one pending photo per driver
            request_retake(session, case, item=item_of["A"], reason="again", staff="officer1",
                           settings=wechat_runtime.settings, now=now)
    drain(wechat_runtime)
    wechat.post_image(A, wechat.add_media("retake-a", make_jpeg("retake-a", 1600, 1200)))
    drain(wechat_runtime)
    with wechat_runtime.unit_of_work() as session:
        assert session.get(Case, booked_case).status is CaseStatus.RETAKE_REQUESTED  # B's photo still to come
    wechat.post_image(B, wechat.add_media("retake-b", make_jpeg("retake-b", 1600, 1200)))
    drain(wechat_runtime)
    with wechat_runtime.unit_of_work() as session:
        case = session.get(Case, booked_case)
        assert case.status is CaseStatus.BOOKED
        assert case.evidence_fingerprint == evidence_fingerprint(case)
        latest = {p.item: p for p in case.photos if p.status is PhotoStatus.ACCEPTED}
        assert all(latest[item].media_id in ("retake-a", "retake-b") for item in item_of.values())
