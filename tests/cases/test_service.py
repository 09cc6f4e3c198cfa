"""What a case is made of (cases/service.py): checklist items by role, what is missing, the fingerprint."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from accident_service.cases import parties, service
from accident_service.models import Case, PartyRole, Photo, PhotoStatus
from accident_service.settings import load_settings
from tests.conftest import T0
from tests.support.locks import backend_pid, wait_until_blocked_by


def _case(runtime, openid="oA"):
    with runtime.unit_of_work() as session:
        case, _party, _ = parties.start_case(session, openid=openid, language="zh", settings=runtime.settings,
                                             now=T0)
        return case.id


def _add_photo(runtime, case_id, item, sha256, status=PhotoStatus.ACCEPTED):
    with runtime.unit_of_work() as session:
        session.add(Photo(case_id=case_id, item=item, kind=f"item{item}", status=status, sha256=sha256,
                          received_at=T0, warnings=[], capture_time_known=False))


def _fingerprint(runtime, case_id):
    with runtime.unit_of_work() as session:
        return service.evidence_fingerprint(session.get(Case, case_id))


def test_checklist_items_are_assigned_by_role(settings):
    assert settings.PHOTO_CHECKLIST == ("scene", "collision", "plate_a", "plate_b")
    assert service.items_of(settings, PartyRole.A) == [1, 2, 3]
    assert service.items_of(settings, PartyRole.B) == [4]
    assert [service.owner_of_item(settings, n) for n in (0, 1, 4, 5)] == [None, PartyRole.A, PartyRole.B, None]
    assert service.item_code(settings, 4) == "plate_b" and service.item_code(settings, 7) == "extra"


@pytest.mark.parametrize(("checklist", "of_b", "a_items", "b_items"), [
    ("scene,plate_a,plate_b", "", [1, 2, 3], []),
    ("scene,collision,plate_a,plate_b", "collision,plate_b", [1, 3], [2, 4]),
])
def test_the_assignment_is_configurable(tmp_path, checklist, of_b, a_items, b_items):
    settings = load_settings({"DATA_DIR": str(tmp_path), "PHOTO_CHECKLIST": checklist, "PHOTO_CHECKLIST_B": of_b},
                             environ={})
    assert (service.items_of(settings, PartyRole.A), service.items_of(settings, PartyRole.B)) == (a_items, b_items)


def test_missing_lists_what_the_case_still_needs_by_party(runtime):
    case_id = _case(runtime)
    _add_photo(runtime, case_id, 1, "a" * 64)
    _add_photo(runtime, case_id, 2, "b" * 64, status=PhotoStatus.REJECTED)
    with runtime.unit_of_work() as session:
        gap = service.missing(session.get(Case, case_id), runtime.settings)
    assert gap.photos_of(PartyRole.A) == [2, 3] and gap.photos_of(PartyRole.B) == [4]
    assert gap.location and gap.party_b and gap.details_of(PartyRole.A) == ["plate", "phone"]
    assert not gap.is_empty


def test_evidence_fingerprint_follows_the_accepted_photos_only(runtime):
    case_id = _case(runtime)
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


@pytest.mark.postgres_only
def test_a_driver_who_waited_for_the_case_lock_sees_what_the_other_driver_committed(runtime):
    """Both drivers send their last detail at the same moment: the second must see the first's, or neither
    sees the case complete and it is never ready (PostgreSQL returns a waiting lock's joined rows as they
    were before it waited)."""
    import threading

    with runtime.unit_of_work() as session:
        case, _a, _ = parties.start_case(session, openid="oLockA", language="zh", settings=runtime.settings, now=T0)
        code = case.join_code
    with runtime.unit_of_work() as session:
        parties.join_case(session, code=code, openid="oLockB", language="zh", settings=runtime.settings, now=T0)
    seen: list[str | None] = []

    def b_finishes() -> None:
        with runtime.unit_of_work() as session:
            case, _me = service.open_case_for(session, "oLockB", for_update=True)
            seen.append(next(p.phone for p in case.parties if p.openid == "oLockA"))

    with runtime.unit_of_work() as session:
        _case, a = service.open_case_for(session, "oLockA", for_update=True)
        a.phone = "13800138000"
        session.flush()
        other = threading.Thread(target=b_finishes)
        other.start()
        wait_until_blocked_by(runtime.engine, backend_pid(session))  # B waits for A's lock
    other.join(timeout=10)
    assert seen == ["13800138000"]
