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
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url

from accident_service import create_app
from accident_service.booking.availability import FAR_FROM_EVERY_DESK_KM
from accident_service.booking.geo import nearest
from accident_service.booking.scheduled import send_due_reminders
from accident_service.booking.stations import active_stations
from accident_service.db import Base, make_engine
from accident_service.messages import text as t
from accident_service.messages import time_window
from accident_service.models import (
    ACTIVE_APPOINTMENT_STATUSES,
    AppointmentStatus,
    AuditEvent,
    Case,
    CaseStatus,
    DriverPreference,
    Notification,
    Party,
    PartyRole,
    PhotoStatus,
    Slot,
    WorkStatus,
)
from accident_service.notify.notices import evidence_number
from accident_service.wechat.processing import run_inbox_once
from tests import conftest
from tests.support.chat import (
    LANGUAGES,
    OPENID,
    ROLES,
    A,
    B,
    C,
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

pytestmark = pytest.mark.timeout(60)
S = CaseStatus
ITEM_CODES = {1: "scene", 2: "collision", 3: "plate_a", 4: "plate_b"}
OWN = {PartyRole.A: (1, 2, 3), PartyRole.B: (4,)}
OTHER_LANGUAGE = {"zh": "en", "en": "zh"}


@pytest.fixture
def database_url(tmp_path, _postgres_schema):
    """As tests/conftest.py's, quicker on PostgreSQL, where this module's few hundred tests each commit dozens
    of short transactions: commits do not wait for the disk (a crash of the test server loses nothing that
    matters), and rows are deleted after each test rather than every table truncated (new files each time)."""
    if _postgres_schema is None:
        url = f"sqlite:///{tmp_path}/test.db"
        engine = make_engine(url)
        Base.metadata.create_all(engine)
        engine.dispose()
        yield url
        return
    yield make_url(conftest.POSTGRES_URL).update_query_dict({"options": "-c synchronous_commit=off"}) \
        .render_as_string(hide_password=False)
    with _postgres_schema.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(table.delete())


@pytest.fixture
def live_app(wechat_runtime, wechat):
    """As tests/conftest.py's, on a server that stops without waiting out werkzeug's half-second poll."""
    server = QuickLiveServer(create_app(runtime=wechat_runtime)).start()
    wechat.callback_url = server.url + "/wechat"
    yield server
    server.stop()


@pytest.fixture
def desk(live_app, wechat_runtime, clock, wechat):
    return open_desk(wechat_runtime, clock.now(), wechat)


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


@pytest.mark.parametrize(("role", "lang"), [(r, lang) for r in ROLES for lang in LANGUAGES])
def test_following_again_mid_case_says_the_case_and_the_next_step(wechat, wechat_runtime, desk, role, lang):
    """A driver's pass: a driver who unfollowed and followed again in an open case got the general help."""
    case_id = seed(wechat_runtime, desk, S.DRAFT, photos=(1,), location=False, details=False)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    assert wechat.post_event(OPENID[role], "subscribe").text == "success"
    drain(wechat_runtime)

    step = ask_photo(2, lang, done=1) if role is PartyRole.A else ask_photo(4, lang, done=0)
    case = case_of(wechat_runtime, case_id)
    assert last(wechat, OPENID[role]) == lines(t("conv.case_resumed", lang, case_no=case.case_no), step)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_following_without_a_case_gets_the_help(wechat, wechat_runtime, desk, lang):
    speak(wechat, wechat_runtime, C, lang)
    assert wechat.post_event(C, "subscribe").text == "success"
    drain(wechat_runtime)

    assert last(wechat, C) == t("conv.help", lang)


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
    detail = appointment_summary(runtime, case_id, lang) if detail is None else detail
    return t("conv.status", lang, case_no=case.case_no, state=t(f"state.{case.status.value}", lang), detail=detail)


def visit(runtime, case_id: int, lang: str, slot_id: int | None = None) -> dict[str, str]:
    """Where and when, as notices and summaries show it: of ``slot_id``'s appointment, else the active one."""
    case = case_of(runtime, case_id)
    (appointment,) = [a for a in case.appointments
                      if (a.slot_id == slot_id if slot_id else a.status in ACTIVE_APPOINTMENT_STATUSES)]
    slot, station = appointment.slot, appointment.slot.station
    return {"case_no": case.case_no, "station": station.name, "address": station.address,
            "time": time_window(slot.starts_at, slot.ends_at, station.timezone, lang)}


def appointment_summary(runtime, case_id: int, lang: str) -> str:
    where = visit(runtime, case_id, lang)
    return t("booking.summary", lang, station=where["station"], address=where["address"], time=where["time"])


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
        expected = lines(t("conv.photo_received", lang, n=2, received=2, total=3), ask_photo(3, lang, done=2))
    else:
        assert mine == [4]
        expected = lines(t("conv.photo_received", lang, n=4, received=1, total=1), t("conv.ask_plate", lang))
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
                                    t("conv.photo_received", lang, n=1, received=1, total=3),
                                    ask_photo(2, lang, done=1))


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
def test_a_location_far_from_every_desk_is_saved_and_the_driver_asked_to_check_it(wechat, wechat_runtime, desk, lang):
    """A phone's stale fix, a pin in the wrong town: the booking would then offer a desk at that distance without a
    word (acceptance pass). The place is kept (the desks may be what is missing), and the reporter asked to check."""
    case_id = seed(wechat_runtime, desk, S.DRAFT, location=False, details=False)
    speak(wechat, wechat_runtime, A, lang)
    wechat.post_location(A, 39.9042, 116.4074, label="北京天安门")  # about 1,900 km from the test's desks
    drain(wechat_runtime)

    with wechat_runtime.unit_of_work() as session:
        station, km = nearest(active_stations(session), 39.9042, 116.4074, limit=1)[0]
    assert km > FAR_FROM_EVERY_DESK_KM
    assert (case_of(wechat_runtime, case_id).location_lat, case_of(wechat_runtime, case_id).location_lng) == \
        (39.9042, 116.4074)
    assert last(wechat, A) == lines(t("conv.location_saved", lang, label="北京天安门"),
                                    t("conv.location_far", lang, station=station.name, km=f"{km:.0f}"),
                                    t("conv.ask_plate", lang))


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_other_drivers_location_is_refused_and_changes_nothing(wechat, wechat_runtime, desk, lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, location=False, details=False)
    speak(wechat, wechat_runtime, B, lang)
    before = state(wechat_runtime, case_id)
    wechat.post_location(B, 23.2, 113.4, label="别处")
    drain(wechat_runtime)

    # The reason, then what B is to do instead (acceptance pass: the refusal alone left them without a next step).
    assert last(wechat, B) == lines(t("conv.location_reporter_only", lang), t("conv.ask_plate", lang))
    assert state(wechat_runtime, case_id) == before


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_location_without_a_case_says_there_is_none(wechat, wechat_runtime, desk, lang):
    speak(wechat, wechat_runtime, A, lang)
    wechat.post_location(A, 23.2, 113.4, label="x")
    drain(wechat_runtime)
    assert last(wechat, A) == t("conv.no_case", lang)
    assert cases_of(wechat_runtime, A) == []


# -- plate, phone, both in one message, and what cannot be read ----------------------------------------------------

PLATES = ("粤A12345", "粤AD12345")  # ordinary, small new-energy
PHONES = (("13800138000", "13800138000"), ("+86 139-0013-9000", "13900139000"))


def collecting(runtime, desk, **kwargs) -> int:
    """A draft with every photo and the location: only plates and phones are missing (unless ``details``)."""
    return seed(runtime, desk, S.DRAFT, details=kwargs.pop("details", False), **kwargs)


@pytest.mark.parametrize(("plate", "role", "lang"), spread(PLATES), ids=ids(spread(PLATES)))
def test_a_plate_sets_the_senders_own_plate(wechat, wechat_runtime, desk, plate, role, lang):
    case_id = collecting(wechat_runtime, desk)
    speak(wechat, wechat_runtime, OPENID[role], lang)

    reply = say(wechat, wechat_runtime, OPENID[role], plate)

    assert reply == lines(t("conv.plate_saved", lang, plate=plate), t("conv.ask_phone", lang))
    case = case_of(wechat_runtime, case_id)
    assert (case.party(role).plate, case.party(other(role)).plate) == (plate, None)


@pytest.mark.parametrize(("role", "lang"), [(role, lang) for role in ROLES for lang in LANGUAGES])
def test_the_other_partys_plate_is_refused_and_changes_nothing(wechat, wechat_runtime, desk, role, lang):
    """Acceptance pass: driver B recorded driver A's plate as B's own: one car twice, B's own car unnamed."""
    case_id = collecting(wechat_runtime, desk, details=(other(role),))
    theirs = case_of(wechat_runtime, case_id).party(other(role)).plate
    speak(wechat, wechat_runtime, OPENID[role], lang)
    before = state(wechat_runtime, case_id)

    reply = say(wechat, wechat_runtime, OPENID[role], theirs)

    assert reply.splitlines()[0] == t("conv.plate_is_the_other_partys", lang)
    assert state(wechat_runtime, case_id) == before
    assert case_of(wechat_runtime, case_id).party(role).plate is None


@pytest.mark.parametrize(("phone", "role", "lang"), spread(PHONES), ids=ids(spread([p for _, p in PHONES])))
def test_a_mobile_number_sets_the_senders_own_phone(wechat, wechat_runtime, desk, phone, role, lang):
    typed, stored = phone
    case_id = collecting(wechat_runtime, desk)
    speak(wechat, wechat_runtime, OPENID[role], lang)

    reply = say(wechat, wechat_runtime, OPENID[role], typed)

    assert reply == lines(t("conv.phone_saved", lang, phone=stored), t("conv.ask_plate", lang))
    case = case_of(wechat_runtime, case_id)
    assert (case.party(role).phone, case.party(other(role)).phone) == (stored, None)


def owed(lang: str, *what: str) -> str:
    return ("、" if lang == "zh" else ", ").join(t(f"conv.owed.{w}", lang) for w in what)


BOTH = (("粤A12345 13800138000", "粤A12345", "13800138000"), ("13900139000，粤AD12345", "粤AD12345", "13900139000"))


@pytest.mark.parametrize(("message", "role", "lang"), spread(BOTH), ids=ids(spread([m for m, _, _ in BOTH])))
def test_plate_and_phone_in_one_message_set_both_and_say_what_the_other_driver_owes(
        wechat, wechat_runtime, desk, message, role, lang):
    typed, plate, phone = message
    reply, party = send_details(wechat, wechat_runtime, desk, typed, role, lang)

    assert reply == lines(t("conv.plate_saved", lang, plate=plate), t("conv.phone_saved", lang, phone=phone),
                          t("conv.wait_other", lang, what=owed(lang, "plate", "phone")))  # in the order drivers ask
    assert (party.plate, party.phone) == (plate, phone)


def send_details(wechat, runtime, desk, typed: str, role: PartyRole, lang: str):
    """``typed`` sent in a case collecting plates and phones by a driver speaking ``lang``: (the reply, the
    sender's party after it)."""
    case_id = collecting(runtime, desk)
    speak(wechat, runtime, OPENID[role], lang)
    reply = say(wechat, runtime, OPENID[role], typed)
    return reply, case_of(runtime, case_id).party(role)


HALF_READABLE = (("粤Z1 13800138000", None, "13800138000"), ("粤A12345 1380013800", "粤A12345", None),
                 ("手机13800138000，车牌粤A1234", None, "13800138000"))


@pytest.mark.parametrize(("message", "role", "lang"), spread(HALF_READABLE),
                         ids=ids(spread([m for m, _, _ in HALF_READABLE])))
def test_a_plate_and_a_phone_one_of_them_unreadable_keeps_the_other_and_asks_for_it_again(
        wechat, wechat_runtime, desk, message, role, lang):
    """Acceptance pass: "粤Z1 13800138000" was "not understood", and the mobile asked for again later."""
    typed, plate, phone = message
    reply, party = send_details(wechat, wechat_runtime, desk, typed, role, lang)

    kept = t("conv.plate_saved", lang, plate=plate) if plate else t("conv.phone_saved", lang, phone=phone)
    assert reply == lines(kept, t("conv.phone_format" if plate else "conv.plate_format", lang))
    assert (party.plate, party.phone) == (plate, phone)


@pytest.mark.parametrize(("role", "lang"), [(r, lang) for r in ROLES for lang in LANGUAGES])
def test_whoever_completes_the_case_gets_the_slot_list_and_the_other_is_told(wechat, wechat_runtime, desk, role,
                                                                             lang):
    case_id = collecting(wechat_runtime, desk, details=(other(role),))
    speak(wechat, wechat_runtime, OPENID[role], lang)

    reply = say(wechat, wechat_runtime, OPENID[role], "粤C77777 13700137000")

    case = case_of(wechat_runtime, case_id)
    assert case.status is S.READY
    head, offers = reply.split("\n", 2)[:2], reply.split("\n")[2:]
    assert head == [t("conv.plate_saved", lang, plate="粤C77777"), t("conv.phone_saved", lang, phone="13700137000")]
    assert_offer_list(offers, lang, "booking.offer_intro", count=3)
    assert case.party(role).offered_slot_ids == desk.offered_for_ready
    assert case.party(other(role)).offered_slot_ids is None
    assert last(wechat, OPENID[other(role)]) == t("notice.ready", "zh", case_no=case.case_no)


def assert_offer_list(reply_lines: list[str], lang: str, intro: str, *, count: int) -> None:
    """The intro, ``count`` numbered slots at the desk, and how to choose."""
    assert reply_lines[0] == t(intro, lang)
    assert [line.split(".")[0] for line in reply_lines[1:-1]] == [str(n) for n in range(1, count + 1)]
    assert all("GZ-CONV" in line for line in reply_lines[1:-1]), reply_lines
    key = "booking.offer_reply_one" if count == 1 else "booking.offer_reply"
    assert reply_lines[-1] == t(key, lang, count=count)


UNREADABLE = (("粤A1234", "conv.plate_format"), ("车牌：粤12345", "conv.plate_format"),
              ("1380013800", "conv.phone_format"), ("手机 12345678901", "conv.phone_format"))


@pytest.mark.parametrize(("case", "role", "lang"), spread(UNREADABLE), ids=ids(spread([u for u, _ in UNREADABLE])))
def test_an_unreadable_plate_or_phone_gets_the_format_hint_and_changes_nothing(wechat, wechat_runtime, desk, case,
                                                                               role, lang):
    typed, hint = case
    case_id = collecting(wechat_runtime, desk)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    before = state(wechat_runtime, case_id)

    assert say(wechat, wechat_runtime, OPENID[role], typed) == t(hint, lang)
    assert state(wechat_runtime, case_id) == before


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("typed", ["粤A12345", "13800138000", "粤A12345 13800138000"])
def test_a_plate_or_phone_without_a_case_says_there_is_none(wechat, wechat_runtime, desk, typed, lang):
    speak(wechat, wechat_runtime, A, lang)
    assert say(wechat, wechat_runtime, A, typed) == t("conv.no_case", lang)
    assert cases_of(wechat_runtime, A) == []


# -- joining: the 6-digit code, or scanning the case's QR code (SCAN, or subscribe with the scene) ----------------

JOIN_WAYS = ("code", "full-width code", "SCAN", "subscribe")


def join(wechat, openid: str, code: str, how: str) -> None:
    if how == "code":
        response = wechat.post_text(openid, code)
    elif how == "full-width code":
        response = wechat.post_text(openid, code.translate(str.maketrans("0123456789", "０１２３４５６７８９")))
    else:
        response = wechat.post_scan(openid, f"join:{code}", subscribed=how == "SCAN")
    assert response.text == "success"


def waiting_for_b(runtime, desk) -> int:
    """The reporter's draft: their photos, location, plate and phone are in; nobody has joined yet."""
    return seed(runtime, desk, S.DRAFT, with_b=False)


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("how", JOIN_WAYS)
def test_joining_makes_the_driver_party_b_asks_only_for_bs_items_and_tells_the_reporter(
        wechat, wechat_runtime, desk, how, lang):
    case_id = waiting_for_b(wechat_runtime, desk)
    case = case_of(wechat_runtime, case_id)
    speak(wechat, wechat_runtime, C, lang)

    join(wechat, C, case.join_code, how)
    drain(wechat_runtime)

    case = case_of(wechat_runtime, case_id)
    assert (case.party(PartyRole.B).openid, case.party(PartyRole.B).language) == (C, lang)
    assert last(wechat, C) == lines(t("conv.joined", lang, case_no=case.case_no), ask_photo(4, lang, done=0))
    # Progress about the other driver never goes alone: it rides with the reporter's next message.
    assert not any(case.case_no in m and "加入" in m for m in wechat.messages_to(A))
    assert say(wechat, wechat_runtime, A, "状态").startswith(lines(t("notice.joined", "zh", case_no=case.case_no), ""))


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("how", ("code", "SCAN"))
def test_joining_from_an_own_empty_draft_closes_it_and_says_so(wechat, wechat_runtime, desk, how, lang):
    case_id = waiting_for_b(wechat_runtime, desk)
    speak(wechat, wechat_runtime, C, lang)
    say(wechat, wechat_runtime, C, "快处")  # C started a report too, then the other driver shows the QR code
    (draft,) = cases_of(wechat_runtime, C)

    join(wechat, C, case_of(wechat_runtime, case_id).join_code, how)
    drain(wechat_runtime)

    case = case_of(wechat_runtime, case_id)
    assert last(wechat, C) == lines(t("conv.draft_closed", lang, case_no=draft.case_no),
                                    t("conv.joined", lang, case_no=case.case_no), ask_photo(4, lang, done=0))
    draft = case_of(wechat_runtime, draft.id)
    assert (draft.status, draft.join_code, draft.parties[0].case_open) == (S.CANCELLED, None, False)
    assert case.party(PartyRole.B).openid == C


IN_OTHER_CASE = (("B of an open case", "conv.leave_case.other"), ("reporter with photos", "conv.leave_case.reporter"),
                 ("reporter of a booked case", "conv.leave_case.reporter"))


@pytest.mark.parametrize(("where", "how"), [(w, h) for w in IN_OTHER_CASE for h in ("code", "subscribe")],
                         ids=[f"{w[0]}-{h}" for w in IN_OTHER_CASE for h in ("code", "subscribe")])
@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_driver_in_another_open_case_cannot_join_and_is_told_how_to_leave_it(wechat, wechat_runtime, desk, where,
                                                                              how, lang):
    situation, leave = where
    openids = ("oSomeoneElse00000000000001", C) if situation.startswith("B") else (C, "oSomeoneElse00000000000002")
    status = S.BOOKED if "booked" in situation else S.DRAFT
    theirs = seed(wechat_runtime, desk, status, openids=openids, photos=(1,) if status is S.DRAFT else True)
    case_id = waiting_for_b(wechat_runtime, desk)
    speak(wechat, wechat_runtime, C, lang)
    before, before_theirs = state(wechat_runtime, case_id), state(wechat_runtime, theirs)

    join(wechat, C, case_of(wechat_runtime, case_id).join_code, how)
    drain(wechat_runtime)

    their_no = case_of(wechat_runtime, theirs).case_no
    assert last(wechat, C) == lines(t("conv.join_refused.in_other_case", lang, case_no=their_no),
                                    t(leave, lang, case_no=their_no))
    assert "撤案" in last(wechat, C) if lang == "zh" else "withdraw" in last(wechat, C)
    assert (state(wechat_runtime, case_id), state(wechat_runtime, theirs)) == (before, before_theirs)


JOIN_REFUSALS = ("unknown_code", "own_case", "taken")


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("reason", JOIN_REFUSALS)
def test_a_join_code_that_cannot_be_used_is_refused_with_its_reason(wechat, wechat_runtime, desk, reason, lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, with_b=reason == "taken")
    code = "000000" if reason == "unknown_code" else case_of(wechat_runtime, case_id).join_code
    sender = A if reason == "own_case" else C
    speak(wechat, wechat_runtime, sender, lang)
    before = state(wechat_runtime, case_id)

    assert say(wechat, wechat_runtime, sender, code) == t(f"conv.join_refused.{reason}", lang)
    assert state(wechat_runtime, case_id) == before


# -- numbers 1…9: book from one's own list -------------------------------------------------------------------------


def booked_notice(runtime, case_id: int, lang: str, kind: str = "notice.booked") -> str:
    """The notice about the case's active appointment (booked, moved), as the catalogue words it in ``lang``."""
    fingerprint = case_of(runtime, case_id).evidence_fingerprint
    return t(kind, lang, evidence_no=evidence_number(fingerprint), **visit(runtime, case_id, lang))


NUMBERS = tuple(range(1, 10))


@pytest.mark.parametrize(("number", "role", "lang"), spread(NUMBERS), ids=ids(spread(NUMBERS)))
def test_a_number_books_that_slot_of_the_senders_own_list(wechat, wechat_runtime, desk, number, role, lang):
    case_id = seed(wechat_runtime, desk, S.READY)
    sender, told = OPENID[role], OPENID[other(role)]
    speak(wechat, wechat_runtime, sender, lang)
    assert_offer_list(say(wechat, wechat_runtime, sender, "预约").split("\n"), lang, "booking.offer_intro", count=3)
    before = state(wechat_runtime, case_id)

    reply = say(wechat, wechat_runtime, sender, str(number))

    case = case_of(wechat_runtime, case_id)
    if number > 3:  # not on the list: nothing booked, a fresh list
        assert_offer_list(reply.split("\n"), lang, "booking.stale_offer", count=3)
        assert state(wechat_runtime, case_id) == before
        return
    assert case.status is S.BOOKED
    assert [(a.slot_id, a.status) for a in case.appointments] == \
        [(desk.offered_for_ready[number - 1], AppointmentStatus.BOOKED)]
    assert reply == booked_notice(wechat_runtime, case_id, lang)  # the booking notice is the reply
    assert last(wechat, told) == booked_notice(wechat_runtime, case_id, "zh")


@pytest.mark.parametrize(("number", "role", "lang"), spread((1, 3, 9)), ids=ids(spread((1, 3, 9))))
def test_a_number_from_the_driver_who_was_not_offered_the_list_books_nothing(wechat, wechat_runtime, desk, number,
                                                                            role, lang):
    case_id = seed(wechat_runtime, desk, S.READY)
    asker, chooser = OPENID[other(role)], OPENID[role]
    say(wechat, wechat_runtime, asker, "预约")
    speak(wechat, wechat_runtime, chooser, lang)
    before = state(wechat_runtime, case_id)

    assert say(wechat, wechat_runtime, chooser, str(number)) == t("conv.choice_without_offer", lang)

    assert state(wechat_runtime, case_id) == before
    assert case_of(wechat_runtime, case_id).party(other(role)).offered_slot_ids == desk.offered_for_ready


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_booking_notice_shows_the_evidence_fingerprint_as_a_short_evidence_number(wechat, wechat_runtime, desk,
                                                                                      lang):
    case_id = seed(wechat_runtime, desk, S.READY)
    speak(wechat, wechat_runtime, A, lang)
    say(wechat, wechat_runtime, A, "预约")
    say(wechat, wechat_runtime, A, "2")

    fingerprint = case_of(wechat_runtime, case_id).evidence_fingerprint
    number = evidence_number(fingerprint)
    assert re.fullmatch(r"[0-9A-F]{4}-[0-9A-F]{4}", number) and number.replace("-", "") == fingerprint[:8].upper()
    for driver in (A, B):
        assert number in last(wechat, driver) and fingerprint not in last(wechat, driver)


# -- status -------------------------------------------------------------------------------------------------------

STATUS_WORDS = ("状态", "status", "状态？", "status?", "我的案件", "查询", "MY_CASE")


def ask_status(wechat, runtime, openid: str, word: str) -> str:
    if word == "MY_CASE":
        assert wechat.post_click(openid, "MY_CASE").text == "success"
        drain(runtime)
        return last(wechat, openid)
    return say(wechat, runtime, openid, word)


@pytest.mark.parametrize(("word", "role", "lang"), spread(STATUS_WORDS), ids=ids(spread(STATUS_WORDS)))
def test_status_in_a_draft_says_the_state_and_the_senders_next_step(wechat, wechat_runtime, desk, word, role, lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, photos=(1,), location=False, details=False)
    speak(wechat, wechat_runtime, OPENID[role], lang)

    reply = ask_status(wechat, wechat_runtime, OPENID[role], word)

    step = ask_photo(2, lang, done=1) if role is PartyRole.A else ask_photo(4, lang, done=0)
    assert reply == status_reply(wechat_runtime, case_id, lang, detail=step)


@pytest.mark.parametrize(("word", "role", "lang"), spread(STATUS_WORDS), ids=ids(spread(STATUS_WORDS)))
def test_status_once_booked_says_the_appointment(wechat, wechat_runtime, desk, word, role, lang):
    case_id = seed(wechat_runtime, desk, S.CONFIRMED)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    assert ask_status(wechat, wechat_runtime, OPENID[role], word) == status_reply(wechat_runtime, case_id, lang)


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("word", ("状态", "MY_CASE"))
def test_status_without_a_case_says_there_is_none(wechat, wechat_runtime, desk, word, lang):
    speak(wechat, wechat_runtime, A, lang)
    assert ask_status(wechat, wechat_runtime, A, word) == t("conv.no_case", lang)


LONG_NOTE = "乙方变道未让行，负全部责任。请双方各自联系保险公司理赔，修车前先拍照留底，三日内到保险公司定损。"


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("role", ROLES)
def test_status_after_the_case_closed_shows_how_it_ended_with_the_officer_s_whole_note(
        wechat, wechat_runtime, desk, clock, role, lang):
    """Acceptance pass: the outcome went as a template card (the driver's allowance closed), which cut the
    officer's note to 20 characters; asked afterwards, "status" said only that they had no open case."""
    from accident_service.desk import actions
    from accident_service.notify.dispatch import message_of

    case_id = seed(wechat_runtime, desk, S.CHECKED_IN)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    drain(wechat_runtime)
    with wechat_runtime.unit_of_work() as session:
        actions.complete(session, session.get(Case, case_id), liability="B", note=LONG_NOTE, staff="th",
                         settings=wechat_runtime.settings, now=clock.now())
    drain(wechat_runtime)
    clock.advance(days=6)

    reply = ask_status(wechat, wechat_runtime, OPENID[role], "状态")

    with wechat_runtime.unit_of_work() as session:
        closing = session.scalar(select(Notification).where(Notification.openid == OPENID[role],
                                                            Notification.kind == "completed"))
        told = message_of(closing).text
    assert LONG_NOTE in told
    assert reply == told
    clock.advance(days=2)  # a week on: the case is history, not where things stand
    assert ask_status(wechat, wechat_runtime, OPENID[role], "状态") == t("conv.no_case", lang)


# -- reschedule: whoever asks gets the list and books from it; the other driver is told ---------------------------

RESCHEDULE_WORDS = ("改约", "reschedule", "改期", "重新预约", "预约")


@pytest.mark.parametrize(("word", "role", "lang"), spread(RESCHEDULE_WORDS), ids=ids(spread(RESCHEDULE_WORDS)))
def test_reschedule_offers_the_asker_fresh_slots_and_moves_the_appointment_once_one_is_booked(
        wechat, wechat_runtime, desk, word, role, lang):
    case_id = seed(wechat_runtime, desk, S.CONFIRMED if role is PartyRole.B else S.BOOKED)
    asker, told = OPENID[role], OPENID[other(role)]
    speak(wechat, wechat_runtime, asker, lang)
    speak(wechat, wechat_runtime, told, OTHER_LANGUAGE[lang])  # each reads the notice in their own language
    before = state(wechat_runtime, case_id)

    offer = say(wechat, wechat_runtime, asker, word)

    assert_offer_list(offer.split("\n"), lang, "booking.reschedule_offer", count=3)
    assert state(wechat_runtime, case_id) == before  # the appointment moves only when a new slot is booked
    reply = say(wechat, wechat_runtime, asker, "2")

    case = case_of(wechat_runtime, case_id)
    old, new = desk.slots[240], desk.slots[120]  # the list: +45 min, +2 h, +5 h (the booked +4 h left out)
    assert case.status is S.BOOKED
    assert [(a.slot_id, a.status) for a in case.appointments] == \
        [(old, AppointmentStatus.RESCHEDULED), (new, AppointmentStatus.BOOKED)]
    assert seats(wechat_runtime, old, new) == (0, 1)
    assert reply == booked_notice(wechat_runtime, case_id, lang, "notice.rescheduled")
    assert last(wechat, told) == booked_notice(wechat_runtime, case_id, OTHER_LANGUAGE[lang],
                                               "notice.rescheduled.other")


def seats(runtime, *slot_ids: int) -> tuple[int, ...]:
    with runtime.unit_of_work() as session:
        return tuple(session.get(Slot, slot_id).booked for slot_id in slot_ids)


@pytest.mark.parametrize(("word", "role", "lang"), spread(RESCHEDULE_WORDS), ids=ids(spread(RESCHEDULE_WORDS)))
def test_asking_for_slots_before_the_case_is_complete_says_what_is_missing(wechat, wechat_runtime, desk, word, role,
                                                                           lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, photos=(1,), location=False, details=False)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    step = ask_photo(2, lang, done=1) if role is PartyRole.A else ask_photo(4, lang, done=0)
    assert say(wechat, wechat_runtime, OPENID[role], word) == lines(t("conv.not_ready_yet", lang), step)
    assert case_of(wechat_runtime, case_id).party(role).offered_slot_ids is None


# -- cancel: asks first; confirmed, the appointment goes and the case stays for rebooking --------------------------

CANCEL_WORDS = ("取消", "cancel", "取消预约")
CONFIRM_CANCEL = {"zh": "确认取消", "en": "confirm cancel"}


@pytest.mark.parametrize(("word", "role", "lang"), spread(CANCEL_WORDS), ids=ids(spread(CANCEL_WORDS)))
def test_cancel_asks_for_confirmation_then_frees_the_slot_keeps_the_case_and_tells_both_who_cancelled(
        wechat, wechat_runtime, desk, word, role, lang):
    case_id = seed(wechat_runtime, desk, S.BOOKED)
    asker, told = OPENID[role], OPENID[other(role)]
    speak(wechat, wechat_runtime, asker, lang)
    speak(wechat, wechat_runtime, told, OTHER_LANGUAGE[lang])  # each reads the notice in their own language
    before = state(wechat_runtime, case_id)
    question = say(wechat, wechat_runtime, asker, word)

    assert question == t("conv.confirm_cancel", lang, summary=appointment_summary(wechat_runtime, case_id, lang))
    assert state(wechat_runtime, case_id) == before  # nothing happens before the confirmation
    say(wechat, wechat_runtime, asker, CONFIRM_CANCEL[lang])

    case = case_of(wechat_runtime, case_id)
    assert case.status is S.READY
    assert [(a.slot_id, a.status) for a in case.appointments] == [(desk.slots[240], AppointmentStatus.CANCELLED)]
    assert seats(wechat_runtime, desk.slots[240]) == (0,)
    assert (state(wechat_runtime, case_id)["photos"], case.evidence_fingerprint) == \
        (before["photos"], before["case"][3]), "the evidence stays for rebooking"
    assert all(p.case_open for p in case.parties) and case.join_code
    slot = desk.slots[240]
    assert last(wechat, asker) == t("notice.cancelled.self", lang, **visit(wechat_runtime, case_id, lang, slot))
    told_lang = OTHER_LANGUAGE[lang]
    assert last(wechat, told) == t("notice.cancelled.other", told_lang,
                                   **visit(wechat_runtime, case_id, told_lang, slot))


@pytest.mark.parametrize(("word", "role", "lang"), spread(CANCEL_WORDS), ids=ids(spread(CANCEL_WORDS)))
def test_cancel_without_an_appointment_says_there_is_none_and_how_to_withdraw(wechat, wechat_runtime, desk, word,
                                                                             role, lang):
    case_id = seed(wechat_runtime, desk, S.READY if role is PartyRole.A else S.DRAFT)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    before = state(wechat_runtime, case_id)
    key = "conv.nothing_to_cancel.reporter" if role is PartyRole.A else "conv.nothing_to_cancel.other"

    assert say(wechat, wechat_runtime, OPENID[role], word) == t(key, lang)
    assert say(wechat, wechat_runtime, OPENID[role], CONFIRM_CANCEL[lang]) == t("conv.nothing_to_confirm", lang)
    assert state(wechat_runtime, case_id) == before


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_confirmation_counts_only_as_the_very_next_message(wechat, wechat_runtime, desk, lang):
    case_id = seed(wechat_runtime, desk, S.BOOKED)
    speak(wechat, wechat_runtime, A, lang)
    before = state(wechat_runtime, case_id)

    say(wechat, wechat_runtime, A, "取消")
    say(wechat, wechat_runtime, A, "状态")
    assert say(wechat, wechat_runtime, A, CONFIRM_CANCEL[lang]) == t("conv.nothing_to_confirm", lang)
    assert state(wechat_runtime, case_id) == before


# -- withdraw the whole case: the reporter only, confirmed ---------------------------------------------------------

WITHDRAW_WORDS = ("撤案", "withdraw")
CONFIRM_WITHDRAW = {"zh": "确认撤案", "en": "confirm withdraw"}


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("status", (S.DRAFT, S.BOOKED))
@pytest.mark.parametrize("word", WITHDRAW_WORDS)
def test_the_reporter_withdraws_the_case_after_confirming_and_both_are_told(wechat, wechat_runtime, desk, word,
                                                                           status, lang):
    case_id = seed(wechat_runtime, desk, status)
    speak(wechat, wechat_runtime, A, lang)
    before = state(wechat_runtime, case_id)
    case_no = case_of(wechat_runtime, case_id).case_no

    assert say(wechat, wechat_runtime, A, word) == t("conv.confirm_withdraw", lang, case_no=case_no)
    assert state(wechat_runtime, case_id) == before
    say(wechat, wechat_runtime, A, CONFIRM_WITHDRAW[lang])

    case = case_of(wechat_runtime, case_id)
    assert (case.status, case.join_code) == (S.CANCELLED, None)
    assert [p.case_open for p in case.parties] == [False, False]
    assert [a.status for a in case.appointments] == ([AppointmentStatus.CANCELLED] if status is S.BOOKED else [])
    assert seats(wechat_runtime, desk.slots[240]) == (0,)
    assert last(wechat, A) == t("notice.withdrawn.self", lang, case_no=case_no)
    assert last(wechat, B) == t("notice.withdrawn.other", "zh", case_no=case_no)


@pytest.mark.parametrize("event", [
    ("TEMPLATESENDJOBFINISH", {"MsgID": 1001, "Status": "success"}),  # a template's result (WECHAT.md §5)
    ("LOCATION", {"Latitude": "23.1066", "Longitude": "113.3245", "Precision": "30"}),  # a location report
])
def test_what_the_platform_pushes_on_its_own_does_not_cancel_a_confirmation_the_driver_was_asked_for(
        wechat, wechat_runtime, desk, event):
    """Only the driver's own next message or action takes the place of the confirmation: a push the platform
    makes by itself between the question and the answer is none."""
    case_id = seed(wechat_runtime, desk, S.BOOKED)
    case_no = case_of(wechat_runtime, case_id).case_no
    assert say(wechat, wechat_runtime, A, "撤案") == t("conv.confirm_withdraw", "zh", case_no=case_no)

    name, fields = event
    assert wechat.post_event(A, name, **fields).text == "success"
    drain(wechat_runtime)
    say(wechat, wechat_runtime, A, "确认撤案")

    assert case_of(wechat_runtime, case_id).status is S.CANCELLED
    assert last(wechat, A) == t("notice.withdrawn.self", "zh", case_no=case_no)


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("word", WITHDRAW_WORDS)
def test_the_other_driver_cannot_withdraw_the_case(wechat, wechat_runtime, desk, word, lang):
    case_id = seed(wechat_runtime, desk, S.BOOKED)
    speak(wechat, wechat_runtime, B, lang)
    before = state(wechat_runtime, case_id)

    assert say(wechat, wechat_runtime, B, word) == lines(t("conv.withdraw_reporter_only", lang),
                                                         appointment_summary(wechat_runtime, case_id, lang))
    assert say(wechat, wechat_runtime, B, CONFIRM_WITHDRAW[lang]) == t("conv.nothing_to_confirm", lang)
    assert state(wechat_runtime, case_id) == before


# -- retake N: one's own item, before booking ------------------------------------------------------------------

RETAKE_WORDS = {"zh": "重拍 {n}", "en": "retake {n}"}


@pytest.mark.parametrize(("role", "lang"), [(r, lang) for r in ROLES for lang in LANGUAGES])
def test_retake_of_an_own_item_asks_for_it_and_the_next_photo_replaces_it(wechat, wechat_runtime, desk, role, lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, details=False)
    sender = OPENID[role]
    n = 2 if role is PartyRole.A else 4
    speak(wechat, wechat_runtime, sender, lang)
    old = {p.item: p.sha256 for p in case_of(wechat_runtime, case_id).photos}

    assert say(wechat, wechat_runtime, sender, RETAKE_WORDS[lang].format(n=n)) == \
        t("conv.retake_ask", lang, n=n, item=t(f"checklist.{ITEM_CODES[n]}", lang))
    wechat.post_image(sender, photo(wechat, "again"))
    drain(wechat_runtime)

    case = case_of(wechat_runtime, case_id)
    accepted = {p.item: p.sha256 for p in case.photos if p.status is PhotoStatus.ACCEPTED}
    assert sorted(accepted) == [1, 2, 3, 4] and accepted[n] != old[n]
    assert [p.item for p in case.photos if p.status is PhotoStatus.SUPERSEDED] == [n]
    assert last(wechat, sender) == lines(t("conv.photo_replaced", lang, n=n), t("conv.ask_plate", lang))


def own_list(role: PartyRole, lang: str) -> str:
    return ("、" if lang == "zh" else ", ").join(map(str, OWN[role]))


@pytest.mark.parametrize(("role", "lang"), [(r, lang) for r in ROLES for lang in LANGUAGES])
def test_retake_of_the_other_drivers_item_is_refused(wechat, wechat_runtime, desk, role, lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, details=False)
    n = 4 if role is PartyRole.A else 1
    speak(wechat, wechat_runtime, OPENID[role], lang)
    before = state(wechat_runtime, case_id)

    assert say(wechat, wechat_runtime, OPENID[role], RETAKE_WORDS[lang].format(n=n)) == \
        t("conv.retake_not_own", lang, n=n, own=own_list(role, lang))
    assert state(wechat_runtime, case_id) == before


@pytest.mark.parametrize(("word", "role", "lang"), spread(("重拍", "retake", "重拍 9")),
                         ids=ids(spread(("重拍", "retake", "重拍 9"))))
def test_retake_without_a_usable_number_asks_which_of_the_own_photos(wechat, wechat_runtime, desk, word, role, lang):
    seed(wechat_runtime, desk, S.DRAFT)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    number = int(word.split()[-1]) if word[-1].isdigit() else None
    assert say(wechat, wechat_runtime, OPENID[role], word) == \
        t("conv.retake_which", lang, n=number, own=own_list(role, lang))


@pytest.mark.parametrize(("role", "lang"), [(r, lang) for r in ROLES for lang in LANGUAGES])
def test_retake_after_booking_is_refused_as_sealed(wechat, wechat_runtime, desk, role, lang):
    case_id = seed(wechat_runtime, desk, S.BOOKED)
    n = OWN[role][0]
    speak(wechat, wechat_runtime, OPENID[role], lang)
    before = state(wechat_runtime, case_id)

    assert say(wechat, wechat_runtime, OPENID[role], RETAKE_WORDS[lang].format(n=n)) == \
        t("photos.reject.evidence_locked", lang)
    assert state(wechat_runtime, case_id) == before


# -- voice, video, anything else: mid-case the next step, otherwise the short help --------------------------------

ODD = ("voice", "video", "shortvideo", "hello")
#: The first line of the answer: a voice or a video message is told apart from a text that was not understood, so
#: the driver knows to type instead (acceptance pass: both got "not understood").
WHY_NOT_READ = {"voice": "conv.voice_or_video", "video": "conv.voice_or_video", "shortvideo": "conv.voice_or_video",
                "hello": "conv.not_understood"}


def send_odd(wechat, openid: str, what: str) -> None:
    response = wechat.post_text(openid, what) if what == "hello" else post_media_message(wechat, openid, what, "m-x")
    assert response.text == "success"


@pytest.mark.parametrize(("what", "role", "lang"), spread(ODD), ids=ids(spread(ODD)))
def test_voice_video_or_an_unknown_text_mid_case_gets_the_next_step_not_the_help(wechat, wechat_runtime, desk, what,
                                                                               role, lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, photos=(1,), location=False, details=False)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    before = state(wechat_runtime, case_id)

    send_odd(wechat, OPENID[role], what)
    drain(wechat_runtime)

    step = ask_photo(2, lang, done=1) if role is PartyRole.A else ask_photo(4, lang, done=0)
    assert last(wechat, OPENID[role]) == lines(t(WHY_NOT_READ[what], lang), step)
    assert state(wechat_runtime, case_id) == before


@pytest.mark.parametrize("status", [pytest.param(S.READY, id="ready"), pytest.param(S.BOOKED, id="booked")])
@pytest.mark.parametrize(("what", "role", "lang"), spread(ODD), ids=ids(spread(ODD)))
def test_voice_video_or_an_unknown_text_in_a_complete_case_gets_what_is_expected_now_not_the_help(
        wechat, wechat_runtime, desk, what, role, lang, status):
    case_id = seed(wechat_runtime, desk, status)
    speak(wechat, wechat_runtime, OPENID[role], lang)

    send_odd(wechat, OPENID[role], what)
    drain(wechat_runtime)

    expected_now = t("conv.ready_hint", lang) if status is S.READY \
        else appointment_summary(wechat_runtime, case_id, lang)
    reply = last(wechat, OPENID[role])
    assert reply != t("conv.help", lang)
    assert reply.startswith(t(WHY_NOT_READ[what], lang)) and expected_now in reply


HELP = ("帮助", "help", "?", "你好", "voice")


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("what", HELP)
def test_help_or_anything_else_without_a_case_gets_the_short_help_which_mentions_the_join_code(
        wechat, wechat_runtime, desk, what, lang):
    speak(wechat, wechat_runtime, C, lang)
    if what == "voice":
        post_media_message(wechat, C, "voice", "m-v")
    else:
        wechat.post_text(C, what)
    drain(wechat_runtime)

    reply = last(wechat, C)
    assert reply == (lines(t("conv.voice_or_video", lang), t("conv.help", lang)) if what == "voice"
                     else t("conv.help", lang))
    assert ("加入码" in reply) if lang == "zh" else ("join code" in reply)
    assert cases_of(wechat_runtime, C) == []


@pytest.mark.parametrize(("role", "lang"), [(r, lang) for r in ROLES for lang in LANGUAGES])
def test_help_mid_case_is_the_short_help(wechat, wechat_runtime, desk, role, lang):
    seed(wechat_runtime, desk, S.DRAFT)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    assert say(wechat, wechat_runtime, OPENID[role], "帮助" if lang == "zh" else "help") == t("conv.help", lang)


# -- language -----------------------------------------------------------------------------------------------------

LANGUAGE_WORDS = (("English", "en"), ("英文", "en"), ("english", "en"), ("中文", "zh"))


@pytest.mark.parametrize(("word", "lang"), LANGUAGE_WORDS, ids=[w for w, _ in LANGUAGE_WORDS])
@pytest.mark.parametrize("in_case", (None, PartyRole.A, PartyRole.B), ids=("no-case", "A", "B"))
def test_a_language_word_switches_every_later_reply(wechat, wechat_runtime, desk, word, lang, in_case):
    start = "zh" if lang == "en" else "en"
    languages = (start, start)
    case_id = seed(wechat_runtime, desk, S.DRAFT, photos=(1,), languages=languages) if in_case else None
    openid = OPENID[in_case] if in_case else C
    if start == "en" and not in_case:
        say(wechat, wechat_runtime, openid, "English")

    next_step = {None: t("conv.help", lang), PartyRole.A: ask_photo(2, lang, done=1),
                 PartyRole.B: ask_photo(4, lang, done=0)}[in_case]
    # what to do now, in the new language (a driver's pass: the switch alone left them without a step)
    assert say(wechat, wechat_runtime, openid, word) == lines(t("conv.language_set", lang), next_step)

    with wechat_runtime.unit_of_work() as session:
        assert session.get(DriverPreference, openid).language == lang
    if case_id is not None:
        assert case_of(wechat_runtime, case_id).party(in_case).language == lang
    expected = t("conv.no_case", lang) if not in_case else \
        status_reply(wechat_runtime, case_id, lang, detail=ask_photo(2, lang, done=1) if in_case is PartyRole.A
                     else ask_photo(4, lang, done=0))
    assert say(wechat, wechat_runtime, openid, "status") == expected


# -- after booking: evidence and details are sealed -------------------------------------------------------------

SEALED_INPUTS = ("plate", "phone", "plate and phone", "location", "image", "file")


def send_sealed_input(wechat, openid: str, what: str) -> None:
    if what == "location":
        response = wechat.post_location(openid, 23.3, 113.5, label="别处")
    elif what in ("image", "file"):
        post_photo(wechat, openid, what, photo(wechat, "late"))
        return
    else:
        response = wechat.post_text(openid, {"plate": "粤C99999", "phone": "13600136000",
                                             "plate and phone": "粤C99999 13600136000"}[what])
    assert response.text == "success"


def sealed_reason(what: str, role: PartyRole, lang: str) -> str:
    if what in ("image", "file"):
        return t("photos.reject.evidence_locked", lang)
    if what == "location" and role is PartyRole.B:
        return t("conv.location_reporter_only", lang)  # B never sends the location; that reason comes first
    return t("conv.details_sealed", lang)


SEALED_STATES = (S.BOOKED, S.CONFIRMED, S.READY)  # ready: rebooking after a cancelled appointment


@pytest.mark.parametrize("status", SEALED_STATES, ids=("booked", "confirmed", "ready-after-cancelling"))
@pytest.mark.parametrize(("what", "role", "lang"), spread(SEALED_INPUTS), ids=ids(spread(SEALED_INPUTS)))
def test_after_booking_plates_phones_location_and_photos_are_refused_with_a_reason_and_change_nothing(
        wechat, wechat_runtime, desk, what, role, lang, status):
    case_id = seed(wechat_runtime, desk, status, sealed=True)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    before = state(wechat_runtime, case_id)

    send_sealed_input(wechat, OPENID[role], what)
    drain(wechat_runtime)

    expected = sealed_reason(what, role, lang)
    if what not in ("image", "file"):  # then what is expected now (a photo's answer says where it went instead)
        expected = lines(expected, t("conv.ready_hint", lang) if status is S.READY
                         else appointment_summary(wechat_runtime, case_id, lang))
    assert last(wechat, OPENID[role]) == expected
    assert state(wechat_runtime, case_id) == before
    if what in ("image", "file"):  # kept all the same (nothing a driver sends is lost), but not as evidence
        (late,) = [p for p in case_of(wechat_runtime, case_id).photos if p.status is PhotoStatus.REJECTED]
        assert (late.reject_code, late.item, late.object_key is not None) == ("evidence_locked", None, True)


# -- reminders -------------------------------------------------------------------------------------------------------


def reminder_rows(runtime) -> list[tuple[str, WorkStatus]]:
    with runtime.unit_of_work() as session:
        return [(n.dedupe_key, n.status) for n in session.scalars(
            select(Notification).where(Notification.kind == "reminder").order_by(Notification.id))]


@pytest.mark.parametrize(("number", "minutes", "reminded"), [(1, 45, False), (2, 120, True)],
                         ids=("slot-in-45-min-no-reminder", "slot-in-2-h-reminded"))
def test_a_slot_booked_within_the_reminder_lead_gets_no_reminder(wechat, wechat_runtime, desk, clock, number,
                                                                 minutes, reminded):
    assert wechat_runtime.settings.REMINDER_MINUTES == 60
    case_id = seed(wechat_runtime, desk, S.READY)
    say(wechat, wechat_runtime, A, "预约")
    say(wechat, wechat_runtime, A, str(number))
    (appointment,) = case_of(wechat_runtime, case_id).appointments
    assert appointment.slot_id == desk.slots[minutes]
    assert (appointment.reminded_at is not None) is not reminded

    clock.advance(minutes=minutes - 50)  # inside the hour before the slot
    assert send_due_reminders(wechat_runtime) == int(reminded)
    drain(wechat_runtime)
    assert [status for _, status in reminder_rows(wechat_runtime)] == [WorkStatus.DONE] * 2 * reminded
    assert any("提醒" in m for m in wechat.messages_to(B)) is reminded


MOVES = {"改约": ("改约", "1"), "取消": ("取消", "确认取消"), "撤案": ("撤案", "确认撤案")}


@pytest.mark.parametrize(("move", "role", "lang"), [("改约", PartyRole.A, "zh"), ("改约", PartyRole.B, "en"),
                                                    ("改约", PartyRole.A, "en"), ("改约", PartyRole.B, "zh"),
                                                    ("取消", PartyRole.B, "zh"), ("撤案", PartyRole.A, "en")])
def test_moving_cancelling_or_withdrawing_drops_the_pending_reminder_of_the_old_appointment(
        wechat, wechat_runtime, desk, clock, move, role, lang):
    case_id = seed(wechat_runtime, desk, S.BOOKED)  # the +4 h slot
    speak(wechat, wechat_runtime, OPENID[role], lang)
    clock.advance(minutes=4 * 60 - 50)
    assert send_due_reminders(wechat_runtime) == 1
    (old,) = case_of(wechat_runtime, case_id).appointments
    # The reminders are not out yet when the driver moves: waiting out a retry (each message's own notices,
    # sent right after it, would otherwise take a reminder due for its sender along, oldest first).
    with wechat_runtime.unit_of_work() as session:
        session.execute(update(Notification).where(Notification.kind == "reminder")
                        .values(next_attempt_at=clock.now() + timedelta(minutes=10)))
    for message in MOVES[move]:
        wechat.post_text(OPENID[role], message)
        run_inbox_once(wechat_runtime, "test-worker")

    assert reminder_rows(wechat_runtime) == [(f"reminder:{old.id}:A", WorkStatus.DROPPED),
                                             (f"reminder:{old.id}:B", WorkStatus.DROPPED)]
    case = case_of(wechat_runtime, case_id)
    expected = {"改约": [(desk.slots[240], AppointmentStatus.RESCHEDULED), (desk.slots[300], AppointmentStatus.BOOKED)],
                "取消": [(desk.slots[240], AppointmentStatus.CANCELLED)],
                "撤案": [(desk.slots[240], AppointmentStatus.CANCELLED)]}[move]
    assert [(a.slot_id, a.status) for a in case.appointments] == expected
    drain(wechat_runtime)
    assert not any("提醒" in m or "Reminder" in m for m in wechat.messages_to(A) + wechat.messages_to(B))
    if move == "改约":
        assert last(wechat, OPENID[role]) == booked_notice(wechat_runtime, case_id, lang, "notice.rescheduled")


# -- more of the party rights: own items, simultaneous photos, rebooking ---------------------------------------------


def process_at_once(runtime, workers: int) -> None:
    """``workers`` inbox workers, each taking one message, started at the same moment."""
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work(worker_id: str) -> None:
        try:
            barrier.wait(timeout=10)
            run_inbox_once(runtime, worker_id, limit=1)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"worker-{n}",)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and not any(thread.is_alive() for thread in threads)


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("workers", (1, 2), ids=("one-worker-in-turn", "two-workers-at-once"))
def test_photos_a_and_b_send_at_the_same_moment_land_in_their_own_items(wechat, wechat_runtime, desk, workers, lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, photos=False, location=False, details=False)
    for openid in (A, B):
        speak(wechat, wechat_runtime, openid, lang)
    wechat.post_image(A, photo(wechat, "a"))
    wechat.post_image(B, photo(wechat, "b"))
    if workers > 1:
        process_at_once(wechat_runtime, workers)
    drain(wechat_runtime)

    case = case_of(wechat_runtime, case_id)
    by_party = {p.role: p.id for p in case.parties}
    assert sorted((p.item, p.party_id) for p in case.photos if p.status is PhotoStatus.ACCEPTED) == \
        [(1, by_party[PartyRole.A]), (4, by_party[PartyRole.B])]
    assert last(wechat, A) == lines(t("conv.photo_received", lang, n=1, received=1, total=3),
                                    ask_photo(2, lang, done=1))
    assert last(wechat, B) == lines(t("conv.photo_received", lang, n=4, received=1, total=1), t("conv.ask_plate", lang))


@pytest.mark.parametrize(("role", "lang"), [(r, lang) for r in ROLES for lang in LANGUAGES])
def test_a_photo_beyond_the_senders_own_items_is_an_extra_and_never_takes_the_other_drivers_item(
        wechat, wechat_runtime, desk, role, lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, photos=OWN[role], details=False)
    speak(wechat, wechat_runtime, OPENID[role], lang)

    wechat.post_image(OPENID[role], photo(wechat, "more"))
    drain(wechat_runtime)

    case = case_of(wechat_runtime, case_id)
    assert sorted(p.item for p in case.photos if p.status is PhotoStatus.ACCEPTED) == [*OWN[role], 5]
    assert last(wechat, OPENID[role]).split("\n")[0] == t("conv.photo_extra", lang)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_photo_refused_once_the_own_photos_are_in_still_says_what_is_next(wechat, wechat_runtime, desk, lang):
    """A driver's pass: a too-small extra photo after the checklist got "too small, send the original" and nothing on
    the location still to come."""
    seed(wechat_runtime, desk, S.DRAFT, photos=True, location=False, details=False)
    speak(wechat, wechat_runtime, OPENID[PartyRole.A], lang)
    media_id = wechat.add_media("m-pdf-late", b"%PDF-1.4\n1 0 obj <<>> endobj\n", "application/pdf")

    post_file(wechat, OPENID[PartyRole.A], media_id, title="保险单.pdf")
    drain(wechat_runtime)

    assert last(wechat, OPENID[PartyRole.A]) == lines(t("photos.reject.not_an_image", lang),
                                                      t("conv.ask_location", lang))


@pytest.mark.parametrize(("role", "lang"), [(r, lang) for r in ROLES for lang in LANGUAGES])
def test_a_file_that_is_not_a_photo_is_refused_with_a_reason_and_the_next_step(wechat, wechat_runtime, desk, role,
                                                                                lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, photos=False, location=False, details=False)
    speak(wechat, wechat_runtime, OPENID[role], lang)
    media_id = wechat.add_media("m-pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj\n", "application/pdf")

    post_file(wechat, OPENID[role], media_id, title="保险单.pdf")
    drain(wechat_runtime)

    step = ask_photo(1, lang, done=0) if role is PartyRole.A else ask_photo(4, lang, done=0)
    assert last(wechat, OPENID[role]) == lines(t("photos.reject.not_an_image", lang), step)
    assert [(p.status, p.reject_code) for p in case_of(wechat_runtime, case_id).photos] == \
        [(PhotoStatus.REJECTED, "not_an_image")]


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_number_from_a_list_older_than_half_an_hour_gets_fresh_times_and_books_nothing(wechat, wechat_runtime,
                                                                                        desk, clock, lang):
    case_id = seed(wechat_runtime, desk, S.READY)
    speak(wechat, wechat_runtime, A, lang)
    say(wechat, wechat_runtime, A, "预约")
    clock.advance(minutes=31)
    before = state(wechat_runtime, case_id)

    reply = say(wechat, wechat_runtime, A, "1")

    assert_offer_list(reply.split("\n"), lang, "booking.stale_offer", count=3)
    assert state(wechat_runtime, case_id) == before
    # +45 min starts too soon now: the fresh list is +2 h, +4 h, +5 h
    assert case_of(wechat_runtime, case_id).party(PartyRole.A).offered_slot_ids == \
        [desk.slots[120], desk.slots[240], desk.slots[300]]


@pytest.mark.parametrize(("role", "lang"), [(r, lang) for r in ROLES for lang in LANGUAGES])
def test_after_cancelling_either_driver_rebooks_with_the_same_evidence(wechat, wechat_runtime, desk, role, lang):
    case_id = seed(wechat_runtime, desk, S.BOOKED)
    fingerprint = case_of(wechat_runtime, case_id).evidence_fingerprint
    say(wechat, wechat_runtime, A, "取消")
    say(wechat, wechat_runtime, A, "确认")  # the generic confirmation confirms what was asked
    assert case_of(wechat_runtime, case_id).status is S.READY
    speak(wechat, wechat_runtime, OPENID[role], lang)

    assert_offer_list(say(wechat, wechat_runtime, OPENID[role], "预约").split("\n"), lang, "booking.offer_intro",
                      count=3)
    reply = say(wechat, wechat_runtime, OPENID[role], "3")

    case = case_of(wechat_runtime, case_id)
    assert case.status is S.BOOKED and case.evidence_fingerprint == fingerprint
    assert [(a.slot_id, a.status) for a in case.appointments] == \
        [(desk.slots[240], AppointmentStatus.CANCELLED), (desk.slots[240], AppointmentStatus.BOOKED)]
    assert reply == booked_notice(wechat_runtime, case_id, lang)


# -- the desk asked for a photo again (retake_requested): only the party asked sends it ------------------------------


@pytest.mark.parametrize(("role", "lang"), [(r, lang) for r in ROLES for lang in LANGUAGES])
def test_the_driver_the_desk_asked_sends_the_photo_again_and_both_get_the_new_evidence_number(
        wechat, wechat_runtime, desk, role, lang):
    case_id = seed(wechat_runtime, desk, S.RETAKE_REQUESTED, retake_owed=(role,))
    asked = 2 if role is PartyRole.A else 4
    other_item = 1 if role is PartyRole.A else 3
    old = case_of(wechat_runtime, case_id)
    speak(wechat, wechat_runtime, OPENID[role], lang)

    assert say(wechat, wechat_runtime, OPENID[role], RETAKE_WORDS[lang].format(n=other_item)) == \
        t("conv.retake_ask", lang, n=asked, item=t(f"checklist.{ITEM_CODES[asked]}", lang))
    wechat.post_image(OPENID[role], photo(wechat, "asked"))
    drain(wechat_runtime)

    case = case_of(wechat_runtime, case_id)
    assert case.status is S.BOOKED and case.party(role).retake_item is None
    assert [(a.slot_id, a.status) for a in case.appointments] == [(desk.slots[240], AppointmentStatus.BOOKED)]
    assert case.evidence_fingerprint != old.evidence_fingerprint
    replaced = {p.item: p.sha256 for p in case.photos if p.status is PhotoStatus.ACCEPTED}
    assert replaced[asked] != {p.item: p.sha256 for p in old.photos}[asked]
    number = evidence_number(case.evidence_fingerprint)
    # One message for the photo: the new evidence number, which both drivers get, is the sender's reply too.
    for driver, reader in ((OPENID[role], lang), (OPENID[other(role)], "zh")):
        assert wechat.messages_to(driver)[-1] == t("notice.evidence_updated", reader, case_no=case.case_no,
                                                   evidence_no=number)


@pytest.mark.parametrize(("role", "lang"), [(r, lang) for r in ROLES for lang in LANGUAGES])
def test_a_photo_from_the_driver_the_desk_did_not_ask_is_refused_as_sealed(wechat, wechat_runtime, desk, role, lang):
    case_id = seed(wechat_runtime, desk, S.RETAKE_REQUESTED, retake_owed=(other(role),))
    speak(wechat, wechat_runtime, OPENID[role], lang)
    before = state(wechat_runtime, case_id)

    wechat.post_image(OPENID[role], photo(wechat, "unasked"))
    drain(wechat_runtime)

    assert last(wechat, OPENID[role]) == t("photos.reject.evidence_locked", lang)
    assert state(wechat_runtime, case_id) == before


@pytest.mark.parametrize(("role", "lang"), [(r, lang) for r in ROLES for lang in LANGUAGES])
def test_status_tells_the_driver_the_desk_asked_which_photo_to_send_again(wechat, wechat_runtime, desk, role, lang):
    case_id = seed(wechat_runtime, desk, S.RETAKE_REQUESTED, retake_owed=(role,))
    asked = 2 if role is PartyRole.A else 4
    speak(wechat, wechat_runtime, OPENID[role], lang)

    reply = say(wechat, wechat_runtime, OPENID[role], "状态")

    assert reply.startswith(t("conv.status", lang, case_no=case_of(wechat_runtime, case_id).case_no,
                              state=t("state.retake_requested", lang), detail=""))
    assert appointment_summary(wechat_runtime, case_id, lang) in reply
    assert t(f"checklist.{ITEM_CODES[asked]}", lang) in reply


@pytest.mark.parametrize(("role", "lang"), [(r, lang) for r in ROLES for lang in LANGUAGES])
def test_once_the_senders_part_is_done_they_are_told_what_the_other_driver_still_owes(wechat, wechat_runtime, desk,
                                                                                     role, lang):
    mine = OWN[role]
    case_id = seed(wechat_runtime, desk, S.DRAFT, photos=mine, location=role is PartyRole.A, details=(role,))
    speak(wechat, wechat_runtime, OPENID[role], lang)

    reply = say(wechat, wechat_runtime, OPENID[role], "13500135000")

    owes = ("photos", "location") if role is PartyRole.B else ("photos",)
    assert reply in {lines(t("conv.phone_saved", lang, phone="13500135000"),
                           t("conv.wait_other", lang, what=owed(lang, *owes, *details)))
                     for details in (("plate", "phone"),)}
    assert case_of(wechat_runtime, case_id).status is S.DRAFT


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_reporter_whose_part_is_done_waits_for_the_other_driver_with_the_join_code(wechat, wechat_runtime, desk,
                                                                                      lang):
    case_id = seed(wechat_runtime, desk, S.DRAFT, with_b=False)
    speak(wechat, wechat_runtime, A, lang)
    assert say(wechat, wechat_runtime, A, "13500135000") == \
        lines(t("conv.phone_saved", lang, phone="13500135000"),
              t("conv.wait_party_b", lang, join_code=case_of(wechat_runtime, case_id).join_code))


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_number_without_a_case_says_there_is_none(wechat, wechat_runtime, desk, lang):
    speak(wechat, wechat_runtime, C, lang)

    assert say(wechat, wechat_runtime, C, "1") == t("conv.no_case", lang)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_status_of_a_complete_case_says_how_to_get_the_slot_list(wechat, wechat_runtime, desk, lang):
    case_id = seed(wechat_runtime, desk, S.READY)
    speak(wechat, wechat_runtime, A, lang)

    assert say(wechat, wechat_runtime, A, "状态") == t("conv.status", lang, case_no=case_of(wechat_runtime,
                                                                                           case_id).case_no,
                                                      state=t("state.ready", lang), detail=t("conv.ready_hint", lang))
