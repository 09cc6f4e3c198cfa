"""The conversation contract (DESIGN.md §5), one trigger at a time, through the real ``/wechat`` endpoint.

Each test sets a case up as rows (or starts from nothing), then drives the
service only as the WeChat platform would: signed pushes from the emulator to
the app on a loopback server, the inbox and outbox drained by the real
workers. Replies are compared with the catalogue (``messages.text``), in
Chinese by default and in English after the driver sends "English"; the
database is read afterwards for what the message changed (or did not).

Default checklist: items 1-3 are the reporter's (A), item 4 is the other
driver's (B). The desk (``tests.support.chat.open_desk``) offers a ready case
the slots at T0+45 min, +2 h and +4 h; booked cases hold the +4 h slot.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from accident_service.messages import text as t
from accident_service.models import (
    Appointment,
    AppointmentStatus,
    AuditEvent,
    Case,
    CaseStatus,
    DriverPreference,
    Notification,
    Party,
    PartyRole,
    Photo,
    PhotoStatus,
    Slot,
    WorkStatus,
)
from accident_service.notify.notices import evidence_number
from tests.support.chat import (
    A,
    B,
    C,
    LANGUAGES,
    OPENID,
    ROLES,
    QuickLiveServer,
    case_of,
    last,
    open_desk,
    photo,
    post_file,
    post_media_message,
    say,
    seed,
    speak,
    spread,
)
from tests.support.live import drain

S = CaseStatus
ITEM_CODES = {1: "scene", 2: "collision", 3: "plate_a", 4: "plate_b"}
OWN = {PartyRole.A: (1, 2, 3), PartyRole.B: (4,)}


@pytest.fixture
def live_app(wechat_runtime, wechat):
    """As tests/conftest.py's, on a server that stops without waiting out werkzeug's half-second poll."""
    from accident_service import create_app

    server = QuickLiveServer(create_app(runtime=wechat_runtime)).start()
    wechat.callback_url = server.url + "/wechat"
    yield server
    server.stop()


@pytest.fixture
def desk(live_app, wechat_runtime, clock):
    return open_desk(wechat_runtime, clock.now())


def lines(*parts: str) -> str:
    return "\n".join(parts)


def ask_photo(n: int, lang: str, *, done: int) -> str:
    role = PartyRole.A if n in OWN[PartyRole.A] else PartyRole.B
    return t("conv.ask_photo", lang, n=n, item=t(f"checklist.{ITEM_CODES[n]}", lang), done=done,
             total=len(OWN[role]))


def other(role: PartyRole) -> PartyRole:
    return PartyRole.B if role is PartyRole.A else PartyRole.A


def ids(triples) -> list[str]:
    return [f"{value[-1] if isinstance(value, tuple) else value}-{role.value}-{lang}" for value, role, lang in triples]


def count(runtime, model, *where) -> int:
    with runtime.unit_of_work() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def cases_of(runtime, openid: str) -> list[Case]:
    with runtime.unit_of_work() as session:
        return list(session.scalars(select(Case).join(Party).where(Party.openid == openid).order_by(Case.id)))


def state(runtime, case_id: int) -> dict:
    """What a refused message must not change: the case, its parties, accepted photos, appointments, audit."""
    case = case_of(runtime, case_id)
    return {"case": (case.status, case.version, case.location_lat, case.evidence_fingerprint),
            "parties": [(p.role, p.plate, p.phone, p.retake_item) for p in case.parties],
            "photos": sorted((p.item, p.sha256) for p in case.photos if p.status is PhotoStatus.ACCEPTED),
            "appointments": [(a.slot_id, a.status) for a in case.appointments],
            "audit": count(runtime, AuditEvent, AuditEvent.case_id == case_id)}


# -- start a case: menu click REPORT_ACCIDENT, or text 快处 / report / 事故快处 ----------------------------------------

REPORT = [("click", "REPORT_ACCIDENT"), ("text", "快处"), ("text", "report"), ("text", "事故快处")]


def send_report(wechat, openid: str, how: str, what: str) -> None:
    response = wechat.post_click(openid, what) if how == "click" else wechat.post_text(openid, what)
    assert response.text == "success"


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize(("how", "what"), REPORT, ids=[w for _, w in REPORT])
def test_report_without_a_case_starts_one_with_the_join_invite_and_asks_for_photo_1(
        wechat, wechat_runtime, desk, how, what, lang):
    speak(wechat, wechat_runtime, A, lang)
    send_report(wechat, A, how, what)
    drain(wechat_runtime)

    (case,) = cases_of(wechat_runtime, A)
    assert case.status is S.DRAFT and len(case.join_code) == 6
    assert case.join_qr_url and "showqrcode" in case.join_qr_url
    assert last(wechat, A) == lines(t("conv.case_started", lang, case_no=case.case_no),
                                    t("conv.join_invite", lang, join_code=case.join_code, qr_url=case.join_qr_url),
                                    ask_photo(1, lang, done=0))
    assert case_of(wechat_runtime, case.id).parties[0].language == lang


@pytest.mark.parametrize(("what", "role", "lang"), spread(REPORT), ids=ids(spread(REPORT)))
def test_report_in_an_open_draft_resumes_it_with_the_senders_own_next_step(wechat, wechat_runtime, desk, what,
                                                                          role, lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, photos=(1,), location=False, details=False)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    send_report(wechat, OPENID[role], *what)
    drain(wechat_runtime)

    case = case_of(wechat_runtime, case_id)
    step = ask_photo(2, lang, done=1) if role is PartyRole.A else ask_photo(4, lang, done=0)
    assert last(wechat, OPENID[role]) == lines(t("conv.case_resumed", lang, case_no=case.case_no), step)
    assert [c.id for c in cases_of(wechat_runtime, OPENID[role])] == [case_id]


@pytest.mark.parametrize(("what", "role", "lang"), spread(REPORT), ids=ids(spread(REPORT)))
def test_report_in_a_booked_case_says_where_things_stand(wechat, wechat_runtime, desk, what, role, lang):
    case_id = seed(wechat_runtime, desk, S.BOOKED)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    send_report(wechat, OPENID[role], *what)
    drain(wechat_runtime)

    assert last(wechat, OPENID[role]) == status_reply(wechat_runtime, case_id, lang)
    assert case_of(wechat_runtime, case_id).status is S.BOOKED


def status_reply(runtime, case_id: int, lang: str, detail: str | None = None) -> str:
    case = case_of(runtime, case_id)
    if detail is None:
        (appointment,) = [a for a in case.appointments if a.status is not AppointmentStatus.RESCHEDULED]
        slot = appointment.slot
        from accident_service.messages import time_window

        detail = t("booking.summary", lang, station=slot.station.name, address=slot.station.address,
                   time=time_window(slot.starts_at, slot.ends_at, slot.station.timezone, lang))
    return t("conv.status", lang, case_no=case.case_no, state=t(f"state.{case.status.value}", lang), detail=detail)


# -- image (and a file from the chat): the sender's next own checklist item ------------------------------------------


def post_photo(wechat, openid: str, kind: str, media_id: str) -> None:
    response = wechat.post_image(openid, media_id) if kind == "image" else post_file(wechat, openid, media_id)
    assert response.text == "success"


PHOTO_KINDS = ("image", "file")


@pytest.mark.parametrize(("kind", "role", "lang"), spread(PHOTO_KINDS), ids=ids(spread(PHOTO_KINDS)))
def test_a_photo_fills_the_senders_next_own_item_and_replies_progress(wechat, wechat_runtime, desk, kind, role,
                                                                      lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, photos=(1,), location=False, details=False)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    post_photo(wechat, OPENID[role], kind, photo(wechat, "p"))
    drain(wechat_runtime)

    case = case_of(wechat_runtime, case_id)
    mine = sorted(p.item for p in case.photos if p.status is PhotoStatus.ACCEPTED
                  and p.party_id == case.party(role).id)
    if role is PartyRole.A:
        assert mine == [1, 2]
        expected = lines(t("conv.photo_received", lang, received=2, total=3), ask_photo(3, lang, done=2))
    else:
        assert mine == [4]
        expected = lines(t("conv.photo_received", lang, received=1, total=1), t("conv.ask_plate", lang))
    assert last(wechat, OPENID[role]) == expected


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("kind", PHOTO_KINDS)
def test_a_photo_without_a_case_starts_one_and_counts_as_photo_1(wechat, wechat_runtime, desk, kind, lang):
    speak(wechat, wechat_runtime, A, lang)
    post_photo(wechat, A, kind, photo(wechat, "first"))
    drain(wechat_runtime)

    (case,) = cases_of(wechat_runtime, A)
    case = case_of(wechat_runtime, case.id)
    assert [(p.item, p.status) for p in case.photos] == [(1, PhotoStatus.ACCEPTED)]
    assert last(wechat, A) == lines(t("conv.case_started", lang, case_no=case.case_no),
                                    t("conv.join_invite", lang, join_code=case.join_code, qr_url=case.join_qr_url),
                                    t("conv.photo_received", lang, received=1, total=3), ask_photo(2, lang, done=1))


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_too_small_photo_asks_for_the_original_without_pixel_jargon(wechat, wechat_runtime, desk, lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, photos=False, location=False, details=False)
    speak(wechat, wechat_runtime, A, lang)
    wechat.post_image(A, photo(wechat, "small", 640, 480))
    drain(wechat_runtime)

    reply = last(wechat, A)
    assert reply == lines(t("photos.reject.too_small", lang), ask_photo(1, lang, done=0))
    assert "像素" not in reply and "px" not in reply.lower()
    assert "原图" in reply if lang == "zh" else "original" in reply
    case = case_of(wechat_runtime, case_id)
    assert [(p.status, p.reject_code) for p in case.photos] == [(PhotoStatus.REJECTED, "too_small")]


@pytest.mark.parametrize("lang", LANGUAGES)
def test_photos_a_and_b_send_at_the_same_moment_land_in_their_own_items(wechat, wechat_runtime, desk, lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, photos=False, location=False, details=False)
    for openid in (A, B):
        speak(wechat, wechat_runtime, openid, lang)
    wechat.post_image(A, photo(wechat, "a"))
    wechat.post_image(B, photo(wechat, "b"))
    drain(wechat_runtime)  # both wait in the inbox, processed one after the other

    case = case_of(wechat_runtime, case_id)
    by_party = {p.role: p.id for p in case.parties}
    assert sorted((p.item, p.party_id) for p in case.photos if p.status is PhotoStatus.ACCEPTED) == \
        [(1, by_party[PartyRole.A]), (4, by_party[PartyRole.B])]
    assert last(wechat, A) == lines(t("conv.photo_received", lang, received=1, total=3), ask_photo(2, lang, done=1))
    assert last(wechat, B) == lines(t("conv.photo_received", lang, received=1, total=1), t("conv.ask_plate", lang))


# -- location -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_reporters_location_is_saved_and_the_next_step_follows(wechat, wechat_runtime, desk, lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, location=False, details=False)
    speak(wechat, wechat_runtime, A, lang)
    wechat.post_location(A, 23.1291, 113.327, label="天河路口")
    drain(wechat_runtime)

    assert (case_of(wechat_runtime, case_id).location_lat, case_of(wechat_runtime, case_id).location_lng) == \
        (23.1291, 113.327)
    assert last(wechat, A) == lines(t("conv.location_saved", lang, label="天河路口"), t("conv.ask_plate", lang))


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_other_drivers_location_is_refused_and_changes_nothing(wechat, wechat_runtime, desk, lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, location=False, details=False)
    speak(wechat, wechat_runtime, B, lang)
    before = state(wechat_runtime, case_id)
    wechat.post_location(B, 23.2, 113.4, label="别处")
    drain(wechat_runtime)

    assert last(wechat, B) == t("conv.location_reporter_only", lang)
    assert state(wechat_runtime, case_id) == before


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_location_without_a_case_says_there_is_none(wechat, wechat_runtime, desk, lang):
    speak(wechat, wechat_runtime, A, lang)
    wechat.post_location(A, 23.2, 113.4, label="x")
    drain(wechat_runtime)
    assert last(wechat, A) == t("conv.no_case", lang)
    assert cases_of(wechat_runtime, A) == []
