"""The case lifecycle as plain functions: start, resume, join, readiness, fingerprint, close."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from accident_service.cases import service as cases
from accident_service.models import AuditEvent, Case, CaseStatus, Party, PartyRole, Photo, PhotoStatus
from tests.conftest import T0


def _start(runtime, openid="oA", language="zh"):
    with runtime.unit_of_work() as session:
        case, party, created = cases.start_case(session, openid=openid, language=language,
                                                settings=runtime.settings, now=T0)
        return case.id, case.case_no, case.join_code, party.role, created


def _join(runtime, code, openid="oB", now=T0, typed=True):
    with runtime.unit_of_work() as session:
        try:
            case, party, joined = cases.join_case(session, code=code, openid=openid, language="en",
                                                  settings=runtime.settings, now=now, typed=typed)
        except cases.JoinRefused:
            session.commit()  # as the conversation does: a refusal is answered, its record kept
            raise
        return case.id, party.role, joined


def _add_photo(runtime, case_id, item, sha256, status=PhotoStatus.ACCEPTED):
    with runtime.unit_of_work() as session:
        session.add(Photo(case_id=case_id, item=item, kind=f"item{item}", status=status, sha256=sha256,
                          received_at=T0, warnings=[], capture_time_known=False))


def _fingerprint(runtime, case_id):
    with runtime.unit_of_work() as session:
        return cases.evidence_fingerprint(session.get(Case, case_id))


def test_start_case_makes_a_draft_with_a_readable_number_and_a_join_code(runtime):
    case_id, case_no, join_code, role, created = _start(runtime)
    assert created and role is PartyRole.A
    assert case_no.startswith(T0.strftime("%Y%m%d") + "-") and len(case_no) == 14
    assert not set(case_no[9:]) & set("01IO")  # nothing to mishear over the phone
    assert len(join_code) == 6 and join_code.isdigit()
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id)
        assert case.status is CaseStatus.DRAFT
        assert case.expires_at == T0 + timedelta(minutes=runtime.settings.DRAFT_EXPIRY_MINUTES)
        assert session.scalar(select(AuditEvent.action).where(AuditEvent.case_id == case_id)) == "case.started"


def test_start_case_resumes_the_open_case_instead_of_starting_another(runtime):
    first = _start(runtime)
    again = _start(runtime)
    assert again[0] == first[0] and again[4] is False
    with runtime.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(Case)) == 1


def test_join_makes_party_b_and_a_second_join_by_the_same_driver_changes_nothing(runtime):
    case_id, _, code, _, _ = _start(runtime)
    assert _join(runtime, code) == (case_id, PartyRole.B, True)
    assert _join(runtime, code) == (case_id, PartyRole.B, False)
    with runtime.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(Party).where(Party.case_id == case_id)) == 2


@pytest.mark.parametrize("situation, reason", [
    ("unknown", "unknown_code"), ("own", "own_case"), ("taken", "taken"), ("closed", "closed")])
def test_join_refusals_name_their_reason_and_change_nothing(runtime, situation, reason):
    case_id, _, code, _, _ = _start(runtime)
    if situation == "taken":
        _join(runtime, code, openid="oB")
    if situation == "closed":
        with runtime.unit_of_work() as session:
            session.get(Case, case_id).status = CaseStatus.CANCELLED  # the code still points at it
    with runtime.unit_of_work() as session:
        parties_before = session.scalar(select(func.count()).select_from(Party))
    joining = {"unknown": ("000000" if code != "000000" else "111111", "oB"), "own": (code, "oA"),
               "taken": (code, "oC"), "closed": (code, "oB")}[situation]
    with pytest.raises(cases.JoinRefused) as refused:
        _join(runtime, joining[0], openid=joining[1])
    assert refused.value.code == reason
    with runtime.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(Party)) == parties_before


def test_an_empty_draft_of_the_joining_driver_gives_way_to_the_join(runtime):
    case_id, _, code, _, _ = _start(runtime, openid="oA")
    own_draft_id = _start(runtime, openid="oB")[0]
    assert _join(runtime, code, openid="oB")[0] == case_id
    with runtime.unit_of_work() as session:
        assert session.get(Case, own_draft_id).status is CaseStatus.CANCELLED
        assert cases.open_case_for(session, "oB")[0].id == case_id


def test_missing_lists_what_the_case_still_needs(runtime):
    case_id, _, code, _, _ = _start(runtime)
    _add_photo(runtime, case_id, 1, "a" * 64)
    _add_photo(runtime, case_id, 2, "b" * 64, status=PhotoStatus.REJECTED)
    with runtime.unit_of_work() as session:
        gap = cases.missing(session.get(Case, case_id), runtime.settings)
    assert (gap.photos_received, gap.photos_required) == (1, len(runtime.settings.PHOTO_CHECKLIST))
    assert gap.location and gap.party_b and set(gap.details) == {("A", "plate"), ("A", "phone")}
    assert not gap.is_empty


def test_evidence_fingerprint_follows_the_accepted_photos_only(runtime):
    case_id = _start(runtime)[0]
    for item in (1, 2, 3, 4):
        _add_photo(runtime, case_id, item, f"{item}" * 64)
    before = _fingerprint(runtime, case_id)
    assert len(before) == 16 and before == _fingerprint(runtime, case_id)
    _add_photo(runtime, case_id, 4, "f" * 64, status=PhotoStatus.REJECTED)
    assert _fingerprint(runtime, case_id) == before  # a refused photo is no evidence
    with runtime.unit_of_work() as session:
        photo = session.scalar(select(Photo).where(Photo.case_id == case_id, Photo.item == 3))
        photo.sha256 = "e" * 64  # one photo swapped
    assert _fingerprint(runtime, case_id) != before


def test_close_case_releases_the_join_code_and_audits(runtime):
    case_id, _, code, _, _ = _start(runtime)
    with runtime.unit_of_work() as session:
        cases.close_case(session, session.get(Case, case_id), CaseStatus.EXPIRED, actor_type="system", actor=None,
                         now=T0)
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id)
        assert case.status is CaseStatus.EXPIRED and case.join_code is None and case.closed_at == T0
        assert cases.open_case_for(session, "oA") is None
        assert "case.expired" in session.scalars(select(AuditEvent.action).where(AuditEvent.case_id == case_id)).all()


def test_guessing_join_codes_is_stopped_after_a_few_wrong_ones(runtime):
    _, _, code, _, _ = _start(runtime)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(cases.JOIN_GUESS_LIMIT):
        with pytest.raises(cases.JoinRefused) as refused:
            _join(runtime, wrong, openid="oGuesser")
        assert refused.value.code == "unknown_code"
    with pytest.raises(cases.JoinRefused) as refused:
        _join(runtime, code, openid="oGuesser")  # even the right code, for now
    assert refused.value.code == "too_many_attempts"
    assert _join(runtime, code, openid="oRealB")[2] is True  # others are not affected


def test_the_guess_limit_lifts_after_its_window(runtime, clock):
    _, _, code, _, _ = _start(runtime)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(cases.JOIN_GUESS_LIMIT):
        with pytest.raises(cases.JoinRefused):
            _join(runtime, wrong, openid="oB", now=clock.now())
    clock.advance(cases.JOIN_GUESS_WINDOW)
    assert _join(runtime, code, openid="oB", now=clock.now())[2] is True


def test_a_scanned_qr_code_is_not_held_back_by_wrong_typed_codes(runtime):
    _, _, code, _, _ = _start(runtime)
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(cases.JOIN_GUESS_LIMIT):
        with pytest.raises(cases.JoinRefused):
            _join(runtime, wrong, openid="oB")
    assert _join(runtime, code, openid="oB", typed=False)[2] is True
