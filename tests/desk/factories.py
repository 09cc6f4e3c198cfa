"""Rows for desk tests: stations, staff of each kind, a booked case, and photos really stored."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import select

from accident_service.cases.service import evidence_fingerprint
from accident_service.desk.accounts import create_staff
from accident_service.models import Case, PartyRole, Photo
from accident_service.photos.thumbnails import make_thumbnail
from accident_service.runtime import Runtime
from accident_service.sandbox.images import make_jpeg
from tests.booking import factories as make
from tests.conftest import T0

PASSWORD = "desk-password-1"
H = timedelta(hours=1)


def seed_desk(runtime: Runtime) -> dict:
    """Stations GZ-TH (officer ``th``) and GZ-YX (officer ``yx``), supervisor ``sup``; a case booked at GZ-TH
    for 14:00 Guangzhou time. Returns {"case_id", "case_no"}."""
    with runtime.unit_of_work() as session:
        th = make.station(session, "GZ-TH", name="天河事故处理点")
        make.station(session, "GZ-YX", name="越秀事故处理点", km_north=5)
        slot = make.slot(session, th, T0 + 4 * H)
        make.slot(session, th, T0 + 5 * H)
        case = make.ready_case(session, T0)
        case.party(PartyRole.A).offered_slot_ids, case.party(PartyRole.A).offered_at = [slot.id], T0
        for username, role, station in (("th", "officer", "GZ-TH"), ("yx", "officer", "GZ-YX"),
                                        ("sup", "supervisor", None)):
            add_staff(session, runtime, username, role, station)
        case_id, case_no = case.id, case.case_no
    assert make.choose(runtime, case_id, 1, now=T0).booked
    return {"case_id": case_id, "case_no": case_no}


def add_staff(session, runtime: Runtime, username: str, role: str, station_code: str | None) -> str:
    return create_staff(session, username=username, password=PASSWORD, role=role, station_code=station_code,
                        clock=runtime.clock).username


def store_photos(runtime: Runtime, case_id: int) -> None:
    """Give the case's photos real originals and thumbnails in the store (factories make rows only)."""
    with runtime.unit_of_work() as session:
        for photo in session.scalars(select(Photo).where(Photo.case_id == case_id)):
            data = make_jpeg(f"desk-{case_id}-{photo.item}", 800, 600)
            photo.object_key = f"evidence/test/{case_id}/{photo.item}.jpg"
            photo.thumb_key = f"evidence/test/{case_id}/{photo.item}.thumb.jpg"
            photo.sha256, photo.width, photo.height = hashlib.sha256(data).hexdigest(), 800, 600
            runtime.store.put(photo.object_key, data, content_type="image/jpeg")
            runtime.store.put(photo.thumb_key, make_thumbnail(data), content_type="image/jpeg")
        case = session.get(Case, case_id)
        case.evidence_fingerprint = evidence_fingerprint(case)
