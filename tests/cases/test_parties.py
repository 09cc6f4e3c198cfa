"""The two drivers of a case (cases/parties.py): start, resume, join, one open case per driver."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from accident_service.cases import parties as cases
from accident_service.cases import service
from accident_service.cases.lifecycle import Actor, apply
from accident_service.models import AuditEvent, Case, CaseStatus, Notification, Party, PartyRole, Photo, PhotoStatus
from tests.conftest import T0


def _start(runtime, openid="oA", language="zh"):
    with runtime.unit_of_work() as session:
        case, party, created = cases.start_case(session, openid=openid, language=language,
                                                settings=runtime.settings, now=T0)
        return case.id, case.case_no, case.join_code, party.role, created


def _join(runtime, code, openid="oB", now=T0, typed=True):
    with runtime.unit_of_work() as session:
        try:
            joined = cases.join_case(session, code=code, openid=openid, language="en",
                                     settings=runtime.settings, now=now, typed=typed)
        except cases.JoinRefused:
            session.commit()  # as the conversation does: a refusal is answered, its record kept
            raise
        return joined.case.id, joined.party.role, joined.newly


def _add_photo(runtime, case_id, item, sha256, status=PhotoStatus.ACCEPTED):
    with runtime.unit_of_work() as session:
        session.add(Photo(case_id=case_id, item=item, kind=f"item{item}", status=status, sha256=sha256,
                          received_at=T0, warnings=[], capture_time_known=False))


def test_a_case_number_carries_the_home_day_not_utcs(runtime):
    with runtime.unit_of_work() as session:
        case, _party, _created = cases.start_case(session, openid="oA", language="zh", settings=runtime.settings,
                                                  now=datetime(2026, 12, 7, 18, 32, tzinfo=UTC))  # 02:32, 12-08
        assert case.case_no.startswith("20261208-")


def test_start_case_makes_a_draft_with_a_readable_number_and_a_join_code(runtime):
    case_id, case_no, join_code, role, created = _start(runtime)
    assert created and role is PartyRole.A
    assert case_no.startswith(T0.strftime("%Y%m%d") + "-") and len(case_no) == 14  # 10:00 in Guangzhou
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
            case = session.get(Case, case_id)
            case.status = CaseStatus.EXPIRED  # the code still points at it
            case.party(PartyRole.A).case_open = False
    with runtime.unit_of_work() as session:
        parties_before = session.scalar(select(func.count()).select_from(Party))
    joining = {"unknown": ("000000" if code != "000000" else "111111", "oB"), "own": (code, "oA"),
               "taken": (code, "oC"), "closed": (code, "oB")}[situation]
    with pytest.raises(cases.JoinRefused) as refused:
        _join(runtime, joining[0], openid=joining[1])
    assert refused.value.code == reason
    with runtime.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(Party)) == parties_before


def test_a_join_asked_for_before_the_case_with_that_code_was_opened_is_not_for_it(runtime):
    """Codes are released when a case ends and may be taken by a newer case: a join message that waited (an
    outage) names the case the code was then, not the one that took it since."""
    case_id, _, code, _, _ = _start(runtime)
    with runtime.unit_of_work() as session:
        opened = session.get(Case, case_id).created_at
    for asked, joins in ((opened - timedelta(seconds=1), False), (opened, True)):
        with runtime.unit_of_work() as session:
            try:
                cases.join_case(session, code=code, openid="oB", language="zh", settings=runtime.settings,
                                now=opened + timedelta(minutes=5), asked_at=asked)
                joined = True
            except cases.JoinRefused as refused:
                assert refused.code == "unknown_code"
                joined = False
        assert joined is joins, asked


def test_an_empty_draft_of_the_joining_driver_gives_way_to_the_join(runtime):
    case_id, _, code, _, _ = _start(runtime, openid="oA")
    own_draft_id = _start(runtime, openid="oB")[0]
    with runtime.unit_of_work() as session:
        joined = cases.join_case(session, code=code, openid="oB", language="zh", settings=runtime.settings, now=T0)
        assert joined.case.id == case_id and joined.closed_draft == session.get(Case, own_draft_id).case_no
    with runtime.unit_of_work() as session:
        draft = session.get(Case, own_draft_id)
        assert (draft.status, draft.join_code, draft.party(PartyRole.A).case_open) == (CaseStatus.CANCELLED, None,
                                                                                       False)
        assert service.open_case_for(session, "oB")[0].id == case_id
        assert session.scalar(select(AuditEvent.after).where(AuditEvent.case_id == own_draft_id,
                                                             AuditEvent.action == "case.abandon")) == \
            {"status": "cancelled", "joined": session.get(Case, case_id).case_no}
        # The reporter of the joined case is told; the owner of the draft reads it in the join reply.
        told = session.scalars(select(Notification.openid).where(Notification.kind == "joined")).all()
        assert told == ["oA"]


@pytest.mark.parametrize("held", ["draft with a photo", "joined case", "case with a party B"])
def test_a_driver_in_another_open_case_cannot_join_and_is_told_which(runtime, held):
    target_id, _, code, _, _ = _start(runtime, openid="oA")
    if held == "joined case":
        other_code = _start(runtime, openid="oC")[2]
        _join(runtime, other_code, openid="oB")
        role = PartyRole.B
    else:
        own = _start(runtime, openid="oB")
        role = PartyRole.A
        if held == "draft with a photo":
            _add_photo(runtime, own[0], 1, "a" * 64)
        else:
            _join(runtime, own[2], openid="oD")
    with runtime.unit_of_work() as session:
        before = session.scalar(select(func.count()).select_from(Party).where(Party.case_id == target_id))
    with pytest.raises(cases.JoinRefused) as refused:
        _join(runtime, code, openid="oB")
    assert (refused.value.code, refused.value.role) == ("in_other_case", role) and refused.value.case_no
    with runtime.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(Party).where(Party.case_id == target_id)) == before
        assert session.scalar(select(func.count()).select_from(Party)
                              .where(Party.openid == "oB", Party.case_open.is_(True))) == 1


def test_the_database_refuses_a_second_open_case_for_one_driver(runtime):
    _start(runtime, openid="oA")
    with pytest.raises(IntegrityError), runtime.unit_of_work() as session:
        case = Case(case_no="20261125-DUPE2", status=CaseStatus.DRAFT, version=1, created_at=T0, updated_at=T0,
                    last_activity_at=T0)
        case.parties.append(Party(role=PartyRole.A, openid="oA", language="zh", case_open=True, joined_at=T0))
        session.add(case)


def test_a_closed_case_frees_the_driver_for_a_new_one(runtime):
    case_id, _, code, _, _ = _start(runtime)
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id)
        case.expires_at = T0
        apply(session, case, "expire", actor=Actor.SYSTEM, settings=runtime.settings, now=T0)
    with runtime.unit_of_work() as session:
        case = session.get(Case, case_id)
        assert case.status is CaseStatus.EXPIRED and case.join_code is None and case.closed_at == T0
        assert service.open_case_for(session, "oA") is None
    assert _start(runtime)[0] != case_id


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
